//! The agent's Prometheus metrics, served on `metrics_listen` (off when not configured): polls
//! per device and their latency per link (a histogram per device would cost thousands of series
//! and most of the agent's memory on a big site), Modbus requests, failures by kind, plans
//! rebuilt by what showed, the spool's depth and what it dropped, and deliveries the broker
//! acknowledged, with those that replayed a backlog.

use std::sync::Arc;

use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabel {
    pub link: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabel {
    pub device: String,
    /// The quality code: timeout, exception:NN, comm, crc, decode.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplanLabel {
    /// What the agent learned: refused_registers, length_limit, measured_cost.
    pub reason: String,
}

pub struct EdgeMetrics {
    registry: Registry,
    pub polls: Family<DeviceLabel, Counter>,
    pub poll_seconds: Family<LinkLabel, Histogram, fn() -> Histogram>,
    pub requests: Counter,
    pub point_failures: Family<FailureLabel, Counter>,
    pub devices_backing_off: Gauge,
    /// Plans rebuilt from what a device showed, by what it showed.
    pub replans: Family<ReplanLabel, Counter>,
    /// 1 while the broker connection is up.
    pub broker_connected: Gauge,
    pub spool_depth: Gauge,
    pub spool_dropped: Gauge,
    pub delivered: Counter,
    /// Of those, messages that waited in the spool for the broker (the replay of a backlog).
    pub replayed: Counter,
    /// Warnings of failing devices not written (one a device a minute at most).
    pub log_lines_held_back: Counter,
    /// Results the broker acknowledged that the gateway has not yet confirmed committed
    /// (protocol v1.1), and those sent again after a reconnect for want of that confirmation.
    pub awaiting_commit: Gauge,
    pub resent_uncommitted: Counter,
    /// Polls of a meter read on its own clock sent without their values: its clock had not
    /// been read yet, so they had no time on it.
    pub unplaced_polls: Family<DeviceLabel, Counter>,
}

fn poll_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ems_edge");
        let m = EdgeMetrics {
            polls: Family::default(),
            poll_seconds: Family::new_with_constructor(poll_histogram),
            requests: Counter::default(),
            point_failures: Family::default(),
            devices_backing_off: Gauge::default(),
            replans: Family::default(),
            broker_connected: Gauge::default(),
            spool_depth: Gauge::default(),
            spool_dropped: Gauge::default(),
            delivered: Counter::default(),
            replayed: Counter::default(),
            awaiting_commit: Gauge::default(),
            resent_uncommitted: Counter::default(),
            log_lines_held_back: Counter::default(),
            unplaced_polls: Family::default(),
            registry: Registry::default(),
        };
        registry.register("polls", "Device polls", m.polls.clone());
        registry.register(
            "unplaced_polls",
            "Polls of a meter read on its own clock sent without their values, its clock not read yet",
            m.unplaced_polls.clone(),
        );
        registry.register(
            "poll_seconds",
            "Time to read one device (all its requests), by link",
            m.poll_seconds.clone(),
        );
        registry.register(
            "modbus_requests",
            "Modbus read requests sent",
            m.requests.clone(),
        );
        registry.register(
            "point_failures",
            "Points read without a value, by device and quality code",
            m.point_failures.clone(),
        );
        registry.register(
            "devices_backing_off",
            "Devices polled less often because they keep failing",
            m.devices_backing_off.clone(),
        );
        registry.register(
            "replans",
            "Request plans rebuilt from what a device showed (refused registers, a length limit, measured request costs)",
            m.replans.clone(),
        );
        registry.register(
            "broker_connected",
            "1 while the MQTT connection to the broker is up",
            m.broker_connected.clone(),
        );
        registry.register(
            "spool_depth",
            "Poll results on disk the broker has not acknowledged (the replay backlog)",
            m.spool_depth.clone(),
        );
        registry.register(
            "spool_dropped",
            "Poll results the full spool dropped since start",
            m.spool_dropped.clone(),
        );
        registry.register(
            "delivered",
            "Messages the broker acknowledged",
            m.delivered.clone(),
        );
        registry.register(
            "replayed",
            "Messages the broker acknowledged that were read while it was out of reach (the backlog replayed)",
            m.replayed.clone(),
        );
        registry.register(
            "log_lines_held_back",
            "Warnings of failing devices not written to the log (one a device a minute at most; point_failures counts every failure)",
            m.log_lines_held_back.clone(),
        );
        registry.register(
            "awaiting_commit",
            "Results the broker acknowledged and the gateway has not yet confirmed committed (protocol v1.1)",
            m.awaiting_commit.clone(),
        );
        registry.register(
            "resent_uncommitted",
            "Results sent again after a reconnect because the gateway had not confirmed them (the broker may have lost them)",
            m.resent_uncommitted.clone(),
        );
        EdgeMetrics { registry, ..m }
    }
}

impl EdgeMetrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}
