//! The read side of SQLite: devices and their ledger, edges, slots, quarantine, anomalies (the
//! rows are [`crate::view`]'s, shared with PostgreSQL).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ems_energy::counter::PointSlot;
use rusqlite::{params, Connection, OptionalExtension};

use super::rfc3339;
use crate::batch::ChainRow;
use crate::pool::Pool;
use crate::storage::AccountingRules;
use crate::view::{
    AnomalyRow, ChainView, DeclareOutcome, DeviceRow, EdgeRow, Integrity, LostRange, QuarantineRow,
    QuarantineTotal, ReadRecord, PAYLOAD_PREVIEW,
};

/// SQLite's reader: connections of its own (reads never wait for ingest's writer, WAL: readers
/// share the file with each other and with the writer), each request taking one that is free.
pub struct SqliteReader {
    conns: Pool<Connection>,
    /// A copy opened read-only (`ems-gateway verify --db`), not a live gateway's database.
    read_only: bool,
    /// For reads that take long (an export paced by its client): a connection of their own,
    /// so that they never hold up the API's other reads.
    pub(super) path: PathBuf,
}

impl SqliteReader {
    /// A reader of the database at `path`, its first connection opened now.
    pub(super) fn open(path: &Path, read_only: bool) -> anyhow::Result<SqliteReader> {
        Ok(SqliteReader {
            conns: Pool::new(connect(path, read_only)?),
            read_only,
            path: path.to_owned(),
        })
    }

    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> anyhow::Result<T> {
        self.with_any(|c| Ok(f(c)?))
    }

    /// The same, for work whose errors are not all SQLite's (a compacted block's decoding).
    pub(super) fn with_any<T>(
        &self,
        f: impl FnOnce(&Connection) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let conn = self
            .conns
            .get(|| connect(&self.path, self.read_only), |_| true)?;
        f(conn.as_ref().expect("opened by the pool"))
    }
}

fn connect(path: &Path, read_only: bool) -> anyhow::Result<Connection> {
    use rusqlite::OpenFlags;
    if !read_only {
        return super::open_conn(path);
    }
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {} read-only", path.display()))
}

