//! pam_yubico's authfile, `/etc/yubikeys` (read by yubico-pam's `util.c`
//! `check_user_token`): the format, the one parse of a line that ykhsmd's
//! reader and ykadmin's editor share, the edits ([`edit`]) and the file
//! itself ([`file`]).
//!
//! The format: `user:id1:id2:…`, `#` comments in column 0 only, empty
//! fields skipped, several lines per user allowed (the ids of all of them
//! count), and `bob:` or `bob` is a user who has a line but no valid key.
//!
//! **One reading of a line.** [`Line::parse`] says what a line is: a
//! comment, a user's keys, or a line that cannot be trusted and why. The
//! daemon fails a user closed (`BACKEND_ERROR`) for every untrusted line
//! that is theirs; the editor refuses to edit a user who has one. Whose a
//! line is ([`ParsedLine::names`]) is the union of two readings, so that
//! neither program can call a user "without a line" whom the other, or
//! pam_yubico on the same file, would give one:
//!
//! * ykhsmd's: the first `:` field (one trailing CR ignored), trimmed, and
//!   that name without the characters nobody sees (`\u{feff}alice` is
//!   alice's line, refused);
//! * pam_yubico's ([`pam_yubico_users`]): it reads a file with
//!   `fgets(buf, 1024)`, so a line of 1023 bytes or more is read as several
//!   lines, each stopping at a NUL, comments skipped, the user the first
//!   non-empty `:` field (`strtok_r` skips a leading `:`). A line
//!   `:bob:cccccccccccb`, or a long line whose tail is `bob:…`, is bob's
//!   for pam_yubico: it fails bob closed here, rather than making bob a user
//!   without keys (whom `nullok` lets in without a second factor).
//!
//! User names are not resolved here: ykhsmd ties the names to the system's
//! accounts (NSS) after parsing; ykadmin edits the names as written.

pub mod edit;
pub mod file;

use thiserror::Error;

use crate::otp::{PublicId, PublicIdError};
use crate::username;

pub use edit::{Edit, EditError, UnsafeReason, UserError, enroll, list, revoke, validate_user};
pub use file::{AuthfileError, AuthfileErrorKind, read, rewrite};

/// The largest authfile read or written.
pub const MAX_AUTHFILE_LEN: u64 = 16 << 20;

/// pam_yubico reads lines with `fgets` into 1024 bytes: a line, newline
/// included, must not be longer than this, or its tail is read as a line
/// of its own.
pub const MAX_LINE_LEN: usize = 1023;

/// The longest user name written (Linux's `LOGIN_NAME_MAX`).
pub const MAX_USER_LEN: usize = 256;

/// One line of the file as it is: its number, its bytes without the `\n`,
/// and its terminator (`"\n"`, or `""` for a last line without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLine<'a> {
    /// 1-based line number.
    pub number: usize,
    /// The bytes of the line, without its `\n`.
    pub content: &'a [u8],
    /// `"\n"`, or empty for a last line without one.
    pub end: &'a [u8],
}

/// The file's lines, every byte in exactly one of them (a file ending in
/// `\n` has no empty line after it).
pub fn split_lines(text: &[u8]) -> Vec<RawLine<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (content, end, tail) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i..=i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..], &rest[rest.len()..]),
        };
        out.push(RawLine {
            number: out.len() + 1,
            content,
            end,
        });
        rest = tail;
    }
    out
}

/// What a line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// Empty, or a comment (`#` in column 0) that pam_yubico reads as a
    /// comment too.
    Comment,
    /// `user:id:id…`, every field good: the ids count for `user`.
    Keys {
        /// The user name, as written.
        user: &'a str,
        /// The ids, as written and as parsed (case folded), empty fields
        /// skipped.
        ids: Vec<(&'a str, PublicId)>,
        /// The line ended in CR LF; the CR was ignored (pam_yubico would
        /// not match the last id).
        crlf: bool,
    },
    /// A line that cannot be trusted: it fails closed for every user it
    /// names ([`ParsedLine::names`]).
    Broken {
        /// The first `:` field as written (one trailing CR ignored), if it
        /// can be read.
        user: Option<&'a str>,
        /// What is wrong.
        error: LineError,
    },
}

/// Why a line cannot be trusted. No message quotes the line: a field may
/// be anything an operator pasted, an OTP included.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LineError {
    /// Not UTF-8.
    #[error("the line is not valid UTF-8")]
    NotUtf8,
    /// Longer than pam_yubico reads as one line.
    #[error(
        "the line is {len} bytes long, longer than the {MAX_LINE_LEN} pam_yubico reads as one line (it reads the rest as lines of their own)"
    )]
    TooLong {
        /// Its length, newline included.
        len: usize,
    },
    /// Nothing before the first `:`.
    #[error("the line has no user name before ':'")]
    NoUser,
    /// White space, a control or an invisible character in the user name.
    #[error(
        "the user name contains white space, a control or an invisible character ({})",
        username::describe(*at, *found)
    )]
    InvisibleInUser {
        /// Byte offset in the name.
        at: usize,
        /// The character.
        found: char,
    },
    /// A field after the user name that is not a public id.
    #[error("field {field} is not a public id ({source})")]
    NotAPublicId {
        /// 1-based field number (the user name is field 1).
        field: usize,
        /// Why.
        source: PublicIdError,
    },
}

