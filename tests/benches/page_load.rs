//! How fast the dashboard loads with a month or a year of data for the demo plant, in real
//! headless Chromium from a real `ems-gateway serve` (issues #7 and #23: each page under 1 s on
//! this machine).
//!
//! `cargo bench -p ems-tests --bench page_load [-- DAYS]` (default 31; 366 for the year the
//! energy pages' goal is stated for). One-minute polls of every meter point the demo plant
//! accounts for, its boundary meters included, are written through the gateway's own store
//! (ledger, samples, 15-minute rollups), with synthetic but plausible rates (about 300 kgce and
//! 2 m3 per tonne); then each page is opened five times and timed from navigation start to the
//! moment every figure on it is drawn (`body.dataset.loaded`). Needs chromium,
//! chromium-driver and mosquitto (tests/run.sh installs them) and the release binaries
//! (`cargo build --release -p ems-gateway`: a bench runs those).

use std::time::{Duration, Instant};

use ems_tests::*;

fn main() {
    let days = demo_data::days_from_args(31);
    let dir = TempDir::new("page-load");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    write_gateway_config(d, broker.port);
    let started = Instant::now();
    let now = chrono::Utc::now().timestamp_millis();
    let messages = demo_data::fill(
        &d.join("gateway.toml"),
        &d.join("gw.db"),
        now - days * 86_400_000,
        days,
    );
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
        ("energy flow, month", "#/flow/month"),
        ("energy flow, year", "#/flow/year"),
        ("energy balance, month", "#/balance/month"),
        ("energy balance, year", "#/balance/year"),
        ("energy cost, month", "#/cost/month"),
        ("energy cost, year", "#/cost/year"),
        ("alarms", "#/alarms"),
        ("reports", "#/reports"),
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