impl ReadRecord for SqliteReader {
    fn devices(&self) -> anyhow::Result<Vec<DeviceRow>> {
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
            let mut chains: HashMap<String, ChainView> = HashMap::new();
            let mut stmt = c.prepare(
                "SELECT device, head_seq, head_digest, verified_through, signed, verified, restarts, refused FROM chains",
            )?;
            for row in stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, ChainRow {
                    head_seq: r.get(1)?,
                    head_digest: r.get(2)?,
                    verified_through: r.get(3)?,
                    signed: r.get(4)?,
                    verified: r.get(5)?,
                    restarts: r.get(6)?,
                    refused: r.get(7)?,
                }))
            })? {
                let (d, chain) = row?;
                chains.insert(d, chain.into());
            }
            let mut stmt = c.prepare(
                "SELECT device, site, edge, last_seq, last_ts_ms, last_seen_ms, messages, duplicates, conflicts FROM devices ORDER BY device",
            )?;
            let rows = stmt.query_map([], |r| {
                let (id, edge): (String, String) = (r.get(0)?, r.get(2)?);
                let (g, l) = (gaps.remove(&id), lost.remove(&id));
                Ok(DeviceRow {
                    online: online.get(&edge).copied().unwrap_or(false),
                    site: r.get(1)?,
                    last_seq: r.get(3)?,
                    last_sample: rfc3339(r.get(4)?),
                    last_seen: rfc3339(r.get(5)?),
                    messages: r.get(6)?,
                    duplicates: r.get(7)?,
                    conflicts: r.get(8)?,
                    missing: 0,
                    gaps: Vec::new(),
                    lost: 0,
                    lost_ranges: Vec::new(),
                    chain: chains.remove(&id),
                    edge,
                    id,
                }
                .with_ranges(g.unwrap_or_default(), l.unwrap_or_default()))
            })?;
            rows.collect()
        })
    }

    fn edges(&self) -> anyhow::Result<Vec<EdgeRow>> {
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

    fn sequence_totals(&self) -> anyhow::Result<(i64, i64)> {
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

    fn seq_span(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Option<crate::view::SeqSpan>> {
        self.with_any(|c| super::compact::seq_span(c, device, (from_ms, to_ms)))
    }

    fn message_qualities(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Vec<(i64, Vec<ems_core::Quality>)>> {
        self.with_any(|c| {
            let mut out = Vec::new();
            super::compact::each_message(c, device, (from_ms, to_ms), |m| {
                out.push((m.ts_ms, crate::view::qualities(m.points.as_deref())?));
                Ok(())
            })?;
            Ok(out)
        })
    }

    fn last_reading(
        &self,
        device: &str,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Option<(i64, f64)>> {
        self.with_any(|c| {
            let series: Option<i64> = c
                .prepare_cached("SELECT id FROM series WHERE device = ?1 AND point = ?2")?
                .query_row(params![device, point], |r| r.get(0))
                .optional()?;
            let Some(series) = series else {
                return Ok(None);
            };
            let mut last = None;
            super::compact::each_message(c, device, (from_ms, to_ms), |m| {
                if let Some(v) = crate::view::good_value(series, m.points.as_deref())? {
                    last = Some((m.ts_ms, v));
                }
                Ok(())
            })?;
            Ok(last)
        })
    }

    fn first_slot(&self, device: &str, point: &str) -> anyhow::Result<Option<i64>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT MIN(slot_ms) FROM point_slots WHERE device = ?1 AND point = ?2",
            )?
            .query_row(params![device, point], |r| r.get(0))
        })
    }

    fn point_slots(
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

    fn quarantine(&self, limit: i64) -> anyhow::Result<Vec<QuarantineRow>> {
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
                    truncated: QuarantineRow::is_truncated(kept, full),
                    payload_bytes: full,
                    payload_sha256: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    fn quarantine_payload(&self, id: i64) -> anyhow::Result<Option<Vec<u8>>> {
        self.with(|c| {
            c.query_row("SELECT payload FROM quarantine WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    fn quarantine_totals(&self) -> anyhow::Result<Vec<QuarantineTotal>> {
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

    fn anomalies(&self, limit: i64) -> anyhow::Result<Vec<AnomalyRow>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT device, point, ts_ms, kind, detail, withdrawn_ms FROM anomalies ORDER BY id DESC LIMIT ?1")?;
            let rows = stmt.query_map([limit], |r| {
                Ok(AnomalyRow { device: r.get(0)?, point: r.get(1)?, at: rfc3339(r.get(2)?), kind: r.get(3)?, detail: r.get(4)?, withdrawn: r.get::<_, Option<i64>>(5)?.map(rfc3339) })
            })?;
            rows.collect()
        })
    }

    fn verify_rollups(&self, rules: &AccountingRules) -> anyhow::Result<Integrity> {
        self.with_any(|c| super::integrity::verify_rollups(c, rules))
    }

    fn verify_evidence(
        &self,
        keys: &crate::evidence::EdgeKeys,
    ) -> anyhow::Result<crate::evidence::EvidenceReport> {
        self.with_any(|c| super::integrity::verify_evidence(c, keys))
    }

    fn export_csv(
        &self,
        device: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        out: &mut dyn std::io::Write,
    ) -> anyhow::Result<u64> {
        super::integrity::export_csv(&self.path, device, from_ms, to_ms, out)
    }

    fn audit(&self, limit: i64) -> anyhow::Result<Vec<crate::audit::AuditRow>> {
        self.with_any(|c| super::audit_log::list(c, limit))
    }

    fn verify_audit(&self) -> anyhow::Result<crate::audit::AuditReport> {
        self.with_any(super::audit_log::verify)
    }

    fn log_act(&self, entry: &crate::audit::Entry) -> anyhow::Result<()> {
        super::audit_log::log_act(&mut super::open_conn(&self.path)?, entry)
    }

    fn note_files(
        &self,
        digests: &std::collections::BTreeMap<String, String>,
        declared: Option<&crate::audit::Declared>,
        now_ms: i64,
    ) -> anyhow::Result<usize> {
        let mut c = super::open_conn(&self.path)?;
        super::audit_log::note_files(&mut c, digests, declared, now_ms)
    }

    fn declare_lost(
        &self,
        device: &str,
        from_seq: i64,
        by: &str,
        reason: &str,
        now_ms: i64,
    ) -> anyhow::Result<DeclareOutcome> {
        super::write::declare_lost(&self.path, device, from_seq, by, reason, now_ms)
    }
}
