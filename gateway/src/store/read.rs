//! The read side: devices and their ledger, edges, slots, quarantine, anomalies.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use ems_energy::counter::PointSlot;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::rfc3339;
use super::write::LostRange;

/// A read-only view for the API.
pub struct Reader {
    pub(super) conn: Mutex<Connection>,
    /// For reads that take long (an export paced by its client): a connection of their own,
    /// so that they never hold up the API's other reads.
    pub(super) path: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    pub id: String,
    pub site: String,
    pub edge: String,
    pub online: bool,
    pub last_seq: i64,
    /// Poll time of the newest message, RFC 3339.
    pub last_sample: String,
    /// When the gateway last heard from it (its own clock), RFC 3339.
    pub last_seen: String,
    pub messages: i64,
    pub duplicates: i64,
    /// Copies of a stored message with other content (kept in the quarantine).
    pub conflicts: i64,
    /// Sequence numbers still missing.
    pub missing: i64,
    pub gaps: Vec<[i64; 2]>,
    /// Sequence numbers declared lost, and the ranges with who declared them and why.
    pub lost: i64,
    pub lost_ranges: Vec<LostRange>,
}

/// An edge as its last status message described it.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeRow {
    pub id: String,
    pub site: String,
    pub online: bool,
    pub devices: Vec<String>,
    /// When the gateway received its last status (its own clock), RFC 3339.
    pub changed: String,
    /// Results waiting in its spool, and dropped by it, at its last report (null before any).
    pub spool_depth: Option<i64>,
    pub spool_dropped: Option<i64>,
}

/// A counter anomaly found at ingest.
#[derive(Debug, Clone, Serialize)]
pub struct AnomalyRow {
    pub device: String,
    pub point: String,
    pub at: String,
    /// spike, jump, restart, frozen.
    pub kind: String,
    pub detail: String,
    /// When a late reading showed it to be none (the counter replayed with it no longer
    /// finds it), RFC 3339 of that reading's poll time; null while it stands.
    pub withdrawn: Option<String>,
}

/// The outcome of recomputing the rollups from raw samples.
#[derive(Debug, Clone, Serialize)]
pub struct Integrity {
    pub samples_checked: u64,
    pub slots_checked: u64,
    /// Empty when every stored rollup equals its recomputation.
    pub mismatches: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantineRow {
    pub id: i64,
    pub received: String,
    pub topic: String,
    pub reason: String,
    /// The start of the payload as received (lossy UTF-8, at most [`PAYLOAD_PREVIEW`] bytes;
    /// the whole kept part at `/api/v1/quarantine/{id}/payload`).
    pub payload: String,
    /// The payload's full size and SHA-256 (null for entries from before they were kept).
    pub payload_bytes: Option<i64>,
    pub payload_sha256: Option<String>,
    /// Whether more was received than `payload` shows.
    pub truncated: bool,
}

/// How much of each payload a quarantine listing shows.
pub const PAYLOAD_PREVIEW: usize = 2_048;

/// Refusals by reason since the database was made, kept whatever quarantine retention deletes.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineTotal {
    pub reason: String,
    pub count: i64,
    pub bytes: i64,
}

impl Reader {
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> anyhow::Result<T> {
        let conn = self.conn.lock().expect("reader lock poisoned");
        Ok(f(&conn)?)
    }

    /// The same, for work whose errors are not all SQLite's (a compacted block's decoding).
    pub(super) fn with_any<T>(
        &self,
        f: impl FnOnce(&Connection) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let conn = self.conn.lock().expect("reader lock poisoned");
        f(&conn)
    }

