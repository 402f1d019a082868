//! Ingest: MQTT messages in, validated, committed in batches, acknowledged after commit.
//!
//! Three parts: the client's event loop parses and checks publishes; a writer thread commits
//! them in batches (one transaction each); an acknowledger sends each PUBACK only after its
//! message's batch committed, in arrival order. With edges enrolled, a verifier thread between
//! the first two checks their signatures, many at once. A crash at any moment loses nothing
//! that was acknowledged, and the broker redelivers the rest (persistent session, manual acks).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ems_core::wire::{topic, Status, Telemetry, PROTOCOL_VERSION};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::NowFn;
use crate::config::{matches_any, valid_name, MqttConfig};
use crate::metrics::{KindLabel, Metrics, ReasonLabel};
use crate::storage::Storage;
use crate::storage::{Incoming, Origin, Raw, Rejected, WriteRules};

/// Largest payload accepted; one device's poll is a few kilobytes.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// The largest packet MQTT can frame (remaining length of four bytes).
const MQTT_MAX_PACKET: usize = 268_435_455;
/// Most messages committed in one transaction.
const MAX_BATCH: usize = 20_000;

/// Most points one message may carry (a device's poll is tens).
pub const MAX_POINTS: usize = 4_096;

/// What is accepted: the plant's own sites, edges and devices, within the bounds of time.
#[derive(Clone)]
pub struct Validation {
    pub topic_prefix: String,
    pub sites: HashSet<String>,
    /// Edge names or `*`-ended prefixes.
    pub edges: Vec<String>,
    /// Devices the units account for, and the `[ingest] devices` names or prefixes.
    pub accounted: HashSet<String>,
    pub other_devices: Vec<String>,
    /// Poll times before this are refused (a board without a clock, a dead clock battery).
    pub earliest_ms: i64,
    /// How far past the gateway's clock a poll time may be.
    pub max_future_ms: i64,
    pub now: NowFn,
    /// Enrolled edges' keys: their messages must carry a signature that verifies.
    pub edge_keys: Arc<crate::evidence::EdgeKeys>,
}

impl Validation {
    pub fn for_config(config: &crate::Config, now: NowFn) -> Validation {
        let a = &config.ingest;
        Validation {
            topic_prefix: config.mqtt.topic_prefix.clone(),
            sites: a.sites.iter().cloned().collect(),
            edges: a.edges.clone(),
            accounted: config.plant.flows().map(|f| f.device.clone()).collect(),
            other_devices: a.devices.clone(),
            earliest_ms: config.earliest_ms,
            max_future_ms: a.max_future_s as i64 * 1000,
            now,
            edge_keys: config.edge_keys.clone(),
        }
    }

    fn known_device(&self, device: &str) -> bool {
        self.accounted.contains(device) || matches_any(&self.other_devices, device)
    }
}

/// Classifies one MQTT message; anything wrong becomes a rejection with its reason.
pub fn classify(topic_name: &str, payload: &bytes::Bytes, v: &Validation) -> Incoming {
    let mut item = classify_unverified(topic_name, payload, v);
    verify_signatures(std::slice::from_mut(&mut item), &v.edge_keys);
    item
}

