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
//! - `evidence` (`device/evidence`, protocol v1.2): a message refused for its evidence (a
//!   signature that does not verify with the edge's enrolled key, an unsigned message in an
//!   enrolled edge's name, a broken chain) or a chain that restarted. An event, like the above.
//!
//! Open alarms are published retained on `{prefix}/alarms/{kind}/{subject}`, and again, cleared,
//! when they clear; after a reconnect the current state of every alarm still unacknowledged or
//! open is published again, so a subscriber always ends with the truth.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use crate::alarm_book::{
    change, AckOutcome, AlarmBook, AlarmRow, Change, DeviceState, Kind, Observation,
};
use crate::clock::NowFn;
use crate::config::{AlarmClock, AlarmsConfig, MqttConfig};
use crate::metrics::{KindLabel, Metrics};
use crate::view::Reader;
use ems_energy::counter::{HOUR_MS, SLOT_MS};
use ems_energy::figures::unit_figures;
use ems_energy::Plant;

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
        let Some(ind) = unit_figures(plant, reader, unit, &[(start, end)])?.pop() else {
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
            // Level 3 for an existing unit, level 2 for a new one. Over hours this is a warning
            // to act on, not a legal exceedance: limits judge months and years.
            let limit = j.thresholds[usize::from(j.limit_level.clamp(1, 3)) - 1];
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
                    "{}: {:.2} {unit_label} over the last {hours:.1} h, above the {} limit of {limit:.2} (indicative: the standard judges months and years)",
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

/// One evaluation: every condition, in one transaction. Returns what changed.
pub fn evaluate(
    cfg: &AlarmsConfig,
    plant: &Plant,
    book: &mut AlarmBook,
    reader: &Reader,
    now_ms: i64,
) -> anyhow::Result<Vec<AlarmRow>> {
    if !book.evaluates()? {
        return Ok(Vec::new());
    }
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
                    // Off the runtime: the book's database client may block.
                    let book = republish_book.clone();
                    let pending = tokio::task::spawn_blocking(move || {
                        book.lock()
                            .expect("alarm book lock poisoned")
                            .list(true, 10_000)
                    })
                    .await;
                    match pending {
                        Ok(Ok(rows)) => publish(&republish_client, &republish_prefix, &rows),
                        Ok(Err(e)) => tracing::error!(error = %e, "Cannot list alarms to publish."),
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
                    if r.active || matches!(r.kind, Kind::CounterAnomaly | Kind::Evidence) {
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
}
