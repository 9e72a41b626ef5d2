//! Counter records as text: ykhsm's own export format (`ykadmin counters
//! export` / `counters merge`) and YK-VAL's `ykval-export` output
//! (`ykadmin counters import-ykval`).
//!
//! # The ykhsm counters format, version 2
//!
//! Plain UTF-8 text, one item per line. Lines end with `\n`; a `\r` before
//! the `\n` is accepted and ignored, so files that went through a Windows
//! editor still read.
//!
//! - The **first line** is exactly `# ykhsm-counters 2` (or `1`, the format
//!   of ykhsm before counters followed the public id; still read, below). A
//!   file whose first line is anything else is refused as a whole (the error
//!   names what was found); another version number is refused as
//!   unsupported.
//! - Every **later line** is either
//!   - blank (empty or only spaces/tabs): ignored;
//!   - a header again (`# ykhsm-counters 1` or `2`): the lines after it are
//!     read in that version — so the output of `cat a.txt b.txt`, even of
//!     two versions, is still one valid file;
//!   - any other comment, starting with `#` in its first column: ignored;
//!   - a **record**: exactly nine fields separated by single spaces
//!     (`' '`, no tabs, no leading or trailing space):
//!
//!     ```text
//!     public_id generation counter session_use ts_high ts_low modified reset_at aeads
//!     ```
//!
//! | field | form | range |
//! |---|---|---|
//! | `public_id` | lowercase modhex (`cbdefghijklnrtuv`) | even length, 2 to 16 characters |
//! | `generation` | decimal | 0 to 4294967295; 0 until the key's first reset, one more with each |
//! | `counter` | decimal, or `-` | 0 to 32767 (15-bit usage counter, caps-lock bit already dropped); `-` when nothing was accepted in this generation |
//! | `session_use` | decimal, or `-` | 0 to 255; `-` exactly when `counter` is |
//! | `ts_high` | decimal | 0 to 255 (timer, high 8 bits) |
//! | `ts_low` | decimal | 0 to 65535 (timer, low 16 bits) |
//! | `modified` | decimal Unix seconds | 0 to 9223372036854775807 (the counter database stores a signed 64-bit integer) |
//! | `reset_at` | decimal Unix seconds | as `modified`; when the generation began (0 for generation 0) |
//! | `aeads` | `-`, or 40-hex-digit fingerprints joined by `,` | at most 64; `-` for generation 0. The AEADs the generation was started for (SHA-1 over key handle ‖ nonce ‖ AEAD): from generation 1 on, only an OTP decoded with one of them is accepted. Written lowercase and sorted, read in either case |
//!
//! Decimal numbers are ASCII digits only: no sign, no spaces, no `0x`
//! (leading zeros are accepted). Records may come in any order, and the same
//! public id may appear more than once: `counters merge` keeps, per public
//! id, the record of the highest generation; within one generation the
//! highest by (counter, session_use, modified, ts_high, ts_low), with the
//! union of the bound AEADs. It never lowers a stored one, so duplicates
//! and order do not matter.
//!
//! A **version 1** record has seven fields,
//! `public_id fingerprint counter session_use ts_high ts_low modified`,
//! where `fingerprint` is 40 hex digits naming the AEAD the counters were
//! kept for. It is read as generation 0 of the public id (the fingerprint is
//! checked and dropped): counters follow the public id now, and a version 1
//! host never reset a key.
//!
//! [`write_export`] writes the version 2 header, one comment line naming
//! the columns (`# public_id generation counter session_use ts_high ts_low
//! modified reset_at aeads`), then one record per line, each ended by `\n`.
//! Example:
//!
//! ```text
//! # ykhsm-counters 2
//! # public_id generation counter session_use ts_high ts_low modified reset_at aeads
//! cccccccccccb 0 2 1 4 32729 1359470658 0 -
//! ccccccdbjrgf 1 - - 0 0 1767225600 1767225600 5e8a0c1f7a5c13f1a3f7e0a1b2c3d4e5f6a7b8c9
//! ```
//!
//! [`parse_export`] is all-or-nothing: it returns every record, or every bad
//! line (line number, reason) and no record, so a damaged file is never half
//! merged.
//!
//! # YK-VAL's `ykval-export`
//!
//! As Yubico's yubikey-val writes it (`ykval-export`, and
//! `doc/YubiKey_Info_Format.adoc`): no header; one key per line,
//! comma-separated, rows sorted by `yk_publicname`:
//!
//! ```text
//! active,created,modified,yk_publicname,yk_counter,yk_use,yk_low,yk_high,nonce,notes
//! 1,1359470658,1359470658,cccccccccccb,2,1,32729,4,aoincuhfuahs
//! ```
//!
//! Note `yk_low` comes **before** `yk_high`. [`parse_ykval`] reads it the way
//! `ykval-import` does (PHP `fgetcsv`), with these rules:
//!
//! - Lines end with `\n` or `\r\n`. Blank lines are skipped, and so are lines
//!   whose first field starts with `#`.
//! - A field starting with `"` is quoted: it may contain commas, `""` in it is
//!   one literal `"`, and the closing quote must be followed by a comma or
//!   the end of the line. A quoted field may not span lines (reported as an
//!   error). A `"` inside an unquoted field is an ordinary character.
//! - 9 fields are enough (the `notes` field may be missing, as in the
//!   example above); fields after the 10th are ignored (`ykval-export`
//!   writes `notes` unquoted, so a comma in the notes splits them into more
//!   fields). `nonce` and `notes` are not used.
//! - Names map as follows: `yk_counter` is ykhsm's
//!   `counter`, `yk_use` is `session_use`, `yk_low` is `ts_low`, `yk_high`
//!   is `ts_high`.
//! - `active` is `1` or `0` (also accepted: `t`/`f`, `true`/`false`, any
//!   case). Inactive keys are kept, with `active = false`, so the operator
//!   can be shown them and revoke them.
//! - A row with `yk_counter = -1` and `yk_use = -1` is a key YK-VAL never
//!   saw an OTP of: it has no counters to import and is listed in
//!   [`YkvalImport::skipped_never_used`]. Only one of the two being -1 is an
//!   error (YK-VAL always writes them together).
//! - `yk_counter` is YK-VAL's raw 16-bit field (0 to 65535); it is masked
//!   with 0x7fff (see [`YkvalKey::counter`]). `yk_use` is 0 to 255,
//!   `yk_low` 0 to 65535, `yk_high` 0 to 255.
//! - The timer fields and `modified` are informational (they only break
//!   ties in the merge): in a used row, -1 in any of them reads as 0.
//!   `created` must be an integer and is otherwise unused.
//! - The public id must be lowercase modhex of even length 2 to 16, as in
//!   the ykhsm format.
//! - **Duplicate public ids** (only possible when exports are concatenated;
//!   YK-VAL's column is unique) are merged, and reported in
//!   [`YkvalImport::duplicates`]: the counters are those of the highest row by
//!   the merge order (counter, session_use, modified, ts_high, ts_low), and
//!   the key is inactive if **any** of its rows says inactive (the inactive
//!   list is for revoking; erring towards listing a key is the safe side).
//!
//! Bad rows are reported in [`YkvalImport::errors`] with line number and
//! reason; good rows are still returned (the caller decides whether to
//! merge anything when there are errors).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;

