//! The alarm table: alarms raised, kept current, cleared with hysteresis and acknowledged once;
//! what [`crate::alarms`] finds is applied here in one transaction.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{open_conn, rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    AboveLimit,
    NearLimit,
    DataGap,
    DeviceOffline,
    SequenceGap,
    CounterAnomaly,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::AboveLimit,
        Kind::NearLimit,
        Kind::DataGap,
        Kind::DeviceOffline,
        Kind::SequenceGap,
        Kind::CounterAnomaly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AboveLimit => "above_limit",
            Kind::NearLimit => "near_limit",
            Kind::DataGap => "data_gap",
            Kind::DeviceOffline => "device_offline",
            Kind::SequenceGap => "sequence_gap",
            Kind::CounterAnomaly => "counter_anomaly",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What one evaluation found about one condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: Kind,
    pub subject: String,
    /// The raise condition holds.
    pub raise: bool,
    /// The clear condition holds; with hysteresis it is stricter than `!raise`.
    pub clear: bool,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Raise,
    Clear,
}

/// Hysteresis: an open alarm stays open until its clear condition holds; a closed one opens
/// when its raise condition holds.
pub fn change(open: bool, obs: &Observation) -> Option<Change> {
    match (open, obs.raise, obs.clear) {
        (false, true, _) => Some(Change::Raise),
        (true, _, true) => Some(Change::Clear),
        _ => None,
    }
}

/// What the ledger says about one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    pub device: String,
    /// Its edge's last status.
    pub edge_online: bool,
    pub last_good_ms: Option<i64>,
    pub missing: i64,
}

/// One alarm as the API and the MQTT topic show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlarmRow {
    pub id: i64,
    pub kind: Kind,
    pub subject: String,
    /// The condition still holds.
    pub active: bool,
    pub raised: String,
    pub cleared: Option<String>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
    pub acked: Option<String>,
    pub acked_by: Option<String>,
}

impl AlarmRow {
    pub fn topic(&self, prefix: &str) -> String {
        format!("{prefix}/alarms/{}/{}", self.kind.as_str(), self.subject)
    }
}

#[derive(Debug)]
pub enum AckOutcome {
    Acked(AlarmRow),
    AlreadyAcked(AlarmRow),
    NotFound,
}

/// The alarm table.
pub struct AlarmBook {
    conn: Connection,
}

const ROW_COLUMNS: &str =
    "id, kind, subject, raised_ms, cleared_ms, value, threshold, message, acked_ms, acked_by";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlarmRow> {
    let kind: String = r.get(1)?;
    Ok(AlarmRow {
        id: r.get(0)?,
        kind: Kind::parse(&kind).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown alarm kind {kind}").into(),
            )
        })?,
        subject: r.get(2)?,
        raised: rfc3339(r.get(3)?),
        active: r.get::<_, Option<i64>>(4)?.is_none(),
        cleared: r.get::<_, Option<i64>>(4)?.map(rfc3339),
        value: r.get(5)?,
        threshold: r.get(6)?,
        message: r.get(7)?,
        acked: r.get::<_, Option<i64>>(8)?.map(rfc3339),
        acked_by: r.get(9)?,
    })
}

impl AlarmBook {
    /// Opens the gateway's database, which [`crate::store::Store::open`] has migrated.
    pub fn open(path: &Path) -> anyhow::Result<AlarmBook> {
        Ok(AlarmBook {
            conn: open_conn(path)?,
        })
    }

    fn get(&self, id: i64) -> rusqlite::Result<Option<AlarmRow>> {
        self.conn
            .query_row(
                &format!("SELECT {ROW_COLUMNS} FROM alarms WHERE id = ?1"),
                [id],
                row,
            )
            .optional()
    }

