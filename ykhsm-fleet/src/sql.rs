//! The schema and the statements, as SQL text.
//!
//! # Schema (version 1)
//!
//! `ykhsm_schema(version)`: one row, the version of the schema below
//! ([`SCHEMA_VERSION`]). `ykadmin fleet init` creates it, or migrates an
//! older one; every connection that raises or pulls checks it first, and a
//! newer version than this code knows is refused.
//!
//! `ykhsm_counters`: one row per key (public id), the same state as the
//! local SQLite database keeps (`ykhsmd/src/db.rs`) and as a
//! [`ykhsm_proto::CounterRecord`] carries:
//!
//! | column | type | what |
//! |---|---|---|
//! | `public_id` | text, primary key | the key's public id (modhex) |
//! | `generation` | bigint, 0..=2³²−1 | raised by each explicit reset |
//! | `counter` | integer, −1..=32767 | the last accepted 15-bit counter; −1: nothing seen in this generation |
//! | `session_use` | integer, −1..=255 | its session use; −1 exactly when `counter` is −1 |
//! | `ts_high`, `ts_low` | integer | that OTP's timestamp (0 when nothing seen) |
//! | `modified` | bigint | when the record last changed, Unix seconds (as the bastion said) |
//! | `reset_at` | bigint | when the generation began, Unix seconds (0 for generation 0) |
//! | `aeads` | bytea[], at most 64 | the fingerprints (SHA-1, 20 bytes) of the AEADs the generation is bound to, sorted, no duplicates |
//! | `updated_by` | text, nullable | the host name of the bastion that last raised the row |
//! | `updated_at` | timestamptz | when (the server's clock) |
//!
//! Rows only ever rise, through [`RAISE`]: no statement of ykhsm lowers or
//! deletes one.

/// The schema version this code creates and reads.
pub const SCHEMA_VERSION: i32 = 1;

// One migration per version after the first.
const _: () = assert!(MIGRATIONS.len() + 1 == SCHEMA_VERSION as usize);

/// `pg_advisory_xact_lock` key held while `init` runs, so two `ykadmin
/// fleet init` at once do not both create or migrate ("ykhsm" in ASCII).
pub(crate) const INIT_LOCK: i64 = 0x0079_6b68_736d;

/// Version 1, from nothing.
pub(crate) const CREATE: &str = "
CREATE TABLE ykhsm_schema (version integer NOT NULL);
CREATE UNIQUE INDEX ykhsm_schema_one_row ON ykhsm_schema ((true));
COMMENT ON TABLE ykhsm_schema IS 'ykhsm: the version of the ykhsm_counters schema (ykadmin fleet init)';
CREATE TABLE ykhsm_counters (
    public_id   text PRIMARY KEY CHECK (public_id <> ''),
    generation  bigint NOT NULL CHECK (generation BETWEEN 0 AND 4294967295),
    counter     integer NOT NULL CHECK (counter BETWEEN -1 AND 32767),
    session_use integer NOT NULL CHECK (session_use BETWEEN -1 AND 255),
    ts_high     integer NOT NULL CHECK (ts_high BETWEEN 0 AND 255),
    ts_low      integer NOT NULL CHECK (ts_low BETWEEN 0 AND 65535),
    modified    bigint NOT NULL CHECK (modified >= 0),
    reset_at    bigint NOT NULL CHECK (reset_at >= 0),
    aeads       bytea[] NOT NULL DEFAULT '{}' CHECK (cardinality(aeads) <= 64),
    updated_by  text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((counter = -1) = (session_use = -1))
);
COMMENT ON TABLE ykhsm_counters IS 'ykhsm: the counters the bastions share; rows only rise (never edit by hand)';
";

/// The statements that take version `i + 1` to `i + 2`, in order. Each
/// runs in the transaction of `init` that also sets the new version.
pub(crate) const MIGRATIONS: &[&str] = &[];

/// The fleet rule, `ykhsm_core::counters::raises`, in SQL: the stored
/// row `s` is raised by the presented one (`excluded`) iff the presented
/// (generation, counter, session use) is strictly higher, compared as a
/// row value — lexicographically, generation first — with "never seen"
/// stored as (−1, −1), below every real pair. (A key with no row at all is
/// inserted: `raises(None, _)` is always true.) Written once, here; the
/// tests check it against `raises` on a real server.
macro_rules! raises_sql {
    () => {
        "(s.generation, s.counter, s.session_use) < \
         (excluded.generation, excluded.counter, excluded.session_use)"
    };
}

/// The fleet rule's SQL condition, as [`RAISE`] uses it: `s` is the stored
/// row, `excluded` the presented one (see `raises_sql!` for the rule).
pub const RAISES: &str = raises_sql!();

/// The columns of a record, in the order [`crate::record_of`] reads them.
macro_rules! record_columns {
    ($t:literal) => {
        concat!(
            $t,
            ".generation, ",
            $t,
            ".counter, ",
            $t,
            ".session_use, ",
            $t,
            ".ts_high, ",
            $t,
            ".ts_low, ",
            $t,
            ".modified, ",
            $t,
            ".reset_at, ",
            $t,
            ".aeads"
        )
    };
}

