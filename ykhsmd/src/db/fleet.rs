//! The counter database's side of the fleet ([`crate::fleet`]): the round
//! trip a batch of logins makes to the shared store before its local
//! commit, and the two local tables that keep what the store has not seen.
//!
//! - `fleet_unsynced`: keys whose local row holds an acceptance the store
//!   may not have (decided while it could not be reached), with the Unix
//!   second of the oldest such acceptance. The reconciler pushes them.
//! - `fleet_window`: how many OTPs were accepted while the store could not
//!   be reached, ever, and when the last one was: the replay window that
//!   really happened (an OTP accepted offline here may also have been
//!   accepted by another bastion).
//!
//! Both are added to an existing file on open (`CREATE TABLE IF NOT
//! EXISTS`), without a schema version change: an older ykhsmd ignores them.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};
use ykhsm_core::counters::Counters;
use ykhsm_fleet::position;
use ykhsm_proto::CounterRecord;

use super::{Op, Presented, merge_in, now, read_row};
use crate::fleet::{Fleet, Offline, Raised};

/// The fleet's tables, created if missing.
pub(super) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS fleet_unsynced (
        public_id TEXT    NOT NULL PRIMARY KEY,
        since     INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS fleet_window (
        id              INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
        offline_accepts INTEGER NOT NULL,
        last_at         INTEGER NOT NULL
    );";

/// What the store said about one login of a batch.
#[derive(Debug)]
pub(super) enum Call {
    /// Raised: commit locally.
    Won,
    /// The store holds this position or a higher one: a replay; raise the
    /// local row to the store's.
    Lost(CounterRecord),
    /// No answer, `offline = "local"`: decide on the local row.
    Offline,
    /// No answer, `offline = "deny"`.
    Down,
}

/// The fleet's numbers, for `ykadmin status` and `metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetCounts {
    /// Keys whose local row holds an acceptance the store may not have.
    pub unsynced: u64,
    /// Unix seconds of the oldest of those acceptances.
    pub oldest_unsynced: Option<u64>,
    /// OTPs accepted while the store could not be reached, ever.
    pub offline_accepts: u64,
    /// Unix seconds of the last of them.
    pub last_offline_accept: Option<u64>,
}

/// The store's verdicts for a batch: each op with its [`Call`] (`None`: not
/// sent, the local check refuses it or it is not a login), and the logins
/// put back for the next batch (a second login of a key already in this
/// round: it must be checked after the first is settled).
pub(super) fn round(
    conn: &Connection,
    batch: Vec<Op>,
    fleet: &Fleet,
) -> (Vec<(Op, Option<Call>)>, Vec<Op>) {
    let mut seen = HashSet::new();
    let mut out: Vec<(Op, Option<Call>)> = Vec::with_capacity(batch.len());
    let mut later = Vec::new();
    let mut sent: Vec<(usize, CounterRecord)> = Vec::new();
    for op in batch {
        let Op::Accept { key, presented, .. } = &op else {
            out.push((op, None));
            continue;
        };
        // A read error leaves the login to the local statement, which
        // meets the same error and fails the batch.
        let Ok(row) = read_row(conn, &key.public_id) else {
            out.push((op, None));
            continue;
        };
        if !locally_fresh(row.as_ref(), &key.aead, presented) {
            out.push((op, None));
            continue;
        }
        if !seen.insert(key.public_id.clone()) {
            later.push(op);
            continue;
        }
        let record = CounterRecord {
            public_id: key.public_id.clone(),
            generation: row.as_ref().map_or(0, |r| r.generation),
            last: Some((
                presented.counters.counter(),
                presented.counters.session_use(),
            )),
            ts_high: presented.ts_high,
            ts_low: presented.ts_low,
            modified: now(),
            reset_at: row.as_ref().map_or(0, |r| r.reset_at),
            aeads: row.map(|r| r.aeads).unwrap_or_default(),
        };
        sent.push((out.len(), record));
        out.push((op, None));
    }
    if sent.is_empty() {
        return (out, later);
    }
    let (at, records): (Vec<usize>, Vec<CounterRecord>) = sent.into_iter().unzip();
    let asked = fleet.worth_asking();
    let answer = if !asked {
        Err("the store did not answer a moment ago".to_owned())
    } else {
        fleet.sent(records.len());
        let mut store = fleet.store.lock().unwrap_or_else(|p| p.into_inner());
        store.raise(&records).and_then(|v| {
            if v.len() == records.len() {
                Ok(v)
            } else {
                Err(format!(
                    "the store answered {} of {} records",
                    v.len(),
                    records.len()
                ))
            }
        })
    };
    if asked {
        fleet.note(&answer);
    }
    let calls: Vec<Call> = match answer {
        Ok(verdicts) => verdicts
            .into_iter()
            .map(|v| match v {
                Raised::Won => Call::Won,
                Raised::Lost(held) => Call::Lost(held),
            })
            .collect(),
        Err(_) => at
            .iter()
            .map(|_| match fleet.offline {
                Offline::Local => Call::Offline,
                Offline::Deny => Call::Down,
            })
            .collect(),
    };
    for (i, call) in at.into_iter().zip(calls) {
        out[i].1 = Some(call);
    }
    (out, later)
}

