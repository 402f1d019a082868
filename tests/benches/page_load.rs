//! How fast the dashboard loads with a month of data for the demo plant, in real headless
//! Chromium from a real `ems-gateway serve` (issue #7's goal: under 1 s on this machine).
//!
//! `cargo bench -p ems-tests --bench page_load [-- DAYS]` (default 31). A month of one-minute
//! polls of every meter point the demo plant accounts for is written through the gateway's own
//! store (ledger, samples, 15-minute rollups), with synthetic but plausible rates (about
//! 300 kgce and 2 m3 per tonne); then each page is opened five times and timed from navigation
//! start to the moment every figure on it is drawn (`body.dataset.loaded`). Needs chromium,
//! chromium-driver and mosquitto (tests/run.sh installs them) and the release binaries
//! (`cargo build --release -p ems-gateway`: a bench runs those).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_gateway::config::Role;
use ems_gateway::store::{Incoming, Store};
use ems_tests::*;

/// Meter units per hour for each accounted point: 100 t of product an hour per unit, 300 kgce
/// per tonne shared by the consumed flows, a tenth of it recovered, 2 m3 of water per tonne.
fn rates(plant: &ems_gateway::Plant) -> HashMap<(String, String), (f64, Option<f64>)> {
    let mut out = HashMap::new();
    for u in &plant.units {
        let consumed = u
            .flows
            .iter()
            .filter(|f| f.role == Role::Consumed)
            .count()
            .max(1) as f64;
        for f in &u.flows {
            let per_h = match f.role {
                Role::Product => 100.0,
                Role::Consumed => 30_000.0 / consumed,
                Role::Recovered => 3_000.0,
                Role::Water => 200.0,
                Role::Material => 50.0,
            } / f.factor.max(1e-9);
            let per_h = f.max_rate_per_h.map_or(per_h, |m| per_h.min(m / 2.0));
            out.insert((f.device.clone(), f.point.clone()), (per_h, f.rollover));
        }
    }
    out
}

fn fill(dir: &std::path::Path, days: i64) -> usize {
    let plant = ems_gateway::Plant::load(&dir.join("gateway.toml")).expect("demo config");
    let rules = ems_gateway::accounting_rules(&plant);
    let rates = rates(&plant);
    // Device -> its points with their rate per hour and rollover.
    type Points<'a> = Vec<(&'a str, f64, Option<f64>)>;
    let mut by_device: HashMap<&str, Points> = HashMap::new();
    for ((d, p), (r, roll)) in &rates {
        by_device.entry(d).or_default().push((p, *r, *roll));
    }
    let mut store = Store::open(&dir.join("gw.db")).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let start = now - days * 86_400_000;
    let polls = days * 1_440;
    let mut messages = 0;
    let mut batch = Vec::with_capacity(4_000);
    for k in 0..polls {
        let ts = start + k * 60_000;
        for (device, points) in &by_device {
            batch.push(Incoming::Telemetry(Telemetry {
                v: 1,
                site: "demo".into(),
                edge: "edge-1".into(),
                device: (*device).into(),
                seq: k as u64 + 1,
                ts_ms: ts,
                points: points
                    .iter()
                    .map(|(p, per_h, roll)| {
                        let v = 1_000.0 + per_h * k as f64 / 60.0;
                        PointValue {
                            id: (*p).into(),
                            v: Some(roll.map_or(v, |r| v % r)),
                            q: Quality::Good,
                        }
                    })
                    .collect(),
            }));
        }
        if batch.len() >= 4_000 || k == polls - 1 {
            messages += batch.len();
            store.write_batch(&batch, &rules, ts).unwrap();
            batch.clear();
        }
    }
    messages
}

fn main() {
    let days: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(31);
    let dir = TempDir::new("page-load");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    write_gateway_config(d, broker.port);
    let started = Instant::now();
    let messages = fill(d, days);
    println!(
        "{days} days of the demo plant: {messages} messages written in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let (mut gateway, http) = start_gateway(d);
    let stored: u64 = get_json(&http, "/api/v1/devices")
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["messages"].as_u64().unwrap())
        .sum();
    let month = get_json(&http, "/api/v1/units/bf1/indicators?period=month");
    let month = month.as_array().unwrap().last().unwrap();
    println!(
        "gateway holds {stored} messages; bf1 this month: {:.1} kgce/t, completeness {:.3}",
        month["kgce_per_t"].as_f64().unwrap_or(f64::NAN),
        month["completeness"].as_f64().unwrap_or(f64::NAN)
    );
    let browser = Browser::start(d, 1400, 1000);
    for (page, fragment) in [
        ("overview", "#/"),
        ("unit page bf1 (hours, 48 h)", "#/unit/bf1"),
        ("data quality", "#/quality"),
    ] {
        let mut times = Vec::new();
        for _ in 0..5 {
            browser.goto("about:blank");
            browser.goto(&format!("http://{http}/?live=0{fragment}"));
            let ms = browser.wait_for(
                page,
                Duration::from_secs(60),
                "return document.body.dataset.loaded && (Number(document.body.dataset.loaded) - performance.timeOrigin)",
            );
            times.push(ms.as_f64().unwrap());
        }
        let first = times[0];
        times.sort_by(f64::total_cmp);
        println!(
            "{page:<28} first {first:>6.0} ms  median {:>6.0} ms  worst {:>6.0} ms",
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    drop(browser);
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}
