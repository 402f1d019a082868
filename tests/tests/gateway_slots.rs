//! Gateways that share the work and stand in for each other, over one PostgreSQL database (a
//! fresh one on the machine's server) and a private Mosquitto, while the simulator and two
//! edges (two sites) run:
//! - slot `a` (site `demo`): its active gateway is SIGKILLed under load; its standby takes
//!   over within the lease;
//! - slot `b` (site `demo2`): its active gateway is paused (SIGSTOP) until its standby took
//!   over, then resumed: it writes nothing more and stops;
//! - the broker is killed and restarted without persistence (its queue and sessions lost).
//!
//! Every sequence number ends stored exactly once with no gap, and the rollups equal a
//! recomputation from the raw samples (every stored message replayed in time order into a
//! fresh single-gateway SQLite store). Both slots' gateways serve the central view: every
//! site's devices, the integrity check, and each unit's figures equal to the recomputation's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ems_core::wire::{PointValue, Telemetry};
use ems_tests::*;

/// The lease: a standby takes over at most this long after the active one stopped renewing.
const LEASE_S: u64 = 3;

/// A database of the test's own on the machine's server (or `EMS_TEST_POSTGRES`).
struct TestDb(ems_gateway::pg::ScratchDatabase);

impl TestDb {
    fn new() -> TestDb {
        use ems_gateway::pg::ScratchDatabase;
        TestDb(
            ScratchDatabase::new(
                &ScratchDatabase::default_server(),
                &format!("ems_slots_{}", std::process::id()),
            )
            .expect("PostgreSQL on 127.0.0.1:5432 (trust authentication) or EMS_TEST_POSTGRES"),
        )
    }
    fn url(&self) -> String {
        self.0.url()
    }
    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).unwrap()
    }
}

/// The demo edge's file split in two edges: the first half of its meters on site `demo`, the
/// rest on site `demo2`, each in its own directory.
fn write_edges(d: &Path, sim_addr: &str, mqtt_port: u16) -> [PathBuf; 2] {
    write_edge_config(d, sim_addr, mqtt_port, 100);
    let text = std::fs::read_to_string(d.join("edge.toml")).unwrap();
    let mut parts = text.split("\n[[devices]]");
    let header = parts.next().unwrap().to_owned();
    let devices: Vec<&str> = parts.collect();
    let half = devices.len() / 2;
    let mut dirs = Vec::new();
    for (name, site, devs) in [
        ("edge-a", "demo", &devices[..half]),
        ("edge-b", "demo2", &devices[half..]),
    ] {
        let dir = d.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let head = header
            .replacen("site = \"demo\"", &format!("site = \"{site}\""), 1)
            .replacen("edge_id = \"edge-1\"", &format!("edge_id = \"{name}\""), 1);
        assert_ne!(head, header);
        let body: String = devs.iter().map(|t| format!("\n[[devices]]{t}")).collect();
        std::fs::write(dir.join("edge.toml"), format!("{head}{body}")).unwrap();
        dirs.push(dir);
    }
    [dirs[0].clone(), dirs[1].clone()]
}