use ykhsm_core::counters::COUNTER_MAX;
use ykhsm_core::modhex;
use ykhsm_proto::CounterRecord;
use ykhsm_proto::message::{FINGERPRINT_LEN, MAX_BOUND_AEADS};

/// The exact first line of the ykhsm counters format, version 2.
pub(crate) const EXPORT_HEADER: &str = "# ykhsm-counters 2";

/// The first line of version 1, still read.
pub(crate) const EXPORT_HEADER_V1: &str = "# ykhsm-counters 1";

/// The comment line [`write_export`] puts after the header, naming the
/// columns. Readers ignore it like any comment.
pub(crate) const EXPORT_COLUMNS: &str =
    "# public_id generation counter session_use ts_high ts_low modified reset_at aeads";

/// The prefix of the header line, before the version number.
const HEADER_PREFIX: &str = "# ykhsm-counters ";

/// The largest `modified` the counter database can store (a signed 64-bit
/// integer column).
const MODIFIED_MAX: u64 = i64::MAX as u64;

/// Names of the `ykval-export` fields, in file order.
const YKVAL_FIELDS: [&str; 10] = [
    "active",
    "created",
    "modified",
    "yk_publicname",
    "yk_counter",
    "yk_use",
    "yk_low",
    "yk_high",
    "nonce",
    "notes",
];

/// One bad line of an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl LineError {
    fn new(line: usize, reason: impl Into<String>) -> Self {
        Self {
            line,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for LineError {}

/// Splits text into (1-based line number, line without its `\n` / `\r\n`).
/// A final line terminator does not start another line.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l))
}

fn is_blank(line: &str) -> bool {
    line.chars().all(|c| c == ' ' || c == '\t')
}

/// Shows at most 60 characters of untrusted input, escaped.
fn shown(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() > MAX {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    } else {
        format!("{s:?}")
    }
}

/// Checks a public id: lowercase modhex, even length 2 to 16.
fn check_public_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("public id is empty".into());
    }
    if let Some(c) = id
        .chars()
        .find(|&c| !modhex::ALPHABET.iter().any(|&b| char::from(b) == c))
    {
        return Err(format!(
            "public id {} has {c:?}, which is not lowercase modhex (cbdefghijklnrtuv)",
            shown(id)
        ));
    }
    let n = id.len();
    if !(2..=16).contains(&n) {
        return Err(format!(
            "public id {} has {n} character{} (must be 2 to 16)",
            shown(id),
            if n == 1 { "" } else { "s" }
        ));
    }
    if !n.is_multiple_of(2) {
        return Err(format!(
            "public id {} has an odd number of characters ({n}); modhex comes in pairs",
            shown(id)
        ));
    }
    Ok(())
}

/// Parses an unsigned decimal (ASCII digits only) no larger than `max`.
fn parse_decimal(name: &str, s: &str, max: u64) -> Result<u64, String> {
    if s.is_empty() {
        return Err(format!("{name} is empty"));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{name} {} is not a decimal number (digits only)",
            shown(s)
        ));
    }
    match s.parse::<u64>() {
        Ok(v) if v <= max => Ok(v),
        _ => Err(format!("{name} {s} is out of range (0 to {max})")),
    }
}

/// Parses `s` with [`parse_decimal`] into a narrower type.
fn parse_field<T: TryFrom<u64>>(name: &str, s: &str, max: T) -> Result<T, String>
where
    u64: From<T>,
{
    let v = parse_decimal(name, s, u64::from(max))?;
    T::try_from(v).map_err(|_| format!("{name} {s} is out of range"))
}

fn parse_fingerprint(s: &str) -> Result<[u8; FINGERPRINT_LEN], String> {
    let want = FINGERPRINT_LEN * 2;
    if s.len() != want {
        return Err(format!(
            "fingerprint {} has {} characters (must be exactly {want} hex digits)",
            shown(s),
            s.chars().count()
        ));
    }
    let mut fp = [0u8; FINGERPRINT_LEN];
    hex::decode_to_slice(s, &mut fp)
        .map_err(|_| format!("fingerprint {} is not hexadecimal", shown(s)))?;
    Ok(fp)
}

/// Checks that a record can be written and read back unchanged.
fn check_record(r: &CounterRecord) -> Result<(), String> {
    check_public_id(&r.public_id)?;
    if let Some((counter, _)) = r.last
        && counter > COUNTER_MAX
    {
        return Err(format!(
            "counter {counter} is out of range (0 to {COUNTER_MAX})"
        ));
    }
    for (name, v) in [("modified", r.modified), ("reset_at", r.reset_at)] {
        if v > MODIFIED_MAX {
            return Err(format!("{name} {v} is out of range (0 to {MODIFIED_MAX})"));
        }
    }
    check_aeads(r.generation, &r.aeads)
}

fn check_aeads(generation: u32, aeads: &[[u8; FINGERPRINT_LEN]]) -> Result<(), String> {
    if aeads.len() > MAX_BOUND_AEADS {
        return Err(format!(
            "{} AEAD fingerprints (at most {MAX_BOUND_AEADS})",
            aeads.len()
        ));
    }
    if generation == 0 && !aeads.is_empty() {
        return Err("generation 0 is bound to no AEAD; aeads must be \"-\"".into());
    }
    Ok(())
}

/// Writes `records` in the ykhsm counters format, version 2 (see the
/// module documentation): the header, a comment naming the columns, then
/// one record per line, in the order given.
///
/// Fails with [`io::ErrorKind::InvalidInput`] before writing anything if a
/// record could not be read back (a public id that is not lowercase modhex
/// of even length 2 to 16, a counter above 0x7fff, a time above
/// `i64::MAX`, more than 64 AEADs or any for generation 0), so the output
/// always parses.
pub fn write_export(records: &[CounterRecord], out: &mut impl io::Write) -> io::Result<()> {
    for r in records {
        check_record(r).map_err(|reason| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot export the record of {}: {reason}",
                    shown(&r.public_id)
                ),
            )
        })?;
    }
    writeln!(out, "{EXPORT_HEADER}")?;
    writeln!(out, "{EXPORT_COLUMNS}")?;
    for r in records {
        let (counter, session_use) = r.last.map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |(c, u)| (c.to_string(), u.to_string()),
        );
        let mut aeads: Vec<String> = r.aeads.iter().map(hex::encode).collect();
        aeads.sort_unstable();
        aeads.dedup();
        let aeads = if aeads.is_empty() {
            "-".to_owned()
        } else {
            aeads.join(",")
        };
        writeln!(
            out,
            "{} {} {counter} {session_use} {} {} {} {} {aeads}",
            r.public_id, r.generation, r.ts_high, r.ts_low, r.modified, r.reset_at
        )?;
    }
    Ok(())
}

/// The version a header line names: `Ok(Some(v))` for a version this
/// reader knows, `Ok(None)` for a line that is not a header, `Err` for an
/// unknown version.
fn header_version(line: &str) -> Result<Option<u8>, String> {
    match line {
        EXPORT_HEADER => Ok(Some(2)),
        EXPORT_HEADER_V1 => Ok(Some(1)),
        _ => match line.strip_prefix(HEADER_PREFIX) {
            Some(version) => Err(format!(
                "unsupported format version {} (header {}); this ykadmin reads versions 1 and 2",
                shown(version),
                shown(line)
            )),
            None => Ok(None),
        },
    }
}

