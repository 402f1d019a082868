//! SQLite's alarm table ([`crate::alarm_book`]'s `AlarmStore`): what [`crate::alarms`] finds is
//! applied here in one transaction.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{open_conn, rfc3339};
use crate::alarm_book::{
    change, AckOutcome, AlarmRow, AlarmStore, Change, DeviceState, Kind, Observation,
    ANOMALY_KIND_SQL,
};

/// The alarm table.
pub struct SqliteAlarms {
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

impl SqliteAlarms {
    /// Opens the gateway's database, which [`crate::store::Store::open`] has migrated.
    pub fn open(path: &Path) -> anyhow::Result<SqliteAlarms> {
        Ok(SqliteAlarms {
            conn: open_conn(path)?,
        })
    }

    /// The alarm book kept here.
    pub fn book(path: &Path) -> anyhow::Result<crate::alarm_book::AlarmBook> {
        Ok(crate::alarm_book::AlarmBook::new(SqliteAlarms::open(path)?))
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
}

impl AlarmStore for SqliteAlarms {
    fn newest_poll_ms(&mut self) -> anyhow::Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT MAX(last_ts_ms) FROM devices", [], |r| r.get(0))?)
    }

    fn devices(&mut self) -> anyhow::Result<Vec<DeviceState>> {
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

    fn apply(&mut self, now_ms: i64, found: &[Observation]) -> anyhow::Result<Vec<AlarmRow>> {
        // Immediate: it reads, then writes; begun deferred, another writer's commit in between
        // makes the write fail at once instead of waiting.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
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

    fn report_anomalies(&mut self, now_ms: i64) -> anyhow::Result<Vec<AlarmRow>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let inserted = tx.execute(
            &format!(
                "INSERT INTO alarms (kind, subject, raised_ms, cleared_ms, message, anomaly_id)
                 SELECT {ANOMALY_KIND_SQL}, device || '/' || point, ?1, ?1,
                        device || ' ' || point || ': ' || kind || ' (' || detail || ')', id
                 FROM anomalies
                 WHERE id > (SELECT COALESCE(MAX(anomaly_id), 0) FROM alarms)
                 ORDER BY id"
            ),
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

    fn list(&mut self, pending_only: bool, limit: i64) -> anyhow::Result<Vec<AlarmRow>> {
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

    fn open_counts(&mut self) -> anyhow::Result<HashMap<Kind, i64>> {
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

    fn ack(&mut self, id: i64, by: &str, now_ms: i64) -> anyhow::Result<AckOutcome> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let updated = tx.execute(
            "UPDATE alarms SET acked_ms = ?2, acked_by = ?3 WHERE id = ?1 AND acked_ms IS NULL",
            params![id, now_ms, by],
        )?;
        if updated > 0 {
            let what: String = tx.query_row(
                "SELECT kind || ' ' || subject FROM alarms WHERE id = ?1",
                [id],
                |r| r.get(0),
            )?;
            super::audit_log::append(&tx, &crate::audit::Entry::ack_alarm(id, &what, by, now_ms))?;
        }
        tx.commit()?;
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

    fn temp_book(tag: &str) -> (std::path::PathBuf, SqliteAlarms) {
        let p = std::env::temp_dir().join(format!("ems-alarms-{tag}-{}.db", std::process::id()));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        crate::store::Store::open(&p).unwrap();
        let book = SqliteAlarms::open(&p).unwrap();
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
    fn evaluation_waits_for_another_writer_instead_of_failing() {
        // The gateway's other writers (ingest, compaction) commit all the time: an evaluation
        // that read first and wrote then found its snapshot stale and failed at once
        // ("database is locked"), tick after tick, under a busy writer.
        let (p, mut book) = temp_book("busy");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = open_conn(&p).unwrap();
                c.execute("CREATE TABLE IF NOT EXISTS busy (n INTEGER)", [])
                    .unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .unwrap();
                    tx.execute("INSERT INTO busy VALUES (1)", []).unwrap();
                    tx.commit().unwrap();
                }
            })
        };
        let at = |raise: bool, i: i64| Observation {
            kind: Kind::DataGap,
            subject: format!("d{}", i % 7),
            raise,
            clear: !raise,
            value: None,
            threshold: None,
            message: String::new(),
        };
        let failed = (0..400)
            .filter(|&i| book.apply(i, &[at(i % 2 == 0, i)]).is_err())
            .count();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(failed, 0, "evaluations failed under a busy writer");
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
