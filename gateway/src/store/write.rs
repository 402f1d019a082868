//! SQLite's side of a batch: its transaction as the batch logic's [`WriteTx`] (the logic itself
//! is [`crate::batch`]), and declaring a gap lost.

use std::path::Path;

use ems_core::wire::{Status, Telemetry};
use ems_energy::counter::{CounterTrack, PointSlot};
use rusqlite::{params, OptionalExtension, Transaction};

use super::{open_conn, Store};
use crate::batch::{
    ChainRow, DeviceUpdate, EvidenceRow, KeptRefusal, LedgerMark, Link, LostRow, Reading,
    StoredVersion, WriteTx,
};
use crate::storage::{reason_code, BatchOutcome, Incoming, WriteRules};
use crate::view::{DeclareOutcome, LostRange};

impl crate::storage::Storage for Store {
    fn write_batch(
        &mut self,
        batch: &[Incoming],
        rules: &WriteRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome> {
        Store::write_batch(self, batch, rules, received_ms)
    }
}

impl Store {
    /// Commits one batch in one transaction.
    pub fn write_batch(
        &mut self,
        batch: &[Incoming],
        rules: &WriteRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome> {
        // Immediate: the write lock is taken at the start (waiting out another writer, the
        // alarm book's or upkeep's, within the busy timeout). A deferred transaction reads
        // first, and if another connection commits before its first write it fails at once
        // ("database is locked"): a batch retried a second later, measured as a one-second
        // stall in the ingest bench's latency.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let written = crate::batch::write_batch(
            &SqliteTx(&tx),
            &mut self.caches,
            self.sink.as_ref(),
            batch,
            rules,
            received_ms,
        );
        match written.and_then(|out| Ok((out, tx.commit()?))) {
            Ok((out, ())) => Ok(out),
            Err(e) => {
                // The caches may hold states and ids of the rolled-back batch.
                self.caches.clear();
                Err(e)
            }
        }
    }
}

/// An open SQLite transaction, as the batch logic uses it.
struct SqliteTx<'a>(&'a Transaction<'a>);

/// A checkpoint row (from [`CHECKPOINT_COLUMNS`]) as a counter state.
fn checkpoint_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CounterTrack> {
    Ok(CounterTrack {
        through_ms: r.get(0)?,
        anchor: Some((r.get(1)?, r.get(2)?)),
        rejected: r.get(3)?,
        changed_ms: r.get(4)?,
        rate_per_h: r.get(5)?,
    })
}

const CHECKPOINT_COLUMNS: &str = "through_ms, ts_ms, value, rejected, changed_ms, rate_per_h";

impl SqliteTx<'_> {
    fn ledger_mark(&self, device: &str, max: usize) -> anyhow::Result<LedgerMark> {
        let last: i64 = self
            .0
            .prepare_cached("SELECT last_seq FROM devices WHERE device = ?1")?
            .query_row([device], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        let mut newest: Vec<(i64, i64)> = self
            .0
            .prepare_cached(
                "SELECT from_seq, to_seq FROM gaps WHERE device = ?1 ORDER BY from_seq DESC LIMIT ?2",
            )?
            .query_map(params![device, max as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        newest.reverse();
        let first_gap = match newest.len() == max {
            true => self
                .0
                .prepare_cached("SELECT MIN(from_seq) FROM gaps WHERE device = ?1")?
                .query_row([device], |r| r.get(0))?,
            false => newest.first().map(|g| g.0),
        };
        Ok(LedgerMark {
            last,
            newest_gaps: newest,
            first_gap,
        })
    }
}

impl WriteTx for SqliteTx<'_> {
    fn ledger_row(&self, device: &str) -> anyhow::Result<Option<(i64, i64)>> {
        Ok(self
            .0
            .prepare_cached("SELECT last_seq, last_ts_ms FROM devices WHERE device = ?1")?
            .query_row([device], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn reopen(&self, device: &str, seq: i64, ts_ms: i64) -> anyhow::Result<usize> {
        super::compact::reopen(self.0, device, seq, ts_ms)
    }

    fn message_stored(&self, device: &str, seq: i64) -> anyhow::Result<bool> {
        Ok(self
            .0
            .prepare_cached("SELECT 1 FROM messages WHERE device = ?1 AND seq = ?2")?
            .exists(params![device, seq])?)
    }

    fn insert_message(
        &self,
        t: &Telemetry,
        received_ms: i64,
        points: &[u8],
    ) -> anyhow::Result<bool> {
        let inserted = self
            .0
            .prepare_cached(
                "INSERT OR IGNORE INTO messages (device, seq, ts_ms, edge, received_ms, points) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![t.device, t.seq as i64, t.ts_ms, t.edge, received_ms, points])?;
        Ok(inserted > 0)
    }

    fn stored_version(&self, device: &str, seq: i64) -> anyhow::Result<StoredVersion> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT ts_ms, edge, points FROM messages WHERE device = ?1 AND seq = ?2",
            )?
            .query_row(params![device, seq], |r| {
                Ok(StoredVersion {
                    ts_ms: r.get(0)?,
                    edge: r.get(1)?,
                    points: r.get(2)?,
                })
            })?)
    }

    fn point_of_series(&self, series: i64) -> anyhow::Result<String> {
        Ok(self
            .0
            .prepare_cached("SELECT point FROM series WHERE id = ?1")?
            .query_row([series], |r| r.get(0))?)
    }

    fn count_copy(&self, device: &str, conflict: bool) -> anyhow::Result<()> {
        let sql = if conflict {
            "UPDATE devices SET conflicts = conflicts + 1 WHERE device = ?1"
        } else {
            "UPDATE devices SET duplicates = duplicates + 1 WHERE device = ?1"
        };
        self.0.prepare_cached(sql)?.execute([device])?;
        Ok(())
    }

    fn insert_device(&self, t: &Telemetry, received_ms: i64) -> anyhow::Result<()> {
        self.0.prepare_cached(
            "INSERT INTO devices (device, site, edge, last_seq, last_ts_ms, last_seen_ms, messages, last_good_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, NULL)",
        )?
        .execute(params![t.device, t.site, t.edge, t.seq as i64, t.ts_ms, received_ms])?;
        Ok(())
    }

    fn update_device(
        &self,
        device: &str,
        u: &DeviceUpdate<'_>,
        received_ms: i64,
    ) -> anyhow::Result<()> {
        let (seq, ts, site, edge) = match &u.newest {
            Some((seq, ts, site, edge)) => (Some(seq), Some(ts), Some(site), Some(edge)),
            None => (None, None, None, None),
        };
        self.0
            .prepare_cached(
                "UPDATE devices SET last_seq = COALESCE(?2, last_seq), last_ts_ms = COALESCE(?3, last_ts_ms),
                   site = COALESCE(?4, site), edge = COALESCE(?5, edge), last_seen_ms = ?6,
                   messages = messages + ?7, last_good_ms = COALESCE(?8, last_good_ms)
                 WHERE device = ?1",
            )?
            .execute(params![
                device,
                seq,
                ts,
                site,
                edge,
                received_ms,
                u.messages,
                u.last_good_ms
            ])?;
        Ok(())
    }

    fn insert_gap(&self, device: &str, from: i64, to: i64, detected_ms: i64) -> anyhow::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO gaps (device, from_seq, to_seq, detected_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![device, from, to, detected_ms])?;
        Ok(())
    }

    fn gap_containing(&self, device: &str, seq: i64) -> anyhow::Result<Option<(i64, i64, i64)>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT from_seq, to_seq, detected_ms FROM gaps WHERE device = ?1 AND from_seq <= ?2 AND to_seq >= ?2",
            )?
            .query_row(params![device, seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?)
    }

    fn delete_gap(&self, device: &str, from: i64) -> anyhow::Result<()> {
        self.0
            .prepare_cached("DELETE FROM gaps WHERE device = ?1 AND from_seq = ?2")?
            .execute(params![device, from])?;
        Ok(())
    }

    fn lost_containing(&self, device: &str, seq: i64) -> anyhow::Result<Option<LostRow>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT from_seq, to_seq, declared_ms, declared_by, reason FROM lost
                 WHERE device = ?1 AND from_seq <= ?2 AND to_seq >= ?2",
            )?
            .query_row(params![device, seq], |r| {
                Ok(LostRow {
                    from_seq: r.get(0)?,
                    to_seq: r.get(1)?,
                    declared_ms: r.get(2)?,
                    declared_by: r.get(3)?,
                    reason: r.get(4)?,
                })
            })
            .optional()?)
    }

    fn delete_lost(&self, device: &str, from: i64) -> anyhow::Result<()> {
        self.0
            .prepare_cached("DELETE FROM lost WHERE device = ?1 AND from_seq = ?2")?
            .execute(params![device, from])?;
        Ok(())
    }

    fn insert_lost(&self, device: &str, row: &LostRow) -> anyhow::Result<()> {
        self.0.prepare_cached(
            "INSERT INTO lost (device, from_seq, to_seq, declared_ms, declared_by, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![device, row.from_seq, row.to_seq, row.declared_ms, row.declared_by, row.reason])?;
        Ok(())
    }

    fn ledger_marks(&self, devices: &[&str], max: usize) -> anyhow::Result<Vec<LedgerMark>> {
        devices.iter().map(|d| self.ledger_mark(d, max)).collect()
    }

    fn series_id(&self, device: &str, point: &str) -> anyhow::Result<i64> {
        self.0
            .prepare_cached("INSERT OR IGNORE INTO series (device, point) VALUES (?1, ?2)")?
            .execute([device, point])?;
        Ok(self
            .0
            .prepare_cached("SELECT id FROM series WHERE device = ?1 AND point = ?2")?
            .query_row([device, point], |r| r.get(0))?)
    }

    fn keep_refused(&self, r: &KeptRefusal<'_>) -> anyhow::Result<()> {
        self.0.prepare_cached(
            "INSERT INTO quarantine (received_ms, topic, reason, payload, payload_bytes, payload_sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![r.received_ms, r.topic, r.reason, r.kept, r.size, r.sha256])?;
        self.0
            .prepare_cached(
                "INSERT INTO quarantine_totals (reason, count, bytes) VALUES (?1, 1, ?2)
                 ON CONFLICT (reason) DO UPDATE SET count = count + 1, bytes = bytes + ?2",
            )?
            .execute(params![reason_code(r.reason), r.size])?;
        Ok(())
    }

    fn upsert_edge(&self, s: &Status, received_ms: i64) -> anyhow::Result<()> {
        // The last will says nothing of the spool: the last report stands.
        self.0.prepare_cached(
            "INSERT INTO edges (edge, site, online, devices, changed_ms, spool_depth, spool_dropped) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (edge) DO UPDATE SET site = ?2, online = ?3,
               devices = CASE WHEN ?3 THEN ?4 ELSE devices END, changed_ms = ?5,
               spool_depth = COALESCE(?6, spool_depth), spool_dropped = COALESCE(?7, spool_dropped)",
        )?
        .execute(params![
            s.edge,
            s.site,
            s.online,
            serde_json::to_string(&s.devices)?,
            received_ms,
            s.spool_depth.map(|d| d.min(i64::MAX as u64) as i64),
            s.spool_dropped.map(|d| d.min(i64::MAX as u64) as i64)
        ])?;
        Ok(())
    }

    fn queue_sink_lines(&self, lines: &str) -> anyhow::Result<()> {
        self.0
            .prepare_cached("INSERT INTO sink_queue (lines) VALUES (?1)")?
            .execute([lines])?;
        Ok(())
    }

    fn latest_checkpoint(&self, device: &str, point: &str) -> anyhow::Result<Option<CounterTrack>> {
        Ok(self
            .0
            .prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM counter_checkpoints WHERE device = ?1 AND point = ?2
                 ORDER BY slot_ms DESC LIMIT 1"
            ))?
            .query_row(params![device, point], checkpoint_row)
            .optional()?)
    }

    fn checkpoint_before(
        &self,
        device: &str,
        point: &str,
        slot_ms: i64,
        ts_ms: i64,
    ) -> anyhow::Result<Option<CounterTrack>> {
        Ok(self
            .0
            .prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM counter_checkpoints
                 WHERE device = ?1 AND point = ?2 AND slot_ms <= ?3 AND through_ms < ?4
                 ORDER BY slot_ms DESC LIMIT 1"
            ))?
            .query_row(params![device, point, slot_ms, ts_ms], checkpoint_row)
            .optional()?)
    }

    fn write_checkpoint(
        &self,
        device: &str,
        point: &str,
        slot_ms: i64,
        t: &CounterTrack,
    ) -> anyhow::Result<()> {
        let Some((ts, v)) = t.anchor else {
            return Ok(());
        };
        self.0.prepare_cached(
            "INSERT INTO counter_checkpoints (device, point, slot_ms, through_ms, ts_ms, value, rejected, changed_ms, rate_per_h)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (device, point, slot_ms) DO UPDATE SET through_ms = ?4, ts_ms = ?5, value = ?6,
               rejected = ?7, changed_ms = ?8, rate_per_h = ?9",
        )?
        .execute(params![
            device,
            point,
            slot_ms,
            t.through_ms,
            ts,
            v,
            t.rejected,
            t.changed_ms,
            t.rate_per_h
        ])?;
        Ok(())
    }

    fn add_slot(
        &self,
        device: &str,
        point: &str,
        slot_ms: i64,
        r: &PointSlot,
    ) -> anyhow::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO point_slots (device, point, slot_ms, delta, covered_ms, estimated) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (device, point, slot_ms) DO UPDATE SET
                   delta = delta + excluded.delta, covered_ms = covered_ms + excluded.covered_ms,
                   estimated = estimated + excluded.estimated",
            )?
            .execute(params![device, point, slot_ms, r.delta, r.covered_ms, r.estimated])?;
        Ok(())
    }

    fn highest_seq_at(&self, device: &str, ts_ms: i64) -> anyhow::Result<Option<i64>> {
        Ok(self
            .0
            .prepare_cached("SELECT MAX(seq) FROM messages WHERE device = ?1 AND ts_ms = ?2")?
            .query_row(params![device, ts_ms], |r| r.get(0))?)
    }

    fn good_readings(
        &self,
        device: &str,
        series: i64,
        from_ms: i64,
    ) -> anyhow::Result<Vec<Reading>> {
        let mut readings = Vec::new();
        super::compact::each_message(self.0, device, (from_ms.saturating_add(1), i64::MAX), |m| {
            let Some(blob) = &m.points else {
                return Ok(());
            };
            if let Some(value) = crate::packed::good_value(blob, series)? {
                readings.push(Reading {
                    ts_ms: m.ts_ms,
                    seq: m.seq,
                    value,
                });
            }
            Ok(())
        })?;
        Ok(readings)
    }

    fn insert_anomaly(
        &self,
        device: &str,
        point: &str,
        ts_ms: i64,
        kind: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO anomalies (device, point, ts_ms, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![device, point, ts_ms, kind, detail])?;
        Ok(())
    }

    fn evidence(&self, device: &str, seq: i64) -> anyhow::Result<Option<Link>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT prev, digest, verified FROM evidence WHERE device = ?1 AND seq = ?2",
            )?
            .query_row(params![device, seq], |r| {
                Ok((
                    r.get::<_, [u8; 32]>(0)?,
                    r.get::<_, [u8; 32]>(1)?,
                    r.get(2)?,
                ))
            })
            .optional()?)
    }

    fn insert_evidence(&self, e: &EvidenceRow) -> anyhow::Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO evidence (device, seq, site, edge, prev, digest, sig, verified)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                e.device,
                e.seq,
                e.site,
                e.edge,
                e.prev,
                e.digest,
                &e.sig[..],
                e.verified
            ])?;
        Ok(())
    }

    fn chain(&self, device: &str) -> anyhow::Result<Option<ChainRow>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT head_seq, head_digest, verified_through, signed, verified, restarts, refused
                 FROM chains WHERE device = ?1",
            )?
            .query_row([device], |r| {
                Ok(ChainRow {
                    head_seq: r.get(0)?,
                    head_digest: r.get(1)?,
                    verified_through: r.get(2)?,
                    signed: r.get(3)?,
                    verified: r.get(4)?,
                    restarts: r.get(5)?,
                    refused: r.get(6)?,
                })
            })
            .optional()?)
    }

    fn put_chain(&self, device: &str, c: &ChainRow) -> anyhow::Result<()> {
        self.0
            .prepare_cached(
                "INSERT OR REPLACE INTO chains
                 (device, head_seq, head_digest, verified_through, signed, verified, restarts, refused)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                device,
                c.head_seq,
                c.head_digest,
                c.verified_through,
                c.signed,
                c.verified,
                c.restarts,
                c.refused
            ])?;
        Ok(())
    }

    fn withdraw_anomaly(
        &self,
        device: &str,
        point: &str,
        ts_ms: i64,
        kind: &str,
        at_ms: i64,
    ) -> anyhow::Result<()> {
        self.0
            .prepare_cached(
                "UPDATE anomalies SET withdrawn_ms = ?5 WHERE id = (
                     SELECT id FROM anomalies WHERE device = ?1 AND point = ?2 AND ts_ms = ?3 AND kind = ?4
                       AND withdrawn_ms IS NULL ORDER BY id DESC LIMIT 1)",
            )?
            .execute(params![device, point, ts_ms, kind, at_ms])?;
        Ok(())
    }
}

