//! Ingest through a real Mosquitto, in one run:
//! 1. how fast a plain subscriber drains the broker (QoS 1, four publishers as four edges);
//! 2. the gateway's sustained ingest (messages and points per second) into SQLite with the
//!    ledger and accounting on;
//! 3. the gateway catching up: the same messages held by the broker while the gateway was
//!    stopped (an outage), taken in with nothing publishing at the same time;
//! 4. the ceiling of the storage engine: a minimal bulk loader writing the same rows (messages
//!    and samples) into the same schema (three runs, the median), and the gateway's share of it;
//! 5. end-to-end latency (publish -> committed and visible to readers) p50/p99 at a steady
//!    10 000 points per second.
//!
//!
//! With PostgreSQL (`--storage postgres` or `both`, the default): the gateway's sustained ingest
//! into PostgreSQL (a fresh database on `EMS_TEST_POSTGRES`, by default the machine's server on
//! 127.0.0.1:5432 as `postgres`), PostgreSQL's own bulk-load ceiling (COPY of the same rows into
//! the same schema) and the gateway's share of it.
//!
//! `cargo bench -p ems-gateway --bench ingest_throughput [-- MESSAGES] [--storage
//! sqlite|postgres|both]` (default 200 000 messages of ten points, the shape ems-edge sends: one
//! message per device per poll; a few seconds a phase, where 60 000 took under one and measured
//! mostly the gateway's start). Needs `mosquitto` (tests/run.sh installs it); the bench starts
//! its own on a free port.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_gateway::Config;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use rusqlite::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const DEVICES: usize = 300;
const POINTS: usize = 10;
/// Devices per accounting unit: the first meter's `total` is the product, the others' energy.
const PER_UNIT: usize = 10;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(dir: &std::path::Path) -> (Broker, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000000\nmax_inflight_messages 0\n"
        ),
    )
    .unwrap();
    let program = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("mosquitto is installed (tests/run.sh installs it)");
    let child = Command::new(program)
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Broker(child), port)
}

fn telemetry(device: usize, seq: u64, ts_ms: i64) -> Telemetry {
    let total = 1_000.0 + seq as f64 * (1.0 + (device % 7) as f64);
    let mut points = vec![
        PointValue {
            id: "total".into(),
            v: Some(total),
            q: Quality::Good,
        },
        PointValue {
            id: "import_kwh".into(),
            v: Some(total * 10.0),
            q: Quality::Good,
        },
    ];
    for i in 2..POINTS {
        points.push(PointValue {
            id: format!("p{i}"),
            v: Some(230.0 + i as f64),
            q: Quality::Good,
        });
    }
    Telemetry {
        v: 1,
        site: "s".into(),
        edge: "e".into(),
        device: format!("m{device}"),
        seq,
        ts_ms,
        points,
        signed: None,
    }
}

fn gateway_config(
    port: u16,
    db: &std::path::Path,
    client_id: &str,
    postgres: Option<&str>,
    edge_key: Option<&str>,
) -> String {
    let backend = postgres
        .map(|url| format!("backend = \"postgres\"\nurl = \"{url}\"\n"))
        .unwrap_or_default();
    let mut cfg = format!(
        "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"{client_id}\"\n[storage]\npath = \"{}\"\n{backend}[ingest]\nsites = [\"s\"]\nedges = [\"e\"]\n[http]\nlisten = \"127.0.0.1:0\"\n[accounting]\nmax_sample_gap_s = 86400\n",
        db.display()
    );
    if let Some(key) = edge_key {
        cfg += &format!("[evidence.edge_keys]\ne = \"{key}\"\n");
    }
    for u in 0..DEVICES / PER_UNIT {
        cfg += &format!("[[units]]\nid = \"u{u}\"\nname = \"U{u}\"\nkind = \"kiln\"\n");
        for d in u * PER_UNIT..(u + 1) * PER_UNIT {
            if d == u * PER_UNIT {
                cfg += &format!("[[units.flows]]\ndevice = \"m{d}\"\npoint = \"total\"\nrole = \"product\"\nunit = \"t\"\n");
            }
            cfg += &format!("[[units.flows]]\ndevice = \"m{d}\"\npoint = \"import_kwh\"\nrole = \"consumed\"\ncarrier = \"electricity\"\nunit = \"kWh\"\n");
        }
    }
    cfg
}

