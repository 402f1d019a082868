//! Alarms: conditions the energy manager must see, raised and cleared with hysteresis, kept in
//! SQLite, listed by the API, acknowledged by an operator and published on MQTT.
//!
//! Each condition is about one subject:
//! - `above_limit` (`unit/limit`): the unit's figure over the trailing window is above the limit
//!   (the level-3 threshold after corrections); it clears once the figure is back below by the
//!   hysteresis band.
//! - `near_limit` (`unit/limit`): within `near_limit_pct` of the limit; `above_limit` supersedes it.
//! - `data_gap` (unit): the window (from the unit's first data on, if later) is under 90 %
//!   complete, so its figures are not reportable.
//!   While it is open the unit's limit alarms keep their state: nothing can be judged.
//! - `device_offline` (device): its edge reported it offline, or no good reading arrived for
//!   `offline_after_s` of plant time.
//! - `sequence_gap` (device): sequence numbers missing in the ledger.
//! - `counter_anomaly` (`device/point`): a spike, jump, restart or frozen counter found at ingest.
//!   An event: raised already cleared, it waits only for acknowledgement.
//!
//! Open alarms are published retained on `{prefix}/alarms/{kind}/{subject}`, and again, cleared,
//! when they clear; after a reconnect the current state of every alarm still unacknowledged or
//! open is published again, so a subscriber always ends with the truth.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::clock::NowFn;
use crate::config::{AlarmClock, AlarmsConfig, MqttConfig};
use crate::metrics::{KindLabel, Metrics};
use crate::store::{open_conn, rfc3339, Reader};
use ems_energy::counter::{HOUR_MS, SLOT_MS};
use ems_energy::indicators::indicators;
use ems_energy::Plant;

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

/// Raise and clear conditions for a figure where higher is worse: raised above `threshold`,
/// cleared at or below it minus `band_pct` of its magnitude (so it works for negative
/// thresholds, such as the converter's).
pub fn above(value: f64, threshold: f64, band_pct: f64) -> (bool, bool) {
    (
        value > threshold,
        value <= threshold - threshold.abs() * band_pct / 100.0,
    )
}