/// One batch of raises, one statement, one round trip.
///
/// Parameters: `$1` public ids (text[], distinct, sorted), `$2`
/// generations (bigint[]), `$3` counters and `$4` session uses
/// (integer[], −1 for never seen), `$5` ts_high, `$6` ts_low (integer[]),
/// `$7` modified, `$8` reset_at (bigint[]), `$9` the bound AEADs of each
/// record as one bytea (the sorted 20-byte fingerprints, concatenated;
/// PostgreSQL arrays cannot be ragged), `$10` the bastion's name.
///
/// Each presented record is inserted, or, when the key has a row, raises
/// it iff [`RAISES`] holds. On a raise every field is the presented one,
/// except: within the same generation the bound AEADs are the union of
/// both (sorted, no duplicates, the 64 smallest) and `reset_at` the later
/// one; a higher generation brings its own AEADs and `reset_at`.
///
/// One row per presented record comes back: its public id, whether it won
/// (inserted or raised the row), and for a loser the stored row that beat
/// it as the statement's snapshot saw it (see below).
///
/// # Why concurrent raises are exactly-once
///
/// The statement runs under READ COMMITTED (PostgreSQL's default; nothing
/// here changes it). `INSERT … ON CONFLICT (public_id) DO UPDATE … WHERE`
/// does not decide on the statement's snapshot: when the key's row exists,
/// or is being inserted or updated by another transaction, it waits for
/// that transaction to end, locks the row, and evaluates the `WHERE` on
/// the **latest committed version** of the row (and then updates exactly
/// that version). So when two bastions present the same position at once,
/// the second to lock the row sees the first's raise, the comparison is
/// equal, not strictly higher, and it loses: exactly one wins. Rows are
/// inserted in `public_id` order (`ORDER BY`), so two batches lock shared
/// keys in the same order and cannot deadlock.
///
/// The losers' stored rows come from a plain `SELECT` in the same
/// statement, which reads the statement's snapshot: if another bastion
/// raised (or first inserted) the row after the snapshot was taken, what
/// it returns is older than what beat us (below the presented position,
/// or no row). [`crate::Fleet::raise`] then reads those rows again, in a
/// second statement with a new snapshot — only in that race.
pub const RAISE: &str = concat!(
    "WITH presented AS (
    SELECT p.public_id, p.generation, p.counter, p.session_use, p.ts_high, p.ts_low,
           p.modified, p.reset_at,
           ARRAY(SELECT substring(p.aeads FROM 1 + 20 * i FOR 20)
                 FROM generate_series(0, length(p.aeads) / 20 - 1) AS i
                 ORDER BY i)::bytea[] AS aeads
    FROM unnest($1::text[], $2::bigint[], $3::integer[], $4::integer[], $5::integer[],
                $6::integer[], $7::bigint[], $8::bigint[], $9::bytea[])
         AS p(public_id, generation, counter, session_use, ts_high, ts_low, modified,
              reset_at, aeads)
), raised AS (
    INSERT INTO ykhsm_counters AS s
        (public_id, generation, counter, session_use, ts_high, ts_low, modified, reset_at,
         aeads, updated_by)
    SELECT public_id, generation, counter, session_use, ts_high, ts_low, modified, reset_at,
           aeads, $10::text
    FROM presented
    ORDER BY public_id
    ON CONFLICT (public_id) DO UPDATE SET
        generation = excluded.generation,
        counter = excluded.counter,
        session_use = excluded.session_use,
        ts_high = excluded.ts_high,
        ts_low = excluded.ts_low,
        modified = excluded.modified,
        reset_at = CASE WHEN excluded.generation > s.generation THEN excluded.reset_at
                        ELSE greatest(s.reset_at, excluded.reset_at) END,
        aeads = CASE WHEN excluded.generation > s.generation THEN excluded.aeads
                     ELSE ARRAY(SELECT DISTINCT a FROM unnest(s.aeads || excluded.aeads) AS a
                                ORDER BY a LIMIT 64) END,
        updated_by = excluded.updated_by,
        updated_at = now()
    WHERE ",
    raises_sql!(),
    "
    RETURNING s.public_id
)
SELECT p.public_id, r.public_id IS NOT NULL AS won, ",
    record_columns!("c"),
    "
FROM presented p
LEFT JOIN raised r ON r.public_id = p.public_id
LEFT JOIN ykhsm_counters c ON c.public_id = p.public_id AND r.public_id IS NULL"
);

/// The rows of some keys: `$1` public ids (text[]).
pub const PULL: &str = concat!(
    "SELECT c.public_id, ",
    record_columns!("c"),
    " FROM ykhsm_counters c WHERE c.public_id = ANY($1::text[]) ORDER BY c.public_id"
);

/// The schema's version (an error if the table is missing).
pub(crate) const VERSION: &str = "SELECT version FROM ykhsm_schema";