/// [`classify`] but for an enrolled edge's signature: its message is left to
/// [`verify_signatures`] (`Raw::unverified`), which verifies many at once for less.
pub fn classify_unverified(topic_name: &str, payload: &bytes::Bytes, v: &Validation) -> Incoming {
    let reject_from = |origin: Option<Origin>, code: &str, detail: String| {
        Incoming::Rejected(Rejected {
            topic: topic_name.to_owned(),
            reason: format!("{code}: {detail}"),
            payload: payload.to_vec(),
            origin,
        })
    };
    let reject = |code: &str, detail: String| reject_from(None, code, detail);
    if payload.len() > MAX_PAYLOAD {
        return reject(
            "oversized",
            format!("{} bytes, limit {MAX_PAYLOAD}", payload.len()),
        );
    }
    let Some(parsed) = topic::parse(&v.topic_prefix, topic_name) else {
        return reject("topic", "not a protocol v1 topic".into());
    };
    let (topic::Parsed::Data { site, .. } | topic::Parsed::Status { site, .. }) = parsed;
    if !v.sites.contains(site) {
        return reject(
            "site",
            format!("site `{}` is not one this gateway collects", shown(site)),
        );
    }
    // A message is one JSON object: serde would also take a struct written as an array.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return reject("json", "not a JSON object".into());
    }
    // Telemetry, the bulk of the traffic, parses straight into its type; anything else, or
    // telemetry that fails to, goes through a generic parse that tells why.
    let direct = match parsed {
        topic::Parsed::Data { .. } => serde_json::from_slice::<Telemetry>(payload).ok(),
        _ => None,
    };
    let value = match direct {
        Some(ref t) if t.v == PROTOCOL_VERSION => None,
        _ => {
            let value: serde_json::Value = match serde_json::from_slice(payload) {
                Ok(value) => value,
                Err(e) => return reject("json", e.to_string()),
            };
            match value.get("v").and_then(serde_json::Value::as_u64) {
                Some(n) if n == u64::from(PROTOCOL_VERSION) => {}
                other => {
                    return reject(
                        "version",
                        format!("protocol version {other:?}, expected {PROTOCOL_VERSION}"),
                    )
                }
            }
            Some(value)
        }
    };
    match parsed {
        topic::Parsed::Data { site, device } => {
            let t: Telemetry = match (direct, value) {
                (Some(t), None) => t,
                (_, value) => match serde_json::from_value(value.unwrap_or_default()) {
                    Ok(t) => t,
                    Err(e) => return reject("schema", e.to_string()),
                },
            };
            if t.device != device || t.site != site {
                return reject(
                    "mismatch",
                    format!(
                        "message names {}/{}, topic {site}/{device}",
                        shown(&t.site),
                        shown(&t.device)
                    ),
                );
            }
            // From here on it is the edge's own message: the edge is told the gateway keeps it.
            let origin = valid_name(&t.edge).then(|| Origin {
                site: t.site.clone(),
                edge: t.edge.clone(),
                device: t.device.clone(),
                seq: t.seq,
            });
            let reject = |code: &str, detail: String| reject_from(origin.clone(), code, detail);
            if !v.known_device(device) {
                return reject(
                    "unknown_device",
                    format!(
                        "device `{}` is neither accounted nor in [ingest] devices",
                        shown(device)
                    ),
                );
            }
            if !matches_any(&v.edges, &t.edge) {
                return reject(
                    "unknown_edge",
                    format!("edge `{}` is not in [ingest] edges", shown(&t.edge)),
                );
            }
            if t.seq == 0 {
                return reject("schema", "sequence numbers start at 1".into());
            }
            if t.seq > i64::MAX as u64 {
                return reject(
                    "seq_range",
                    format!("sequence number {} is above 2^63 - 1", t.seq),
                );
            }
            if t.ts_ms < v.earliest_ms {
                return reject(
                    "too_early",
                    format!(
                        "poll time {} is before the earliest accepted, {} (a clock not set?)",
                        crate::store::rfc3339(t.ts_ms),
                        crate::store::rfc3339(v.earliest_ms)
                    ),
                );
            }
            let now = (v.now)();
            if t.ts_ms > now.saturating_add(v.max_future_ms) {
                return reject(
                    "future",
                    format!(
                        "poll time {} is {} s ahead of the gateway clock",
                        t.ts_ms,
                        (t.ts_ms - now) / 1000
                    ),
                );
            }
            if t.points.len() > MAX_POINTS {
                return reject(
                    "schema",
                    format!("{} points, at most {MAX_POINTS}", t.points.len()),
                );
            }
            let mut ids = HashSet::with_capacity(t.points.len());
            for p in &t.points {
                if !valid_name(&p.id) {
                    return reject(
                        "schema",
                        format!("point id `{}` is not a name", shown(&p.id)),
                    );
                }
                if !ids.insert(p.id.as_str()) {
                    return reject("schema", format!("point `{}` appears twice", p.id));
                }
                match (p.q.is_good(), p.v) {
                    (true, Some(x)) if x.is_finite() => {}
                    (true, Some(_)) => {
                        return reject(
                            "non_finite",
                            format!("point `{}` is not a finite number", p.id),
                        )
                    }
                    (true, None) => {
                        return reject(
                            "schema",
                            format!("point `{}` is good but has no value", p.id),
                        )
                    }
                    (false, Some(_)) => {
                        return reject(
                            "schema",
                            format!("point `{}` has a value but quality {}", p.id, p.q),
                        )
                    }
                    (false, None) => {}
                }
            }
            // Protocol v1.2: an enrolled edge's messages are its own only with its signature
            // (verified by `verify_signatures`).
            let unverified = match (v.edge_keys.get(&t.edge), &t.signed) {
                (Some(_), Some(signed)) => {
                    if ems_core::evidence::parse(signed).is_none() {
                        return reject(
                            "signature",
                            "`prev` or `sig` is not hexadecimal of the right length".into(),
                        );
                    }
                    true
                }
                (Some(_), None) => {
                    return reject(
                        "unsigned",
                        format!(
                            "edge `{}` is enrolled with a key; an unsigned message in its name is not its own",
                            t.edge
                        ),
                    )
                }
                (None, _) => false,
            };
            let raw = Raw {
                topic: topic_name.to_owned(),
                payload: payload.clone(),
                verified: false,
                unverified,
            };
            Incoming::Telemetry(t, raw)
        }
        topic::Parsed::Status { site, edge } => {
            let s: Status = match serde_json::from_value(value.unwrap_or_default()) {
                Ok(s) => s,
                Err(e) => return reject("schema", e.to_string()),
            };
            if s.edge != edge || s.site != site {
                return reject(
                    "mismatch",
                    format!(
                        "status names {}/{}, topic {site}/{edge}",
                        shown(&s.site),
                        shown(&s.edge)
                    ),
                );
            }
            if !matches_any(&v.edges, edge) {
                return reject(
                    "unknown_edge",
                    format!("edge `{}` is not in [ingest] edges", shown(edge)),
                );
            }
            if let Some(bad) = s.devices.iter().find(|d| !valid_name(d)) {
                return reject("schema", format!("device `{}` is not a name", shown(bad)));
            }
            Incoming::Status(s)
        }
    }
}