/// One gateway instance of a slot, in a directory of its own.
fn gateway_config(
    d: &Path,
    instance: &str,
    slot: &str,
    site: &str,
    mqtt_port: u16,
    url: &str,
) -> PathBuf {
    let dir = d.join(instance);
    std::fs::create_dir_all(&dir).unwrap();
    write_gateway_config(&dir, mqtt_port);
    let path = dir.join("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let replaced = text
        .replacen(
            "path = \"gw.db\"",
            &format!("path = \"gw.db\"\nbackend = \"postgres\"\nurl = \"{url}\""),
            1,
        )
        .replacen(
            "client_id = \"ems-gateway\"",
            &format!("client_id = \"ems-gateway-{slot}\""),
            1,
        )
        .replacen("sites = [\"demo\"]", &format!("sites = [\"{site}\"]"), 1)
        .replacen(
            "edges = [\"edge-1\"]",
            "edges = [\"edge-a\", \"edge-b\"]",
            1,
        );
    for (from, to) in [
        ("gw.db", "backend"),
        ("ems-gateway", "ems-gateway-"),
        ("sites", site),
        ("edges", "edge-a"),
    ] {
        assert!(replaced.contains(to), "{from} replaced");
    }
    std::fs::write(
        &path,
        format!("{replaced}\n[cluster]\nslot = \"{slot}\"\ninstance = \"{instance}\"\nlease_s = {LEASE_S}\n"),
    )
    .unwrap();
    dir
}

fn start(dir: &Path) -> (Proc, String) {
    let p = Proc::start(
        &bin("ems-gateway"),
        &["serve", "--config", "gateway.toml"],
        dir,
    );
    let http = p.wait_line("HTTP ", Duration::from_secs(10));
    (p, http)
}

fn role(http: &str) -> (String, Option<i64>) {
    let h = get_json(http, "/healthz");
    (
        h["role"].as_str().unwrap_or_default().to_owned(),
        h["epoch"].as_i64(),
    )
}

fn subscribed(http: &str) -> bool {
    get_text(http, "/metrics").contains("ems_gateway_mqtt_subscribed 1")
}

fn signal(p: &Proc, sig: &str) {
    assert!(std::process::Command::new("kill")
        .args([sig, &p.pid().to_string()])
        .status()
        .unwrap()
        .success());
}

/// Rows written under a lease ("slot#epoch").
fn written_by(db: &TestDb, writer: &str) -> i64 {
    db.client()
        .query_one(
            "SELECT count(*) FROM message_numbers WHERE written_by = $1",
            &[&writer],
        )
        .unwrap()
        .get(0)
}

#[test]
fn two_slots_and_standbys_lose_nothing_through_a_kill_a_pause_and_a_broker_restart() {
    let dir = TempDir::new("slots");
    let d = dir.path();
    let db = TestDb::new();
    let mut broker = Mosquitto::start(d);
    let (_sim, sim_addr) = start_sim(d, &[]);
    let url = db.url();
    let a1 = gateway_config(d, "a1", "a", "demo", broker.port, &url);
    let a2 = gateway_config(d, "a2", "a", "demo", broker.port, &url);
    let b1 = gateway_config(d, "b1", "b", "demo2", broker.port, &url);
    let b2 = gateway_config(d, "b2", "b", "demo2", broker.port, &url);

    // The actives first (each slot's session must exist before its edge publishes), then the
    // standbys.
    let (mut ga1, ha1) = start(&a1);
    let (gb1, hb1) = start(&b1);
    eventually(
        "both slots active and subscribed",
        Duration::from_secs(20),
        || {
            role(&ha1) == ("active".into(), Some(1))
                && role(&hb1) == ("active".into(), Some(1))
                && subscribed(&ha1)
                && subscribed(&hb1)
        },
    );
    let (mut ga2, ha2) = start(&a2);
    let (mut gb2, hb2) = start(&b2);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(role(&ha2).0, "standby");
    assert_eq!(role(&hb2).0, "standby");

    let [ea, eb] = write_edges(d, &sim_addr, broker.port);
    let mut edge_a = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], &ea);
    let mut edge_b = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], &eb);
    eventually("both sites' data stored", Duration::from_secs(30), || {
        written_by(&db, "a#1") > 100 && written_by(&db, "b#1") > 100
    });

    // Slot a: its active gateway dies under load.
    ga1.kill();
    let killed = Instant::now();
    eventually(
        "a2 takes slot a over",
        Duration::from_secs(LEASE_S + 10),
        || role(&ha2) == ("active".into(), Some(2)) && subscribed(&ha2),
    );
    let takeover = killed.elapsed();
    eprintln!(
        "slot a taken over {:.1} s after its active gateway was killed",
        takeover.as_secs_f64()
    );
    assert!(
        takeover < Duration::from_secs(LEASE_S + 5),
        "the standby takes over within the lease and a few seconds: {takeover:?}"
    );

    // Slot b: its active gateway pauses (a long GC, a frozen VM); the standby takes over.
    signal(&gb1, "-STOP");
    eventually(
        "b2 takes slot b over",
        Duration::from_secs(LEASE_S + 10),
        || role(&hb2) == ("active".into(), Some(2)) && subscribed(&hb2),
    );
    let by_old_b = written_by(&db, "b#1");
    std::thread::sleep(Duration::from_secs(2));
    // Resumed, the old active writes nothing and stops.
    signal(&gb1, "-CONT");
    let mut gb1 = gb1;
    let status = gb1.wait(Duration::from_secs(LEASE_S + 15));
    assert!(
        !status.success(),
        "the old active stops: {}",
        gb1.stderr_tail()
    );
    assert!(
        gb1.stderr().contains("taken over") || gb1.stderr().contains("lost its slot"),
        "{}",
        gb1.stderr_tail()
    );
    assert_eq!(
        written_by(&db, "b#1"),
        by_old_b,
        "nothing written under the old lease after the takeover"
    );

    // The broker dies and comes back without its queue or sessions.
    std::thread::sleep(Duration::from_secs(2));
    broker.kill();
    broker.restart();
    std::thread::sleep(Duration::from_secs(5));

    // The edges stop once the gateways confirmed everything they read.
    for e in [&mut edge_a, &mut edge_b] {
        assert!(
            e.terminate(Duration::from_secs(40)).success(),
            "{}",
            e.stderr_tail()
        );
    }
    let mut numbered: HashMap<String, u64> = HashMap::new();
    for e in [&ea, &eb] {
        numbered.extend(edge_sequence_numbers(e));
    }
    assert_eq!(numbered.len(), demo_meter_count());
    let mut client = db.client();
    eventually("every number stored", Duration::from_secs(30), || {
        let rows = client
            .query(
                "SELECT device, count(*), max(seq) FROM message_numbers GROUP BY device",
                &[],
            )
            .unwrap();
        rows.len() == numbered.len()
            && rows.iter().all(|r| {
                let (dev, n, max): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
                n as u64 == numbered[&dev] && max as u64 == numbered[&dev]
            })
    });
    let gaps: i64 = client
        .query_one("SELECT count(*) FROM gaps", &[])
        .unwrap()
        .get(0);
    assert_eq!(gaps, 0, "no gap left");
    let ledger = client
        .query("SELECT device, last_seq, messages FROM devices", &[])
        .unwrap();
    for r in &ledger {
        let (dev, last, messages): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(
            (last as u64, messages as u64),
            (numbered[&dev], numbered[&dev]),
            "{dev}: each number once"
        );
    }
    // Both instances of slot a wrote, under their own epochs.
    assert!(written_by(&db, "a#2") > 0 && written_by(&db, "b#2") > 0);

    // The rollups equal a recomputation: every stored message, in time order, into a fresh
    // single-gateway SQLite store with the same plant.
    let recomputed = recompute_in_sqlite(
        &mut client,
        &a1.join("gateway.toml"),
        &d.join("recomputed.db"),
    );
    let rollups: Vec<(String, String, i64, f64, i64, f64)> = client
        .query("SELECT device, point, slot_ms, delta, covered_ms, estimated FROM point_slots ORDER BY device, point, slot_ms", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert!(rollups.len() > 100, "{} rollup rows", rollups.len());
    assert_eq!(rollups.len(), recomputed.len(), "the same rollup rows");
    for (a, b) in rollups.iter().zip(&recomputed) {
        assert_eq!(
            (&a.0, &a.1, a.2, a.4),
            (&b.0, &b.1, b.2, b.4),
            "{a:?} vs {b:?}"
        );
        // Sums taken in another order may differ in their last bits.
        for (x, y) in [(a.3, b.3), (a.5, b.5)] {
            assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{a:?} vs {b:?}");
        }
    }
    central_view(
        &[&ha2, &hb2],
        &numbered,
        &a1.join("gateway.toml"),
        &d.join("recomputed.db"),
        &mut client,
    );
    for g in [&mut ga2, &mut gb2] {
        assert!(
            g.terminate(Duration::from_secs(20)).success(),
            "{}",
            g.stderr_tail()
        );
    }
}