/// A publisher client whose event loop runs in the background (the latency phase's steady
/// stream).
async fn publisher(port: u16, id: &str) -> AsyncClient {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_inflight(1_000);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut ev) = AsyncClient::new(opts, 10_000);
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    client
}

/// Publishers at once, each its own connection, like the edges of a plant: one connection
/// alone cannot fill Mosquitto.
const PUBLISHERS: usize = 4;
/// Messages a publisher has sent and the broker not yet acknowledged, at most.
const WINDOW: usize = 1_000;
/// Messages a publisher writes to its socket at once.
const WRITE_AT_ONCE: usize = 50;

/// One edge's share of the messages as QoS 1 PUBLISH packets, encoded with rumqttc's codec
/// before the clock starts: the edges run on boards of their own, so the bench's stand-ins
/// for them should cost the gateway's two cores as little as they can. (Four rumqttc clients,
/// each writing and flushing every message on its own, held the plain subscriber to 54 000-
/// 80 000 messages/s here; these let it drain 84 000-100 000.)
struct Edge {
    id: String,
    writes: Vec<(usize, BytesMut)>,
}

/// Splits (device, topic, payload) into `PUBLISHERS` edges, device `d` sent by edge
/// `d % PUBLISHERS` so that every device's messages keep their order.
fn edges(id: &str, messages: Vec<(usize, String, Vec<u8>)>) -> Vec<Edge> {
    let mut parts: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); PUBLISHERS];
    for (d, topic, payload) in messages {
        parts[d % PUBLISHERS].push((topic, payload));
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(k, part)| {
            let mut pkid = 0u16;
            let writes = part
                .chunks(WRITE_AT_ONCE)
                .map(|chunk| {
                    let mut buf = BytesMut::new();
                    for (topic, payload) in chunk {
                        pkid = pkid % u16::MAX + 1;
                        let mut p = Publish::new(topic.as_str(), QoS::AtLeastOnce, payload.clone());
                        p.pkid = pkid;
                        p.write(&mut buf).unwrap();
                    }
                    (chunk.len(), buf)
                })
                .collect();
            Edge {
                id: format!("{id}-{k}"),
                writes,
            }
        })
        .collect()
}

/// Sends an edge's packets, keeping at most `WINDOW` unacknowledged; ends once the broker has
/// acknowledged every one.
async fn send(port: u16, edge: Edge) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut rx, mut tx) = stream.into_split();
    let mut connect = rumqttc::Connect::new(edge.id);
    connect.keep_alive = 0;
    let mut buf = BytesMut::new();
    connect.write(&mut buf).unwrap();
    tx.write_all(&buf).await.unwrap();
    let total: usize = edge.writes.iter().map(|(n, _)| n).sum();
    // No permits until the broker has accepted the connection.
    let window = Arc::new(tokio::sync::Semaphore::new(0));
    let acks = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut incoming = BytesMut::with_capacity(64 << 10);
            let mut acked = 0;
            while acked < total {
                match rumqttc::Packet::read(&mut incoming, 1 << 20) {
                    Ok(rumqttc::Packet::ConnAck(_)) => window.add_permits(WINDOW),
                    Ok(rumqttc::Packet::PubAck(_)) => {
                        acked += 1;
                        window.add_permits(1);
                    }
                    Ok(other) => panic!("unexpected packet from the broker: {other:?}"),
                    Err(rumqttc::Error::InsufficientBytes(_)) => {
                        let read = rx.read_buf(&mut incoming).await.unwrap();
                        assert!(read > 0, "the broker closed a publisher's connection");
                    }
                    Err(e) => panic!("unreadable packet from the broker: {e}"),
                }
            }
        })
    };
    for (n, packets) in edge.writes {
        window.acquire_many(n as u32).await.unwrap().forget();
        tx.write_all(&packets).await.unwrap();
    }
    acks.await.unwrap();
}