    pub fn devices(&self) -> anyhow::Result<Vec<DeviceRow>> {
        self.with(|c| {
            let mut gaps: HashMap<String, Vec<[i64; 2]>> = HashMap::new();
            let mut stmt = c.prepare("SELECT device, from_seq, to_seq FROM gaps ORDER BY device, from_seq")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))? {
                let (d, a, b) = row?;
                gaps.entry(d).or_default().push([a, b]);
            }
            let mut lost: HashMap<String, Vec<LostRange>> = HashMap::new();
            let mut stmt = c.prepare("SELECT device, from_seq, to_seq, declared_ms, declared_by, reason FROM lost ORDER BY device, from_seq")?;
            for row in stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, LostRange { from_seq: r.get(1)?, to_seq: r.get(2)?, declared: rfc3339(r.get(3)?), declared_by: r.get(4)?, reason: r.get(5)? }))
            })? {
                let (d, range) = row?;
                lost.entry(d).or_default().push(range);
            }
            let mut online: HashMap<String, bool> = HashMap::new();
            let mut stmt = c.prepare("SELECT edge, online FROM edges")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))? {
                let (e, o) = row?;
                online.insert(e, o);
            }
            let mut stmt = c.prepare(
                "SELECT device, site, edge, last_seq, last_ts_ms, last_seen_ms, messages, duplicates, conflicts FROM devices ORDER BY device",
            )?;
            let rows = stmt.query_map([], |r| {
                let id: String = r.get(0)?;
                let edge: String = r.get(2)?;
                let g = gaps.get(&id).cloned().unwrap_or_default();
                let l = lost.get(&id).cloned().unwrap_or_default();
                Ok(DeviceRow {
                    online: online.get(&edge).copied().unwrap_or(false),
                    site: r.get(1)?,
                    last_seq: r.get(3)?,
                    last_sample: rfc3339(r.get(4)?),
                    last_seen: rfc3339(r.get(5)?),
                    messages: r.get(6)?,
                    duplicates: r.get(7)?,
                    conflicts: r.get(8)?,
                    missing: g.iter().fold(0i64, |n, [a, b]| n.saturating_add(b - a + 1)),
                    gaps: g,
                    lost: l.iter().fold(0i64, |n, r| n.saturating_add(r.to_seq - r.from_seq + 1)),
                    lost_ranges: l,
                    edge,
                    id,
                })
            })?;
            rows.collect()
        })
    }

    pub fn edges(&self) -> anyhow::Result<Vec<EdgeRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT edge, site, online, devices, changed_ms, spool_depth, spool_dropped FROM edges ORDER BY edge",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(EdgeRow {
                    id: r.get(0)?,
                    site: r.get(1)?,
                    online: r.get(2)?,
                    devices: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                    changed: rfc3339(r.get(4)?),
                    spool_depth: r.get(5)?,
                    spool_dropped: r.get(6)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Sequence numbers missing (open gaps) and declared lost, over all devices.
    pub fn sequence_totals(&self) -> anyhow::Result<(i64, i64)> {
        self.with(|c| {
            c.query_row(
                "SELECT (SELECT TOTAL(to_seq - from_seq + 1) FROM gaps),
                        (SELECT TOTAL(to_seq - from_seq + 1) FROM lost)",
                [],
                // TOTAL sums as a float: numbers near 2^63 overflow SUM's integer.
                |r| Ok((r.get::<_, f64>(0)? as i64, r.get::<_, f64>(1)? as i64)),
            )
        })
    }

    /// The first 15-minute slot the point has data in.
    pub fn first_slot(&self, device: &str, point: &str) -> anyhow::Result<Option<i64>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT MIN(slot_ms) FROM point_slots WHERE device = ?1 AND point = ?2",
            )?
            .query_row(params![device, point], |r| r.get(0))
        })
    }

    /// Rollup rows of one point with `from_ms <= slot < to_ms`.
    pub fn point_slots(
        &self,
        device: &str,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Vec<(i64, PointSlot)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT slot_ms, delta, covered_ms, estimated FROM point_slots
                 WHERE device = ?1 AND point = ?2 AND slot_ms >= ?3 AND slot_ms < ?4 ORDER BY slot_ms",
            )?;
            let rows = stmt.query_map(params![device, point, from_ms, to_ms], |r| {
                Ok((r.get(0)?, PointSlot { delta: r.get(1)?, covered_ms: r.get(2)?, estimated: r.get(3)? }))
            })?;
            rows.collect()
        })
    }

    pub fn quarantine(&self, limit: i64) -> anyhow::Result<Vec<QuarantineRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT id, received_ms, topic, reason, substr(payload, 1, {PAYLOAD_PREVIEW}),
                        length(payload), payload_bytes, payload_sha256
                 FROM quarantine ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit], |r| {
                let kept: i64 = r.get(5)?;
                let full: Option<i64> = r.get(6)?;
                Ok(QuarantineRow {
                    id: r.get(0)?,
                    received: rfc3339(r.get(1)?),
                    topic: r.get(2)?,
                    reason: r.get(3)?,
                    payload: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(4)?).into_owned(),
                    truncated: full.unwrap_or(kept) > (PAYLOAD_PREVIEW as i64).min(kept),
                    payload_bytes: full,
                    payload_sha256: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    /// The kept part of one quarantined payload, as received.
    pub fn quarantine_payload(&self, id: i64) -> anyhow::Result<Option<Vec<u8>>> {
        self.with(|c| {
            c.query_row("SELECT payload FROM quarantine WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    pub fn quarantine_totals(&self) -> anyhow::Result<Vec<QuarantineTotal>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT reason, count, bytes FROM quarantine_totals ORDER BY reason")?;
            let rows = stmt.query_map([], |r| {
                Ok(QuarantineTotal {
                    reason: r.get(0)?,
                    count: r.get(1)?,
                    bytes: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    pub fn anomalies(&self, limit: i64) -> anyhow::Result<Vec<AnomalyRow>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT device, point, ts_ms, kind, detail, withdrawn_ms FROM anomalies ORDER BY id DESC LIMIT ?1")?;
            let rows = stmt.query_map([limit], |r| {
                Ok(AnomalyRow { device: r.get(0)?, point: r.get(1)?, at: rfc3339(r.get(2)?), kind: r.get(3)?, detail: r.get(4)?, withdrawn: r.get::<_, Option<i64>>(5)?.map(rfc3339) })
            })?;
            rows.collect()
        })
    }
}

impl ems_energy::figures::SlotSource for Reader {
    type Error = anyhow::Error;
    fn point_slots(
        &self,
        device: &str,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Vec<(i64, PointSlot)>> {
        Reader::point_slots(self, device, point, from_ms, to_ms)
    }
}
