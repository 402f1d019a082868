//! `ems-gateway demo`: the whole product in one process on embedded defaults.
//!
//! An embedded MQTT broker (rumqttd) on a free port, so a broker already on 1883 is left
//! alone; the demo plant simulated by ems-sim; ems-edge polling it over Modbus TCP; and the
//! gateway with SQLite. Everything runs on the simulator's clock, so `--speed 60` shows an hour
//! of plant time per real minute.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ems_config::Source;
use ems_sim::{Scenario, SimClock, SimOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

pub const GATEWAY_CONFIG: &str = include_str!("../examples/demo.toml");

pub struct DemoOptions {
    pub http: String,
    pub speed: f64,
    pub data_dir: Option<PathBuf>,
    /// The token of the demo's one operator ("demo"); random when not given.
    pub operator_token: Option<String>,
}

/// 128 random bits as hex, from the standard library's randomly seeded hasher.
fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let part = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    format!("{:016x}{:016x}", part(), part())
}

/// Picks a free TCP port on loopback.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_broker(port: u16) -> anyhow::Result<()> {
    let config = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 100
max_outgoing_packet_count = 1000
max_segment_size = 10485760
max_segment_count = 10

[v4.1]
name = "demo"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 524288
max_inflight_count = 1000
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&config).context("embedded broker config")?;
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "Embedded broker stopped.");
            }
        })?;
    Ok(())
}

/// Waits (up to ten seconds) until the gateway holds the last sequence number the edge gave
/// each device, so stopping the gateway leaves nothing in the embedded broker.
async fn wait_until_stored(data_dir: &std::path::Path) {
    // The edge has stopped: its numbers are final. The gateway's grow as it commits.
    let opened = ems_edge::seq::SeqStore::read(&data_dir.join("edge")).and_then(|seq| {
        Ok((
            seq,
            crate::store::Store::open(&data_dir.join("ems-gateway.db"))?.reader()?,
        ))
    });
    let (seq, reader) = match opened {
        Ok(both) => both,
        Err(e) => {
            return tracing::warn!(error = %e, "Cannot compare edge and gateway sequence numbers.")
        }
    };
    for _ in 0..100 {
        match reader.devices() {
            Ok(devices)
                if devices
                    .iter()
                    .all(|d| d.last_seq as u64 >= seq.get(&d.id).copied().unwrap_or(0)) =>
            {
                return
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Cannot read the gateway's ledger."),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("The gateway has not stored everything the edge sent; stopping anyway.");
}

pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.speed > 0.0 && opts.speed.is_finite(),
        "--speed must be a positive number"
    );
    let data_dir = match opts.data_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("ems-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let http = TcpListener::bind(&opts.http)
        .await
        .with_context(|| format!("cannot listen on {}", opts.http))?;
    let http_addr = http.local_addr()?;

    let broker_port = free_port()?;
    start_broker(broker_port)?;

    let clock = SimClock::new(chrono::Utc::now().timestamp_millis(), opts.speed);
    let sim_listener = TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = sim_listener.local_addr()?;
    let sim_stop = CancellationToken::new();
    let sim = tokio::spawn(ems_sim::run(
        sim_listener,
        SimOptions {
            scenario: Scenario::load("demo")?,
            clock,
            truth: Some(data_dir.join("truth.jsonl")),
        },
        sim_stop.clone(),
    ));

    let mut config =
        Config::from_source(&Source::embedded("<demo gateway config>", GATEWAY_CONFIG))?;
    config.mqtt.port = broker_port;
    config.storage.path = data_dir.join("ems-gateway.db");
    let token = opts.operator_token.unwrap_or_else(random_token);
    config.http.operators.insert("demo".into(), token.clone());
    config.alarms.check_every_s = 2.0;
    let gateway_stop = CancellationToken::new();
    let now = Arc::new(move || clock.now_ms());
    let (subscribed_tx, subscribed) = oneshot::channel();
    let gateway = tokio::spawn(crate::runtime::serve(
        config,
        http,
        now,
        Some(subscribed_tx),
        gateway_stop.clone(),
    ));
    // A broker drops messages no session subscribes to: the edge starts once the gateway's
    // subscription stands.
    tokio::time::timeout(Duration::from_secs(30), subscribed)
        .await
        .context("the gateway did not subscribe to the embedded broker within 30 s")?
        .context("the gateway stopped before subscribing")?;

    let mut site = ems_edge::Site::from_source(&Source::embedded(
        "<demo edge config>",
        ems_edge::config::DEMO_CONFIG,
    ))?;
    site.config.mqtt.port = broker_port;
    site.config.data_dir = data_dir.join("edge");
    // About one sample per simulated minute, never faster than ten polls a second.
    site.config.poll_interval_ms = (60_000.0 / opts.speed).clamp(100.0, 1_000.0) as u64;
    for d in &mut site.devices {
        d.link = ems_edge::link::Link::Tcp(sim_addr.to_string());
    }
    let edge_stop = CancellationToken::new();
    let edge = tokio::spawn(ems_edge::run(site, edge_stop.clone()));

    println!("Dashboard: http://{http_addr}/");
    println!("Operator token (to acknowledge alarms): {token}");
    println!(
        "Simulated plant at {} times real time; data in {}",
        opts.speed,
        data_dir.display()
    );
    tracing::info!(%http_addr, broker_port, %sim_addr, "Demo running; Ctrl-C stops it.");

    shutdown.cancelled().await;
    // Stop in data-path order so nothing read is left behind: the edge delivers what it read,
    // the gateway commits what arrived, then the plant stops.
    edge_stop.cancel();
    let edge_result = edge.await.context("edge task panicked")?;
    wait_until_stored(&data_dir).await;
    gateway_stop.cancel();
    let gateway_result = gateway.await.context("gateway task panicked")?;
    sim_stop.cancel();
    let sim_result = sim.await.context("simulator task panicked")?;
    edge_result?;
    gateway_result?;
    sim_result
}