/// The local check a login passes before the store is asked: what
/// `ACCEPT_SQL` would accept (above the stored pair; from generation 1 on,
/// an AEAD the generation is bound to).
fn locally_fresh(
    row: Option<&CounterRecord>,
    aead: &[u8; ykhsm_proto::message::FINGERPRINT_LEN],
    p: &Presented,
) -> bool {
    let Some(row) = row else {
        return true;
    };
    let stored = row.last.and_then(|(c, u)| Counters::new(c, u));
    ykhsm_core::counters::is_fresh(stored, p.counters)
        && (row.generation == 0 || row.aeads.contains(aead))
}

/// After a login won in the store: the local row now equals the store's
/// position for this key, nothing is left to push.
pub(super) fn synced(tx: &Connection, public_id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM fleet_unsynced WHERE public_id = ?1")?
        .execute(params![public_id])?;
    Ok(())
}

/// After a merge or a reset changed the row: the store must learn it (the
/// oldest change's time is kept).
pub(super) fn changed(tx: &Connection, public_id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO fleet_unsynced (public_id, since) VALUES (?1, ?2)
         ON CONFLICT (public_id) DO NOTHING",
    )?
    .execute(params![public_id, i64::try_from(now()).unwrap_or(i64::MAX)])?;
    Ok(())
}

/// Every row, to be pushed once (the daemon joined the fleet, or started).
pub(super) fn mark_all(tx: &Connection) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO fleet_unsynced (public_id, since)
         SELECT public_id, modified FROM counters WHERE true
         ON CONFLICT (public_id) DO NOTHING",
    )?
    .execute([])?;
    Ok(())
}

/// After a login accepted while the store could not be reached: the row
/// must be pushed, and the acceptance is counted.
pub(super) fn accepted_offline(tx: &Connection, public_id: &str) -> rusqlite::Result<()> {
    let at = i64::try_from(now()).unwrap_or(i64::MAX);
    changed(tx, public_id)?;
    tx.prepare_cached(
        "INSERT INTO fleet_window (id, offline_accepts, last_at) VALUES (1, 1, ?1)
         ON CONFLICT (id) DO UPDATE SET offline_accepts = offline_accepts + 1, last_at = ?1",
    )?
    .execute(params![at])?;
    Ok(())
}

/// The rows the store may not have, oldest first, at most `limit`.
pub(super) fn unsynced(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<CounterRecord>> {
    let ids: Vec<String> = conn
        .prepare_cached("SELECT public_id FROM fleet_unsynced ORDER BY since, public_id LIMIT ?1")?
        .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            r.get(0)
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match read_row(conn, &id)? {
            Some(row) => out.push(row),
            // No row to push (cannot happen: rows are never deleted).
            None => synced(conn, &id)?,
        }
    }
    Ok(out)
}