/// Starts every edge sending.
fn publish(port: u16, edges: Vec<Edge>) {
    for edge in edges {
        tokio::spawn(send(port, edge));
    }
}

/// A bare subscriber (automatic acknowledgements) once the broker has confirmed `filter`.
async fn bare_subscriber(port: u16, id: &str, filter: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (sub, mut ev) = AsyncClient::new(opts, 10_000);
    sub.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = ev.poll().await {
            break;
        }
    }
    (sub, ev)
}

/// Takes `n` messages; returns when the first arrived.
async fn receive(ev: &mut rumqttc::EventLoop, n: usize) -> Instant {
    let (mut got, mut first) = (0usize, None);
    while got < n {
        if let Ok(Event::Incoming(Packet::Publish(_))) = ev.poll().await {
            first.get_or_insert_with(Instant::now);
            got += 1;
        }
    }
    first.expect("n > 0")
}

/// 1. A plain subscriber draining the publishers' messages.
async fn plain_subscriber(port: u16, payloads: &[Vec<u8>]) -> f64 {
    let (_sub, mut ev) = bare_subscriber(port, "bench-sub", "bench/plain/#").await;
    let n = payloads.len();
    let messages = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                i % DEVICES,
                format!("bench/plain/{}", i % DEVICES),
                p.clone(),
            )
        })
        .collect();
    publish(port, edges("bench-pub-plain", messages));
    n as f64 / receive(&mut ev, n).await.elapsed().as_secs_f64()
}

/// Messages stored so far, from the ledger (committed with them): a few hundred rows to sum,
/// where counting `messages` would scan the table while the gateway writes it.
fn count_messages(db: &std::path::Path) -> i64 {
    Connection::open(db)
        .and_then(|c| {
            c.query_row("SELECT COALESCE(SUM(messages), 0) FROM devices", [], |r| {
                r.get(0)
            })
        })
        .unwrap_or(0)
}

/// Runs a gateway in this process; returns its stop token and task.
async fn start_gateway(
    port: u16,
    db: &std::path::Path,
    client_id: &str,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    start_gateway_on(port, db, client_id, None, None).await
}