/// Checks the first line of a ykhsm counters file: its version.
fn check_header(first: Option<&str>) -> Result<u8, String> {
    let Some(first) = first else {
        return Err(format!(
            "the input is empty; expected the header {EXPORT_HEADER:?}"
        ));
    };
    if let Some(v) = header_version(first)? {
        return Ok(v);
    }
    let mut reason = format!(
        "missing header: the first line must be {EXPORT_HEADER:?}, found {}",
        if first.is_empty() {
            "an empty line".to_owned()
        } else {
            shown(first)
        }
    );
    if first.contains(',') {
        reason.push_str(
            " (comma-separated: if this is ykval-export output, use `ykadmin counters import-ykval`)",
        );
    }
    Err(reason)
}

/// Splits a record line into exactly `n` single-space-separated fields.
fn fields<'a>(line: &'a str, n: usize, names: &str) -> Result<Vec<&'a str>, String> {
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() != n {
        return Err(format!(
            "expected {n} fields separated by single spaces ({names}), found {}",
            fields.len()
        ));
    }
    if fields.iter().any(|f| f.is_empty()) {
        return Err("empty field: fields must be separated by single spaces, \
             with no leading or trailing space"
            .into());
    }
    Ok(fields)
}

/// Parses one record line of version 1: generation 0 of the public id.
fn parse_record_v1(line: &str) -> Result<CounterRecord, String> {
    let f = fields(
        line,
        7,
        "public_id fingerprint counter session_use ts_high ts_low modified",
    )?;
    check_public_id(f[0])?;
    parse_fingerprint(f[1])?;
    Ok(CounterRecord {
        public_id: f[0].to_owned(),
        generation: 0,
        last: Some((
            parse_field("counter", f[2], COUNTER_MAX)?,
            parse_field("session_use", f[3], u8::MAX)?,
        )),
        ts_high: parse_field("ts_high", f[4], u8::MAX)?,
        ts_low: parse_field("ts_low", f[5], u16::MAX)?,
        modified: parse_decimal("modified", f[6], MODIFIED_MAX)?,
        reset_at: 0,
        aeads: Vec::new(),
    })
}

/// Parses one record line of version 2.
fn parse_record_v2(line: &str) -> Result<CounterRecord, String> {
    let f = fields(
        line,
        9,
        "public_id generation counter session_use ts_high ts_low modified reset_at aeads",
    )?;
    check_public_id(f[0])?;
    let generation = parse_field("generation", f[1], u32::MAX)?;
    let last = match (f[2], f[3]) {
        ("-", "-") => None,
        ("-", _) | (_, "-") => {
            return Err(
                "counter and session_use are either both \"-\" (nothing accepted in this generation) or both numbers"
                    .into(),
            );
        }
        (c, u) => Some((
            parse_field("counter", c, COUNTER_MAX)?,
            parse_field("session_use", u, u8::MAX)?,
        )),
    };
    let aeads = if f[8] == "-" {
        Vec::new()
    } else {
        let mut v = f[8]
            .split(',')
            .map(parse_fingerprint)
            .collect::<Result<Vec<_>, _>>()?;
        v.sort_unstable();
        v.dedup();
        v
    };
    check_aeads(generation, &aeads)?;
    Ok(CounterRecord {
        public_id: f[0].to_owned(),
        generation,
        last,
        ts_high: parse_field("ts_high", f[4], u8::MAX)?,
        ts_low: parse_field("ts_low", f[5], u16::MAX)?,
        modified: parse_decimal("modified", f[6], MODIFIED_MAX)?,
        reset_at: parse_decimal("reset_at", f[7], MODIFIED_MAX)?,
        aeads,
    })
}

/// Parses text in the ykhsm counters format, version 2 or 1 (see the
/// module documentation).
///
/// All or nothing: `Ok` with every record (in file order, duplicates kept),
/// or `Err` with every bad line. A missing or unknown header is one error on
/// line 1 naming what was found, and the rest is then not read.
pub fn parse_export(text: &str) -> Result<Vec<CounterRecord>, Vec<LineError>> {
    let mut lines = numbered_lines(text);
    let mut version = match check_header(lines.next().map(|(_, l)| l)) {
        Ok(v) => v,
        Err(reason) => return Err(vec![LineError::new(1, reason)]),
    };
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in lines {
        if is_blank(line) {
            continue;
        }
        if line.starts_with('#') {
            match header_version(line) {
                Ok(Some(v)) => version = v,
                Ok(None) => {}
                Err(reason) => errors.push(LineError::new(n, reason)),
            }
            continue;
        }
        let parsed = if version == 1 {
            parse_record_v1(line)
        } else {
            parse_record_v2(line)
        };
        match parsed {
            Ok(r) => records.push(r),
            Err(reason) => errors.push(LineError::new(n, reason)),
        }
    }
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(errors)
    }
}

/// One used key of a `ykval-export`, with its counters in ykhsm's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YkvalKey {
    /// Line of the row these counters come from (for duplicates: the
    /// winning row).
    pub line: usize,
    /// `yk_publicname`: the public id (lowercase modhex).
    pub public_id: String,
    /// `yk_counter & 0x7fff`: the 15-bit usage counter.
    ///
    /// YK-VAL stores the counter exactly as YK-KSM reported it: the raw
    /// 16-bit field of the OTP (plaintext bytes 6–7, little-endian; KSM
    /// `counter=`, VAL `yk_counter`). Only its low 15 bits are a count; bit
    /// 15 (0x8000) is the "triggered by caps lock" flag (yubico-c
    /// `yubikey_counter(ctr) = ctr & 0x7FFF`). ykhsm compares and stores
    /// `ctr & 0x7fff` (`ykhsm_core::counters`), so an imported counter must
    /// be masked the same way, or a key whose last OTP at YK-VAL was
    /// caps-lock triggered would import as counter ≥ 0x8000: above every
    /// counter it can ever type (and refused by the daemon as out of range).
    pub counter: u16,
    /// `yk_use`: the 8-bit session use.
    pub session_use: u8,
    /// `yk_low`: timer, low 16 bits (-1 read as 0).
    pub ts_low: u16,
    /// `yk_high`: timer, high 8 bits (-1 read as 0).
    pub ts_high: u8,
    /// `modified`: Unix seconds of the last accepted OTP (-1 read as 0).
    pub modified: u64,
    /// `active`: false when YK-VAL refuses every OTP of this key (the
    /// operator should revoke it here too).
    pub active: bool,
}

impl YkvalKey {
    /// The merge order of the daemon: (counter, session_use, modified,
    /// ts_high, ts_low).
    fn rank(&self) -> (u16, u8, u64, u8, u16) {
        (
            self.counter,
            self.session_use,
            self.modified,
            self.ts_high,
            self.ts_low,
        )
    }

    /// The counter record to merge: generation 0 of the public id (YK-VAL
    /// never reset a key; a key reset here since is in a later generation
    /// and left alone by the merge).
    pub fn to_record(&self) -> CounterRecord {
        CounterRecord {
            public_id: self.public_id.clone(),
            generation: 0,
            last: Some((self.counter, self.session_use)),
            ts_high: self.ts_high,
            ts_low: self.ts_low,
            modified: self.modified,
            reset_at: 0,
            aeads: Vec::new(),
        }
    }
}

