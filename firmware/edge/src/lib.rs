//! ems-edge: the edge agent. Polls meters over Modbus, publishes over MQTT.
//!
//! [`config`] and [`profile`] describe the site; [`poller`] reads devices with the plans from
//! ems-core's planner; [`seq`] keeps sequence numbers durable; [`spool`] keeps every result on
//! disk until the broker has it; [`outbox`] and [`publisher`] deliver at least once. [`run`] wires them together with shutdown as a parameter.

pub mod acl;
pub mod board;
pub mod bus;
pub mod config;
pub mod confirm;
pub mod device_plan;
pub mod evidence;
pub mod learner;
pub mod link;
pub mod log_limit;
pub mod metrics;
pub mod outbox;
pub mod poller;
pub mod profile;
pub mod publisher;
pub mod seq;
pub mod spool;
pub mod stamp;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::Site;
use link::Link;
use poller::{DevicePlan, LinkContext};
use publisher::{PublishStats, PublisherConfig};
use seq::SeqStore;

/// Poll results buffered between the pollers and the publisher.
const CHANNEL_CAPACITY: usize = 10_000;

/// Plans every device (logging its plan) and groups the plans by link.
pub fn plan_site(
    devices: impl IntoIterator<Item = config::Device>,
) -> anyhow::Result<BTreeMap<Link, Vec<DevicePlan>>> {
    let mut links: BTreeMap<Link, Vec<DevicePlan>> = BTreeMap::new();
    for d in devices {
        let (id, link) = (d.id.clone(), d.link.clone());
        let plan = DevicePlan::new(d).with_context(|| format!("cannot plan device {id}"))?;
        tracing::info!(device = %id, link = %link, plan = %plan.summary(), "Planned.");
        links.entry(link).or_default().push(plan);
    }
    for plans in links.values_mut() {
        plans.shrink_to_fit();
    }
    Ok(links)
}

/// Runs the agent until `shutdown`; then stops polling, delivers what was read and returns.
pub async fn run(site: Site, shutdown: CancellationToken) -> anyhow::Result<PublishStats> {
    let cfg = &site.config;
    let seq_store = SeqStore::open(&cfg.data_dir)?;
    let signer = match &site.signing {
        Some(seed) => Some(Arc::new(Mutex::new(evidence::Signer::open(
            seed,
            &cfg.data_dir,
            |d| seq_store.last(d),
        )?))),
        None => None,
    };
    let seq = Arc::new(Mutex::new(seq_store));
    let device_ids = site.devices.iter().map(|d| d.id.clone()).collect();
    let links = plan_site(site.devices)?;
    let (spool, report) = spool::Spool::open(&cfg.data_dir.join("spool"), cfg.spool.clone())?;
    let spool = Arc::new(Mutex::new(spool));
    if report.pending > 0 {
        tracing::info!(
            pending = report.pending,
            "Spool holds messages from before the restart; delivering them first."
        );
    }
    let metrics = Arc::new(metrics::EdgeMetrics::default());
    let metrics_server = match &cfg.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            // Machine-readable for scripts and tests that use port 0.
            println!("METRICS {}", listener.local_addr()?);
            Some(tokio::spawn(metrics::serve(
                listener,
                metrics.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    // One heartbeat per link, and the publisher's last.
    let heartbeats = board::Heartbeats::new(links.len() + 1);
    let supervisor = match &site.board {
        Some(spec) => Some(tokio::spawn(board::supervise(
            board::Board::open(spec)?,
            heartbeats.clone(),
            spec.hang_after,
            metrics.clone(),
            shutdown.clone(),
        ))),
        None => None,
    };
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let publisher = tokio::spawn(publisher::run(
        PublisherConfig {
            mqtt: cfg.mqtt.clone(),
            tls: site.tls.clone(),
            site: cfg.site.clone(),
            edge: cfg.edge_id.clone(),
            devices: device_ids,
            heartbeat: (heartbeats.clone(), links.len()),
        },
        spool.clone(),
        rx,
        metrics.clone(),
    ));
    let mut pollers = Vec::new();
    for (i, (link, plans)) in links.into_iter().enumerate() {
        let lc = LinkContext {
            heartbeat: (heartbeats.clone(), i),
            site: cfg.site.clone(),
            edge: cfg.edge_id.clone(),
            interval: Duration::from_millis(cfg.poll_interval_ms),
            max_skip: (cfg.max_backoff_ms / cfg.poll_interval_ms).max(1),
            metrics: metrics.clone(),
            topic_prefix: cfg.mqtt.topic_prefix.clone(),
            seq: seq.clone(),
            signer: signer.clone(),
            spool: spool.clone(),
            out: tx.clone(),
        };
        pollers.push(tokio::spawn(poller::run_link(
            link,
            plans,
            lc,
            shutdown.clone(),
        )));
    }
    drop(tx);
    let mut first_error = None;
    for p in pollers {
        if let Err(e) = p.await.context("poller panicked").and_then(|r| r) {
            tracing::error!(error = %e, "Poller stopped.");
            first_error.get_or_insert(e);
            shutdown.cancel();
        }
    }
    // Every numbered result is signed: the chain heads are current for the next start.
    if let Some(signer) = &signer {
        if let Err(e) = signer.lock().expect("signer lock poisoned").save() {
            tracing::error!(error = %e, "Cannot save the chain heads; each device starts a new chain at the next start.");
        }
    }
    let stats = publisher.await.context("publisher panicked")?;
    if let Some(s) = supervisor {
        shutdown.cancel();
        s.await.context("board supervisor panicked")??;
    }
    if let Some(server) = metrics_server {
        shutdown.cancel();
        server.await.context("metrics server panicked")??;
    }
    if stats.dropped > 0 {
        tracing::error!(
            dropped = stats.dropped,
            "The spool was full: the oldest undelivered messages were dropped."
        );
    }
    if stats.undelivered > 0 {
        tracing::warn!(
            undelivered = stats.undelivered,
            "Stopped with messages the broker has not acknowledged; they stay in the spool for the next start."
        );
    } else {
        tracing::info!(
            acknowledged = stats.acknowledged,
            "Stopped; every message was acknowledged."
        );
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}