impl<'a> Line<'a> {
    /// Reads one line (without its `\n`), in the order ykhsmd always has:
    /// comment, UTF-8, length, user name, invisible characters in it, then
    /// each id. A comment long enough for pam_yubico to read part of it as
    /// a user's line is not a comment.
    pub fn parse(content: &'a [u8]) -> Self {
        if content.is_empty() || content[0] == b'#' {
            if pam_yubico_users(content).next().is_some() {
                return Self::Broken {
                    user: None,
                    error: LineError::TooLong {
                        len: content.len() + 1,
                    },
                };
            }
            return Self::Comment;
        }
        let (raw, crlf) = match content.strip_suffix(b"\r") {
            Some(r) => (r, true),
            None => (content, false),
        };
        let Ok(text) = std::str::from_utf8(raw) else {
            let user = raw
                .split(|&b| b == b':')
                .next()
                .and_then(|u| std::str::from_utf8(u).ok());
            return Self::Broken {
                user,
                error: LineError::NotUtf8,
            };
        };
        let mut fields = text.split(':');
        let user = fields.next().unwrap_or_default();
        let broken = |error| Self::Broken {
            user: Some(user),
            error,
        };
        if raw.len() + 1 > MAX_LINE_LEN {
            return broken(LineError::TooLong {
                len: content.len() + 1,
            });
        }
        if user.is_empty() {
            return Self::Broken {
                user: None,
                error: LineError::NoUser,
            };
        }
        if let Some((at, found)) = username::first_invisible(user) {
            return broken(LineError::InvisibleInUser { at, found });
        }
        let mut ids = Vec::new();
        for (i, field) in fields.enumerate().filter(|(_, f)| !f.is_empty()) {
            match PublicId::parse(field) {
                Ok(id) => ids.push((field, id)),
                Err(source) => {
                    return broken(LineError::NotAPublicId {
                        field: i + 2,
                        source,
                    });
                }
            }
        }
        Self::Keys { user, ids, crlf }
    }
}

/// A line of the file and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLine<'a> {
    /// The line as it is.
    pub raw: RawLine<'a>,
    /// What it says.
    pub line: Line<'a>,
}

/// Every line of the file, parsed.
pub fn parse(text: &[u8]) -> Vec<ParsedLine<'_>> {
    split_lines(text)
        .into_iter()
        .map(|raw| ParsedLine {
            raw,
            line: Line::parse(raw.content),
        })
        .collect()
}

/// The names a line belongs to, by who reads it that way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names<'a> {
    /// ykhsmd's: the user name (trimmed).
    pub user: Option<&'a str>,
    /// For a broken line whose name has characters nobody sees: the name
    /// without them, the user the operator meant.
    pub meant: Option<String>,
    /// For a broken line: the other users pam_yubico reads from it (not
    /// the two above), UTF-8 names only (a login name is one).
    pub pam_yubico: Vec<&'a str>,
}

impl<'a> Names<'a> {
    /// All of them, each once: the user, the one meant, pam_yubico's.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.user
            .into_iter()
            .chain(self.meant.as_deref())
            .chain(self.pam_yubico.iter().copied())
    }

    /// Whether `user` is one of them.
    pub fn contains(&self, user: &str) -> bool {
        self.all().any(|n| n == user)
    }
}

impl<'a> ParsedLine<'a> {
    /// Whose line this is, for ykhsmd (which fails these users closed when
    /// the line is [`Line::Broken`]) and for ykadmin (which refuses to edit
    /// their lines): a trusted line is its user's; a broken one is the
    /// user's it starts with, the one that name means, and each one
    /// pam_yubico reads from it (module docs).
    pub fn names(&self) -> Names<'a> {
        match &self.line {
            Line::Comment => Names::default(),
            Line::Keys { user, .. } => Names {
                user: Some(user),
                ..Names::default()
            },
            Line::Broken { user, .. } => {
                let user = user.map(str::trim).filter(|u| !u.is_empty());
                let meant = user
                    .map(username::visible_part)
                    .filter(|m| !m.is_empty() && Some(m.as_str()) != user);
                let mut names = Names {
                    user,
                    meant,
                    pam_yubico: Vec::new(),
                };
                for name in pam_yubico_users(self.raw.content) {
                    if let Ok(name) = std::str::from_utf8(name)
                        && !names.contains(name)
                    {
                        names.pam_yubico.push(name);
                    }
                }
                names
            }
        }
    }
}