/// What [`parse_ykval`] read from a `ykval-export`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YkvalImport {
    /// Keys with counters, one per public id (duplicates merged), in order
    /// of first appearance; inactive ones included with `active = false`.
    pub keys: Vec<YkvalKey>,
    /// Rows of keys YK-VAL never saw an OTP of (`yk_counter` and `yk_use`
    /// -1): (line, public id). Nothing to import for them.
    pub skipped_never_used: Vec<(usize, String)>,
    /// Those of `skipped_never_used` that were also marked inactive:
    /// (line, public id). They belong in the list of keys to revoke too.
    pub inactive_never_used: Vec<(usize, String)>,
    /// Rows whose public id already appeared on an earlier row: (line,
    /// public id). Merged as the module documentation says.
    pub duplicates: Vec<(usize, String)>,
    /// Rows that could not be read, with line number and reason.
    pub errors: Vec<LineError>,
}

impl YkvalImport {
    /// Every public id YK-VAL marked inactive (used or never used), sorted,
    /// each once: the keys the operator should revoke.
    pub fn inactive_public_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .keys
            .iter()
            .filter(|k| !k.active)
            .map(|k| k.public_id.as_str())
            .chain(self.inactive_never_used.iter().map(|(_, id)| id.as_str()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Splits one line into fields the way `fgetcsv` does for single-line
/// records (see the module documentation).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        let number = fields.len() + 1;
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(format!(
                            "field {number} opens a quote that is not closed on this line \
                             (quoted fields may not span lines)"
                        ));
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
            match chars.next() {
                None => return Ok(fields),
                Some(',') => {}
                Some(c) => {
                    return Err(format!(
                        "field {number}: {c:?} after the closing quote (expected a comma or the end of the line)"
                    ));
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// Parses a signed decimal: an optional `-`, then ASCII digits.
fn parse_int(name: &str, s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name} {} is not an integer", shown(s)));
    }
    s.parse::<i64>()
        .map_err(|_| format!("{name} {} is out of range", shown(s)))
}

/// Parses a YK-VAL counter column: `None` for -1 ("never"), else 0..=max.
fn parse_ykval_counter(name: &str, s: &str, max: u16) -> Result<Option<u16>, String> {
    match parse_int(name, s)? {
        -1 => Ok(None),
        v => u16::try_from(v)
            .ok()
            .filter(|v| *v <= max)
            .map(Some)
            .ok_or_else(|| format!("{name} {v} is out of range (-1 or 0 to {max})")),
    }
}

fn parse_active(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(format!("active {} is not 1 or 0", shown(s))),
    }
}

/// A parsed `ykval-export` row.
enum YkvalRow {
    Used(YkvalKey),
    NeverUsed { public_id: String, active: bool },
}

fn parse_ykval_row(line: usize, f: &[String]) -> Result<YkvalRow, String> {
    if f.len() < 9 {
        return Err(format!(
            "expected 9 or 10 comma-separated fields ({}), found {}",
            YKVAL_FIELDS.join(","),
            f.len()
        ));
    }
    let active = parse_active(&f[0])?;
    parse_int("created", &f[1])?;
    let modified = match parse_int("modified", &f[2])? {
        -1 => 0,
        v => u64::try_from(v)
            .map_err(|_| format!("modified {v} is out of range (-1 or 0 and above)"))?,
    };
    let public_id = f[3].clone();
    check_public_id(&public_id)?;
    let counter = parse_ykval_counter("yk_counter", &f[4], u16::MAX)?;
    let session_use = parse_ykval_counter("yk_use", &f[5], u8::MAX.into())?;
    let ts_low = parse_ykval_counter("yk_low", &f[6], u16::MAX)?;
    let ts_high = parse_ykval_counter("yk_high", &f[7], u8::MAX.into())?;
    match (counter, session_use) {
        (None, None) => Ok(YkvalRow::NeverUsed { public_id, active }),
        (Some(c), None) => Err(format!(
            "yk_counter is {c} but yk_use is -1 (YK-VAL sets both or neither)"
        )),
        (None, Some(u)) => Err(format!(
            "yk_use is {u} but yk_counter is -1 (YK-VAL sets both or neither)"
        )),
        (Some(raw), Some(session_use)) => Ok(YkvalRow::Used(YkvalKey {
            line,
            public_id,
            // Drop the caps-lock bit (bit 15): see `YkvalKey::counter`.
            counter: raw & COUNTER_MAX,
            session_use: u8::try_from(session_use).map_err(|_| "yk_use out of range")?,
            ts_low: ts_low.unwrap_or(0),
            ts_high: u8::try_from(ts_high.unwrap_or(0)).map_err(|_| "yk_high out of range")?,
            modified,
            active,
        })),
    }
}

/// Parses the output of YK-VAL's `ykval-export` (see the module
/// documentation for the exact rules). Never fails as a whole: bad rows go
/// to [`YkvalImport::errors`], the good ones are still returned.
pub fn parse_ykval(text: &str) -> YkvalImport {
    let mut out = YkvalImport::default();
    // Public ids seen on any row; public id → index in `out.keys`.
    let mut seen: HashSet<String> = HashSet::new();
    let mut key_index: HashMap<String, usize> = HashMap::new();
    for (n, line) in numbered_lines(text) {
        if is_blank(line) || line.starts_with('#') {
            continue;
        }
        let fields = match split_csv(line) {
            Ok(f) => f,
            Err(reason) => {
                out.errors.push(LineError::new(n, reason));
                continue;
            }
        };
        if fields.first().is_some_and(|f| f.starts_with('#')) {
            continue;
        }
        let row = match parse_ykval_row(n, &fields) {
            Ok(r) => r,
            Err(reason) => {
                out.errors.push(LineError::new(n, reason));
                continue;
            }
        };
        let public_id = match &row {
            YkvalRow::Used(k) => &k.public_id,
            YkvalRow::NeverUsed { public_id, .. } => public_id,
        };
        if !seen.insert(public_id.clone()) {
            out.duplicates.push((n, public_id.clone()));
        }
        match row {
            YkvalRow::NeverUsed { public_id, active } => {
                if !active {
                    out.inactive_never_used.push((n, public_id.clone()));
                }
                out.skipped_never_used.push((n, public_id));
            }
            YkvalRow::Used(key) => match key_index.get(&key.public_id) {
                Some(&i) => {
                    let old = &mut out.keys[i];
                    let active = old.active && key.active;
                    if key.rank() > old.rank() {
                        *old = key;
                    }
                    old.active = active;
                }
                None => {
                    key_index.insert(key.public_id.clone(), out.keys.len());
                    out.keys.push(key);
                }
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FP_HEX: &str = "5e8a0c1f7a5c13f1a3f7e0a1b2c3d4e5f6a7b8c9";

    fn fp() -> [u8; 20] {
        let mut f = [0; 20];
        hex::decode_to_slice(FP_HEX, &mut f).unwrap();
        f
    }

    /// A generation-0 record, as a version 1 line reads.
    fn rec(id: &str, counter: u16, session_use: u8) -> CounterRecord {
        CounterRecord {
            public_id: id.into(),
            generation: 0,
            last: Some((counter, session_use)),
            ts_high: 4,
            ts_low: 32729,
            modified: 1_359_470_658,
            reset_at: 0,
            aeads: Vec::new(),
        }
    }

    /// Version 1's header: most line tests below are of version 1 lines,
    /// still read.
    const V1: &str = EXPORT_HEADER_V1;

    fn export_text(records: &[CounterRecord]) -> String {
        let mut out = Vec::new();
        write_export(records, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Parses a one-record body and returns its single error.
    fn record_error(body: &str) -> LineError {
        let errs = parse_export(&format!("{V1}\n{body}\n")).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.into_iter().next().unwrap()
    }

    fn line_for(fields: [&str; 7]) -> String {
        fields.join(" ")
    }

    // ---- ykhsm format: writing ----

    #[test]
    fn writes_header_columns_and_records() {
        let text = export_text(&[rec("cccccccccccb", 2, 1)]);
        assert_eq!(
            text,
            format!(
                "{EXPORT_HEADER}\n{EXPORT_COLUMNS}\ncccccccccccb 0 2 1 4 32729 1359470658 0 -\n"
            )
        );
    }

    #[test]
    fn writes_header_for_no_records() {
        let text = export_text(&[]);
        assert_eq!(text, format!("{EXPORT_HEADER}\n{EXPORT_COLUMNS}\n"));
        assert_eq!(parse_export(&text).unwrap(), vec![]);
    }

    #[test]
    fn refuses_to_write_what_would_not_read_back() {
        for bad in [
            rec("has space", 1, 1),
            rec("CCCC", 1, 1),
            rec("ccc", 1, 1),
            rec("", 1, 1),
            rec("cccc", 0x8000, 1),
            CounterRecord {
                modified: u64::MAX,
                ..rec("cccc", 1, 1)
            },
            CounterRecord {
                reset_at: u64::MAX,
                ..rec("cccc", 1, 1)
            },
            CounterRecord {
                aeads: vec![fp()],
                ..rec("cccc", 1, 1)
            },
            CounterRecord {
                generation: 1,
                aeads: vec![fp(); MAX_BOUND_AEADS + 1],
                ..rec("cccc", 1, 1)
            },
        ] {
            let mut out = Vec::new();
            let err = write_export(&[rec("cccc", 1, 1), bad], &mut out).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(out.is_empty(), "nothing is written before the check");
        }
    }

    // ---- ykhsm format: header ----

    #[test]
    fn empty_input_is_a_missing_header() {
        for text in ["", "\n"] {
            let errs = parse_export(text).unwrap_err();
            assert_eq!(errs.len(), 1);
            assert_eq!(errs[0].line, 1);
            assert!(errs[0].reason.contains(EXPORT_HEADER), "{}", errs[0]);
        }
    }

    #[test]
    fn missing_header_names_what_was_found() {
        let text = format!("cccccccccccb {FP_HEX} 2 1 4 32729 1359470658\n");
        let errs = parse_export(&text).unwrap_err();
        assert_eq!(errs.len(), 1, "only the header is reported");
        assert_eq!(errs[0].line, 1);
        assert!(errs[0].reason.starts_with("missing header"), "{}", errs[0]);
        assert!(errs[0].reason.contains("cccccccccccb"), "{}", errs[0]);
    }

    #[test]
    fn header_must_be_the_first_line() {
        let text = format!("\n{EXPORT_HEADER}\n");
        let errs = parse_export(&text).unwrap_err();
        assert!(errs[0].reason.contains("an empty line"), "{}", errs[0]);
        let text = format!("# comment\n{EXPORT_HEADER}\n");
        assert!(
            parse_export(&text).unwrap_err()[0]
                .reason
                .contains("# comment")
        );
    }

    #[test]
    fn header_must_match_exactly() {
        for first in [
            "# ykhsm-counters 1 ",
            "#ykhsm-counters 1",
            "# YKHSM-COUNTERS 1",
        ] {
            let errs = parse_export(&format!("{first}\n")).unwrap_err();
            assert!(errs[0].reason.contains("header"), "{}", errs[0]);
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let errs = parse_export("# ykhsm-counters 3\ncccc x\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].to_string(),
            "line 1: unsupported format version \"3\" (header \"# ykhsm-counters 3\"); \
             this ykadmin reads versions 1 and 2"
        );
        let later = parse_export(&format!("{EXPORT_HEADER}\n# ykhsm-counters 9\n")).unwrap_err();
        assert_eq!(later[0].line, 2, "{later:?}");
    }

    #[test]
    fn ykval_text_gets_a_hint() {
        let errs = parse_export("1,1359470658,1359470658,cccccccccccb,2,1,32729,4,aoincuhfuahs\n")
            .unwrap_err();
        assert!(errs[0].reason.contains("import-ykval"), "{}", errs[0]);
    }

    // ---- ykhsm format: lines ----

    #[test]
    fn comments_blank_lines_and_crlf_are_accepted() {
        let text = format!(
            "{V1}\r\n# a comment\r\n\r\n   \r\n\t\r\ncccccccccccb {FP_HEX} 2 1 4 32729 1359470658\r\n#\r\n"
        );
        assert_eq!(
            parse_export(&text).unwrap(),
            vec![rec("cccccccccccb", 2, 1)]
        );
    }

    #[test]
    fn missing_final_newline_is_accepted() {
        let text = format!("{V1}\ncccccccccccb {FP_HEX} 2 1 4 32729 1359470658");
        assert_eq!(
            parse_export(&text).unwrap(),
            vec![rec("cccccccccccb", 2, 1)]
        );
    }

    #[test]
    fn concatenated_exports_read_as_one() {
        let a = export_text(&[rec("cccccccccccb", 2, 1)]);
        let b = export_text(&[rec("cccccccccccb", 3, 0), rec("cccccccccccd", 1, 1)]);
        let all = parse_export(&(a + &b)).unwrap();
        assert_eq!(all.len(), 3, "duplicates are kept for the merge");
    }

    #[test]
    fn fingerprint_is_read_in_either_case() {
        let body = line_for(["cccc", &FP_HEX.to_uppercase(), "1", "2", "3", "4", "5"]);
        let r = parse_export(&format!("{V1}\n{body}\n")).unwrap();
        assert_eq!(
            r,
            vec![CounterRecord {
                ts_high: 3,
                ts_low: 4,
                modified: 5,
                ..rec("cccc", 1, 2)
            }]
        );
        let v2 = format!(
            "{EXPORT_HEADER}\ncccc 1 1 2 3 4 5 6 {}\n",
            FP_HEX.to_uppercase()
        );
        assert_eq!(parse_export(&v2).unwrap()[0].aeads, vec![fp()]);
    }

    // ---- ykhsm format: version 2 ----

    #[test]
    fn version_2_records_read_back() {
        let other = [0xab; 20];
        let text = format!(
            "{EXPORT_HEADER}\n\
             cccccccccccb 0 2 1 4 32729 1359470658 0 -\n\
             ccccccdbjrgf 3 - - 0 0 1767225600 1767225600 {},{FP_HEX},{FP_HEX}\n",
            hex::encode(other)
        );
        let r = parse_export(&text).unwrap();
        assert_eq!(r[0], rec("cccccccccccb", 2, 1));
        assert_eq!(
            r[1],
            CounterRecord {
                public_id: "ccccccdbjrgf".into(),
                generation: 3,
                last: None,
                ts_high: 0,
                ts_low: 0,
                modified: 1_767_225_600,
                reset_at: 1_767_225_600,
                aeads: vec![fp(), other],
            },
            "sorted, duplicates dropped"
        );
        assert_eq!(parse_export(&export_text(&r)).unwrap(), r);
    }

    #[test]
    fn version_2_errors() {
        let v2_error = |body: &str| {
            let errs = parse_export(&format!("{EXPORT_HEADER}\n{body}\n")).unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:?}");
            errs[0].reason.clone()
        };
        assert!(v2_error("cccc 0 - 1 0 0 0 0 -").contains("both"));
        assert!(v2_error("cccc 0 1 - 0 0 0 0 -").contains("both"));
        assert!(v2_error(&format!("cccc 0 1 1 0 0 0 0 {FP_HEX}")).contains("generation 0"));
        assert!(v2_error("cccc 4294967296 1 1 0 0 0 0 -").contains("generation"));
        assert!(v2_error("cccc 1 1 1 0 0 0 0 abc").contains("fingerprint"));
        assert!(v2_error(&format!("cccc 1 1 1 0 0 0 0 {FP_HEX},")).contains("fingerprint"));
        let many = (0..=MAX_BOUND_AEADS)
            .map(|i| format!("{i:040x}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(v2_error(&format!("cccc 1 1 1 0 0 0 0 {many}")).contains("at most 64"));
        assert!(v2_error(&format!("cccc {FP_HEX} 1 2 3 4 5")).contains("expected 9 fields"));
    }

    #[test]
    fn a_later_header_switches_the_version() {
        let v1 = format!("{V1}\ncccccccccccb {FP_HEX} 2 1 4 32729 1359470658\n");
        let v2 = export_text(&[rec("cccccccccccd", 1, 1)]);
        for text in [format!("{v1}{v2}"), format!("{v2}{v1}")] {
            let r = parse_export(&text).unwrap();
            assert_eq!(r.len(), 2, "{text}");
        }
    }

    #[test]
    fn extremes_are_accepted() {
        let body = line_for([
            "cbdefghijklnrtuv",
            FP_HEX,
            "32767",
            "255",
            "255",
            "65535",
            "9223372036854775807",
        ]);
        let r = parse_export(&format!("{V1}\n{body}\n")).unwrap();
        assert_eq!(r[0].last, Some((0x7fff, 255)));
        assert_eq!(r[0].modified, i64::MAX as u64);
        let body = line_for(["cc", FP_HEX, "0", "0", "0", "0", "0"]);
        assert!(parse_export(&format!("{V1}\n{body}\n")).is_ok());
    }

    #[test]
    fn field_count_and_separators() {
        let e = record_error(&format!("cccc {FP_HEX} 1 2 3 4"));
        assert_eq!(e.line, 2);
        assert!(e.reason.contains("expected 7 fields"), "{e}");
        assert!(e.reason.contains("found 6"), "{e}");
        let e = record_error(&format!("cccc {FP_HEX} 1 2 3 4 5 6"));
        assert!(e.reason.contains("found 8"), "{e}");
        let e = record_error(&format!("cccc  {FP_HEX} 1 2 3 4"));
        assert!(e.reason.contains("single spaces"), "{e}");
        let e = record_error(&format!("cccc {FP_HEX} 1 2 3 4 5 "));
        assert!(e.reason.contains("single spaces"), "{e}");
        let e = record_error(&format!(" cccc {FP_HEX} 1 2 3 4 5"));
        assert!(e.reason.contains("single spaces"), "{e}");
        let e = record_error(&format!("cccc\t{FP_HEX} 1 2 3 4 5"));
        assert!(e.reason.contains("found 6"), "{e}");
    }

    #[test]
    fn public_id_errors() {
        let cases = [
            ("CCCC", "not lowercase modhex"),
            ("cccA", "not lowercase modhex"),
            ("ccca", "not lowercase modhex"),
            ("cccé", "not lowercase modhex"),
            ("c", "1 character (must be 2 to 16)"),
            ("ccccc", "odd number"),
            ("cccccccccccccccccc", "18 characters (must be 2 to 16)"),
        ];
        for (id, want) in cases {
            let e = record_error(&line_for([id, FP_HEX, "1", "2", "3", "4", "5"]));
            assert!(e.reason.contains(want), "{id}: {e}");
            assert!(e.reason.contains("public id"), "{id}: {e}");
        }
    }

    #[test]
    fn fingerprint_errors() {
        let short = &FP_HEX[..38];
        let e = record_error(&line_for(["cccc", short, "1", "2", "3", "4", "5"]));
        assert!(
            e.reason.contains("38 characters (must be exactly 40"),
            "{e}"
        );
        let long = format!("{FP_HEX}00");
        let e = record_error(&line_for(["cccc", &long, "1", "2", "3", "4", "5"]));
        assert!(e.reason.contains("42 characters"), "{e}");
        let bad = format!("{}zz", &FP_HEX[..38]);
        let e = record_error(&line_for(["cccc", &bad, "1", "2", "3", "4", "5"]));
        assert!(e.reason.contains("not hexadecimal"), "{e}");
        let multibyte = format!("{}é", &FP_HEX[..38]);
        let e = record_error(&line_for(["cccc", &multibyte, "1", "2", "3", "4", "5"]));
        assert!(e.reason.contains("fingerprint"), "{e}");
    }

    #[test]
    fn number_range_errors() {
        let cases: [([&str; 5], &str); 9] = [
            (
                ["32768", "0", "0", "0", "0"],
                "counter 32768 is out of range (0 to 32767)",
            ),
            (
                ["0", "256", "0", "0", "0"],
                "session_use 256 is out of range (0 to 255)",
            ),
            (
                ["0", "0", "256", "0", "0"],
                "ts_high 256 is out of range (0 to 255)",
            ),
            (
                ["0", "0", "0", "65536", "0"],
                "ts_low 65536 is out of range (0 to 65535)",
            ),
            (
                ["0", "0", "0", "0", "9223372036854775808"],
                "modified 9223372036854775808 is out of range",
            ),
            (
                ["0", "0", "0", "0", "99999999999999999999999"],
                "modified 99999999999999999999999 is out of range",
            ),
            (
                ["-1", "0", "0", "0", "0"],
                "counter \"-1\" is not a decimal number",
            ),
            (
                ["0", "+1", "0", "0", "0"],
                "session_use \"+1\" is not a decimal number",
            ),
            (
                ["0", "0", "0x1", "0", "0"],
                "ts_high \"0x1\" is not a decimal number",
            ),
        ];
        for ([c, u, h, l, m], want) in cases {
            let e = record_error(&line_for(["cccc", FP_HEX, c, u, h, l, m]));
            assert!(e.reason.contains(want), "want {want:?}, got {e}");
        }
    }

    #[test]
    fn every_bad_line_is_reported_and_nothing_returned() {
        let text = format!(
            "{V1}\ncccc {FP_HEX} 1 2 3 4 5\nbad\n# ok\ncccc {FP_HEX} 99999 2 3 4 5\ncccc {FP_HEX} 1 2 3 4 5\n"
        );
        let errs = parse_export(&text).unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 5]);
        assert!(errs[1].to_string().starts_with("line 5: counter 99999"));
    }

    #[test]
    fn line_error_display() {
        assert_eq!(
            LineError::new(7, "bad thing").to_string(),
            "line 7: bad thing"
        );
    }

    fn arb_record() -> impl Strategy<Value = CounterRecord> {
        (
            ("([cbdefghijklnrtuv]{2}){1,8}", any::<u32>()),
            proptest::option::of((0u16..=0x7fff, any::<u8>())),
            (any::<u8>(), any::<u16>()),
            (0u64..=(i64::MAX as u64), 0u64..=(i64::MAX as u64)),
            proptest::collection::btree_set(any::<[u8; 20]>(), 0..4),
        )
            .prop_map(
                |(
                    (public_id, generation),
                    last,
                    (ts_high, ts_low),
                    (modified, reset_at),
                    aeads,
                )| {
                    CounterRecord {
                        public_id,
                        generation,
                        last,
                        ts_high,
                        ts_low,
                        modified,
                        reset_at,
                        // Sorted and unique, as written; none in generation 0.
                        aeads: if generation == 0 {
                            Vec::new()
                        } else {
                            aeads.into_iter().collect()
                        },
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(arb_record(), 0..20)) {
            let text = export_text(&records);
            prop_assert_eq!(parse_export(&text).unwrap(), records);
        }

        #[test]
        fn parsers_never_panic(text in "\\PC*") {
            let _ = parse_export(&text);
            let _ = parse_export(&format!("{EXPORT_HEADER}\n{text}"));
            let _ = parse_ykval(&text);
        }
    }

    // ---- ykval-export ----

    fn one_key(text: &str) -> YkvalKey {
        let imp = parse_ykval(text);
        assert!(imp.errors.is_empty(), "{:?}", imp.errors);
        assert_eq!(imp.keys.len(), 1, "{imp:?}");
        imp.keys.into_iter().next().unwrap()
    }

    fn ykval_error(line: &str) -> LineError {
        let imp = parse_ykval(line);
        assert!(imp.keys.is_empty(), "{imp:?}");
        assert_eq!(imp.errors.len(), 1, "{imp:?}");
        imp.errors.into_iter().next().unwrap()
    }

    #[test]
    fn example_line_of_ksm_formats_6() {
        // 9 fields: `notes` is missing, as in VAL doc/YubiKey_Info_Format.adoc.
        let k = one_key("1,1359470658,1359470658,cccccccccccb,2,1,32729,4,aoincuhfuahs\n");
        assert_eq!(
            k,
            YkvalKey {
                line: 1,
                public_id: "cccccccccccb".into(),
                counter: 2,
                session_use: 1,
                ts_low: 32729,
                ts_high: 4,
                modified: 1_359_470_658,
                active: true,
            }
        );
        assert_eq!(k.to_record(), rec("cccccccccccb", 2, 1));
    }

    #[test]
    fn ten_fields_and_more() {
        let k = one_key("1,1,2,cccc,3,4,5,6,nonce,some notes\n");
        assert_eq!(
            (k.counter, k.session_use, k.ts_low, k.ts_high),
            (3, 4, 5, 6)
        );
        assert_eq!(k.modified, 2);
        // ykval-export writes notes unquoted: a comma in them adds fields.
        let k = one_key("1,1,2,cccc,3,4,5,6,nonce,notes, with, commas\n");
        assert_eq!(k.counter, 3);
    }

    #[test]
    fn too_few_fields() {
        let e = ykval_error("1,1,2,cccc,3,4,5,6\n");
        assert!(e.reason.contains("expected 9 or 10"), "{e}");
        assert!(e.reason.contains("found 8"), "{e}");
    }

    #[test]
    fn counter_top_bit_is_masked() {
        // Bit 15 is the caps-lock flag, not part of the count.
        let k = one_key("1,1,2,cccc,32773,4,5,6,n\n");
        assert_eq!(k.counter, 5);
        let k = one_key("1,1,2,cccc,65535,4,5,6,n\n");
        assert_eq!(k.counter, 0x7fff);
        let k = one_key("1,1,2,cccc,32767,4,5,6,n\n");
        assert_eq!(k.counter, 0x7fff);
        let k = one_key("1,1,2,cccc,32768,0,5,6,n\n");
        assert_eq!(k.counter, 0);
    }

    #[test]
    fn never_used_rows_are_skipped() {
        let imp = parse_ykval(
            "1,1359470658,-1,cccccccccccb,-1,-1,-1,-1,0000000000000000,\n\
             0,1359470658,-1,cccccccccccd,-1,-1,-1,-1,0000000000000000,\n\
             1,1,2,cccccccccccf,3,4,5,6,n\n",
        );
        assert!(imp.errors.is_empty(), "{:?}", imp.errors);
        assert_eq!(
            imp.skipped_never_used,
            vec![(1, "cccccccccccb".into()), (2, "cccccccccccd".into())]
        );
        assert_eq!(imp.inactive_never_used, vec![(2, "cccccccccccd".into())]);
        assert_eq!(imp.keys.len(), 1);
        assert_eq!(imp.keys[0].public_id, "cccccccccccf");
        assert_eq!(imp.inactive_public_ids(), vec!["cccccccccccd"]);
    }

    #[test]
    fn half_never_used_is_an_error() {
        let e = ykval_error("1,1,2,cccc,-1,4,5,6,n\n");
        assert!(e.reason.contains("yk_use is 4 but yk_counter is -1"), "{e}");
        let e = ykval_error("1,1,2,cccc,3,-1,5,6,n\n");
        assert!(e.reason.contains("yk_counter is 3 but yk_use is -1"), "{e}");
    }

    #[test]
    fn minus_one_informational_fields_read_as_zero() {
        let k = one_key("1,1,-1,cccc,3,4,-1,-1,n\n");
        assert_eq!((k.modified, k.ts_low, k.ts_high), (0, 0, 0));
    }

    #[test]
    fn inactive_rows_are_kept() {
        let imp =
            parse_ykval("0,1,2,cccc,3,4,5,6,n\nf,1,2,cccd,3,4,5,6,n\nTRUE,1,2,cccf,3,4,5,6,n\n");
        assert!(imp.errors.is_empty(), "{:?}", imp.errors);
        let active: Vec<bool> = imp.keys.iter().map(|k| k.active).collect();
        assert_eq!(active, vec![false, false, true]);
        assert_eq!(imp.inactive_public_ids(), vec!["cccc", "cccd"]);
    }

    #[test]
    fn field_errors() {
        let cases = [
            ("2,1,2,cccc,3,4,5,6,n", "active \"2\" is not 1 or 0"),
            ("yes,1,2,cccc,3,4,5,6,n", "active \"yes\" is not 1 or 0"),
            (",1,2,cccc,3,4,5,6,n", "active \"\" is not 1 or 0"),
            ("1,x,2,cccc,3,4,5,6,n", "created \"x\" is not an integer"),
            ("1,1,,cccc,3,4,5,6,n", "modified \"\" is not an integer"),
            ("1,1,-2,cccc,3,4,5,6,n", "modified -2 is out of range"),
            ("1,1,2, cccc,3,4,5,6,n", "not lowercase modhex"),
            ("1,1,2,CCCC,3,4,5,6,n", "not lowercase modhex"),
            ("1,1,2,,3,4,5,6,n", "public id is empty"),
            ("1,1,2,ccc,3,4,5,6,n", "odd number"),
            ("1,1,2,cccccccccccccccccc,3,4,5,6,n", "must be 2 to 16"),
            (
                "1,1,2,cccc,65536,4,5,6,n",
                "yk_counter 65536 is out of range (-1 or 0 to 65535)",
            ),
            ("1,1,2,cccc,-2,4,5,6,n", "yk_counter -2 is out of range"),
            (
                "1,1,2,cccc,3.0,4,5,6,n",
                "yk_counter \"3.0\" is not an integer",
            ),
            (
                "1,1,2,cccc,3,256,5,6,n",
                "yk_use 256 is out of range (-1 or 0 to 255)",
            ),
            (
                "1,1,2,cccc,3,4,65536,6,n",
                "yk_low 65536 is out of range (-1 or 0 to 65535)",
            ),
            (
                "1,1,2,cccc,3,4,5,256,n",
                "yk_high 256 is out of range (-1 or 0 to 255)",
            ),
            ("1,1,2,cccc,3,4,5, 6,n", "yk_high \" 6\" is not an integer"),
            (
                "1,1,2,cccc,99999999999999999999,4,5,6,n",
                "yk_counter \"99999999999999999999\" is out of range",
            ),
        ];
        for (line, want) in cases {
            let e = ykval_error(line);
            assert_eq!(e.line, 1);
            assert!(e.reason.contains(want), "{line}: want {want:?}, got {e}");
        }
    }

    #[test]
    fn crlf_blank_and_comment_lines() {
        let text = "# ykval-export of host a\r\n\r\n  \r\n1,1,2,cccc,3,4,5,6,n\r\n\
                    \"#quoted comment\",x\r\n#,1,2,cccd,3,4,5,6,n\r\n1,1,2,cccd,7,8,9,10,n,notes\r\n";
        let imp = parse_ykval(text);
        assert!(imp.errors.is_empty(), "{:?}", imp.errors);
        let got: Vec<(usize, &str, u16)> = imp
            .keys
            .iter()
            .map(|k| (k.line, k.public_id.as_str(), k.counter))
            .collect();
        assert_eq!(got, vec![(4, "cccc", 3), (7, "cccd", 7)]);
        // No stray '\r' in the last field of a CRLF line.
        assert_eq!(imp.keys[1].ts_high, 10);
        // A quoted last field: a '\r' left over would follow the closing quote.
        let k = one_key("1,1,2,cccc,3,4,5,6,\"n\"\r\n");
        assert_eq!(k.ts_high, 6);
    }

    #[test]
    fn quoting() {
        // Quoted numbers, a comma and a doubled quote inside a quoted field.
        let k = one_key(
            "\"1\",\"1\",\"2\",\"cccc\",\"3\",\"4\",\"5\",\"6\",\"a,b\",\"say \"\"hi\"\", ok\"\n",
        );
        assert_eq!(
            (k.counter, k.session_use, k.ts_low, k.ts_high),
            (3, 4, 5, 6)
        );
        // A comma in a quoted field does not count as a separator.
        let k = one_key("1,1,2,cccc,3,4,5,6,\"n,o,n,c,e\"\n");
        assert_eq!(k.counter, 3);
        // An empty quoted field.
        let imp = parse_ykval("1,1,2,cccc,3,4,5,6,\"\"\n");
        assert_eq!(imp.keys.len(), 1, "{imp:?}");
        // A quote inside an unquoted field is an ordinary character.
        let k = one_key("1,1,2,cccc,3,4,5,6,no\"nce\n");
        assert_eq!(k.counter, 3);
        assert_eq!(
            split_csv("a,\"b,\"\"c\"\"\",d").unwrap(),
            vec!["a", "b,\"c\"", "d"]
        );
        assert_eq!(split_csv("").unwrap(), vec![""]);
        assert_eq!(split_csv("a,").unwrap(), vec!["a", ""]);
    }

    #[test]
    fn quoting_errors() {
        let e = ykval_error("1,1,2,cccc,3,4,5,6,\"open\n");
        assert!(e.reason.contains("field 9 opens a quote"), "{e}");
        let e = ykval_error("1,1,2,\"cccc\"x,3,4,5,6,n\n");
        assert!(
            e.reason.contains("field 4: 'x' after the closing quote"),
            "{e}"
        );
        // The unclosed quote does not swallow the next line.
        let imp = parse_ykval("1,1,2,cccc,3,4,5,6,\"open\n1,1,2,cccd,3,4,5,6,close\"\n");
        assert_eq!(imp.errors.len(), 1);
        assert_eq!(imp.keys.len(), 1);
        assert_eq!(imp.keys[0].public_id, "cccd");
    }

    #[test]
    fn errors_do_not_stop_the_rest() {
        let imp = parse_ykval("1,1,2,cccc,3,4,5,6,n\ngarbage\n1,1,2,cccd,3,4,5,6,n\n1,1,2,cccf\n");
        assert_eq!(imp.keys.len(), 2);
        let lines: Vec<usize> = imp.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 4]);
        assert!(
            imp.errors[0]
                .to_string()
                .starts_with("line 2: expected 9 or 10")
        );
    }

    #[test]
    fn duplicates_keep_the_highest_and_are_reported() {
        let imp = parse_ykval(
            "1,1,100,cccc,3,4,5,6,n\n\
             1,1,50,cccc,3,5,0,0,n\n\
             1,1,999,cccc,3,4,9,9,n\n\
             0,1,1,cccc,2,200,0,0,n\n",
        );
        assert!(imp.errors.is_empty(), "{:?}", imp.errors);
        assert_eq!(imp.keys.len(), 1);
        let k = &imp.keys[0];
        // (3, 5) beats (3, 4) whatever `modified` says; (2, 200) is lower.
        assert_eq!(
            (k.line, k.counter, k.session_use, k.modified),
            (2, 3, 5, 50)
        );
        // One of the rows says inactive: the key is listed as inactive.
        assert!(!k.active);
        assert_eq!(
            imp.duplicates,
            vec![(2, "cccc".into()), (3, "cccc".into()), (4, "cccc".into())]
        );
        // Ties in counters: modified, then ts_high, then ts_low.
        let imp = parse_ykval("1,1,100,cccc,3,4,5,6,n\n1,1,100,cccc,3,4,0,7,n\n");
        assert_eq!(imp.keys[0].line, 2);
        let imp = parse_ykval("1,1,100,cccc,3,4,5,6,n\n1,1,99,cccc,3,4,65535,255,n\n");
        assert_eq!(imp.keys[0].line, 1);
        // A never-used row and a used row of the same key.
        let imp = parse_ykval("1,1,-1,cccc,-1,-1,-1,-1,n\n1,1,2,cccc,3,4,5,6,n\n");
        assert_eq!(imp.keys.len(), 1);
        assert_eq!(imp.skipped_never_used, vec![(1, "cccc".into())]);
        assert_eq!(imp.duplicates, vec![(2, "cccc".into())]);
    }

    #[test]
    fn empty_input_is_empty() {
        assert_eq!(parse_ykval(""), YkvalImport::default());
        assert_eq!(parse_ykval("\n\r\n"), YkvalImport::default());
    }
}