/// Verifies the signatures [`classify_unverified`] left (`Raw::unverified`) with the edges'
/// enrolled `keys`, all of `items` at once: a message whose signature verifies is marked
/// verified, one whose does not becomes a rejection with its reason, in its place. Returns the
/// places of those.
pub fn verify_signatures(items: &mut [Incoming], keys: &crate::evidence::EdgeKeys) -> Vec<usize> {
    use ems_core::evidence::{parse, Content, ToVerify};
    // Each one left to verify: its place, canonical bytes, signature and key.
    let mut pending = Vec::new();
    let mut refused = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Incoming::Telemetry(t, raw) = item else {
            continue;
        };
        if !raw.unverified {
            continue;
        }
        // `classify_unverified` leaves only a well-formed signature of an enrolled edge.
        match (t.signed.as_ref().and_then(parse), keys.get(&t.edge)) {
            (Some((prev, sig)), Some(key)) => {
                pending.push((i, Content::of(t).canonical(&prev), sig, key))
            }
            _ => refused.push(i),
        }
    }
    let to_verify: Vec<ToVerify<'_>> = pending
        .iter()
        .map(|(_, bytes, sig, key)| (bytes.as_slice(), *sig, *key))
        .collect();
    for ((i, ..), good) in pending
        .iter()
        .zip(ems_core::evidence::verify_each(&to_verify))
    {
        match (good, &mut items[*i]) {
            (true, Incoming::Telemetry(_, raw)) => {
                raw.unverified = false;
                raw.verified = true;
            }
            _ => refused.push(*i),
        }
    }
    refused.sort_unstable();
    for &i in &refused {
        let Incoming::Telemetry(t, raw) = &mut items[i] else {
            unreachable!("gathered telemetry")
        };
        items[i] = Incoming::Rejected(Rejected {
            reason: format!(
                "signature: the signature of message {} does not verify with edge `{}`'s enrolled key",
                t.seq, t.edge
            ),
            origin: Some(Origin {
                site: t.site.clone(),
                edge: t.edge.clone(),
                device: t.device.clone(),
                seq: t.seq,
            }),
            topic: std::mem::take(&mut raw.topic),
            payload: raw.payload.to_vec(),
        });
    }
    refused
}

/// A name from outside, as a log line or reason may show it: at most 64 characters.
fn shown(name: &str) -> String {
    match name.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &name[..cut]),
        None => name.to_owned(),
    }
}

/// A publish with its classification, its signature left to the verifier; a rejection is
/// logged and counted.
fn classify_counted(p: Publish, v: &Validation, metrics: &Metrics) -> (Publish, Incoming) {
    let item = classify_unverified(&p.topic, &p.payload, v);
    count_rejected(&item, metrics);
    (p, item)
}