/// Raises local rows to `records` (the store's, or what was pushed to it)
/// and clears the unsynced mark of every marked key whose local row is now
/// at or below what the store holds (a pull of every key reads again only
/// the few that are marked).
pub(super) fn settle(
    tx: &Connection,
    records: &[CounterRecord],
) -> rusqlite::Result<super::MergeOutcome> {
    let out = merge_in(tx, records)?;
    let mut marked = tx.prepare_cached("SELECT 1 FROM fleet_unsynced WHERE public_id = ?1")?;
    for rec in records {
        if marked.exists(params![rec.public_id])?
            && let Some(local) = read_row(tx, &rec.public_id)?
            && position(&local) <= position(rec)
        {
            synced(tx, &rec.public_id)?;
        }
    }
    Ok(out)
}

/// The numbers for the status report.
pub(super) fn counts(conn: &Connection) -> rusqlite::Result<FleetCounts> {
    let (unsynced, oldest): (i64, Option<i64>) = conn
        .prepare_cached("SELECT count(*), min(since) FROM fleet_unsynced")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let window: Option<(i64, i64)> = conn
        .prepare_cached("SELECT offline_accepts, last_at FROM fleet_window WHERE id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let secs = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(FleetCounts {
        unsynced: secs(unsynced),
        oldest_unsynced: oldest.map(secs),
        offline_accepts: window.map_or(0, |(n, _)| secs(n)),
        last_offline_accept: window.map(|(_, t)| secs(t)),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use ykhsm_core::counters::raises;

    use super::*;
    use crate::db::{Accept, Committer, CounterKey, Db};
    use crate::fleet::{Fleet, Store};
    use crate::log::Log;

    /// The store's rule on a map, for the unit tests of the login path
    /// (the real store, PostgreSQL, is tested with the same rule in
    /// ykhsm-fleet and end to end in the system tests).
    #[derive(Clone, Default)]
    struct Shared {
        rows: Arc<Mutex<HashMap<String, CounterRecord>>>,
        down: Arc<AtomicBool>,
    }

    impl Store for Shared {
        fn raise(&mut self, records: &[CounterRecord]) -> Result<Vec<Raised>, String> {
            if self.down.load(Ordering::SeqCst) {
                return Err("connection refused".into());
            }
            let mut rows = self.rows.lock().unwrap();
            Ok(records
                .iter()
                .map(|r| {
                    let held = rows.get(&r.public_id);
                    let presented = position(r).expect("a sane record");
                    if raises(held.and_then(position), presented) {
                        rows.insert(r.public_id.clone(), r.clone());
                        Raised::Won
                    } else {
                        Raised::Lost(held.unwrap().clone())
                    }
                })
                .collect())
        }

        fn pull(&mut self, ids: &[String]) -> Result<Vec<CounterRecord>, String> {
            if self.down.load(Ordering::SeqCst) {
                return Err("connection refused".into());
            }
            let rows = self.rows.lock().unwrap();
            Ok(ids.iter().filter_map(|id| rows.get(id).cloned()).collect())
        }
    }

    fn bastion(dir: &std::path::Path, name: &str, store: &Shared, offline: Offline) -> Db {
        let db = Db::open(&dir.join(name)).unwrap();
        let log = Arc::new(Log::stderr_only(false));
        db.attach_fleet(Arc::new(Fleet::new(Box::new(store.clone()), offline, log)))
            .unwrap();
        db
    }

    fn verify(db: &Db, counter: u16) -> Accept {
        let (tx, rx) = std::sync::mpsc::channel();
        db.accept(
            CounterKey {
                public_id: "ccccccdbjrgf".into(),
                aead: [7; 20],
            },
            Presented {
                counters: Counters::new(counter, 0).unwrap(),
                ts_high: 0,
                ts_low: 0,
            },
            Committer::Acceptor,
            Box::new(move |r| tx.send(r).unwrap()),
        );
        rx.recv().unwrap().unwrap()
    }

    #[test]
    fn an_otp_accepted_on_one_bastion_is_a_replay_on_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let store = Shared::default();
        let a = bastion(dir.path(), "a.sqlite", &store, Offline::Local);
        let b = bastion(dir.path(), "b.sqlite", &store, Offline::Local);
        assert_eq!(verify(&a, 5), Accept::Fresh);
        // Fresh against b's own row, but the store has it.
        assert_eq!(verify(&b, 5), Accept::Lost);
        // b's row was raised to the store's: a local replay now.
        assert_eq!(verify(&b, 5), Accept::Replayed);
        assert_eq!(verify(&b, 6), Accept::Fresh);
        assert_eq!(verify(&a, 6), Accept::Lost);
    }

    #[test]
    fn offline_acceptances_are_counted_and_pushed_when_the_store_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Shared::default();
        let a = bastion(dir.path(), "a.sqlite", &store, Offline::Local);
        let b = bastion(dir.path(), "b.sqlite", &store, Offline::Deny);
        assert_eq!(verify(&a, 5), Accept::Fresh);
        store.down.store(true, Ordering::SeqCst);
        assert_eq!(verify(&a, 6), Accept::Offline);
        assert_eq!(verify(&a, 7), Accept::Offline);
        assert_eq!(verify(&b, 8), Accept::FleetDown);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let counts = rt.block_on(a.fleet_counts()).unwrap();
        assert_eq!((counts.unsynced, counts.offline_accepts), (1, 2));
        assert!(counts.oldest_unsynced.is_some());
        // b refused without writing anything: its store row is still empty.
        assert_eq!(
            rt.block_on(b.fleet_counts()).unwrap(),
            FleetCounts::default()
        );

        store.down.store(false, Ordering::SeqCst);
        let pending = a.fleet_unsynced(10).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].last, Some((7, 0)));
        let mut s = store.clone();
        assert_eq!(s.raise(&pending).unwrap(), [Raised::Won]);
        a.fleet_settle(pending).unwrap();
        let counts = rt.block_on(a.fleet_counts()).unwrap();
        assert_eq!((counts.unsynced, counts.offline_accepts), (0, 2));
        // While the store is down, b's logins do not wait for it (one try
        // a second); b learns it is back from its reconciler, as here.
        assert_eq!(verify(&b, 9), Accept::FleetDown);
        b.fleet().unwrap().note(&Ok::<(), String>(()));
        // What a accepted offline is a replay everywhere now.
        assert_eq!(verify(&b, 7), Accept::Lost);
    }

    #[test]
    fn a_second_login_of_a_key_in_one_batch_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Shared::default();
        let a = bastion(dir.path(), "a.sqlite", &store, Offline::Local);
        // Queue three logins of one key while a commit holds the queue:
        // they form one batch; the second and third go to later rounds.
        let (tx, rx) = std::sync::mpsc::channel();
        let key = CounterKey {
            public_id: "ccccccdbjrgf".into(),
            aead: [7; 20],
        };
        for c in [5u16, 5, 6] {
            let tx = tx.clone();
            a.accept(
                key.clone(),
                Presented {
                    counters: Counters::new(c, 0).unwrap(),
                    ts_high: 0,
                    ts_low: 0,
                },
                Committer::CommitThread(crate::db::Busy::EventLoop),
                Box::new(move |r| tx.send((c, r.unwrap())).unwrap()),
            );
        }
        let mut got: Vec<(u16, Accept)> = (0..3).map(|_| rx.recv().unwrap()).collect();
        got.sort_by_key(|(c, a)| (*c, *a != Accept::Fresh));
        assert_eq!(
            got,
            [
                (5, Accept::Fresh),
                (5, Accept::Replayed),
                (6, Accept::Fresh)
            ]
        );
    }
}