/// [`start_gateway`], committing to PostgreSQL at `postgres` if given.
async fn start_gateway_on(
    port: u16,
    db: &std::path::Path,
    client_id: &str,
    postgres: Option<&str>,
    edge_key: Option<&str>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = Config::from_source(&ems_config::Source::embedded(
        "<bench>",
        &gateway_config(port, db, client_id, postgres, edge_key),
    ))
    .expect("bench config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let now = Arc::new(|| chrono::Utc::now().timestamp_millis());
    let task = tokio::spawn(ems_gateway::serve(
        config,
        listener,
        now,
        Some(tx),
        stop.clone(),
    ));
    rx.await.expect("gateway subscribed");
    (stop, task)
}

/// Each message with its device (which publisher sends it) and the gateway's topic for it.
fn to_gateway(msgs: &[Telemetry], payloads: &[Vec<u8>]) -> Vec<(usize, String, Vec<u8>)> {
    msgs.iter()
        .zip(payloads)
        .enumerate()
        .map(|(i, (t, p))| {
            (
                i % DEVICES,
                format!("ems/v1/s/data/{}", t.device),
                p.clone(),
            )
        })
        .collect()
}

/// Part 3: the messages published while the gateway's session is away, counted in at the
/// broker by a bare subscriber, then taken in by the gateway; its rate in messages/s.
async fn catch_up(
    port: u16,
    db: &std::path::Path,
    msgs: &[Telemetry],
    payloads: &[Vec<u8>],
) -> f64 {
    let (stop, task) = start_gateway(port, db, "bench-gateway-catch-up").await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let (counter, mut ev) = bare_subscriber(port, "bench-count", "ems/v1/s/data/#").await;
    publish(
        port,
        edges("bench-pub-catch-up", to_gateway(msgs, payloads)),
    );
    receive(&mut ev, msgs.len()).await;
    // Every message is at the broker, queued for the gateway's session too.
    counter.disconnect().await.unwrap();
    let started = Instant::now();
    let (stop, task) = start_gateway(port, db, "bench-gateway-catch-up").await;
    while count_messages(db) < msgs.len() as i64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = msgs.len() as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap().unwrap();
    rate
}

/// Part 4: the same rows, bulk-loaded into the same schema: messages with their packed samples
/// only (series ids known in advance).
fn storage_ceiling(db: &std::path::Path, msgs: &[Telemetry]) -> f64 {
    let _ = std::fs::remove_file(db);
    // Start from a disk that is not still writing out the earlier phases' databases.
    Command::new("sync").status().unwrap();
    ems_gateway::store::Store::open(db).unwrap();
    let mut conn = Connection::open(db).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    // The writer's page cache, as the gateway's store sets it.
    conn.pragma_update(None, "cache_size", -32_768).unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", 8_192)
        .unwrap();
    let mut series: HashMap<(&str, &str), i64> = HashMap::new();
    {
        let tx = conn.transaction().unwrap();
        for t in msgs {
            for p in &t.points {
                let next = series.len() as i64 + 1;
                series.entry((&t.device, &p.id)).or_insert_with(|| {
                    tx.execute(
                        "INSERT INTO series (id, device, point) VALUES (?1, ?2, ?3)",
                        rusqlite::params![next, t.device, p.id],
                    )
                    .unwrap();
                    next
                });
            }
        }
        tx.commit().unwrap();
    }
    let started = Instant::now();
    for chunk in msgs.chunks(20_000) {
        let tx = conn.transaction().unwrap();
        {
            let mut m = tx.prepare("INSERT INTO messages (device, seq, ts_ms, edge, received_ms, points) VALUES (?1, ?2, ?3, ?4, ?5, ?6)").unwrap();
            for t in chunk {
                let mut blob = Vec::new();
                for p in &t.points {
                    let id = series[&(t.device.as_str(), p.id.as_str())];
                    ems_gateway::packed::push(&mut blob, id, p.v, p.q);
                }
                m.execute(rusqlite::params![
                    t.device,
                    t.seq as i64,
                    t.ts_ms,
                    t.edge,
                    0,
                    blob
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    (msgs.len() * POINTS) as f64 / started.elapsed().as_secs_f64()
}

/// Runs `f` on a thread of its own: the synchronous PostgreSQL client must not run on the
/// async runtime's threads.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

/// A fresh database on `EMS_TEST_POSTGRES` or the machine's server.
fn pg_scratch(name: &str) -> ems_gateway::pg::ScratchDatabase {
    use ems_gateway::pg::ScratchDatabase;
    let name = name.to_owned();
    off_runtime(move || {
        ScratchDatabase::new(&ScratchDatabase::default_server(), &name)
            .expect("PostgreSQL (EMS_TEST_POSTGRES or 127.0.0.1:5432 as postgres)")
    })
}

fn pg_count_messages(url: &str) -> i64 {
    let url = url.to_owned();
    off_runtime(move || {
        postgres::Client::connect(&url, postgres::NoTls)
            .and_then(|mut c| {
                c.query_one(
                    "SELECT COALESCE(SUM(messages), 0)::bigint FROM devices",
                    &[],
                )
            })
            .map(|r| r.get(0))
            .unwrap_or(0)
    })
}

/// PostgreSQL's ceiling: the same rows COPYed into the same schema (the ledger of numbers and
/// the raw messages with their packed samples, day partitions made beforehand), 20 000
/// messages a transaction.
fn pg_ceiling(url: &str, msgs: &[Telemetry]) -> f64 {
    use std::io::Write as _;
    drop(ems_gateway::pg::PgStore::connect(url).unwrap());
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let mut series: HashMap<(&str, &str), i64> = HashMap::new();
    let mut days = HashSet::new();
    for t in msgs {
        days.insert(t.ts_ms.div_euclid(86_400_000));
        for p in &t.points {
            let next = series.len() as i64 + 1;
            series.entry((&t.device, &p.id)).or_insert_with(|| {
                client
                    .execute(
                        "INSERT INTO series (id, device, point) VALUES ($1, $2, $3)",
                        &[&next, &t.device, &p.id],
                    )
                    .unwrap();
                next
            });
        }
    }
    for day in days {
        client
            .batch_execute(&format!(
                "CREATE TABLE messages_d{day} PARTITION OF messages FOR VALUES FROM ({}) TO ({})",
                day * 86_400_000,
                (day + 1) * 86_400_000
            ))
            .unwrap();
    }
    let started = Instant::now();
    for chunk in msgs.chunks(20_000) {
        let mut tx = client.transaction().unwrap();
        let mut numbers = String::new();
        let mut rows = String::new();
        for t in chunk {
            let mut blob = Vec::new();
            for p in &t.points {
                let id = series[&(t.device.as_str(), p.id.as_str())];
                ems_gateway::packed::push(&mut blob, id, p.v, p.q);
            }
            numbers += &format!("{}\t{}\t{}\t\\N\n", t.device, t.seq, t.ts_ms);
            let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
            rows += &format!(
                "{}\t{}\t{}\t{}\t0\t\\\\x{hex}\n",
                t.device, t.seq, t.ts_ms, t.edge
            );
        }
        let mut w = tx
            .copy_in("COPY message_numbers (device, seq, ts_ms, written_by) FROM STDIN")
            .unwrap();
        w.write_all(numbers.as_bytes()).unwrap();
        w.finish().unwrap();
        let mut w = tx
            .copy_in("COPY messages (device, seq, ts_ms, edge, received_ms, points) FROM STDIN")
            .unwrap();
        w.write_all(rows.as_bytes()).unwrap();
        w.finish().unwrap();
        tx.commit().unwrap();
    }
    (msgs.len() * POINTS) as f64 / started.elapsed().as_secs_f64()
}

/// The PostgreSQL phases: the gateway's sustained ingest, the ceiling, the share.
async fn postgres_phases(
    port: u16,
    dir: &std::path::Path,
    msgs: &[Telemetry],
    payloads: &[Vec<u8>],
    plain: f64,
) {
    let name = format!("ems_bench_ingest_{}", std::process::id());
    let db = pg_scratch(&name);
    let url = db.url();
    let (stop, task) = start_gateway_on(
        port,
        &dir.join("unused.db"),
        "bench-gateway-pg",
        Some(&url),
        None,
    )
    .await;
    let n = msgs.len();
    let started = Instant::now();
    publish(port, edges("bench-pub-pg", to_gateway(msgs, payloads)));
    while pg_count_messages(&url) < n as i64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gateway = n as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap().unwrap();
    println!(
        "PostgreSQL: gateway sustained ingest {gateway:>9.0} msg/s  {:>9.0} points/s (ledger, samples, accounting, one transaction a batch)",
        gateway * POINTS as f64
    );
    let mut runs = Vec::new();
    for i in 0..3 {
        let db = pg_scratch(&format!("{name}_ceiling{i}"));
        let (url, rows) = (db.url(), msgs.to_vec());
        runs.push(off_runtime(move || pg_ceiling(&url, &rows)));
        off_runtime(move || drop(db));
    }
    runs.sort_by(f64::total_cmp);
    let ceiling = runs[1];
    println!(
        "PostgreSQL: bulk-load ceiling      {:>9.0} msg/s  {ceiling:>9.0} points/s (COPY of the same rows, same schema; median of 3, {:.0} to {:.0})",
        ceiling / POINTS as f64,
        runs[0],
        runs[2]
    );
    println!(
        "PostgreSQL: gateway share of ceiling {:>5.0} %; of the plain subscriber's drain {:.2}",
        100.0 * gateway * POINTS as f64 / ceiling,
        gateway / plain
    );
    off_runtime(move || drop(db));
}

/// Part 5: `rate` messages a second for 15 s into a fresh gateway (signed with `key`, enrolled,
/// if given): the latencies (publish -> committed) in order, and this process's CPU seconds per
/// 1 000 points meanwhile.
async fn steady(
    port: u16,
    db: &std::path::Path,
    key: Option<&ems_core::evidence::EdgeKey>,
) -> (Vec<i64>, f64) {
    let public = key.map(|k| k.public_hex());
    let (stop, task) = start_gateway_on(
        port,
        db,
        &format!("bench-gateway-latency-{}", key.is_some()),
        None,
        public.as_deref(),
    )
    .await;
    let mut prev = vec![ems_core::evidence::CHAIN_START; DEVICES];
    let cpu0 = process_cpu_s();
    let rate = 1_000usize;
    let total = rate * 15;
    let pubc = publisher(port, "bench-pub-latency").await;
    let watcher = {
        let db = db.to_owned();
        std::thread::spawn(move || {
            let conn = Connection::open(&db).unwrap();
            let mut seen = HashSet::new();
            let mut latencies = Vec::with_capacity(total);
            let mut stmt = conn
                .prepare("SELECT device, seq, ts_ms FROM messages WHERE received_ms >= ?1")
                .unwrap();
            let mut since = 0i64;
            while latencies.len() < total {
                let now = chrono::Utc::now().timestamp_millis();
                let rows: Vec<(String, i64, i64)> = stmt
                    .query_map([since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                for (d, s, ts) in rows {
                    if seen.insert((d, s)) {
                        latencies.push(now - ts);
                    }
                }
                since = now - 2_000;
                std::thread::sleep(Duration::from_millis(2));
            }
            latencies
        })
    };
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut seq = vec![0u64; DEVICES];
    for i in 0..total {
        if i % (rate / 100) == 0 {
            tick.tick().await;
        }
        let d = i % DEVICES;
        seq[d] += 1;
        let mut t = telemetry(d, seq[d], chrono::Utc::now().timestamp_millis());
        if let Some(key) = key {
            prev[d] = key.sign(&mut t, prev[d]);
        }
        pubc.publish(
            format!("ems/v1/s/data/m{d}"),
            QoS::AtLeastOnce,
            false,
            serde_json::to_vec(&t).unwrap(),
        )
        .await
        .unwrap();
    }
    let mut lat = watcher.join().unwrap();
    let cpu = process_cpu_s() - cpu0;
    lat.sort_unstable();
    stop.cancel();
    task.await.unwrap().unwrap();
    (lat, cpu / (total * POINTS) as f64 * 1000.0)
}

/// User and system CPU seconds of this process so far (/proc/self/stat, clock ticks at 100 Hz).
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Each message signed in its device's chain, as ems-edge signs them.
fn signed(key: &ems_core::evidence::EdgeKey, msgs: &[Telemetry]) -> Vec<Vec<u8>> {
    let mut prev = vec![ems_core::evidence::CHAIN_START; DEVICES];
    msgs.iter()
        .enumerate()
        .map(|(i, t)| {
            let mut t = t.clone();
            prev[i % DEVICES] = key.sign(&mut t, prev[i % DEVICES]);
            serde_json::to_vec(&t).unwrap()
        })
        .collect()
}

/// Part 2: the gateway's sustained ingest of `payloads` into a fresh database, in messages/s.
async fn sustained(
    port: u16,
    db: &std::path::Path,
    msgs: &[Telemetry],
    payloads: &[Vec<u8>],
    edge_key: Option<&str>,
) -> f64 {
    let id = format!("bench-gateway-{}", edge_key.is_some());
    let (stop, task) = start_gateway_on(port, db, &id, None, edge_key).await;
    let edges = edges(&id, to_gateway(msgs, payloads));
    let started = Instant::now();
    publish(port, edges);
    while count_messages(db) < msgs.len() as i64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = msgs.len() as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap().unwrap();
    rate
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    if std::env::var("BENCH_LOG").is_ok() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(200_000);
    let storage = args
        .iter()
        .position(|a| a == "--storage")
        .and_then(|i| args.get(i + 1))
        .map_or("both", String::as_str);
    let (sqlite, postgres) = match storage {
        "sqlite" => (true, false),
        "postgres" => (false, true),
        "both" => (true, true),
        other => panic!("--storage sqlite|postgres|both, not {other}"),
    };
    let dir = std::env::temp_dir().join(format!("ems-ingest-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (_broker, port) = start_broker(&dir);

    // One minute between polls, in the past (never "from the future").
    let t0 = chrono::Utc::now().timestamp_millis() - (n / DEVICES + 10) as i64 * 60_000;
    let msgs: Vec<Telemetry> = (0..n)
        .map(|i| {
            let (d, poll) = (i % DEVICES, i / DEVICES);
            telemetry(d, poll as u64 + 1, t0 + poll as i64 * 60_000 + d as i64)
        })
        .collect();
    let payloads: Vec<Vec<u8>> = msgs
        .iter()
        .map(|t| serde_json::to_vec(t).unwrap())
        .collect();
    let bytes = payloads.iter().map(Vec::len).sum::<usize>() / n;
    println!("{n} messages of {POINTS} points from {DEVICES} devices, {bytes} bytes each");

    let plain = plain_subscriber(port, &payloads).await;
    println!(
        "plain subscriber drains   {plain:>9.0} msg/s  {:>9.0} points/s",
        plain * POINTS as f64
    );

    if postgres {
        postgres_phases(port, &dir, &msgs, &payloads, plain).await;
    }
    if !sqlite {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let gateway = sustained(port, &dir.join("gateway.db"), &msgs, &payloads, None).await;
    println!(
        "gateway sustained ingest  {gateway:>9.0} msg/s  {:>9.0} points/s (ledger, samples, accounting, SQLite WAL synchronous=FULL); {:.2} of the plain subscriber's drain",
        gateway * POINTS as f64,
        gateway / plain
    );
    // Protocol v1.2: the same messages signed and chained, the edge enrolled.
    let key = ems_core::evidence::EdgeKey::from_seed([17; 32]);
    let signed_payloads = signed(&key, &msgs);
    let signed_rate = sustained(
        port,
        &dir.join("signed.db"),
        &msgs,
        &signed_payloads,
        Some(&key.public_hex()),
    )
    .await;
    println!(
        "gateway sustained, signed {signed_rate:>9.0} msg/s  {:>9.0} points/s (each signature verified, each chain link checked); {:.2} of unsigned",
        signed_rate * POINTS as f64,
        signed_rate / gateway
    );

    let caught_up = catch_up(port, &dir.join("catch-up.db"), &msgs, &payloads).await;
    println!(
        "gateway catching up       {caught_up:>9.0} msg/s  {:>9.0} points/s (the same messages queued at the broker during an outage)",
        caught_up * POINTS as f64
    );

    let mut runs: Vec<f64> = (0..3)
        .map(|_| storage_ceiling(&dir.join("ceiling.db"), &msgs))
        .collect();
    runs.sort_by(f64::total_cmp);
    let ceiling = runs[1];
    println!(
        "storage ceiling           {:>9.0} msg/s  {ceiling:>9.0} points/s (bulk INSERT of the same rows, same schema; median of 3, {:.0} to {:.0})",
        ceiling / POINTS as f64,
        runs[0],
        runs[2]
    );
    // The broker's own bound: what a client doing nothing with the messages drains.
    println!(
        "gateway share of ceiling  {:>8.0} % sustained, {:.0} % catching up (the plain subscriber: {:.0} %)",
        100.0 * gateway * POINTS as f64 / ceiling,
        100.0 * caught_up * POINTS as f64 / ceiling,
        100.0 * plain * POINTS as f64 / ceiling
    );

    // 5. Latency at a steady 1 000 messages (10 000 points) a second for 15 s, and the CPU it
    // costs, unsigned and signed.
    let (lat, cpu) = steady(port, &dir.join("latency.db"), None).await;
    println!(
        "latency at 10 000 points/s  p50 {} ms  p99 {} ms  max {} ms (publish -> committed, visible to readers; {} messages); {:.3} CPU-s per 1 000 points (this process: gateway and publisher)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().unwrap(),
        lat.len(),
        cpu
    );
    let (lat, signed_cpu) = steady(port, &dir.join("latency-signed.db"), Some(&key)).await;
    println!(
        "signed, at 10 000 points/s  p50 {} ms  p99 {} ms; {:.3} CPU-s per 1 000 points, {:+.1} % (signing in the publisher, as the edge does, and verifying in the gateway)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        signed_cpu,
        100.0 * (signed_cpu / cpu - 1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
