//! The gateway's Prometheus metrics: one counter per notable ingest event.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub received: Counter,
    pub stored: Counter,
    pub duplicates: Counter,
    pub points: Counter,
    pub late_samples: Counter,
    pub quarantined: Family<ReasonLabel, Counter>,
    pub anomalies: Family<KindLabel, Counter>,
    pub commit_seconds: Histogram,
    pub commit_errors: Counter,
    pub batch_size: Gauge,
    /// 1 while the broker holds the gateway's subscriptions.
    pub subscribed: Gauge,
    pub sessions_lost: Counter,
    /// Open alarms by kind, from the last evaluation.
    pub alarms_open: Family<KindLabel, Gauge>,
    pub alarms_raised: Family<KindLabel, Counter>,
    pub sink_lines_written: Counter,
    pub sink_write_errors: Counter,
    pub sink_queue_depth: Gauge,
    /// Sequence numbers missing (in open gaps) and declared lost, over all devices; set from
    /// the ledger when the metrics are read.
    pub sequence_missing: Gauge,
    pub sequence_lost: Gauge,
    /// Copies of a stored (device, seq) with other content (quarantined as `conflict`).
    pub conflicts: Counter,
    /// Seconds the storing batch under way has taken (0 while the writer waits for work).
    pub writer_busy_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// When the storing batch under way started, for `/healthz` and the gauge above.
    pub writer: WriterHealth,
}

/// Whether the ingest writer makes progress: a batch that takes longer than the configured
/// `stall_after_s` (a poisoned message, a disk that stopped answering) marks the gateway
/// unhealthy.
#[derive(Debug)]
pub struct WriterHealth {
    epoch: std::time::Instant,
    /// Milliseconds after `epoch` the current batch started, plus one; 0 when idle.
    busy_since: std::sync::atomic::AtomicU64,
}

impl Default for WriterHealth {
    fn default() -> Self {
        WriterHealth {
            epoch: std::time::Instant::now(),
            busy_since: Default::default(),
        }
    }
}

impl WriterHealth {
    pub fn start_batch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.busy_since
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn end_batch(&self) {
        self.busy_since
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long the batch under way has taken; zero when idle.
    pub fn busy_for(&self) -> std::time::Duration {
        match self.busy_since.load(std::sync::atomic::Ordering::Relaxed) {
            0 => std::time::Duration::ZERO,
            since => self
                .epoch
                .elapsed()
                .saturating_sub(std::time::Duration::from_millis(since - 1)),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ems_gateway");
        let m = Metrics {
            received: Counter::default(),
            stored: Counter::default(),
            duplicates: Counter::default(),
            points: Counter::default(),
            late_samples: Counter::default(),
            quarantined: Family::default(),
            anomalies: Family::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            commit_errors: Counter::default(),
            batch_size: Gauge::default(),
            subscribed: Gauge::default(),
            sessions_lost: Counter::default(),
            alarms_open: Family::default(),
            alarms_raised: Family::default(),
            sink_lines_written: Counter::default(),
            sink_write_errors: Counter::default(),
            sink_queue_depth: Gauge::default(),
            sequence_missing: Gauge::default(),
            sequence_lost: Gauge::default(),
            conflicts: Counter::default(),
            writer_busy_seconds: Gauge::default(),
            writer: WriterHealth::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_received",
            "MQTT messages received",
            m.received.clone(),
        );
        registry.register(
            "messages_stored",
            "Telemetry messages committed (first delivery)",
            m.stored.clone(),
        );
        registry.register(
            "messages_duplicate",
            "Telemetry messages dropped as already stored (same device and sequence number)",
            m.duplicates.clone(),
        );
        registry.register("points_stored", "Point values committed", m.points.clone());
        registry.register(
            "samples_late",
            "Counter samples that arrived out of order and recomputed the intervals they touch",
            m.late_samples.clone(),
        );
        registry.register(
            "messages_quarantined",
            "Messages kept aside as malformed, by reason",
            m.quarantined.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time to commit one ingest batch",
            m.commit_seconds.clone(),
        );
        registry.register(
            "commit_errors",
            "Ingest batches that failed to commit (retried, never acknowledged)",
            m.commit_errors.clone(),
        );
        registry.register(
            "batch_size",
            "Messages in the last committed batch",
            m.batch_size.clone(),
        );
        registry.register(
            "mqtt_subscribed",
            "1 while the broker holds the gateway's subscriptions",
            m.subscribed.clone(),
        );
        registry.register(
            "mqtt_sessions_lost",
            "Reconnects on which the broker no longer had the gateway's session (queued messages lost)",
            m.sessions_lost.clone(),
        );
        registry.register(
            "counter_anomalies",
            "Counter anomalies found at ingest (spike, jump, restart, frozen), by kind",
            m.anomalies.clone(),
        );
        registry.register("alarms_open", "Open alarms, by kind", m.alarms_open.clone());
        registry.register(
            "alarms_raised",
            "Alarms raised, by kind",
            m.alarms_raised.clone(),
        );
        registry.register(
            "sink_lines_written",
            "Lines the time-series server accepted",
            m.sink_lines_written.clone(),
        );
        registry.register(
            "sink_write_errors",
            "Writes to the time-series server that failed (retried with backoff)",
            m.sink_write_errors.clone(),
        );
        registry.register(
            "sink_queue_depth",
            "Stored messages waiting for the time-series server",
            m.sink_queue_depth.clone(),
        );
        registry.register(
            "sequence_missing",
            "Sequence numbers not yet received, over all devices (open gaps in the ledger)",
            m.sequence_missing.clone(),
        );
        registry.register(
            "sequence_lost",
            "Sequence numbers an operator declared lost, over all devices",
            m.sequence_lost.clone(),
        );
        registry.register(
            "messages_conflicting",
            "Copies of a stored message (same device and sequence number) with other content, quarantined",
            m.conflicts.clone(),
        );
        registry.register(
            "writer_busy_seconds",
            "Seconds the storing batch under way has taken (0 while idle): a writer that stops making progress shows here",
            m.writer_busy_seconds.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        self.writer_busy_seconds
            .set(self.writer.busy_for().as_secs_f64());
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
