//! Upkeep: raw-sample, quarantine and checkpoint retention, and the online backup.

use std::path::Path;

use anyhow::Context as _;
use ems_energy::counter::slot_of;
use rusqlite::{params, Connection};

use super::{open_conn, Store};

impl Store {
    /// Copies the database at `from` to the new file `to` while a gateway may be writing to it
    /// (SQLite's online backup), then checks the copy. Returns the messages it holds.
    pub fn backup(from: &Path, to: &Path) -> anyhow::Result<u64> {
        anyhow::ensure!(from.exists(), "no database at {}", from.display());
        anyhow::ensure!(
            !to.exists(),
            "{} exists; a backup never overwrites",
            to.display()
        );
        let src = open_conn(from)?;
        let mut dst =
            Connection::open(to).with_context(|| format!("cannot create {}", to.display()))?;
        rusqlite::backup::Backup::new(&src, &mut dst)?
            .run_to_completion(256, std::time::Duration::from_millis(2), None)
            .context("backup interrupted")?;
        let check: String = dst.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        anyhow::ensure!(
            check == "ok",
            "the copy fails SQLite's integrity check: {check}"
        );
        super::compact::message_count(&dst)
    }
}

/// Deletes raw samples older than the retention horizon; rollups and the ledger stay.
pub struct Pruner {
    conn: Connection,
}

impl Pruner {
    pub fn open(path: &Path) -> anyhow::Result<Pruner> {
        Ok(Pruner {
            conn: open_conn(path)?,
        })
    }

    /// Deletes the samples polled before `before_ms`, device by device in short transactions
    /// (ingest goes on meanwhile); the message rows stay for the ledger. Returns the samples
    /// deleted.
    pub fn prune_raw(&mut self, before_ms: i64) -> anyhow::Result<u64> {
        let devices: Vec<String> = self
            .conn
            .prepare("SELECT device FROM devices")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut deleted = 0u64;
        for device in devices {
            // Sequence numbers follow poll order, so everything old sits at the low end of
            // the device's key range; the time check guards against a clock set back.
            let last_old: Option<i64> = self.conn.query_row(
                "SELECT MAX(seq) FROM messages WHERE device = ?1 AND ts_ms < ?2",
                params![device, before_ms],
                |r| r.get(0),
            )?;
            if let Some(seq) = last_old {
                // Immediate: it reads, then writes (see the alarm book's `apply`).
                let tx = self
                    .conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let bytes: i64 = tx.query_row(
                    "SELECT COALESCE(SUM(length(points)), 0) FROM messages
                     WHERE device = ?1 AND seq <= ?2 AND ts_ms < ?3",
                    params![device, seq, before_ms],
                    |r| r.get(0),
                )?;
                tx.execute(
                    "UPDATE messages SET points = NULL
                     WHERE device = ?1 AND seq <= ?2 AND ts_ms < ?3 AND points IS NOT NULL",
                    params![device, seq, before_ms],
                )?;
                tx.commit()?;
                deleted += crate::packed::count(bytes as usize) as u64;
            }
            deleted += strip_blocks(&mut self.conn, &device, before_ms)?;
        }
        self.conn.execute(
            "INSERT INTO retention (id, raw_before_ms) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET raw_before_ms = MAX(raw_before_ms, ?1)",
            [before_ms],
        )?;
        Ok(deleted)
    }
}

/// Deletes the samples of `device`'s compacted days that ended before `before_ms`: each block
/// is rewritten with its messages' ledger fields only, in its own transaction. Returns the
/// samples deleted.
fn strip_blocks(conn: &mut Connection, device: &str, before_ms: i64) -> anyhow::Result<u64> {
    let days: Vec<i64> = conn
        .prepare(
            "SELECT day_ms FROM message_blocks
             WHERE device = ?1 AND last_ts_ms < ?2 AND points > 0 ORDER BY day_ms",
        )?
        .query_map(params![device, before_ms], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut deleted = 0;
    for day in days {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (data, points): (Vec<u8>, i64) = tx.query_row(
            "SELECT data, points FROM message_blocks WHERE device = ?1 AND day_ms = ?2",
            params![device, day],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut messages = crate::history::decode(&data)?;
        for m in &mut messages {
            m.points = None;
        }
        let (data, summary) = crate::history::encode(&messages)?;
        tx.execute(
            "UPDATE message_blocks SET data = ?3, points = ?4 WHERE device = ?1 AND day_ms = ?2",
            params![device, day, data, summary.points],
        )?;
        tx.commit()?;
        deleted += points as u64;
    }
    Ok(deleted)
}

impl Pruner {
    /// Deletes counter checkpoints no late reading can need any more: those of a point older
    /// than `window_ms` behind its device's newest message, except the newest of them (the
    /// state a replay starts from). Returns the rows deleted.
    pub fn prune_checkpoints(&mut self, window_ms: i64) -> anyhow::Result<u64> {
        let devices: Vec<(String, i64)> = self
            .conn
            .prepare("SELECT device, last_ts_ms FROM devices")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut deleted = 0;
        for (device, newest) in devices {
            let cutoff = slot_of(newest.saturating_sub(window_ms));
            deleted += self.conn.execute(
                "DELETE FROM counter_checkpoints AS c WHERE device = ?1 AND slot_ms < (
                     SELECT MAX(k.slot_ms) FROM counter_checkpoints k
                     WHERE k.device = c.device AND k.point = c.point AND k.slot_ms <= ?2)",
                params![device, cutoff],
            )? as u64;
        }
        Ok(deleted)
    }

    /// Deletes quarantine entries received before `before_ms`; their counts stay in the totals.
    pub fn prune_quarantine(&mut self, before_ms: i64) -> anyhow::Result<u64> {
        Ok(self
            .conn
            .execute("DELETE FROM quarantine WHERE received_ms < ?1", [before_ms])?
            as u64)
    }
}
