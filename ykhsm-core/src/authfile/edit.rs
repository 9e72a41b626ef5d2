//! The edits of `ykadmin enroll`, `ykadmin revoke` and `ykadmin list`: the
//! file's bytes in, new bytes out, no I/O ([`super::rewrite`] runs one on
//! the file).
//!
//! Only lines of the user being edited change; every other byte (comments,
//! blank lines, other users' lines with their odd spacing or CR LF ends,
//! the order) is kept byte for byte. A line that ykhsmd or pam_yubico
//! reads as the user's ([`ParsedLine::names`]) but that is not plainly
//! `user:id:id…` — a line ykhsmd refuses ([`Line::Broken`]), or one ending
//! in CR LF — is never guessed at: the edit is refused, naming the line.

use std::collections::HashMap;

use thiserror::Error;

use super::{Line, LineError, MAX_LINE_LEN, MAX_USER_LEN, ParsedLine, RawLine, parse, split_lines};
use crate::account::Account;
use crate::otp::{PublicId, PublicIdError};
use crate::username;

/// The result of an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The whole new file.
    pub text: Vec<u8>,
    /// Whether `text` differs from the input. [`super::rewrite`] writes
    /// nothing when it does not.
    pub changed: bool,
    /// The ids taken out by [`revoke`], as they were written, in file order
    /// (an id on two lines is listed twice). Empty for [`enroll`].
    pub removed: Vec<String>,
}

/// Why an edit was refused. [`super::rewrite`] gives it with the file's
/// path ([`super::AuthfileErrorKind::Edit`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EditError {
    /// The user name cannot be written to the authfile.
    #[error("invalid user name {user:?}: {reason}")]
    InvalidUser {
        /// The name given.
        user: String,
        /// What is wrong with it.
        reason: UserError,
    },
    /// The public id is not 2 to 16 lower-case modhex characters of even
    /// length ([`PublicId::parse_canonical`]).
    #[error("invalid public id {public_id:?}: {source}")]
    InvalidPublicId {
        /// The id given.
        public_id: String,
        /// What is wrong with it.
        source: PublicIdError,
    },
    /// A line that belongs to the user cannot be edited safely.
    #[error(
        "line {line} belongs to user {user:?} but {reason}; refusing to edit it, fix the line by hand"
    )]
    UnsafeLine {
        /// 1-based line number.
        line: usize,
        /// The user being edited.
        user: String,
        /// What is wrong with the line.
        reason: UnsafeReason,
    },
    /// The system's user database could not say whether a name of the file
    /// is the user (ykhsmd counts lines written under an alias of a user as
    /// the user's, so an edit that skipped such a line would leave a key in
    /// place).
    #[error(
        "the system's user database (NSS) could not resolve the user name {name:?}: {why}; whether it is {user:?} cannot be told, nothing was changed (retry when NSS answers)"
    )]
    NssFailed {
        /// The name, as given or as written in the file.
        name: String,
        /// The user being edited.
        user: String,
        /// NSS's error.
        why: String,
    },
    /// `revoke` for a user who has no line.
    #[error("user {user:?} has no line, nothing to revoke")]
    NoSuchUser {
        /// The user.
        user: String,
    },
    /// `revoke` of an id the user does not have.
    #[error("user {user:?} does not have the key {public_id}")]
    KeyNotEnrolled {
        /// The user.
        user: String,
        /// The id.
        public_id: String,
    },
    /// The file after the edit would be larger than ykhsmd reads.
    #[error("the file would be {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size after the edit.
        len: u64,
        /// The limit ([`super::MAX_AUTHFILE_LEN`]).
        max: u64,
    },
}

/// Why a user name cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UserError {
    /// Empty.
    #[error("it is empty")]
    Empty,
    /// Longer than [`MAX_USER_LEN`] bytes.
    #[error("it is longer than {MAX_USER_LEN} bytes")]
    TooLong,
    /// Contains the field separator.
    #[error("it contains ':', the authfile's field separator")]
    Colon,
    /// Contains a character a reader does not see ([`username::is_invisible`]).
    #[error(
        "it contains white space, a control or an invisible character (a byte-order mark, a zero-width space…)"
    )]
    Invisible,
    /// Starts with `#`.
    #[error("it starts with '#', which makes the line a comment")]
    Comment,
}

