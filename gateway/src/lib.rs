//! ems-gateway: the collector. MQTT ingest, ledger, accounting, storage, HTTP API, dashboard.
//!
//! [`ingest`] validates and commits what the edges send ([`store`] keeps it in SQLite);
//! [`accounting`] turns counters into hourly deltas and unit indicators using the
//! [`coefficients`] data file and the plant model of [`config`]; [`alarms`] watches them and
//! the ledger; [`api`] serves them.
//! [`serve`] runs it all with shutdown as a parameter; [`demo`] adds a broker, a simulated
//! plant and an edge in the same process.

pub mod accounting;
pub mod alarms;
pub mod api;
pub mod coefficients;
pub mod config;
pub mod demo;
pub mod influx;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod packed;
pub mod receiver;
pub mod report;
pub mod storage;
pub mod store;
pub mod upload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

pub use config::Plant;
use ingest::{IngestConfig, NowFn, Validation};
use store::{AccountingRules, Store, Tracked, WriteRules};

/// The counter points the plant's units account for.
pub fn accounting_rules(plant: &Plant) -> AccountingRules {
    let mut tracked: HashMap<String, HashMap<String, Tracked>> = HashMap::new();
    for f in plant.flows() {
        tracked.entry(f.device.clone()).or_default().insert(
            f.point.clone(),
            Tracked {
                rollover: f.rollover,
                max_rate_per_h: f.max_rate_per_h,
                frozen_after_ms: plant.config.accounting.frozen_after_s as i64 * 1000,
                fill: plant.config.accounting.gap_fill,
            },
        );
    }
    AccountingRules {
        tracked,
        max_gap_ms: plant.config.accounting.max_sample_gap_s as i64 * 1000,
    }
}

/// What the store checks and keeps, from the plant's `[ingest]` and `[quarantine]`.
pub fn write_rules(plant: &Plant) -> WriteRules {
    let a = &plant.config.ingest;
    WriteRules {
        accounting: accounting_rules(plant),
        max_late_ms: a.max_late_s as i64 * 1000,
        max_seq_jump: a.max_seq_jump as i64,
        quarantine_payload_bytes: plant.config.quarantine.max_payload_bytes,
    }
}

/// Runs ingest and the HTTP API until `shutdown`; HTTP on `listener`. `subscribed` fires when
/// the broker holds the gateway's subscription (see [`ingest::run`]).
pub async fn serve(
    plant: Plant,
    listener: TcpListener,
    now: NowFn,
    subscribed: Option<oneshot::Sender<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut store = Store::open(&plant.config.storage.path)?;
    if plant.config.influx.is_some() {
        store.enable_sink()?;
    }
    let reader = Arc::new(store.reader()?);
    let metrics = Arc::new(metrics::Metrics::default());
    let (committed, _) = broadcast::channel(16);
    let ingest_cfg = IngestConfig {
        mqtt: plant.config.mqtt.clone(),
        validation: Validation::for_plant(&plant, now.clone()),
        rules: write_rules(&plant),
    };
    let plant = Arc::new(plant);
    let db = &plant.config.storage.path;
    let alarm_book = Arc::new(std::sync::Mutex::new(alarms::AlarmBook::open(db)?));
    let alarm_task = tokio::spawn(alarms::run(
        plant.clone(),
        Arc::new(alarms::AlarmBook::open(db)?.into()),
        Arc::new(store.reader()?),
        now.clone(),
        metrics.clone(),
        committed.clone(),
        shutdown.clone(),
    ));
    let upkeep_task = tokio::spawn(upkeep(plant.clone(), now.clone(), shutdown.clone()));
    let sink_task = match plant.config.influx.clone() {
        Some(cfg) => {
            let queue = influx::SinkQueue::open(db, Duration::from_secs_f64(cfg.rollup_settle_s))?;
            Some(tokio::spawn(influx::run(
                plant.clone(),
                cfg,
                queue,
                Arc::new(store.reader()?),
                metrics.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let upload_errors = upload::UploadErrors::default();
    let upload_task = match plant.config.upload.clone() {
        Some(cfg) => Some(tokio::spawn(upload::run(
            plant.clone(),
            cfg,
            Arc::new(store.reader()?),
            now.clone(),
            upload_errors.clone(),
            shutdown.clone(),
        ))),
        None => None,
    };
    let state = api::AppState {
        plant,
        reader,
        upload_errors,
        alarms: alarm_book,
        metrics: metrics.clone(),
        committed: committed.clone(),
        now,
        shutdown: shutdown.clone(),
    };
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
            .context("HTTP server failed")
    });
    let ingest_result = ingest::run(
        ingest_cfg,
        store,
        metrics,
        committed,
        subscribed,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let http_result = http.await.context("HTTP task panicked")?;
    let alarm_result = alarm_task.await.context("alarm task panicked")?;
    upkeep_task.await.context("upkeep task panicked")?;
    if let Some(t) = sink_task {
        t.await.context("sink task panicked")??;
    }
    if let Some(t) = upload_task {
        t.await.context("upload task panicked")??;
    }
    ingest_result?;
    alarm_result?;
    http_result
}

/// At start and then hourly until `shutdown`: raw samples older than `raw_retention_days` (if
/// set), quarantine entries older than its `retention_days` (if set), and counter checkpoints
/// no late reading can need any more are deleted.
async fn upkeep(plant: Arc<Plant>, now: NowFn, shutdown: CancellationToken) {
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3_600));
    loop {
        tokio::select! {
            _ = hourly.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let (plant, now_ms) = (plant.clone(), now());
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut pruner = store::Pruner::open(&plant.config.storage.path)?;
            if let Some(days) = plant.config.storage.raw_retention_days {
                let before_ms = now_ms - i64::from(days) * 86_400_000;
                let n = pruner.prune_raw(before_ms)?;
                if n > 0 {
                    tracing::info!(rows = n, before = %store::rfc3339(before_ms), "Old raw samples deleted (retention).");
                }
            }
            if let Some(days) = plant.config.quarantine.retention_days {
                let before_ms = now_ms - i64::from(days) * 86_400_000;
                let n = pruner.prune_quarantine(before_ms)?;
                if n > 0 {
                    tracing::info!(entries = n, before = %store::rfc3339(before_ms), "Old quarantine entries deleted (their counts are kept).");
                }
            }
            let window = plant.config.ingest.max_late_s as i64 * 1000 + accounting::SLOT_MS;
            pruner.prune_checkpoints(window)?;
            Ok(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Upkeep failed; retried in an hour."),
            Err(e) => tracing::error!(error = %e, "Upkeep task failed."),
        }
    }
}
