//! Publishing: telemetry and status to the broker, QoS 1, through the [`Spool`] and the
//! [`Outbox`].
//!
//! The pollers have already put every result in the disk spool (and tell this loop so); here
//! two small loops deliver them. One drives rumqttc's event loop and forwards the events that
//! matter; the other feeds the outbox from the spool in order (a bounded window in memory; a
//! backlog of any size waits on disk), hands messages to the client as the in-flight window
//! allows, and retires them from both on PUBACK. A result the spool could not take (a disk
//! failure) comes over in memory instead.
//!
//! Under protocol v1.1 (once the gateway has been heard telling what it commits) a result
//! leaves the spool only when the gateway's mark covers it ([`Confirmations`]); what the broker
//! acknowledged and the gateway did not confirm is sent again after every reconnect.

use std::time::Duration;

use ems_core::wire::{topic, Ack, Status, PROTOCOL_VERSION};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::board::Heartbeats;
use crate::config::{MqttConfig, TlsFiles};
use crate::confirm::{message_key, Confirmations};
use crate::metrics::EdgeMetrics;
use crate::outbox::{Message, Outbox};
use crate::poller::Handoff;
use crate::spool::Spool;
use std::sync::{Arc, Mutex};

/// Most messages handed to the client and not yet acknowledged.
const MAX_IN_FLIGHT: usize = 100;
/// Largest packet the edge sends (the gateway takes payloads up to 256 kB).
const MAX_PACKET: usize = 1 << 20;
/// Messages read from the spool ahead of sending.
const WINDOW: usize = 1_000;
/// How long a shutdown waits for the broker to acknowledge what is still in the outbox.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PublisherConfig {
    pub mqtt: MqttConfig,
    pub tls: Option<TlsFiles>,
    pub site: String,
    pub edge: String,
    pub devices: Vec<String>,
    /// Where the publisher shows it is alive (the board's watchdog supervisor watches).
    pub heartbeat: (Arc<Heartbeats>, usize),
}

enum LinkEvent {
    Connected,
    Disconnected,
    Sent(u16),
    Acked(u16),
    /// The gateway's commit marks (protocol v1.1).
    Committed(Vec<u8>),
}

/// In the spool's directory once the gateway has been heard confirming commits: from then on
/// (across restarts, and after a broker that lost its retained marks) results wait for them.
const COMMIT_ACKS_MARKER: &str = "gateway-confirms-commits";

/// What the publisher did, reported when it stops.
#[derive(Debug, Default, Clone, Copy)]
pub struct PublishStats {
    pub acknowledged: u64,
    /// Messages still unacknowledged when the drain timed out: they stay in the spool and are
    /// delivered after the next start.
    pub undelivered: u64,
    /// Messages the spool dropped because it was full.
    pub dropped: u64,
}

/// How often a connected edge republishes its status (with its spool backlog).
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// The edge's status; `spool` is (depth, dropped), absent in the last will.
fn status(cfg: &PublisherConfig, online: bool, spool: Option<(u64, u64)>) -> Message {
    let s = Status {
        v: PROTOCOL_VERSION,
        site: cfg.site.clone(),
        edge: cfg.edge.clone(),
        online,
        devices: if online {
            cfg.devices.clone()
        } else {
            Vec::new()
        },
        ts_ms: online.then(|| chrono::Utc::now().timestamp_millis()),
        spool_depth: spool.map(|s| s.0),
        spool_dropped: spool.map(|s| s.1),
    };
    Message {
        topic: topic::status(&cfg.mqtt.topic_prefix, &cfg.site, &cfg.edge),
        payload: serde_json::to_vec(&s).expect("status serializes"),
        retain: true,
        spool_id: None,
        key: None,
    }
}

/// Seconds since `started`, the clock of the results awaiting commit.
fn clock_s(started: std::time::Instant) -> u32 {
    started.elapsed().as_secs().min(u32::MAX as u64) as u32
}