fn count_rejected(item: &Incoming, metrics: &Metrics) {
    if let Incoming::Rejected(r) = item {
        tracing::warn!(topic = %r.topic, reason = %r.reason, "Message quarantined.");
        metrics
            .quarantined
            .get_or_create(&ReasonLabel {
                reason: crate::storage::reason_code(&r.reason).to_owned(),
            })
            .inc();
    }
}

/// Waits for the next item, then takes what else has arrived, up to `most` in all; `None` once
/// every sender is gone.
fn next_batch<T>(rx: &mut mpsc::Receiver<T>, most: usize) -> Option<Vec<T>> {
    let mut batch = vec![rx.blocking_recv()?];
    while batch.len() < most {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Most messages whose signatures are verified together (in batches of 128, ems-core's).
const VERIFY_AT_ONCE: usize = 1_024;

/// The verifier between the event loop and the writer, when edges are enrolled: it takes what
/// has arrived (up to [`VERIFY_AT_ONCE`]), verifies the signatures together and hands the
/// messages on in their order. Verifying is most of a signed message's cost; here it is done
/// for about half, beside the event loop's parsing and the writer's storing.
fn spawn_verifier(
    mut rx: mpsc::Receiver<(Publish, Incoming)>,
    tx: mpsc::Sender<(Publish, Incoming)>,
    keys: Arc<crate::evidence::EdgeKeys>,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ingest-verifier".into())
        .spawn(move || {
            while let Some(batch) = next_batch(&mut rx, VERIFY_AT_ONCE) {
                let (publishes, mut items): (Vec<Publish>, Vec<Incoming>) =
                    batch.into_iter().unzip();
                for i in verify_signatures(&mut items, &keys) {
                    count_rejected(&items[i], &metrics);
                }
                for (p, item) in publishes.into_iter().zip(items) {
                    if tx.blocking_send((p, item)).is_err() {
                        return;
                    }
                }
            }
        })
}

pub struct IngestConfig {
    pub mqtt: MqttConfig,
    pub validation: Validation,
    pub rules: WriteRules,
    /// Subscribe to these sites' topics only (a gateway slot sharing the broker with others);
    /// `None`: every site's (what is not ours is quarantined with its reason).
    pub only_sites: Option<Vec<String>>,
}

/// What the writer hands on after a commit.
enum Committed {
    Puback(Publish),
    Marks(Vec<(String, String, ems_core::wire::DeviceAck)>),
}

/// How often the edges hear what was committed (at most; a quiet edge hears nothing new).
const MARKS_EVERY: Duration = Duration::from_millis(250);

/// Committed marks not yet told to their edges: per (site, edge), per device, the newest.
#[derive(Default)]
struct EdgeMarks(
    std::collections::BTreeMap<
        (String, String),
        std::collections::BTreeMap<String, ems_core::wire::DeviceAck>,
    >,
);

impl EdgeMarks {
    fn add(&mut self, marks: Vec<(String, String, ems_core::wire::DeviceAck)>) {
        for (site, edge, mark) in marks {
            let devices = self.0.entry((site, edge)).or_default();
            match devices.get_mut(&mark.device) {
                Some(m) => m.merge(mark),
                None => {
                    devices.insert(mark.device.clone(), mark);
                }
            }
        }
    }

    /// Publishes each edge's marks, retained (an edge that reconnects hears the last at once),
    /// and forgets them: the next commit of a device brings its next mark.
    async fn publish(&mut self, client: &AsyncClient, prefix: &str) {
        for ((site, edge), devices) in std::mem::take(&mut self.0) {
            let ack = ems_core::wire::Ack {
                v: PROTOCOL_VERSION,
                site,
                edge,
                devices: devices.into_values().collect(),
            };
            let topic = topic::ack(prefix, &ack.site, &ack.edge);
            let payload = serde_json::to_vec(&ack).expect("an ack serializes");
            if let Err(e) = client.publish(topic, QoS::AtLeastOnce, true, payload).await {
                // The edge keeps what it has not heard of and sends it again: nothing is lost.
                tracing::warn!(error = %e, "Could not publish a commit acknowledgement.");
            }
        }
    }
}

/// Runs ingest until `shutdown`: stops taking new messages, commits and acknowledges what it
/// has, disconnects. `committed` hears of every committed batch (for live pages); `subscribed`
/// fires once the broker has confirmed the subscriptions, from when on the broker keeps every
/// message for this session.
pub async fn run(
    cfg: IngestConfig,
    mut store: impl Storage,
    metrics: Arc<Metrics>,
    committed: broadcast::Sender<()>,
    mut subscribed: Option<oneshot::Sender<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut opts = MqttOptions::new(
        cfg.mqtt.client_id.clone(),
        cfg.mqtt.host.clone(),
        cfg.mqtt.port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    // Persistent session: what we have not acknowledged waits for us at the broker.
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    // Every packet is read whole, however large: one the client refused would drop the
    // connection, come back first on the next and stall ingest for good. Oversized payloads
    // are quarantined (cut to MAX_PAYLOAD); the broker's `message_size_limit` bounds them.
    opts.set_max_packet_size(MQTT_MAX_PACKET, MAX_PAYLOAD);
    opts.set_inflight(1_000);
    if let (Some(u), Some(p)) = (&cfg.mqtt.username, &cfg.mqtt.password) {
        opts.set_credentials(u.clone(), p.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    let prefix = cfg.validation.topic_prefix.clone();

    // Event loop -> writer: every publish, in arrival order, classified (parsing there leaves
    // the writer thread only the storing: the two run side by side).
    let (work_tx, mut work_rx) = mpsc::channel::<(Publish, Incoming)>(20_000);
    // Enrolled edges: their signatures verified on the way, a batch at a time.
    let (work_tx, verifier) = if cfg.validation.edge_keys.is_empty() {
        (work_tx, None)
    } else {
        let (to_verify, verify_rx) = mpsc::channel::<(Publish, Incoming)>(20_000);
        let keys = cfg.validation.edge_keys.clone();
        let verifier = spawn_verifier(verify_rx, work_tx, keys, metrics.clone())?;
        (to_verify, Some(verifier))
    };
    // Writer -> acknowledger: publishes whose batch is committed, then what the batch
    // committed of each device.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Committed>();
    let commit_acks = cfg.mqtt.commit_acks;

    let writer_metrics = metrics.clone();
    let rules = cfg.rules;
    let writer = std::thread::Builder::new()
        .name("ingest-writer".into())
        .spawn(move || -> anyhow::Result<()> {
            while let Some(batch) = next_batch(&mut work_rx, MAX_BATCH) {
                let (batch, items): (Vec<Publish>, Vec<Incoming>) = batch.into_iter().unzip();
                let started = Instant::now();
                writer_metrics.writer.start_batch();
                let outcome = loop {
                    match store.write_batch(&items, &rules, chrono::Utc::now().timestamp_millis()) {
                        Ok(o) => break o,
                        Err(e) if e.downcast_ref::<crate::storage::Fenced>().is_some() => {
                            // Another gateway holds the slot now: nothing of this batch is
                            // acknowledged, and the broker gives it to the new writer.
                            tracing::error!(error = %e, "This gateway lost its slot; ingest stops.");
                            return Err(e);
                        }
                        Err(e) => {
                            // Nothing of the batch is acknowledged until it commits.
                            writer_metrics.commit_errors.inc();
                            tracing::error!(error = %e, "Commit failed; retrying.");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                };
                writer_metrics.writer.end_batch();
                writer_metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                writer_metrics.conflicts.inc_by(outcome.conflicts);
                for code in &outcome.refused {
                    writer_metrics
                        .quarantined
                        .get_or_create(&ReasonLabel {
                            reason: (*code).to_owned(),
                        })
                        .inc();
                }
                writer_metrics.batch_size.set(batch.len() as i64);
                writer_metrics.stored.inc_by(outcome.stored);
                writer_metrics.duplicates.inc_by(outcome.duplicates);
                writer_metrics.points.inc_by(outcome.points);
                writer_metrics.late_samples.inc_by(outcome.late_samples);
                for kind in &outcome.anomalies {
                    writer_metrics
                        .anomalies
                        .get_or_create(&KindLabel {
                            kind: kind.to_string(),
                        })
                        .inc();
                }
                for p in batch {
                    if ack_tx.send(Committed::Puback(p)).is_err() {
                        return Ok(());
                    }
                }
                if commit_acks && !outcome.acks.is_empty() {
                    let _ = ack_tx.send(Committed::Marks(outcome.acks));
                }
                let _ = committed.send(());
            }
            Ok(())
        })?;

    let ack_client = client.clone();
    let ack_prefix = prefix.clone();
    let acker = tokio::spawn(async move {
        let mut marks = EdgeMarks::default();
        let mut flush = tokio::time::interval(MARKS_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                c = ack_rx.recv() => match c {
                    Some(Committed::Puback(p)) => {
                        if let Err(e) = ack_client.ack(&p).await {
                            tracing::warn!(error = %e, "Could not queue an acknowledgement; the broker will redeliver.");
                        }
                    }
                    Some(Committed::Marks(m)) => marks.add(m),
                    None => break,
                },
                _ = flush.tick() => marks.publish(&ack_client, &ack_prefix).await,
            }
        }
        marks.publish(&ack_client, &ack_prefix).await;
        // Everything committed is acknowledged: leave cleanly.
        let _ = ack_client.disconnect().await;
    });

    let mut work_tx = Some(work_tx);
    let mut had_session = false;
    let mut dropped_at_shutdown = 0u64;
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            () = shutdown.cancelled(), if work_tx.is_some() => {
                tracing::info!("Ingest stopping: committing and acknowledging what has arrived.");
                work_tx = None;
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if had_session && !ack.session_present {
                    // Whatever the broker had queued for us while we were away is gone; the
                    // ledger will show it as sequence gaps.
                    metrics.sessions_lost.inc();
                    tracing::error!(
                        host = %cfg.mqtt.host,
                        "The broker no longer has this gateway's session: messages queued for it are lost. Check the broker's persistence."
                    );
                }
                had_session = true;
                tracing::info!(host = %cfg.mqtt.host, port = cfg.mqtt.port, session_present = ack.session_present, "MQTT connected.");
                let filters = match &cfg.only_sites {
                    None => vec![topic::data_filter(&prefix), topic::status_filter(&prefix)],
                    Some(sites) => sites
                        .iter()
                        .flat_map(|site| {
                            [
                                topic::data(&prefix, site, "+"),
                                topic::status(&prefix, site, "+"),
                            ]
                        })
                        .collect(),
                };
                client
                    .subscribe_many(
                        filters
                            .into_iter()
                            .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce)),
                    )
                    .await?;
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                metrics.subscribed.set(1);
                if let Some(tx) = subscribed.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                metrics.received.inc();
                match &work_tx {
                    Some(tx) => tx
                        .send(classify_counted(p, &cfg.validation, &metrics))
                        .await
                        .map_err(|_| anyhow::anyhow!("ingest writer stopped"))?,
                    // Not acknowledged: the broker keeps it for our next session.
                    None => dropped_at_shutdown += 1,
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                if work_tx.is_none() && acker.is_finished() {
                    break;
                }
                metrics.subscribed.set(0);
                tracing::warn!(error = %e, "MQTT connection lost; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    metrics.subscribed.set(0);
    if dropped_at_shutdown > 0 {
        tracing::info!(
            count = dropped_at_shutdown,
            "Left unacknowledged for redelivery."
        );
    }
    let _ = acker.await;
    if let Some(verifier) = verifier {
        verifier
            .join()
            .map_err(|_| anyhow::anyhow!("ingest verifier panicked"))?;
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("ingest writer panicked"))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validation() -> Validation {
        Validation {
            topic_prefix: "ems/v1".into(),
            sites: HashSet::from(["demo".to_string()]),
            edges: vec!["e1".into(), "line2-*".into()],
            accounted: HashSet::from(["m1".to_string()]),
            other_devices: vec!["info-*".into()],
            earliest_ms: 1_577_836_800_000, // 2020-01-01
            max_future_ms: 600_000,
            now: Arc::new(|| 1_767_200_000_000),
            edge_keys: Arc::new(crate::evidence::EdgeKeys::from([(
                "line2-signed".to_string(),
                ems_core::evidence::PublicKey::from_hex(&signing_key().public_hex()).unwrap(),
            )])),
        }
    }

    fn signing_key() -> ems_core::evidence::EdgeKey {
        ems_core::evidence::EdgeKey::from_seed([5; 32])
    }

    #[test]
    fn every_value_arrives_bit_for_bit_as_the_edge_sent_it() {
        // Shortest round-trip text of any f64 parsed back must be the same f64: a value off by
        // one unit in the last place is a reading silently altered (and a signature that no
        // longer verifies).
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut t: Telemetry = serde_json::from_str(GOOD).unwrap();
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            if !v.is_finite() {
                continue;
            }
            t.points[0].v = Some(v);
            let payload = bytes::Bytes::from(serde_json::to_vec(&t).unwrap());
            match classify("ems/v1/demo/data/m1", &payload, &validation()) {
                Incoming::Telemetry(got, _) => assert_eq!(
                    got.points[0].v.map(f64::to_bits),
                    Some(v.to_bits()),
                    "{v:e} came back as {:e}",
                    got.points[0].v.unwrap()
                ),
                Incoming::Rejected(r) if r.reason.starts_with("future") => {}
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_enrolled_edges_messages_must_carry_its_signature() {
        let data = "ems/v1/demo/data/m1";
        let mut t: Telemetry =
            serde_json::from_str(&GOOD.replace("\"e1\"", "\"line2-signed\"")).unwrap();
        // Unsigned in the enrolled edge's name: not its own.
        let unsigned = serde_json::to_string(&t).unwrap();
        assert!(reason(data, &unsigned).starts_with("unsigned:"));
        signing_key().sign(&mut t, ems_core::evidence::CHAIN_START);
        let signed = serde_json::to_string(&t).unwrap();
        match classify(data, &bytes::Bytes::from(signed.clone()), &validation()) {
            Incoming::Telemetry(_, raw) => assert!(raw.verified),
            other => panic!("refused: {other:?}"),
        }
        // A reading changed after signing, or another key's signature: refused.
        let mut altered = t.clone();
        altered.points[0].v = Some(13.5);
        let altered = serde_json::to_string(&altered).unwrap();
        assert!(reason(data, &altered).starts_with("signature:"));
        let mut forged = t.clone();
        ems_core::evidence::EdgeKey::from_seed([6; 32])
            .sign(&mut forged, ems_core::evidence::CHAIN_START);
        assert!(reason(data, &serde_json::to_string(&forged).unwrap()).starts_with("signature:"));
        // An edge not enrolled: accepted, its signature unverified.
        let other = signed.replace("line2-signed", "line2-other");
        match classify(data, &bytes::Bytes::from(other), &validation()) {
            Incoming::Telemetry(_, raw) => assert!(!raw.verified),
            other => panic!("refused: {other:?}"),
        }
    }

    #[test]
    fn signatures_verified_together_refuse_each_forgery_in_its_place() {
        let data = "ems/v1/demo/data/m1";
        let good: Telemetry =
            serde_json::from_str(&GOOD.replace("\"e1\"", "\"line2-signed\"")).unwrap();
        let mut prev = ems_core::evidence::CHAIN_START;
        let mut arrivals = Vec::new();
        for seq in 1..=40 {
            let mut t = good.clone();
            t.seq = seq;
            t.points[0].v = Some(seq as f64);
            prev = signing_key().sign(&mut t, prev);
            if seq == 7 {
                t.points[0].v = Some(1e6); // altered after signing
            }
            if seq == 31 {
                ems_core::evidence::EdgeKey::from_seed([6; 32]).sign(&mut t, prev);
            }
            arrivals.push(serde_json::to_vec(&t).unwrap());
        }
        // Another edge's message, not enrolled, and a malformed one, among them.
        arrivals.insert(3, GOOD.as_bytes().to_vec());
        arrivals.insert(4, b"{\"v\":1}".to_vec());
        let mut items: Vec<Incoming> = arrivals
            .into_iter()
            .map(|p| classify_unverified(data, &bytes::Bytes::from(p), &validation()))
            .collect();
        assert_eq!(
            verify_signatures(&mut items, &validation().edge_keys),
            vec![8, 32]
        );
        for (i, item) in items.iter().enumerate() {
            match item {
                Incoming::Telemetry(t, raw) => {
                    assert!(!raw.unverified);
                    assert_eq!(raw.verified, t.edge == "line2-signed", "{i}");
                }
                Incoming::Rejected(r) if i == 4 => assert!(r.reason.starts_with("schema")),
                Incoming::Rejected(r) => {
                    assert!([8, 32].contains(&i), "{i}: {}", r.reason);
                    assert!(r.reason.starts_with("signature:"), "{}", r.reason);
                    assert_eq!(r.origin.as_ref().unwrap().seq, if i == 8 { 7 } else { 31 });
                    assert_eq!(r.topic, data);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    fn reason(topic: &str, payload: &str) -> String {
        let payload = bytes::Bytes::copy_from_slice(payload.as_bytes());
        match classify(topic, &payload, &validation()) {
            Incoming::Rejected(r) => r.reason,
            other => panic!("accepted: {other:?}"),
        }
    }

    const GOOD: &str = r#"{"v":1,"site":"demo","edge":"e1","device":"m1","seq":5,"ts_ms":1767196800000,"points":[{"id":"total","v":12.5,"q":"good"},{"id":"rate","v":null,"q":"timeout"}]}"#;

    fn accepted(topic: &str, payload: &str) -> bool {
        let payload = bytes::Bytes::copy_from_slice(payload.as_bytes());
        matches!(
            classify(topic, &payload, &validation()),
            Incoming::Telemetry(..) | Incoming::Status(_)
        )
    }

    #[test]
    fn a_good_message_is_accepted() {
        assert!(accepted("ems/v1/demo/data/m1", GOOD));
        // An edge and a device named by a prefix pattern.
        let info = GOOD
            .replace("\"m1\"", "\"info-7\"")
            .replace("\"e1\"", "\"line2-b\"");
        assert!(accepted("ems/v1/demo/data/info-7", &info));
        let status = r#"{"v":1,"site":"demo","edge":"e1","online":true,"devices":["m1"]}"#;
        assert!(accepted("ems/v1/demo/status/e1", status));
    }

    #[test]
    fn each_kind_of_bad_input_is_rejected_with_its_reason() {
        let data = "ems/v1/demo/data/m1";
        assert!(reason(data, "{not json").starts_with("json:"));
        assert!(reason(data, &GOOD.replace("\"v\":1,", "\"v\":2,")).starts_with("version:"));
        assert!(reason(data, &GOOD.replace("\"seq\":5", "\"seq\":\"5\"")).starts_with("schema:"));
        assert!(reason("ems/v1/demo/data/m2", GOOD).starts_with("mismatch:"));
        assert!(
            reason(data, &GOOD.replace("1767196800000", "1867196800000")).starts_with("future:")
        );
        assert!(reason(data, &GOOD.replace("12.5", "NaN")).starts_with("json:"));
        assert!(reason(data, &GOOD.replace("12.5", "1e999")).starts_with("json:"));
        assert!(reason("ems/v1/demo/other/m1", GOOD).starts_with("topic:"));
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_PAYLOAD));
        assert!(reason(data, &big).starts_with("oversized:"));
        assert!(reason(
            data,
            &GOOD.replace("\"v\":null,\"q\":\"timeout\"", "\"v\":3,\"q\":\"timeout\"")
        )
        .starts_with("schema:"));
    }

    #[test]
    fn what_the_plant_does_not_have_and_times_no_clock_gives_are_refused() {
        let data = "ems/v1/demo/data/m1";
        // Sites, devices and edges the configuration does not name; `..` is no site either.
        let other_site = GOOD.replace("\"demo\"", "\"other-plant\"");
        assert!(reason("ems/v1/other-plant/data/m1", &other_site).starts_with("site:"));
        assert!(
            reason("ems/v1/../data/m1", &GOOD.replace("\"demo\"", "\"..\"")).starts_with("site:")
        );
        let long = "d".repeat(60_000);
        let stranger = GOOD.replace("\"m1\"", &format!("\"{long}\""));
        let r = reason(&format!("ems/v1/demo/data/{long}"), &stranger);
        assert!(r.starts_with("unknown_device:") && r.len() < 200, "{r}");
        assert!(reason(data, &GOOD.replace("\"e1\"", "\"e9\"")).starts_with("unknown_edge:"));
        let status = r#"{"v":1,"site":"demo","edge":"e9","online":true,"devices":["m1"]}"#;
        assert!(reason("ems/v1/demo/status/e9", status).starts_with("unknown_edge:"));
        // A struct written as a JSON array is not a message.
        let array = r#"[1,"demo","e1","m1",5,1767196800000,[]]"#;
        assert!(reason(data, array).starts_with("json:"));
        // 1970 (a board before NTP), a hundred-thousand-year-old stamp, numbers past 2^63.
        assert!(reason(data, &GOOD.replace("1767196800000", "0")).starts_with("too_early:"));
        assert!(
            reason(data, &GOOD.replace("1767196800000", "-1000000000000000"))
                .starts_with("too_early:")
        );
        assert!(reason(
            data,
            &GOOD.replace("\"seq\":5", "\"seq\":9223372036854775808")
        )
        .starts_with("seq_range:"));
        assert!(reason(
            data,
            &GOOD.replace("\"seq\":5", "\"seq\":18446744073709551615")
        )
        .starts_with("seq_range:"));
        assert!(reason(data, &GOOD.replace("\"rate\"", "\"a b\"")).starts_with("schema:"));
    }
}
