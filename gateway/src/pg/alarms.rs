//! PostgreSQL's alarm book ([`AlarmStore`]): one book for the whole database. Every gateway
//! may list and acknowledge; one at a time evaluates (the holder of a session advisory lock,
//! taken over by another gateway when its session ends), so that an alarm is raised and
//! published once however many gateways share the database.

use std::collections::HashMap;

use anyhow::Context as _;
use postgres::{Client, NoTls, Row};

use super::redact;
use crate::alarm_book::{
    change, AckOutcome, AlarmRow, AlarmStore, Change, DeviceState, Kind, Observation,
    ANOMALY_KIND_SQL,
};
use crate::clock::rfc3339;

/// The evaluator's lock (beside the migrations' 7243001 and the ledger's 7243002).
const EVALUATOR_LOCK: i64 = 7_243_003;

const ROW_COLUMNS: &str =
    "id, kind, subject, raised_ms, cleared_ms, value, threshold, message, acked_ms, acked_by";

pub struct PgAlarms {
    url: String,
    /// `None` only while being dropped.
    client: Option<Client>,
    /// This connection holds the evaluator's lock.
    evaluator: bool,
}

fn row(r: &Row) -> anyhow::Result<AlarmRow> {
    let kind: String = r.get(1);
    let cleared: Option<i64> = r.get(4);
    Ok(AlarmRow {
        id: r.get(0),
        kind: Kind::parse(&kind).with_context(|| format!("unknown alarm kind {kind}"))?,
        subject: r.get(2),
        raised: rfc3339(r.get(3)),
        active: cleared.is_none(),
        cleared: cleared.map(rfc3339),
        value: r.get(5),
        threshold: r.get(6),
        message: r.get(7),
        acked: r.get::<_, Option<i64>>(8).map(rfc3339),
        acked_by: r.get(9),
    })
}

impl PgAlarms {
    /// A connection of its own to a database a gateway has migrated.
    pub fn connect(url: &str) -> anyhow::Result<PgAlarms> {
        Ok(PgAlarms {
            url: url.to_owned(),
            client: Some(
                Client::connect(url, NoTls)
                    .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?,
            ),
            evaluator: false,
        })
    }