/// Why a line of the user cannot be edited.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UnsafeReason {
    /// ykhsmd refuses the line (and fails the user closed).
    #[error(transparent)]
    Line(#[from] LineError),
    /// It ends in CR LF: ykhsmd ignores the CR, pam_yubico does not match
    /// the last id, and an edit would have to pick one.
    #[error("the line ends in CR LF (pam_yubico would not match its last key)")]
    CrLf,
}

/// Checks a user name: not empty, at most [`MAX_USER_LEN`] bytes, no `:`,
/// no white space, control or invisible character (a byte-order mark, a
/// zero-width space: [`username::is_invisible`]), not starting with `#`.
pub fn validate_user(user: &str) -> Result<(), EditError> {
    let reason = if user.is_empty() {
        UserError::Empty
    } else if user.len() > MAX_USER_LEN {
        UserError::TooLong
    } else if user.contains(':') {
        UserError::Colon
    } else if username::first_invisible(user).is_some() {
        UserError::Invisible
    } else if user.starts_with('#') {
        UserError::Comment
    } else {
        return Ok(());
    };
    Err(EditError::InvalidUser {
        user: user.to_owned(),
        reason,
    })
}

/// Checks a public id given to write: [`PublicId::parse_canonical`].
fn canonical(public_id: &str) -> Result<PublicId, EditError> {
    PublicId::parse_canonical(public_id).map_err(|source| EditError::InvalidPublicId {
        public_id: public_id.to_owned(),
        source,
    })
}

/// A line of the user, plainly `name:id:id…`.
#[derive(Debug)]
struct UserLine<'a> {
    /// Index into the lines.
    index: usize,
    /// The user name as the line writes it: the user's, or an alias of the
    /// same account.
    name: &'a str,
    /// The ids, as written and as parsed (lower-cased).
    ids: Vec<(&'a str, PublicId)>,
}

/// Tells which names of the file are `user`, as ykhsmd does: a name is
/// the user's when it is the name as given, or when the system's user
/// database resolves both to the same account (`ALICE` and `alice@corp` for
/// `alice` with sssd). A name the database does not know is only itself.
struct SameUser<'r> {
    user: &'r str,
    /// The account `user` resolves to, if the database knows it.
    account: Option<String>,
    resolve: &'r dyn Fn(&str) -> Account,
    asked: HashMap<String, Option<String>>,
}

impl<'r> SameUser<'r> {
    fn new(user: &'r str, resolve: &'r dyn Fn(&str) -> Account) -> Result<Self, EditError> {
        let mut same = Self {
            user,
            account: None,
            resolve,
            asked: HashMap::new(),
        };
        same.account = same.account_of(user)?;
        Ok(same)
    }

    /// The account `name` resolves to (`None`: the database does not know
    /// it); an error when the database cannot answer.
    fn account_of(&mut self, name: &str) -> Result<Option<String>, EditError> {
        if let Some(known) = self.asked.get(name) {
            return Ok(known.clone());
        }
        let account = match (self.resolve)(name) {
            Account::Known { name, .. } => Some(name),
            Account::Unknown => None,
            Account::Failed(why) => {
                return Err(EditError::NssFailed {
                    name: name.to_owned(),
                    user: self.user.to_owned(),
                    why,
                });
            }
        };
        self.asked.insert(name.to_owned(), account.clone());
        Ok(account)
    }

    fn is(&mut self, name: &str) -> Result<bool, EditError> {
        if name == self.user {
            return Ok(true);
        }
        let Some(account) = self.account.clone() else {
            return Ok(false);
        };
        Ok(self.account_of(name)?.as_deref() == Some(account.as_str()))
    }
}