/// Runs a closure on the locked spool.
type WithSpool<'a> = &'a dyn Fn(&mut dyn FnMut(&mut Spool));

/// Sends again everything not yet confirmed committed: forgets it in the outbox and the
/// confirmations and reads the spool again from its oldest unreleased result (what the gateway
/// has meanwhile confirmed is released as it is read).
fn send_again(
    confirmations: &mut Confirmations,
    outbox: &mut Outbox,
    spool: WithSpool<'_>,
    metrics: &EdgeMetrics,
) {
    let resent = confirmations.on_reconnect();
    metrics.resent_uncommitted.inc_by(resent as u64);
    metrics.awaiting_commit.set(0);
    outbox.drop_spooled();
    spool(&mut |s| s.rewind());
    if resent > 0 {
        tracing::info!(
            resent,
            "Sending again what the gateway has not confirmed committed."
        );
    }
}

/// Publishes everything that arrives on `rx` until it closes (the pollers stopped), then
/// waits up to [`DRAIN_TIMEOUT`] for the last acknowledgements and goes offline.
pub async fn run(
    cfg: PublisherConfig,
    spool: Arc<Mutex<Spool>>,
    mut rx: mpsc::Receiver<Handoff>,
    metrics: Arc<EdgeMetrics>,
) -> PublishStats {
    let spool = |f: &mut dyn FnMut(&mut Spool)| f(&mut spool.lock().expect("spool lock poisoned"));
    let mut opts = MqttOptions::new(cfg.edge.clone(), cfg.mqtt.host.clone(), cfg.mqtt.port);
    opts.set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_s.max(5)));
    // A fresh session every time: the outbox, not the client, decides what is sent again.
    opts.set_clean_session(true);
    opts.set_inflight(MAX_IN_FLIGHT as u16);
    // rumqttc refuses to send packets over 10 kB by default; the status of an edge with a few
    // hundred meters is larger, and a refused packet drops the connection over and over.
    opts.set_max_packet_size(64 * 1024, MAX_PACKET);
    if let (Some(user), Some(pass)) = (&cfg.mqtt.username, &cfg.mqtt.password) {
        opts.set_credentials(user.clone(), pass.clone());
    }
    if let Some(tls) = &cfg.tls {
        opts.set_transport(rumqttc::Transport::tls(
            tls.ca.clone(),
            tls.client.clone(),
            None,
        ));
    }
    let ack_topic = topic::ack(&cfg.mqtt.topic_prefix, &cfg.site, &cfg.edge);
    let will = status(&cfg, false, None);
    opts.set_last_will(LastWill::new(
        will.topic,
        will.payload,
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(opts, MAX_IN_FLIGHT * 2);

    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let stop_events = CancellationToken::new();
    let stop = stop_events.clone();
    let driver = tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                ev = eventloop.poll() => ev,
                () = stop.cancelled() => return,
            };
            let forward = match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => LinkEvent::Connected,
                Ok(Event::Incoming(Packet::PubAck(ack))) => LinkEvent::Acked(ack.pkid),
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LinkEvent::Sent(pkid),
                Ok(Event::Incoming(Packet::Publish(p))) => LinkEvent::Committed(p.payload.to_vec()),
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    // Our own clean disconnect: the end, not a failure to recover from.
                    let _ = ev_tx.send(LinkEvent::Disconnected);
                    return;
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT connection lost; retrying.");
                    let _ = ev_tx.send(LinkEvent::Disconnected);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if ev_tx.send(forward).is_err() {
                return;
            }
        }
    });

    let mut outbox = Outbox::new(MAX_IN_FLIGHT);
    let mut confirmations = Confirmations::default();
    let mut marker = None;
    spool(&mut |s| marker = Some(s.dir().join(COMMIT_ACKS_MARKER)));
    let marker = marker.expect("the spool has a directory");
    // Whether results wait for the gateway's commit (v1.1) or only for the broker (v1).
    let mut wait_for_commit = cfg.mqtt.commit_acks && marker.exists();
    let mut stats = PublishStats::default();
    let started = std::time::Instant::now();
    let mut resend_check = tokio::time::interval(Duration::from_secs(1));
    let mut connected = false;
    // Spool records below this id were read before the broker connection (re)opened: their
    // delivery is the replay of a backlog.
    let mut backlog_below = 0;
    let mut input_open = true;
    let mut drain_deadline = None;
    let mut sync_timer = tokio::time::interval(Duration::from_millis(200));
    let mut status_timer = tokio::time::interval(STATUS_EVERY);
    loop {
        let (beats, me) = &cfg.heartbeat;
        beats.beat(*me);
        if outbox.queued() < WINDOW / 2 {
            let room = WINDOW - outbox.queued();
            spool(&mut |s| match s.read_next(room) {
                Ok(records) => {
                    for r in records {
                        // After a rewind or a restart: what the gateway already has is released
                        // without sending it again.
                        let key = if wait_for_commit {
                            message_key(&r.topic, &r.payload)
                        } else {
                            None
                        };
                        if key
                            .as_ref()
                            .is_some_and(|(device, seq)| confirmations.covers(device, *seq))
                        {
                            if let Err(e) = s.ack(r.id) {
                                tracing::error!(error = %e, "Cannot mark a spooled message delivered.");
                            }
                            continue;
                        }
                        outbox.push(Message {
                            topic: r.topic,
                            payload: r.payload,
                            retain: false,
                            spool_id: Some(r.id),
                            key,
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "Cannot read the spool."),
            });
        }
        // Past the bound of results awaiting the gateway's commit, nothing new goes out until
        // commits catch up: they wait on disk.
        if connected && !(wait_for_commit && confirmations.is_full()) {
            while let Some(m) = outbox.next_to_send() {
                if client
                    .try_publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload)
                    .is_err()
                {
                    outbox.unsend_last();
                    break;
                }
            }
        }
        let mut depth = 0;
        spool(&mut |s| depth = s.depth());
        if !input_open && outbox.is_empty() && depth == 0 {
            break;
        }
        let deadline = drain_deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = events.recv() => match ev {
                Some(LinkEvent::Connected) => {
                    tracing::info!(host = %cfg.mqtt.host, port = cfg.mqtt.port, "MQTT connected.");
                    connected = true;
                    metrics.broker_connected.set(1);
                    outbox.on_disconnect();
                    if cfg.mqtt.commit_acks {
                        // A clean session: subscribe again each time; the retained mark comes.
                        if let Err(e) = client.try_subscribe(ack_topic.clone(), QoS::AtLeastOnce) {
                            tracing::warn!(error = %e, "Cannot subscribe to the gateway's commit marks.");
                        }
                    }
                    if wait_for_commit {
                        // What the broker took and the gateway never confirmed may be lost with
                        // the broker's queue: read it from the spool and send it again.
                        send_again(&mut confirmations, &mut outbox, &spool, &metrics);
                    }
                    let mut backlog = (0, 0);
                    spool(&mut |s| {
                        backlog = (s.depth(), s.dropped);
                        backlog_below = s.next_id();
                    });
                    outbox.push(status(&cfg, true, Some(backlog)));
                }
                Some(LinkEvent::Disconnected) => {
                    connected = false;
                    metrics.broker_connected.set(0);
                    outbox.on_disconnect();
                }
                Some(LinkEvent::Sent(pkid)) => outbox.on_outgoing(pkid),
                Some(LinkEvent::Acked(pkid)) => {
                    if let Some(m) = outbox.on_puback(pkid) {
                        stats.acknowledged += 1;
                        metrics.delivered.inc();
                        if let Some(id) = m.spool_id {
                            if id < backlog_below {
                                metrics.replayed.inc();
                            }
                            // Parsed only on v1.1, and once: when read from the spool (or here, for
                            // what was read before the gateway was first heard).
                            let key = match wait_for_commit {
                                true => m.key.or_else(|| message_key(&m.topic, &m.payload)),
                                false => None,
                            };
                            let release = match key {
                                Some((device, seq)) => confirmations.on_puback(&device, seq, id, clock_s(started)),
                                None => Some(id),
                            };
                            metrics.awaiting_commit.set(confirmations.awaiting() as i64);
                            if let Some(id) = release {
                                spool(&mut |s| if let Err(e) = s.ack(id) {
                                    tracing::error!(error = %e, "Cannot mark a spooled message delivered.");
                                });
                            }
                        }
                    }
                }
                Some(LinkEvent::Committed(payload)) => {
                    match serde_json::from_slice::<Ack>(&payload) {
                        Ok(ack) if ack.site == cfg.site && ack.edge == cfg.edge && cfg.mqtt.commit_acks => {
                            if !wait_for_commit {
                                wait_for_commit = true;
                                tracing::info!("The gateway confirms what it commits (protocol v1.1): results now wait for it.");
                                if let Err(e) = std::fs::write(&marker, b"") {
                                    tracing::error!(error = %e, "Cannot record that the gateway confirms commits.");
                                }
                            }
                            let released = confirmations.on_ack(ack);
                            metrics.awaiting_commit.set(confirmations.awaiting() as i64);
                            spool(&mut |s| for id in &released {
                                if let Err(e) = s.ack(*id) {
                                    tracing::error!(error = %e, "Cannot mark a spooled message delivered.");
                                }
                            });
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "A commit mark that does not parse; ignored."),
                    }
                }
                None => break,
            },
            msg = rx.recv(), if input_open => match msg {
                // Read from the spool at the top of the loop.
                Some(Handoff::Spooled) => {}
                Some(Handoff::Unspooled(t)) => {
                    outbox.push(Message::telemetry(&cfg.mqtt.topic_prefix, &t, None))
                }
                None => {
                    input_open = false;
                    drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                }
            },
            () = tokio::time::sleep_until(deadline), if drain_deadline.is_some() => break,
            _ = status_timer.tick(), if connected && input_open => {
                let mut backlog = (0, 0);
                spool(&mut |s| backlog = (s.depth(), s.dropped));
                outbox.push(status(&cfg, true, Some(backlog)));
            }
            _ = resend_check.tick(), if wait_for_commit && connected => {
                if confirmations.passed_over(clock_s(started)) {
                    tracing::warn!("The gateway has newer results than some the broker took: sending those again.");
                    send_again(&mut confirmations, &mut outbox, &spool, &metrics);
                }
            }
            _ = sync_timer.tick() => spool(&mut |s| {
                if let Err(e) = s.sync_if_due() {
                    tracing::error!(error = %e, "Cannot sync the spool.");
                }
                metrics.spool_depth.set(s.depth() as i64);
                metrics.spool_dropped.set(s.dropped as i64);
            }),
        }
    }
    spool(&mut |s| {
        if let Err(e) = s.sync() {
            tracing::error!(error = %e, "Cannot sync the spool.");
        }
        stats.undelivered = s.depth();
        stats.dropped = s.dropped;
    });
    stats.undelivered += outbox.unspooled_telemetry();
    if connected {
        // A clean disconnect does not fire the last will: say offline ourselves, with what
        // stays undelivered in the spool.
        let off = status(&cfg, false, Some((stats.undelivered, stats.dropped)));
        let _ = client
            .publish(off.topic, QoS::AtLeastOnce, true, off.payload)
            .await;
        let _ = client.disconnect().await;
        // Let the event loop write the last two packets.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(ev) = events.recv().await {
                if matches!(ev, LinkEvent::Disconnected) {
                    break;
                }
            }
        })
        .await;
    }
    stop_events.cancel();
    let _ = driver.await;
    stats
}