/// Declares the open gap of `device` that starts at `from_seq` lost: its numbers no longer
/// count as missing. Opens its own connection to the database at `path` (a rare operator act).
pub(super) fn declare_lost(
    path: &Path,
    device: &str,
    from_seq: i64,
    by: &str,
    reason: &str,
    now_ms: i64,
) -> anyhow::Result<DeclareOutcome> {
    let mut conn = open_conn(path)?;
    // Immediate: a deferred transaction that read the gap would fail, not wait, if ingest
    // committed before its first write.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let gap: Option<i64> = tx
        .query_row(
            "SELECT to_seq FROM gaps WHERE device = ?1 AND from_seq = ?2",
            params![device, from_seq],
            |r| r.get(0),
        )
        .optional()?;
    let Some(to_seq) = gap else {
        return Ok(DeclareOutcome::NoSuchGap);
    };
    tx.execute(
        "DELETE FROM gaps WHERE device = ?1 AND from_seq = ?2",
        params![device, from_seq],
    )?;
    tx.execute(
        "INSERT INTO lost (device, from_seq, to_seq, declared_ms, declared_by, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![device, from_seq, to_seq, now_ms, by, reason],
    )?;
    super::audit_log::append(
        &tx,
        &crate::audit::Entry::declare_lost(device, (from_seq, to_seq), by, reason, now_ms),
    )?;
    tx.commit()?;
    Ok(DeclareOutcome::Declared(LostRange::declared(
        from_seq, to_seq, now_ms, by, reason,
    )))
}