/// Limit and data-gap conditions of every unit over the window ending at the last whole
/// 15-minute slot before `now_ms`.
pub fn observe_units(
    plant: &Plant,
    cfg: &AlarmsConfig,
    now_ms: i64,
    reader: &Reader,
) -> anyhow::Result<Vec<Observation>> {
    let end = now_ms - now_ms.rem_euclid(SLOT_MS);
    let window_start = end - i64::from(cfg.window_h) * HOUR_MS;
    let mut out = Vec::new();
    for unit in &plant.units {
        // A unit that started reporting within the window is judged from its first data on:
        // the time before commissioning is not a gap. Less than an hour is not judged yet.
        let mut first = None;
        for f in &unit.flows {
            if let Some(s) = reader.first_slot(&f.device, &f.point)? {
                first = Some(first.map_or(s, |m: i64| m.min(s)));
            }
        }
        let Some(first) = first else { continue };
        let start = window_start.max(first);
        if end - start < HOUR_MS {
            continue;
        }
        let hours = (end - start) as f64 / HOUR_MS as f64;
        let mut rows = Vec::with_capacity(unit.flows.len());
        for f in &unit.flows {
            rows.push(reader.point_slots(&f.device, &f.point, start, end)?);
        }
        let Some(ind) = indicators(unit, &[(start, end)], plant.utc_offset(), |i| {
            rows[i].clone()
        })
        .pop() else {
            continue;
        };
        let completeness = ind.completeness * 100.0;
        out.push(Observation {
            kind: Kind::DataGap,
            subject: unit.id.clone(),
            raise: !ind.reportable,
            clear: ind.reportable,
            value: Some(completeness),
            threshold: Some(90.0),
            message: format!(
                "{}: only {completeness:.1} % of the last {hours:.1} h covered by good samples; its figures are not reportable",
                unit.name
            ),
        });
        if !ind.reportable {
            continue;
        }
        for j in &ind.limits {
            let limit = j.thresholds[2];
            let subject = format!("{}/{}", unit.id, j.code);
            let unit_label = j.indicator.unit_label();
            let (raise, clear) = above(j.value, limit, cfg.hysteresis_pct);
            out.push(Observation {
                kind: Kind::AboveLimit,
                subject: subject.clone(),
                raise,
                clear,
                value: Some(j.value),
                threshold: Some(limit),
                message: format!(
                    "{}: {:.2} {unit_label} over the last {hours:.1} h, above the {} limit of {limit:.2}",
                    unit.name, j.value, j.standard
                ),
            });
            let near = limit - limit.abs() * cfg.near_limit_pct / 100.0;
            let (near_raise, near_clear) = above(j.value, near, cfg.hysteresis_pct);
            out.push(Observation {
                kind: Kind::NearLimit,
                subject,
                raise: near_raise && !raise,
                clear: near_clear || raise,
                value: Some(j.value),
                threshold: Some(near),
                message: format!(
                    "{}: {:.2} {unit_label} over the last {hours:.1} h, within {} % of the {} limit of {limit:.2}",
                    unit.name, j.value, cfg.near_limit_pct, j.standard
                ),
            });
        }
    }
    Ok(out)
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

/// Offline and sequence-gap conditions of every device.
pub fn observe_devices(
    devices: &[DeviceState],
    cfg: &AlarmsConfig,
    now_ms: i64,
) -> Vec<Observation> {
    let mut out = Vec::new();
    for d in devices {
        let silent_s = d.last_good_ms.map(|t| (now_ms - t) as f64 / 1000.0);
        let stale = silent_s.is_none_or(|s| s > cfg.offline_after_s as f64);
        let offline = !d.edge_online || stale;
        out.push(Observation {
            kind: Kind::DeviceOffline,
            subject: d.device.clone(),
            raise: offline,
            clear: !offline,
            value: silent_s,
            threshold: Some(cfg.offline_after_s as f64),
            message: match (d.edge_online, silent_s) {
                (false, _) => format!("{}: its edge reports it offline", d.device),
                (true, Some(s)) => format!("{}: no good reading for {s:.0} s", d.device),
                (true, None) => format!("{}: no good reading yet", d.device),
            },
        });
        out.push(Observation {
            kind: Kind::SequenceGap,
            subject: d.device.clone(),
            raise: d.missing > 0,
            clear: d.missing == 0,
            value: Some(d.missing as f64),
            threshold: Some(0.0),
            message: format!(
                "{}: {} sequence numbers missing (not yet delivered or lost)",
                d.device, d.missing
            ),
        });
    }
    out
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

/// One evaluation: every condition, in one transaction. Returns what changed.
pub fn evaluate(
    cfg: &AlarmsConfig,
    plant: &Plant,
    book: &mut AlarmBook,
    reader: &Reader,
    now_ms: i64,
) -> anyhow::Result<Vec<AlarmRow>> {
    let now_ms = match cfg.clock {
        AlarmClock::Wall => now_ms,
        AlarmClock::Data => book.newest_poll_ms()?.unwrap_or(now_ms),
    };
    let mut found = observe_units(plant, cfg, now_ms, reader)?;
    found.extend(observe_devices(&book.devices()?, cfg, now_ms));
    let mut changed = book.apply(now_ms, &found)?;
    changed.extend(book.report_anomalies(now_ms)?);
    Ok(changed)
}

/// Evaluates the alarms every `check_every_s` until `shutdown`, publishing each change.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: AlarmsConfig,
    mqtt: MqttConfig,
    plant: Arc<Plant>,
    book: Arc<Mutex<AlarmBook>>,
    reader: Arc<Reader>,
    now: NowFn,
    metrics: Arc<Metrics>,
    changed_tx: broadcast::Sender<()>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let prefix = mqtt.topic_prefix.clone();
    let mut opts = MqttOptions::new(format!("{}-alarms", mqtt.client_id), &mqtt.host, mqtt.port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let (Some(u), Some(p)) = (&mqtt.username, &mqtt.password) {
        opts.set_credentials(u.clone(), p.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1_000);

    // On every (re)connection, publish the current state of what is pending again.
    let republish_book = book.clone();
    let republish_client = client.clone();
    let republish_prefix = prefix.clone();
    let loop_shutdown = shutdown.clone();
    let connection = tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                ev = eventloop.poll() => ev,
                () = loop_shutdown.cancelled() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let pending = {
                        let book = republish_book.lock().expect("alarm book lock poisoned");
                        book.list(true, 10_000)
                    };
                    match pending {
                        Ok(rows) => publish(&republish_client, &republish_prefix, &rows),
                        Err(e) => tracing::error!(error = %e, "Cannot list alarms to publish."),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "Alarm publisher: MQTT connection lost; retrying.");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = loop_shutdown.cancelled() => break,
                    }
                }
            }
        }
    });

    let period = Duration::from_secs_f64(cfg.check_every_s);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let (cfg, plant, book, reader) = (cfg.clone(), plant.clone(), book.clone(), reader.clone());
        let now_ms = now();
        let result = tokio::task::spawn_blocking(move || {
            let mut book = book.lock().expect("alarm book lock poisoned");
            let changed = evaluate(&cfg, &plant, &mut book, &reader, now_ms)?;
            Ok::<_, anyhow::Error>((changed, book.open_counts()?))
        })
        .await?;
        match result {
            Ok((changed, counts)) => {
                for kind in Kind::ALL {
                    let label = KindLabel {
                        kind: kind.as_str().into(),
                    };
                    metrics
                        .alarms_open
                        .get_or_create(&label)
                        .set(counts.get(&kind).copied().unwrap_or(0));
                }
                for r in &changed {
                    if r.active || r.kind == Kind::CounterAnomaly {
                        metrics
                            .alarms_raised
                            .get_or_create(&KindLabel {
                                kind: r.kind.as_str().into(),
                            })
                            .inc();
                        tracing::warn!(kind = r.kind.as_str(), subject = %r.subject, "Alarm: {}", r.message);
                    } else {
                        tracing::info!(kind = r.kind.as_str(), subject = %r.subject, "Alarm cleared.");
                    }
                }
                if !changed.is_empty() {
                    publish(&client, &prefix, &changed);
                    let _ = changed_tx.send(());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "Alarm evaluation failed; next try on the next tick.")
            }
        }
    }
    let _ = client.try_disconnect();
    let _ = connection.await;
    Ok(())
}