/// The users pam_yubico reads from a line (without its `\n`): it reads
/// 1023-byte pieces (`fgets`), each stopping at a NUL (C strings), skips
/// pieces starting with `#`, and takes the first non-empty `:` field
/// (`strtok_r` skips leading `:`).
pub fn pam_yubico_users(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    content.chunks(MAX_LINE_LEN).filter_map(|piece| {
        let piece = piece.split(|&b| b == 0).next().unwrap_or_default();
        if piece.first() == Some(&b'#') {
            return None;
        }
        piece.split(|&b| b == b':').find(|f| !f.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> Vec<String> {
        let p = parse(line.as_bytes());
        p[0].names().all().map(str::to_owned).collect()
    }

    #[test]
    fn lines_split_keeping_every_byte() {
        for text in ["", "a", "a\n", "a\nb", "\n\n", "a\r\nb\n"] {
            let lines = split_lines(text.as_bytes());
            let back: Vec<u8> = lines
                .iter()
                .flat_map(|l| [l.content, l.end].concat())
                .collect();
            assert_eq!(back, text.as_bytes());
            let numbers: Vec<usize> = lines.iter().map(|l| l.number).collect();
            assert_eq!(numbers, (1..=lines.len()).collect::<Vec<_>>());
        }
        assert_eq!(split_lines(b"a\n").len(), 1);
    }

    #[test]
    fn a_good_line_is_its_users_keys() {
        let p = Line::parse(b"bob:ccccccdbjrgf::CCCCCCCCCCCB:");
        let Line::Keys { user, ids, crlf } = p else {
            panic!("{p:?}")
        };
        assert_eq!((user, crlf), ("bob", false));
        let ids: Vec<(&str, &str)> = ids.iter().map(|(w, id)| (*w, id.as_str())).collect();
        assert_eq!(
            ids,
            [
                ("ccccccdbjrgf", "ccccccdbjrgf"),
                ("CCCCCCCCCCCB", "cccccccccccb")
            ]
        );
        assert!(matches!(
            Line::parse(b"bob:ccccccdbjrgf\r"),
            Line::Keys { crlf: true, .. }
        ));
        assert_eq!(Line::parse(b""), Line::Comment);
        assert_eq!(Line::parse(b"# bob:x"), Line::Comment);
    }

    #[test]
    fn each_refusal_is_named() {
        let error = |l: &[u8]| match Line::parse(l) {
            Line::Broken { error, .. } => error,
            other => panic!("{other:?}"),
        };
        assert_eq!(error(b"bob:\xff"), LineError::NotUtf8);
        assert_eq!(error(b":cccccccccccb"), LineError::NoUser);
        assert!(matches!(
            error("\u{feff}bob:cccccccccccb".as_bytes()),
            LineError::InvisibleInUser {
                at: 0,
                found: '\u{feff}'
            }
        ));
        assert!(matches!(
            error(b"bob:cccccccccccb:not-an-id"),
            LineError::NotAPublicId { field: 3, .. }
        ));
        // 1022 bytes and a newline: what pam_yubico reads as one line.
        let mut long = "bob".to_owned();
        while long.len() + 13 < MAX_LINE_LEN {
            long.push_str(":cccccccccccc");
        }
        while long.len() < MAX_LINE_LEN - 1 {
            long.push(':');
        }
        assert!(matches!(Line::parse(long.as_bytes()), Line::Keys { .. }));
        long.push(':');
        assert_eq!(error(long.as_bytes()), LineError::TooLong { len: 1024 });
        // A CR LF end does not count (ykhsmd ignores the CR).
        long.pop();
        long.push('\r');
        assert!(matches!(
            Line::parse(long.as_bytes()),
            Line::Keys { crlf: true, .. }
        ));
    }

    #[test]
    fn no_message_quotes_the_field() {
        let otp = "ccccccdbjrgfvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv";
        let Line::Broken { error, .. } = Line::parse(format!("bob:{otp}").as_bytes()) else {
            panic!()
        };
        assert!(!error.to_string().contains("vvvv"), "{error}");
    }

    #[test]
    fn a_broken_line_is_read_as_ykhsmd_and_pam_yubico_read_it() {
        // ykhsmd's name, trimmed, and the one meant.
        assert_eq!(names(" bob :x"), ["bob", " bob "]);
        assert_eq!(names("\u{feff}bob:x"), ["\u{feff}bob", "bob"]);
        assert_eq!(names("bob\0x:cccccccccccb"), ["bob\0x", "bobx", "bob"]);
        // pam_yubico's: strtok skips a leading ':'.
        assert_eq!(names(":bob:cccccccccccb"), ["bob"]);
        assert_eq!(names("::bob"), ["bob"]);
        assert!(names(":").is_empty());
        // A long line: pam_yubico reads its tail as a line of its own.
        let tail = format!("alice:{}bob:cccccccccccb", "x".repeat(MAX_LINE_LEN - 6));
        assert_eq!(names(&tail), ["alice", "bob"]);
        // A long comment too, unless its tail is a comment as well.
        let comment = format!("# {}bob:cccccccccccb", "x".repeat(MAX_LINE_LEN - 2));
        assert_eq!(names(&comment), ["bob"]);
        let comment = format!("# {}# bob", "x".repeat(MAX_LINE_LEN - 2));
        assert_eq!(Line::parse(comment.as_bytes()), Line::Comment);
        // A good line is its user's only.
        assert_eq!(names("bob:cccccccccccb"), ["bob"]);
        assert!(names("# bob:x").is_empty());
    }
}
