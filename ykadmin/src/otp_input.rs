//! Where `verify`, `decrypt` and `enroll` take their OTP from.
//!
//! An OTP is a secret until the daemon has consumed it, and `decrypt`
//! consumes nothing. Given as an argument it sits in `/proc/PID/cmdline`,
//! which every local user can read (`ps`) while ykadmin runs, and in the
//! shell's history afterwards. So the argument `-` reads it from standard
//! input, and with no argument a terminal prompts for it without echo; an
//! argument is still taken as it is, for scripts (issue 12, item 11).
//!
//! Standard input is read one byte at a time from a duplicate of descriptor
//! 0, not through `std::io::Stdin`: its buffer would keep a copy of the OTP
//! (and of whatever followed it) that nothing wipes, and the bytes after
//! the first line stay unread for whoever reads standard input next. At
//! most [`MAX_LINE`] bytes are read, so a huge input costs nothing.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::os::fd::AsFd;

use thiserror::Error;
use ykhsm_core::otp::MAX_OTP_CHARS;
use ykhsm_proto::Zeroizing;

/// The longest first line read from standard input, without its line end.
/// An OTP has at most [`MAX_OTP_CHARS`] characters; the slack lets a
/// mistyped one reach the parser, which says what is wrong with it.
pub(crate) const MAX_LINE: usize = 256;

/// Why no OTP could be had.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InputError {
    /// The first line of standard input has no end within [`MAX_LINE`]
    /// bytes.
    #[error(
        "standard input: the first line is longer than {MAX_LINE} bytes \
         (an OTP has at most {MAX_OTP_CHARS} characters)"
    )]
    TooLong,
    /// The first line of standard input, or what was typed at the prompt,
    /// is empty.
    #[error("{from}: no {what} (an empty line)")]
    Empty {
        /// "standard input" or "the terminal".
        from: &'static str,
        /// What was asked for.
        what: &'static str,
    },
    /// The first line of standard input is not UTF-8.
    #[error("standard input: the first line is not UTF-8 text")]
    NotUtf8,
    /// Reading standard input failed.
    #[error("standard input: {0}")]
    Stdin(io::Error),
    /// Prompting on the terminal failed.
    #[error("the terminal: {0}")]
    Terminal(io::Error),
    /// No argument, and no terminal to prompt on.
    #[error(
        "no {what} given, and standard input is not a terminal to prompt on: \
         give `-` to read it from standard input (one line)"
    )]
    NoTerminal {
        /// What was asked for.
        what: &'static str,
    },
}

impl InputError {
    /// ykadmin's exit code: 2 for input that is not what the command
    /// takes (as a wrong command line), 3 when reading it failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::TooLong | Self::Empty { .. } | Self::NotUtf8 | Self::NoTerminal { .. } => 2,
            Self::Stdin(_) | Self::Terminal(_) => 3,
        }
    }
}

/// The OTP (or, for `enroll`, the key) the command was given: `arg` itself,
/// the first line of standard input for `-`, or without `arg` what is typed
/// at `prompt` on the terminal, without echo. `what` names it in errors.
pub fn get(
    arg: Option<&str>,
    what: &'static str,
    prompt: &str,
) -> Result<Zeroizing<String>, InputError> {
    match arg {
        Some("-") => {
            let stdin = io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(InputError::Stdin)?;
            read_line(File::from(stdin), what)
        }
        Some(given) => Ok(Zeroizing::new(given.to_owned())),
        None if io::stdin().is_terminal() => {
            let typed = rpassword::prompt_password(prompt)
                .map(Zeroizing::new)
                .map_err(InputError::Terminal)?;
            if typed.is_empty() {
                return Err(InputError::Empty {
                    from: "the terminal",
                    what,
                });
            }
            Ok(typed)
        }
        None => Err(InputError::NoTerminal { what }),
    }
}

/// The first line of `input`, its `\n` or `\r\n` taken off, read a byte at
/// a time so nothing after the line is consumed, into a buffer wiped on
/// drop that never grows. More than [`MAX_LINE`] bytes without a line end
/// is [`InputError::TooLong`], found after reading at most two bytes more.
pub fn read_line(
    mut input: impl Read,
    what: &'static str,
) -> Result<Zeroizing<String>, InputError> {
    // Room for the line, a "\r", and the byte that tells it is too long.
    let mut buf = Zeroizing::new(vec![0u8; MAX_LINE + 2]);
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(InputError::TooLong);
        }
        match input.read(&mut buf[len..=len]) {
            Ok(0) => break,
            Ok(_) if buf[len] == b'\n' => break,
            Ok(_) => len += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(InputError::Stdin(e)),
        }
    }
    if buf[..len].last() == Some(&b'\r') {
        len -= 1;
    }
    if len > MAX_LINE {
        return Err(InputError::TooLong);
    }
    if len == 0 {
        return Err(InputError::Empty {
            from: "standard input",
            what,
        });
    }
    let line = std::str::from_utf8(&buf[..len]).map_err(|_| InputError::NotUtf8)?;
    // Copied into a string of its final size: no reallocation leaves a copy.
    let mut out = Zeroizing::new(String::with_capacity(len));
    out.push_str(line);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn line(input: &[u8]) -> Result<Zeroizing<String>, InputError> {
        read_line(Cursor::new(input), "OTP")
    }

    #[test]
    fn the_line_end_is_taken_off_and_a_missing_one_is_fine() {
        assert_eq!(line(b"cccc\n").unwrap().as_str(), "cccc");
        assert_eq!(line(b"cccc\r\n").unwrap().as_str(), "cccc");
        assert_eq!(line(b"cccc").unwrap().as_str(), "cccc");
        assert_eq!(line(b" cc cc \n").unwrap().as_str(), " cc cc ");
    }

    #[test]
    fn nothing_after_the_first_line_is_read() {
        let mut input = Cursor::new(&b"first\nsecond\n"[..]);
        assert_eq!(read_line(&mut input, "OTP").unwrap().as_str(), "first");
        assert_eq!(input.position(), 6);
    }

    #[test]
    fn a_line_over_the_limit_is_refused_after_reading_at_most_two_bytes_past_it() {
        let at_limit = [b'c'; MAX_LINE];
        assert_eq!(line(&at_limit).unwrap().len(), MAX_LINE);
        let mut crlf = at_limit.to_vec();
        crlf.extend_from_slice(b"\r\n");
        assert_eq!(line(&crlf).unwrap().len(), MAX_LINE);
        let huge = vec![b'c'; 1 << 20];
        let mut input = Cursor::new(&huge[..]);
        assert!(matches!(
            read_line(&mut input, "OTP"),
            Err(InputError::TooLong)
        ));
        assert_eq!(input.position(), (MAX_LINE + 2) as u64);
        let mut over = vec![b'c'; MAX_LINE + 1];
        over.push(b'\n');
        assert!(matches!(line(&over), Err(InputError::TooLong)));
    }

    #[test]
    fn an_empty_or_binary_line_is_refused_with_exit_code_2() {
        for input in [&b""[..], b"\n", b"\r\n"] {
            let e = line(input).unwrap_err();
            assert!(matches!(e, InputError::Empty { .. }), "{e}");
            assert_eq!(e.exit_code(), 2);
        }
        let e = line(b"\xff\xfe\n").unwrap_err();
        assert!(matches!(e, InputError::NotUtf8));
        assert_eq!(e.exit_code(), 2);
    }
}
