//! Startup glue: runs ingest, the HTTP API, alarms, upkeep and the sinks of one gateway.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::NowFn;
use crate::config::Config;
use crate::ingest::{IngestConfig, Validation};
use crate::store::Store;
use crate::{alarms, api, influx, ingest, metrics, store, upload};

/// Runs ingest and the HTTP API until `shutdown`; HTTP on `listener`. `subscribed` fires when
/// the broker holds the gateway's subscription (see [`ingest::run`]).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    now: NowFn,
    subscribed: Option<oneshot::Sender<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.storage.backend == crate::config::Backend::Postgres {
        return serve_postgres(config, listener, now, subscribed, shutdown).await;
    }
    let mut store = Store::open(&config.storage.path)?;
    if config.influx.is_some() {
        store.enable_sink(Box::new(influx::sample_lines))?;
    }
    let reader = Arc::new(store.reader()?);
    note_files(&reader, &config, &now)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let (committed, _) = broadcast::channel(16);
    let ingest_cfg = IngestConfig {
        mqtt: config.mqtt.clone(),
        validation: Validation::for_config(&config, now.clone()),
        rules: config.write_rules(),
        only_sites: None,
    };
    let config = Arc::new(config);
    let plant = config.plant.clone();
    let db = &config.storage.path;
    let alarm_book = Arc::new(std::sync::Mutex::new(
        store::alarm_book::SqliteAlarms::book(db)?,
    ));
    let alarm_task = tokio::spawn(alarms::run(
        config.alarms.clone(),
        config.mqtt.clone(),
        plant.clone(),
        Arc::new(store::alarm_book::SqliteAlarms::book(db)?.into()),
        Arc::new(store.reader()?),
        now.clone(),
        metrics.clone(),
        committed.clone(),
        shutdown.clone(),
    ));
    let upkeep_task = tokio::spawn(hourly(
        config.clone(),
        now.clone(),
        shutdown.clone(),
        upkeep,
    ));
    let sink_task = match config.influx.clone() {
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
    let upload_task = match config.upload.clone() {
        Some(cfg) => {
            let maker = upload::RecordMaker::new(Arc::new(store.reader()?), &cfg, config.sealer())?;
            Some(tokio::spawn(upload::run(
                plant.clone(),
                cfg,
                outbox_of(&config.storage),
                Arc::new(maker),
                now.clone(),
                upload_errors.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let open_outbox = outbox_of(&config.storage);
    let state = api::AppState {
        config,
        reader,
        upload_errors,
        open_outbox,
        alarms: alarm_book,
        node: None,
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

/// A gateway whose ingest commits to PostgreSQL: in a slot (`[cluster]`), it stands by until it
/// holds the slot's lease, then ingests its sites with the slot's MQTT client id and persistent
/// session, renewing the lease; a writer whose lease was taken over stops (its commits are
/// fenced by the epoch anyway). Active or standing by, it serves the API and dashboard over
/// every site of the database (the central view), `/healthz` with its role, and the alarms
/// (one book for the database, evaluated by one gateway at a time) and the InfluxDB sink (each
/// gateway queues what it stores, one of the database sends) and the upload (one gateway of
/// the database makes the records, one sends to each endpoint).
async fn serve_postgres(
    config: Config,
    listener: TcpListener,
    now: NowFn,
    subscribed: Option<oneshot::Sender<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let url = config
        .storage
        .url
        .clone()
        .context("[storage] url for the postgres backend")?;
    let cluster = config.cluster.clone();
    let metrics = Arc::new(metrics::Metrics::default());
    let state = Arc::new(std::sync::Mutex::new(api::NodeRole {
        role: "standby",
        slot: cluster.as_ref().map(|c| c.slot.clone()),
        instance: cluster.as_ref().map(|c| c.instance.clone()),
        epoch: None,
    }));
    // The central view reads what every slot commits: the live page is told every few seconds
    // besides this node's own commits.
    let (committed, _) = broadcast::channel(16);
    let config = Arc::new(config);
    let opened = config.clone();
    let now_files = now.clone();
    let (reader, alarm_reader, books) = tokio::task::spawn_blocking(move || {
        let reader = open_reader(&opened)?;
        note_files(&reader, &opened, &now_files)?;
        let url = opened.storage.url.as_deref().context("[storage] url")?;
        let alarm_reader = crate::view::Reader::new(crate::pg::PgReader::connect(url)?);
        let books = [
            alarms::AlarmBook::new(crate::pg::PgAlarms::connect(url)?),
            alarms::AlarmBook::new(crate::pg::PgAlarms::connect(url)?),
        ];
        anyhow::Ok((reader, alarm_reader, books))
    })
    .await
    .context("reader task panicked")??;
    let [api_book, alarm_book] = books;
    // Every instance has an alarm publisher of its own: the slot's client id with its name.
    let mut alarm_mqtt = config.mqtt.clone();
    if let Some(c) = &cluster {
        alarm_mqtt.client_id = format!("{}-{}", alarm_mqtt.client_id, c.instance);
    }
    let alarm_task = tokio::spawn(alarms::run(
        config.alarms.clone(),
        alarm_mqtt,
        config.plant.clone(),
        Arc::new(alarm_book.into()),
        Arc::new(alarm_reader),
        now.clone(),
        metrics.clone(),
        committed.clone(),
        shutdown.clone(),
    ));
    let upload_errors = upload::UploadErrors::default();
    let app = api::AppState {
        config: config.clone(),
        reader: Arc::new(reader),
        upload_errors: upload_errors.clone(),
        open_outbox: outbox_of(&config.storage),
        alarms: Arc::new(api_book.into()),
        node: Some(state.clone()),
        metrics: metrics.clone(),
        committed: committed.clone(),
        now: now.clone(),
        shutdown: shutdown.clone(),
    };
    // The InfluxDB sink: every gateway queues what it stores; one of the database sends.
    let sink_task = match config.influx.clone() {
        Some(cfg) => {
            let sink_url = url.clone();
            let table =
                tokio::task::spawn_blocking(move || crate::pg::PgSinkQueue::connect(&sink_url))
                    .await
                    .context("sink task panicked")??;
            let reader = pg_reader(&url).await?;
            let settle = Duration::from_secs_f64(cfg.rollup_settle_s);
            Some(tokio::spawn(influx::run(
                config.plant.clone(),
                cfg,
                influx::SinkQueue::new(table, settle),
                Arc::new(reader),
                metrics.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    // Upload: one gateway of the database makes the records, one sends to each endpoint.
    let upload_task = match config.upload.clone() {
        Some(cfg) => {
            let reader = Arc::new(pg_reader(&url).await?);
            let maker = upload::RecordMaker::new(reader, &cfg, config.sealer())?;
            Some(tokio::spawn(upload::run(
                config.plant.clone(),
                cfg,
                outbox_of(&config.storage),
                Arc::new(maker),
                now.clone(),
                upload_errors.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let side = SideTasks {
        ticks: tokio::spawn(tick(committed.clone(), shutdown.clone())),
        upkeep: tokio::spawn(hourly(
            config.clone(),
            now.clone(),
            shutdown.clone(),
            pg_upkeep,
        )),
        alarms: alarm_task,
        sink: sink_task,
        upload: upload_task,
    };
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, api::router(app))
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
            .context("HTTP server failed")
    });

    // Connect; in a slot, wait for its lease (the postgres client blocks: off the runtime).
    let (store_url, wait) = (url.clone(), shutdown.clone());
    let (slot, sink_on) = (cluster.clone(), config.influx.is_some());
    let taken = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<crate::pg::PgStore>> {
        let mut store = crate::pg::PgStore::connect(&store_url)?;
        if sink_on {
            store.enable_sink(Box::new(influx::sample_lines));
        }
        let Some(c) = slot else {
            return Ok(Some(store));
        };
        let ttl_ms = c.lease_s as i64 * 1000;
        let mut announced = false;
        while !wait.is_cancelled() {
            if let Some(lease) = store.acquire(&c.slot, &c.instance, ttl_ms)? {
                tracing::info!(slot = %lease.slot, instance = %lease.holder, epoch = lease.epoch, "Slot taken: ingesting.");
                return Ok(Some(store));
            }
            if !announced {
                tracing::info!(slot = %c.slot, instance = %c.instance, "Slot held by another instance: standing by.");
                announced = true;
            }
            std::thread::sleep(Duration::from_millis((ttl_ms / 5).clamp(100, 2_000) as u64));
        }
        Ok(None)
    })
    .await
    .context("slot task panicked")??;
    let Some(store) = taken else {
        http.await.context("HTTP task panicked")??;
        return side.join().await;
    };
    // The lease keeper: a connection of its own renews every third of the lease; a lease
    // found taken over stops this gateway.
    let keeper = match (&cluster, store.lease().cloned()) {
        (Some(c), Some(lease)) => {
            {
                let mut s = state.lock().expect("node state lock");
                s.role = "active";
                s.epoch = Some(lease.epoch);
            }
            let (url, stop, ttl_ms) = (url.clone(), shutdown.clone(), c.lease_s as i64 * 1000);
            Some(tokio::task::spawn_blocking(
                move || -> anyhow::Result<()> {
                    let mut keeper = crate::pg::PgStore::connect(&url)?;
                    keeper.hold(lease.clone());
                    while !stop.is_cancelled() {
                        std::thread::sleep(Duration::from_millis((ttl_ms / 3).max(100) as u64));
                        match keeper.renew(ttl_ms) {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::error!(slot = %lease.slot, epoch = lease.epoch, "The slot was taken over: this gateway stops.");
                                stop.cancel();
                                anyhow::bail!(
                                    "slot `{}` taken over by another instance",
                                    lease.slot
                                );
                            }
                            // A database out of reach: commits wait for it too; the lease may lapse.
                            Err(e) => tracing::warn!(error = %e, "Cannot renew the slot's lease."),
                        }
                    }
                    Ok(())
                },
            ))
        }
        _ => {
            state.lock().expect("node state lock").role = "active";
            None
        }
    };
    let ingest_cfg = IngestConfig {
        mqtt: config.mqtt.clone(),
        validation: Validation::for_config(&config, now.clone()),
        rules: config.write_rules(),
        // A slot takes only its own sites off the shared broker.
        only_sites: cluster.as_ref().map(|_| config.ingest.sites.clone()),
    };
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
    let side_result = side.join().await;
    let keeper_result = match keeper {
        Some(k) => k.await.context("lease task panicked")?,
        None => Ok(()),
    };
    http.await.context("HTTP task panicked")??;
    ingest_result?;
    side_result?;
    keeper_result
}

/// What a PostgreSQL gateway runs beside ingest, active or standing by.
struct SideTasks {
    ticks: tokio::task::JoinHandle<()>,
    upkeep: tokio::task::JoinHandle<()>,
    alarms: tokio::task::JoinHandle<anyhow::Result<()>>,
    sink: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    upload: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl SideTasks {
    /// Waits for every one (after shutdown); the first failure is the result.
    async fn join(self) -> anyhow::Result<()> {
        self.ticks.await.context("tick task panicked")?;
        self.upkeep.await.context("upkeep task panicked")?;
        let alarms = self.alarms.await.context("alarm task panicked")?;
        if let Some(t) = self.sink {
            t.await.context("sink task panicked")??;
        }
        if let Some(t) = self.upload {
            t.await.context("upload task panicked")??;
        }
        alarms
    }
}

/// Logs in the audit log each configuration or data file that changed since the last start.
fn note_files(reader: &crate::view::Reader, config: &Config, now: &NowFn) -> anyhow::Result<()> {
    let changed = reader
        .note_files(&config.digests, None, now())
        .context("cannot log the configuration's digests in the audit log")?;
    if changed > 0 {
        tracing::info!(
            changed,
            "Configuration or data files changed since the last start; logged in the audit log."
        );
    }
    Ok(())
}

/// A reader of PostgreSQL at `url` (connected off the runtime: its client blocks).
async fn pg_reader(url: &str) -> anyhow::Result<crate::view::Reader> {
    let url = url.to_owned();
    let reader = tokio::task::spawn_blocking(move || crate::pg::PgReader::connect(&url))
        .await
        .context("reader task panicked")??;
    Ok(crate::view::Reader::new(reader))
}

/// The outbox of the configured backend.
pub fn outbox_of(storage: &crate::config::StorageConfig) -> upload::OpenOutbox {
    let (backend, path, url) = (
        storage.backend,
        storage.path.clone(),
        storage.url.clone().unwrap_or_default(),
    );
    Arc::new(
        move || -> anyhow::Result<Box<dyn crate::storage::UploadStore>> {
            Ok(match backend {
                crate::config::Backend::Sqlite => {
                    Box::new(crate::store::upload_outbox::Outbox::open(&path)?)
                }
                crate::config::Backend::Postgres => Box::new(crate::pg::PgOutbox::connect(&url)?),
            })
        },
    )
}

/// The record the configuration names, for reading (its schema brought up to date first): what
/// the command line's reports and export read. Blocks (PostgreSQL's client): call it off the
/// runtime.
pub fn open_reader(config: &Config) -> anyhow::Result<crate::view::Reader> {
    match config.storage.backend {
        crate::config::Backend::Sqlite => Store::open(&config.storage.path)?.reader(),
        crate::config::Backend::Postgres => {
            let url = config
                .storage
                .url
                .as_deref()
                .context("[storage] url for the postgres backend")?;
            drop(crate::pg::PgStore::connect(url)?);
            Ok(crate::view::Reader::new(crate::pg::PgReader::connect(url)?))
        }
    }
}

/// On PostgreSQL: raw history past `raw_retention_days` dropped by day partitions, quarantine
/// entries past their retention and checkpoints no late reading can need deleted. Every gateway
/// of the database runs it; each step is idempotent.
fn pg_upkeep(config: &Config, now_ms: i64, _shutdown: &CancellationToken) -> anyhow::Result<()> {
    use crate::pg::upkeep;
    let url = config.storage.url.as_deref().context("[storage] url")?;
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    if let Some(days) = config.storage.raw_retention_days {
        let before_ms = now_ms - i64::from(days) * 86_400_000;
        let done = upkeep::drop_raw_before(&mut client, before_ms)?;
        if done.partitions > 0 {
            tracing::info!(partitions = done.partitions, messages = done.messages, before = %store::rfc3339(before_ms), "Old raw days dropped (retention).");
        }
    }
    if let Some(days) = config.quarantine.retention_days {
        let n = upkeep::prune_quarantine(&mut client, now_ms - i64::from(days) * 86_400_000)?;
        if n > 0 {
            tracing::info!(
                entries = n,
                "Old quarantine entries deleted (their counts are kept)."
            );
        }
    }
    let window = config.ingest.max_late_s as i64 * 1000 + ems_energy::counter::SLOT_MS;
    upkeep::prune_checkpoints(&mut client, window)?;
    Ok(())
}

/// Runs `job` at start and then hourly until `shutdown`, off the runtime, which it is given to
/// stop a long job early; a failure is logged and tried again the next hour.
async fn hourly(
    config: Arc<Config>,
    now: NowFn,
    shutdown: CancellationToken,
    job: fn(&Config, i64, &CancellationToken) -> anyhow::Result<()>,
) {
    let mut hourly = tokio::time::interval(std::time::Duration::from_secs(3_600));
    loop {
        tokio::select! {
            _ = hourly.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let (config, now_ms, stop) = (config.clone(), now(), shutdown.clone());
        match tokio::task::spawn_blocking(move || job(&config, now_ms, &stop)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "Upkeep failed; retried in an hour."),
            Err(e) => tracing::error!(error = %e, "Upkeep task failed."),
        }
    }
}

/// Tells the live page every 5 s until `shutdown` (what other slots committed is not heard here).
async fn tick(committed: broadcast::Sender<()>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = every.tick() => { let _ = committed.send(()); }
            () = shutdown.cancelled() => return,
        }
    }
}

/// SQLite's: raw samples older than `raw_retention_days` (if set), quarantine entries older than
/// its `retention_days` (if set), and counter checkpoints no late reading can need any more are
/// deleted; settled raw history is compacted.
fn upkeep(config: &Config, now_ms: i64, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut pruner = store::Pruner::open(&config.storage.path)?;
    if let Some(days) = config.storage.raw_retention_days {
        let before_ms = now_ms - i64::from(days) * 86_400_000;
        let n = pruner.prune_raw(before_ms)?;
        if n > 0 {
            tracing::info!(rows = n, before = %store::rfc3339(before_ms), "Old raw samples deleted (retention).");
        }
    }
    if let Some(days) = config.quarantine.retention_days {
        let before_ms = now_ms - i64::from(days) * 86_400_000;
        let n = pruner.prune_quarantine(before_ms)?;
        if n > 0 {
            tracing::info!(entries = n, before = %store::rfc3339(before_ms), "Old quarantine entries deleted (their counts are kept).");
        }
    }
    let window = config.ingest.max_late_s as i64 * 1000 + ems_energy::counter::SLOT_MS;
    pruner.prune_checkpoints(window)?;
    if config.storage.compact_after_h > 0 {
        let done = store::Compactor::open(&config.storage.path)?
            .compact(config.storage.history_settle_ms(), &|| {
                shutdown.is_cancelled()
            })?;
        if done.blocks > 0 {
            tracing::info!(
                blocks = done.blocks,
                points = done.points,
                bytes_before = done.sample_bytes_before,
                bytes_after = done.block_bytes,
                "Settled raw history compacted."
            );
        }
    }
    Ok(())
}