    /// The newest poll time any device delivered.
    pub fn newest_poll_ms(&self) -> anyhow::Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT MAX(last_ts_ms) FROM devices", [], |r| r.get(0))?)
    }

    pub fn devices(&self) -> anyhow::Result<Vec<DeviceState>> {
        let mut stmt = self.conn.prepare(
            "SELECT d.device, COALESCE(e.online, 0), d.last_good_ms,
                    (SELECT COALESCE(SUM(to_seq - from_seq + 1), 0) FROM gaps g WHERE g.device = d.device)
             FROM devices d LEFT JOIN edges e ON e.edge = d.edge ORDER BY d.device",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeviceState {
                device: r.get(0)?,
                edge_online: r.get(1)?,
                last_good_ms: r.get(2)?,
                missing: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Applies one evaluation in one transaction; returns the alarms raised or cleared.
    pub fn apply(&mut self, now_ms: i64, found: &[Observation]) -> anyhow::Result<Vec<AlarmRow>> {
        let tx = self.conn.transaction()?;
        let mut changed = Vec::new();
        for obs in found {
            let open: Option<i64> = tx
                .query_row(
                    "SELECT id FROM alarms WHERE kind = ?1 AND subject = ?2 AND cleared_ms IS NULL",
                    params![obs.kind.as_str(), obs.subject],
                    |r| r.get(0),
                )
                .optional()?;
            let id = match (change(open.is_some(), obs), open) {
                (Some(Change::Raise), _) => {
                    tx.execute(
                        "INSERT INTO alarms (kind, subject, raised_ms, value, threshold, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![obs.kind.as_str(), obs.subject, now_ms, obs.value, obs.threshold, obs.message],
                    )?;
                    tx.last_insert_rowid()
                }
                (Some(Change::Clear), Some(id)) => {
                    tx.execute(
                        "UPDATE alarms SET cleared_ms = ?2, value = ?3 WHERE id = ?1",
                        params![id, now_ms, obs.value],
                    )?;
                    id
                }
                (_, Some(id)) => {
                    // Still open: keep its figure current.
                    tx.execute(
                        "UPDATE alarms SET value = ?2, threshold = ?3, message = ?4 WHERE id = ?1",
                        params![id, obs.value, obs.threshold, obs.message],
                    )?;
                    continue;
                }
                (_, None) => continue,
            };
            changed.push(id);
        }
        let rows = changed
            .into_iter()
            .map(|id| {
                tx.query_row(
                    &format!("SELECT {ROW_COLUMNS} FROM alarms WHERE id = ?1"),
                    [id],
                    row,
                )
            })
            .collect::<rusqlite::Result<Vec<_>>>()?;
        tx.commit()?;
        Ok(rows)
    }

    /// Raises one event alarm for each counter anomaly not reported yet.
    pub fn report_anomalies(&mut self, now_ms: i64) -> anyhow::Result<Vec<AlarmRow>> {
        let tx = self.conn.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO alarms (kind, subject, raised_ms, cleared_ms, message, anomaly_id)
             SELECT 'counter_anomaly', device || '/' || point, ?1, ?1,
                    device || ' ' || point || ': ' || kind || ' (' || detail || ')', id
             FROM anomalies
             WHERE id > (SELECT COALESCE(MAX(anomaly_id), 0) FROM alarms)
             ORDER BY id",
            [now_ms],
        )?;
        let rows = {
            let mut stmt = tx.prepare(&format!(
                "SELECT {ROW_COLUMNS} FROM alarms WHERE anomaly_id IS NOT NULL ORDER BY id DESC LIMIT ?1"
            ))?;
            let mut rows = stmt
                .query_map([inserted as i64], row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.reverse();
            rows
        };
        tx.commit()?;
        Ok(rows)
    }

    /// Alarms newest first: all, or only those open or unacknowledged.
    pub fn list(&self, pending_only: bool, limit: i64) -> anyhow::Result<Vec<AlarmRow>> {
        let filter = if pending_only {
            "WHERE cleared_ms IS NULL OR acked_ms IS NULL"
        } else {
            ""
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {ROW_COLUMNS} FROM alarms {filter} ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Open alarms by kind.
    pub fn open_counts(&self) -> anyhow::Result<HashMap<Kind, i64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, COUNT(*) FROM alarms WHERE cleared_ms IS NULL GROUP BY kind")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = HashMap::new();
        for r in rows {
            let (k, n) = r?;
            if let Some(k) = Kind::parse(&k) {
                out.insert(k, n);
            }
        }
        Ok(out)
    }

    /// An operator acknowledges an alarm; the first acknowledgement stands.
    pub fn ack(&mut self, id: i64, by: &str, now_ms: i64) -> anyhow::Result<AckOutcome> {
        let updated = self.conn.execute(
            "UPDATE alarms SET acked_ms = ?2, acked_by = ?3 WHERE id = ?1 AND acked_ms IS NULL",
            params![id, now_ms, by],
        )?;
        Ok(match (updated, self.get(id)?) {
            (_, None) => AckOutcome::NotFound,
            (0, Some(r)) => AckOutcome::AlreadyAcked(r),
            (_, Some(r)) => AckOutcome::Acked(r),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_book(tag: &str) -> (std::path::PathBuf, AlarmBook) {
        let p = std::env::temp_dir().join(format!("ems-alarms-{tag}-{}.db", std::process::id()));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        crate::store::Store::open(&p).unwrap();
        let book = AlarmBook::open(&p).unwrap();
        (p, book)
    }

    #[test]
    fn an_alarm_is_raised_once_kept_current_cleared_and_acknowledged_once() {
        let (_p, mut book) = temp_book("cycle");
        let at = |v: f64| {
            let (raise, clear) = crate::alarms::above(v, 415.0, 2.0);
            Observation {
                kind: Kind::AboveLimit,
                subject: "u/l".into(),
                raise,
                clear,
                value: Some(v),
                threshold: Some(415.0),
                message: String::new(),
            }
        };
        let raised = book.apply(1_000, &[at(420.0)]).unwrap();
        assert_eq!(raised.len(), 1);
        assert!(raised[0].active);
        assert!(
            book.apply(2_000, &[at(425.0)]).unwrap().is_empty(),
            "raised once"
        );
        let listed = book.list(true, 10).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].value,
            Some(425.0),
            "the open alarm shows the current figure"
        );
        assert!(
            book.apply(3_000, &[at(410.0)]).unwrap().is_empty(),
            "within the band"
        );
        let cleared = book.apply(4_000, &[at(400.0)]).unwrap();
        assert_eq!(cleared.len(), 1);
        assert!(!cleared[0].active);
        assert_eq!(book.open_counts().unwrap().get(&Kind::AboveLimit), None);
        // Cleared but not acknowledged: still pending.
        assert_eq!(book.list(true, 10).unwrap().len(), 1);
        let id = cleared[0].id;
        assert!(
            matches!(book.ack(id, "wang", 5_000).unwrap(), AckOutcome::Acked(r) if r.acked_by.as_deref() == Some("wang"))
        );
        assert!(
            matches!(book.ack(id, "li", 6_000).unwrap(), AckOutcome::AlreadyAcked(r) if r.acked_by.as_deref() == Some("wang"))
        );
        assert!(matches!(
            book.ack(id + 100, "li", 6_000).unwrap(),
            AckOutcome::NotFound
        ));
        assert!(book.list(true, 10).unwrap().is_empty());
        // Raised again later: a new alarm.
        let again = book.apply(7_000, &[at(430.0)]).unwrap();
        assert_ne!(again[0].id, id);
        assert_eq!(book.list(false, 10).unwrap().len(), 2);
    }

    #[test]
    fn each_counter_anomaly_is_reported_once() {
        let (p, mut book) = temp_book("anomaly");
        let conn = open_conn(&p).unwrap();
        let add = |kind: &str| {
            conn.execute(
                "INSERT INTO anomalies (device, point, ts_ms, kind, detail) VALUES ('m1', 'total', 0, ?1, 'x')",
                [kind],
            )
            .unwrap();
        };
        add("spike");
        add("restart");
        let first = book.report_anomalies(10).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].kind, Kind::CounterAnomaly);
        assert_eq!(first[0].subject, "m1/total");
        assert!(first[0].message.contains("spike") && first[1].message.contains("restart"));
        assert!(!first[0].active, "an event is raised cleared");
        assert!(book.report_anomalies(20).unwrap().is_empty());
        add("frozen");
        let next = book.report_anomalies(30).unwrap();
        assert_eq!(next.len(), 1);
        assert!(next[0].message.contains("frozen"));
    }
}