/// Reads every stored message back from PostgreSQL and writes them, in time order, into a fresh
/// SQLite store with the gateway's own rules; returns its rollups.
fn recompute_in_sqlite(
    client: &mut postgres::Client,
    config: &Path,
    path: &Path,
) -> Vec<(String, String, i64, f64, i64, f64)> {
    let config = ems_gateway::Config::load(config).unwrap();
    let names: HashMap<i64, String> = client
        .query("SELECT id, point FROM series", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let rows = client
        .query(
            "SELECT m.device, m.seq, m.ts_ms, m.edge, m.points, d.site FROM messages m JOIN devices d USING (device)
             ORDER BY m.ts_ms, m.seq",
            &[],
        )
        .unwrap();
    let batch: Vec<ems_gateway::storage::Incoming> = rows
        .iter()
        .map(|r| {
            let blob: Vec<u8> = r.get(4);
            let points = ems_gateway::packed::unpack(&blob)
                .unwrap()
                .into_iter()
                .map(|p| PointValue {
                    id: names[&p.series].clone(),
                    v: p.value,
                    q: p.quality,
                })
                .collect();
            ems_gateway::storage::Incoming::built(Telemetry {
                v: 1,
                site: r.get(5),
                edge: r.get(3),
                device: r.get(0),
                seq: r.get::<_, i64>(1) as u64,
                ts_ms: r.get(2),
                points,
                signed: None,
            })
        })
        .collect();
    let mut store = ems_gateway::store::Store::open(path).unwrap();
    store.write_batch(&batch, &config.write_rules(), 0).unwrap();
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT device, point, slot_ms, delta, covered_ms, estimated FROM point_slots ORDER BY device, point, slot_ms")
        .unwrap();
    let out = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    out
}

/// Either slot's gateway serves the central view: every site's devices, the integrity check
/// over the whole database, and each unit's figures equal to the single-gateway SQLite
/// recomputation's.
fn central_view(
    https: &[&String],
    numbered: &HashMap<String, u64>,
    config: &Path,
    recomputed: &Path,
    client: &mut postgres::Client,
) {
    let config = ems_gateway::Config::load(config).unwrap();
    let reader = ems_gateway::store::Store::open(recomputed)
        .unwrap()
        .reader()
        .unwrap();
    let span = client
        .query_one("SELECT min(ts_ms), max(ts_ms) FROM message_numbers", &[])
        .unwrap();
    let (first, last): (i64, i64) = (span.get(0), span.get(1));
    let (from, to) = (first - first.rem_euclid(3_600_000), last + 3_600_000);
    let periods = ems_energy::calendar::buckets(
        ems_energy::calendar::Period::Hour,
        from,
        to,
        &config.plant.calendar,
    );
    // One alarm book for the database, whichever gateway is asked. The evaluator may change it
    // between two reads: asked again until both gateways are asked between two evaluations.
    let mut alarms: Vec<serde_json::Value> = Vec::new();
    eventually(
        "both gateways list the same alarms",
        Duration::from_secs(20),
        || {
            alarms = https
                .iter()
                .map(|http| get_json(http, "/api/v1/alarms"))
                .collect();
            alarms.iter().all(|a| *a == alarms[0])
        },
    );
    assert!(alarms[0].is_array(), "{}", alarms[0]);
    eprintln!("alarms: {}", alarms[0]);
    for http in https {
        let devices = get_json(http, "/api/v1/devices");
        let devices = devices.as_array().unwrap();
        assert_eq!(devices.len(), numbered.len(), "every site's devices");
        for d in devices {
            let id = d["id"].as_str().unwrap();
            assert_eq!(d["last_seq"].as_u64(), Some(numbered[id]), "{d}");
            assert_eq!(d["missing"].as_i64(), Some(0), "{d}");
        }
        let integrity = get_json(http, "/api/v1/integrity");
        assert!(
            integrity["mismatches"].as_array().unwrap().is_empty()
                && integrity["samples_checked"].as_u64().unwrap() > 100,
            "{integrity}"
        );
        let mut compared = 0;
        for unit in &config.plant.units {
            let api = get_json(
                http,
                &format!(
                    "/api/v1/units/{}/indicators?period=hour&from={}&to={}",
                    unit.id,
                    ems_gateway::clock::rfc3339(from),
                    ems_gateway::clock::rfc3339(to)
                ),
            );
            let api = api.as_array().unwrap();
            let lib =
                ems_energy::figures::unit_figures(&config.plant, &reader, unit, &periods).unwrap();
            assert_eq!(api.len(), lib.len(), "{}", unit.id);
            for (a, b) in api.iter().zip(&lib) {
                for (name, y) in [
                    ("energy_kgce", b.energy_kgce),
                    ("product_t", b.product_t),
                    ("electricity_kwh", b.electricity_kwh),
                ] {
                    let x = a[name].as_f64().unwrap();
                    assert!(
                        (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                        "{} {} {name}: API {x}, recomputed {y}",
                        unit.id,
                        b.start
                    );
                    compared += usize::from(y != 0.0);
                }
            }
        }
        assert!(compared > 10, "{compared} non-zero figures compared");
        // The reports read it too: a month's compliance report of each enterprise.
        let month =
            &ems_energy::calendar::local_rfc3339((first + last) / 2, config.plant.utc_offset())
                [..7];
        let mut units = 0;
        for e in &config.plant.enterprises {
            let report = get_json(
                http,
                &format!(
                    "/api/v1/reports/compliance?month={month}&enterprise={}",
                    e.id.as_deref().or(e.code.as_deref()).unwrap()
                ),
            );
            assert_eq!(report["report"], "compliance", "{report}");
            units += report["units"].as_array().unwrap().len();
        }
        assert_eq!(units, config.plant.units.len(), "every unit reported");
    }
}