    /// The connection, reopened if the server closed it (and with it the evaluator's lock).
    fn client(&mut self) -> anyhow::Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(Client::connect(&self.url, NoTls).with_context(|| {
                format!("cannot reconnect to PostgreSQL at {}", redact(&self.url))
            })?);
            self.evaluator = false;
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn get(&mut self, id: i64) -> anyhow::Result<Option<AlarmRow>> {
        self.client()?
            .query_opt(
                &format!("SELECT {ROW_COLUMNS} FROM alarms WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(row)
            .transpose()
    }
}

impl AlarmStore for PgAlarms {
    fn evaluates(&mut self) -> anyhow::Result<bool> {
        if !self.evaluator {
            self.evaluator = self
                .client()?
                .query_one("SELECT pg_try_advisory_lock($1)", &[&EVALUATOR_LOCK])?
                .get(0);
        }
        Ok(self.evaluator)
    }

    fn newest_poll_ms(&mut self) -> anyhow::Result<Option<i64>> {
        Ok(self
            .client()?
            .query_one("SELECT MAX(last_ts_ms) FROM devices", &[])?
            .get(0))
    }

    fn devices(&mut self) -> anyhow::Result<Vec<DeviceState>> {
        Ok(self
            .client()?
            .query(
                "SELECT d.device, COALESCE(e.online, false), d.last_good_ms,
                        (SELECT COALESCE(SUM(to_seq - from_seq + 1), 0)::int8 FROM gaps g
                         WHERE g.device = d.device)
                 FROM devices d LEFT JOIN edges e ON e.edge = d.edge ORDER BY d.device COLLATE \"C\"",
                &[],
            )?
            .iter()
            .map(|r| DeviceState {
                device: r.get(0),
                edge_online: r.get(1),
                last_good_ms: r.get(2),
                missing: r.get(3),
            })
            .collect())
    }

    fn apply(&mut self, now_ms: i64, found: &[Observation]) -> anyhow::Result<Vec<AlarmRow>> {
        let mut tx = self.client()?.transaction()?;
        let mut changed = Vec::new();
        for obs in found {
            let kind = obs.kind.as_str();
            let open: Option<i64> = tx
                .query_opt(
                    "SELECT id FROM alarms WHERE kind = $1 AND subject = $2 AND cleared_ms IS NULL",
                    &[&kind, &obs.subject],
                )?
                .map(|r| r.get(0));
            let id = match (change(open.is_some(), obs), open) {
                (Some(Change::Raise), _) => tx
                    .query_one(
                        "INSERT INTO alarms (kind, subject, raised_ms, value, threshold, message)
                         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                        &[
                            &kind,
                            &obs.subject,
                            &now_ms,
                            &obs.value,
                            &obs.threshold,
                            &obs.message,
                        ],
                    )?
                    .get(0),
                (Some(Change::Clear), Some(id)) => {
                    tx.execute(
                        "UPDATE alarms SET cleared_ms = $2, value = $3 WHERE id = $1",
                        &[&id, &now_ms, &obs.value],
                    )?;
                    id
                }
                (_, Some(id)) => {
                    // Still open: keep its figure current.
                    tx.execute(
                        "UPDATE alarms SET value = $2, threshold = $3, message = $4 WHERE id = $1",
                        &[&id, &obs.value, &obs.threshold, &obs.message],
                    )?;
                    continue;
                }
                (_, None) => continue,
            };
            changed.push(id);
        }
        let rows = tx
            .query(
                &format!("SELECT {ROW_COLUMNS} FROM alarms WHERE id = ANY($1) ORDER BY id"),
                &[&changed],
            )?
            .iter()
            .map(row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        tx.commit()?;
        Ok(rows)
    }

    fn report_anomalies(&mut self, now_ms: i64) -> anyhow::Result<Vec<AlarmRow>> {
        let mut tx = self.client()?.transaction()?;
        let rows = tx
            .query(
                &format!(
                    "INSERT INTO alarms (kind, subject, raised_ms, cleared_ms, message, anomaly_id)
                     SELECT {ANOMALY_KIND_SQL}, device || '/' || point, $1, $1,
                            device || ' ' || point || ': ' || kind || ' (' || detail || ')', id
                     FROM anomalies
                     WHERE id > (SELECT COALESCE(MAX(anomaly_id), 0) FROM alarms)
                     ORDER BY id
                     RETURNING {ROW_COLUMNS}"
                ),
                &[&now_ms],
            )?
            .iter()
            .map(row)
            .collect::<anyhow::Result<Vec<_>>>()?;
        tx.commit()?;
        let mut rows = rows;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    fn list(&mut self, pending_only: bool, limit: i64) -> anyhow::Result<Vec<AlarmRow>> {
        let filter = if pending_only {
            "WHERE cleared_ms IS NULL OR acked_ms IS NULL"
        } else {
            ""
        };
        self.client()?
            .query(
                &format!("SELECT {ROW_COLUMNS} FROM alarms {filter} ORDER BY id DESC LIMIT $1"),
                &[&limit],
            )?
            .iter()
            .map(row)
            .collect()
    }

    fn open_counts(&mut self) -> anyhow::Result<HashMap<Kind, i64>> {
        Ok(self
            .client()?
            .query(
                "SELECT kind, COUNT(*) FROM alarms WHERE cleared_ms IS NULL GROUP BY kind",
                &[],
            )?
            .iter()
            .filter_map(|r| Some((Kind::parse(r.get(0))?, r.get(1))))
            .collect())
    }

    fn ack(&mut self, id: i64, by: &str, now_ms: i64) -> anyhow::Result<AckOutcome> {
        let mut tx = self.client()?.transaction()?;
        let what = tx
            .query_opt(
                "UPDATE alarms SET acked_ms = $2, acked_by = $3 WHERE id = $1 AND acked_ms IS NULL
                 RETURNING kind || ' ' || subject",
                &[&id, &now_ms, &by],
            )?
            .map(|r| r.get::<_, String>(0));
        if let Some(what) = &what {
            super::audit_log::append(
                &mut tx,
                &crate::audit::Entry::ack_alarm(id, what, by, now_ms),
            )?;
        }
        tx.commit()?;
        let updated = u64::from(what.is_some());
        Ok(match (updated, self.get(id)?) {
            (_, None) => AckOutcome::NotFound,
            (0, Some(r)) => AckOutcome::AlreadyAcked(r),
            (_, Some(r)) => AckOutcome::Acked(r),
        })
    }
}

impl Drop for PgAlarms {
    /// As the reader's: the client's drop blocks, which a runtime's own thread may not.
    fn drop(&mut self) {
        if let (Some(client), Ok(_)) = (self.client.take(), tokio::runtime::Handle::try_current()) {
            std::thread::spawn(move || drop(client));
        }
    }
}