/// Every line belonging to `user` (by [`SameUser`]), in file order; an
/// error for the first one that cannot be edited safely.
fn user_lines<'a>(
    lines: &[ParsedLine<'a>],
    user: &str,
    resolve: &dyn Fn(&str) -> Account,
) -> Result<Vec<UserLine<'a>>, EditError> {
    let mut same = SameUser::new(user, resolve)?;
    let mut out = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let mut mine = false;
        for name in line.names().all() {
            if same.is(name)? {
                mine = true;
                break;
            }
        }
        if !mine {
            continue;
        }
        let refuse = |reason| EditError::UnsafeLine {
            line: line.raw.number,
            user: user.to_owned(),
            reason,
        };
        match &line.line {
            Line::Keys { crlf: true, .. } => return Err(refuse(UnsafeReason::CrLf)),
            Line::Keys {
                user: name, ids, ..
            } => out.push(UserLine {
                index,
                name,
                ids: ids.clone(),
            }),
            Line::Broken { error, .. } => return Err(refuse(error.clone().into())),
            // A comment belongs to nobody.
            Line::Comment => {}
        }
    }
    Ok(out)
}

/// Reassembles the file, with some lines replaced (`Some`) or deleted
/// (`None`); every other line is copied byte for byte.
fn assemble(lines: &[RawLine<'_>], replace: &HashMap<usize, Option<Vec<u8>>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match replace.get(&i) {
            None => out.extend_from_slice(line.content),
            Some(Some(new)) => out.extend_from_slice(new),
            Some(None) => continue,
        }
        out.extend_from_slice(line.end);
    }
    out
}

fn finish(input: &[u8], text: Vec<u8>, removed: Vec<String>) -> Edit {
    Edit {
        changed: text != input,
        text,
        removed,
    }
}

fn raw_lines<'a>(lines: &[ParsedLine<'a>]) -> Vec<RawLine<'a>> {
    lines.iter().map(|l| l.raw).collect()
}

/// Adds `public_id` to `user`; `resolve` tells which names of the file are
/// the user ([`Account::lookup`] in ykadmin: the lines ykhsmd counts for the
/// user, those written under an alias included).
///
/// If any line of the user already holds the id (in any letter case, as
/// ykhsmd compares), nothing changes. Otherwise `:id` is appended to the
/// user's last line (`bob` and `bob:` both become `bob:id`), or, when the
/// user has no line or the last one would grow past [`MAX_LINE_LEN`], a line
/// `user:id` is added at the end of the file (after a `\n` if the file does
/// not end with one). Every other byte stays as it was.
pub fn enroll(
    text: &[u8],
    user: &str,
    public_id: &str,
    resolve: &dyn Fn(&str) -> Account,
) -> Result<Edit, EditError> {
    validate_user(user)?;
    let wanted = canonical(public_id)?;
    let lines = parse(text);
    let mine = user_lines(&lines, user, resolve)?;
    if mine
        .iter()
        .any(|l| l.ids.iter().any(|(_, id)| *id == wanted))
    {
        return Ok(finish(text, text.to_vec(), Vec::new()));
    }
    if let Some(last) = mine.last() {
        let mut new = lines[last.index].raw.content.to_vec();
        if !new.ends_with(b":") {
            new.push(b':');
        }
        new.extend_from_slice(public_id.as_bytes());
        if new.len() < MAX_LINE_LEN {
            let replace = HashMap::from([(last.index, Some(new))]);
            return Ok(finish(
                text,
                assemble(&raw_lines(&lines), &replace),
                Vec::new(),
            ));
        }
    }
    let mut out = text.to_vec();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(user.as_bytes());
    out.push(b':');
    out.extend_from_slice(public_id.as_bytes());
    out.push(b'\n');
    Ok(finish(text, out, Vec::new()))
}

