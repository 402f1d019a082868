//! Years of raw data at a few bytes a point (issue "Years of raw data"): a year of one-minute
//! polls of the demo plant, the bytes a stored point costs before and after the settled
//! history is compacted, the compaction's rate, and the annual report's time over the
//! compacted year. Goals on this machine: at most 4 bytes a point of compacted history
//! (stretch 2), compaction at least a million points a second, the annual report under 5 s.
//!
//! `cargo bench -p ems-tests --bench history_compaction [-- DAYS]` (default 365 days of 2025).
//! The year is written through the gateway's own store first (see `demo_data`), which takes
//! minutes and is not what is timed. Needs the release binary (`cargo build --release -p
//! ems-gateway`).

use std::process::Command;
use std::time::Instant;

use ems_tests::*;

fn stats(config: &str, d: &std::path::Path) -> serde_json::Value {
    let out = Command::new(bin("ems-gateway"))
        .args(["stats", "--config", config])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn main() {
    let days = demo_data::days_from_args(365);
    let dir = TempDir::new("history-compaction");
    let d = dir.path();
    demo_data::demo_year(d, days);
    let before = stats("gateway.toml", d);
    let points = before["row_points"].as_u64().unwrap();
    println!(
        "before: {} rows, {points} points, {:.1} MB in use: {:.1} bytes a point",
        before["rows"],
        before["database_bytes"].as_f64().unwrap() / 1e6,
        before["bytes_per_point"].as_f64().unwrap()
    );

    let t = Instant::now();
    let out = Command::new(bin("ems-gateway"))
        .args(["compact", "--config", "gateway.toml"])
        .current_dir(d)
        .output()
        .unwrap();
    let seconds = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let compacted = done["compacted"]["points"].as_f64().unwrap();
    println!(
        "compaction: {} blocks, {compacted} points in {seconds:.1} s (the command, start to end): {:.0} points/s (goal 1 000 000); packed samples {:.1} MB became {:.1} MB of blocks",
        done["compacted"]["blocks"],
        compacted / seconds,
        done["compacted"]["sample_bytes_before"].as_f64().unwrap() / 1e6,
        done["compacted"]["block_bytes"].as_f64().unwrap() / 1e6,
    );
    let after = stats("gateway.toml", d);
    println!(
        "after: {} rows, {} blocks; {:.1} MB in use: {:.2} bytes a point over the whole database; compacted history {:.2} bytes a point (goal 4, stretch 2)",
        after["rows"],
        after["blocks"],
        after["database_bytes"].as_f64().unwrap() / 1e6,
        after["bytes_per_point"].as_f64().unwrap(),
        after["block_bytes_per_point"].as_f64().unwrap_or(f64::NAN),
    );

    // The annual report over the compacted year, as a user runs it.
    for enterprise in ["works", "cement", "smelter"] {
        let mut times = Vec::new();
        for run in 0..3 {
            let out = format!("annual-{enterprise}-{run}.json");
            let t = Instant::now();
            let status = Command::new(bin("ems-gateway"))
                .args([
                    "report",
                    "annual",
                    "--config",
                    "gateway.toml",
                    "--year",
                    "2025",
                ])
                .args(["--enterprise", enterprise, "--out", &out])
                .current_dir(d)
                .status()
                .unwrap();
            times.push(t.elapsed().as_secs_f64());
            assert!(status.success());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "annual report {enterprise:>7} json over the compacted year: median {:.2} s (goal under 5 s)",
            times[1]
        );
    }
}