/// Queues the alarms' current state, retained. The table is the record: what cannot be queued
/// now is published again on the next connection.
fn publish(client: &AsyncClient, prefix: &str, rows: &[AlarmRow]) {
    for r in rows {
        let payload = serde_json::to_vec(r).expect("an alarm serialises");
        if let Err(e) = client.try_publish(r.topic(prefix), QoS::AtLeastOnce, true, payload) {
            tracing::debug!(error = %e, "Alarm not queued for MQTT; it is published on reconnect.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(raise: bool, clear: bool) -> Observation {
        Observation {
            kind: Kind::AboveLimit,
            subject: "u/l".into(),
            raise,
            clear,
            value: None,
            threshold: None,
            message: String::new(),
        }
    }

    #[test]
    fn hysteresis_holds_an_alarm_until_the_figure_is_back_below_the_band() {
        // Limit 415 kgce/t, band 2 %: raised above 415, cleared at or below 406.7.
        let step = |open: bool, v: f64| {
            let (r, c) = above(v, 415.0, 2.0);
            change(open, &obs(r, c))
        };
        assert_eq!(step(false, 414.0), None);
        assert_eq!(step(false, 416.0), Some(Change::Raise));
        assert_eq!(step(true, 414.0), None, "inside the band: stays open");
        assert_eq!(step(true, 410.0), None);
        assert_eq!(step(true, 406.7), Some(Change::Clear));
        assert_eq!(step(false, 410.0), None, "inside the band: stays closed");
    }

    #[test]
    fn the_band_works_for_negative_limits() {
        // Converter limit -12 kgce/t: -11 is above (worse); clears at -12.24 or lower.
        assert_eq!(above(-11.0, -12.0, 2.0), (true, false));
        assert_eq!(above(-12.1, -12.0, 2.0), (false, false));
        assert_eq!(above(-12.3, -12.0, 2.0), (false, true));
    }

    fn cfg() -> AlarmsConfig {
        AlarmsConfig {
            offline_after_s: 600,
            ..AlarmsConfig::default()
        }
    }

    #[test]
    fn a_device_is_offline_when_its_edge_says_so_or_it_stays_silent() {
        let now = 10_000_000;
        let dev = |edge_online, last_good_ms, missing| DeviceState {
            device: "m1".into(),
            edge_online,
            last_good_ms,
            missing,
        };
        let offline = |d: DeviceState| observe_devices(&[d], &cfg(), now)[0].raise;
        assert!(!offline(dev(true, Some(now - 60_000), 0)));
        assert!(offline(dev(false, Some(now - 60_000), 0)));
        assert!(offline(dev(true, Some(now - 601_000), 0)));
        assert!(offline(dev(true, None, 0)));
        let gap = observe_devices(&[dev(true, Some(now), 3)], &cfg(), now)[1].clone();
        assert_eq!(
            (gap.kind, gap.raise, gap.value),
            (Kind::SequenceGap, true, Some(3.0))
        );
    }

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
            let (raise, clear) = above(v, 415.0, 2.0);
            Observation {
                value: Some(v),
                threshold: Some(415.0),
                ..obs(raise, clear)
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