/// Removes `public_id` (every id when `None`) from every line of `user`:
/// every line ykhsmd counts for the user, as `resolve` tells
/// ([`Account::lookup`] in ykadmin), those written under an alias of the
/// user included. When the system's user database cannot answer for a name
/// of the file, nothing is changed ([`EditError::NssFailed`]).
///
/// The id is matched in any letter case, as ykhsmd compares. An edited line
/// that keeps ids is rewritten as `name:id:id…` (its own name and the kept
/// ids as written);
/// one left without ids is deleted, except that without `purge` the user
/// always keeps a line: when no id of the user remains, the user's first
/// line becomes `user:` and their other lines are deleted (a user with no
/// line would have no second factor at all under `nullok`); that line keeps
/// its name as written. With `purge`, when no id of the user remains, all
/// of the user's lines are deleted.
///
/// Errors: [`EditError::NoSuchUser`] when the user has no line,
/// [`EditError::KeyNotEnrolled`] when none of the user's lines holds
/// `public_id`.
pub fn revoke(
    text: &[u8],
    user: &str,
    public_id: Option<&str>,
    purge: bool,
    resolve: &dyn Fn(&str) -> Account,
) -> Result<Edit, EditError> {
    validate_user(user)?;
    let wanted = public_id.map(canonical).transpose()?;
    let lines = parse(text);
    let mine = user_lines(&lines, user, resolve)?;
    if mine.is_empty() {
        return Err(EditError::NoSuchUser {
            user: user.to_owned(),
        });
    }
    let matches = |id: &PublicId| wanted.as_ref().is_none_or(|want| id == want);
    let mut removed = Vec::new();
    let mut remaining = 0;
    // Per user line: the ids kept, if the line held one to remove.
    let mut edited: Vec<(&UserLine<'_>, Vec<&str>)> = Vec::new();
    for line in &mine {
        let (gone, kept): (Vec<_>, Vec<_>) = line.ids.iter().partition(|(_, id)| matches(id));
        remaining += kept.len();
        if !gone.is_empty() {
            removed.extend(gone.iter().map(|(s, _)| (*s).to_owned()));
            edited.push((line, kept.iter().map(|(s, _)| *s).collect()));
        }
    }
    if let Some(id) = public_id
        && removed.is_empty()
    {
        return Err(EditError::KeyNotEnrolled {
            user: user.to_owned(),
            public_id: id.to_owned(),
        });
    }
    let mut replace: HashMap<usize, Option<Vec<u8>>> = HashMap::new();
    if remaining == 0 {
        for (n, line) in mine.iter().enumerate() {
            let keep = n == 0 && !purge;
            replace.insert(
                line.index,
                keep.then(|| format!("{}:", line.name).into_bytes()),
            );
        }
    } else {
        for (line, kept) in edited {
            let new = (!kept.is_empty()).then(|| {
                let mut s = line.name.to_owned();
                for id in kept {
                    s.push(':');
                    s.push_str(id);
                }
                s.into_bytes()
            });
            replace.insert(line.index, new);
        }
    }
    Ok(finish(
        text,
        assemble(&raw_lines(&lines), &replace),
        removed,
    ))
}

/// The users of the file in order of first appearance, each with the ids of
/// all their lines, as written.
///
/// This is a listing, not a check: comment and empty lines are skipped, one
/// trailing CR is dropped, the user is the first `:` field and the ids are
/// the other non-empty fields (invalid UTF-8 shown with U+FFFD); nothing is
/// validated (`ykhsmd --check` reports lines it will not trust).
pub fn list(text: &[u8]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for RawLine { content, .. } in split_lines(text) {
        if content.is_empty() || content.first() == Some(&b'#') {
            continue;
        }
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        let line = String::from_utf8_lossy(content);
        let mut fields = line.split(':');
        let user = fields.next().unwrap_or_default();
        if user.is_empty() {
            continue;
        }
        let ids = fields.filter(|f| !f.is_empty()).map(str::to_owned);
        let slot = *seen.entry(user.to_owned()).or_insert_with(|| {
            out.push((user.to_owned(), Vec::new()));
            out.len() - 1
        });
        out[slot].1.extend(ids);
    }
    out
}

#[cfg(test)]
mod tests;
