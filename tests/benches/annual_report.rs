//! The annual report of each enterprise of the demo group from a year of one-minute data (issue #8's goal: under
//! 5 s on this machine), timed as a user runs it: `ems-gateway report annual` (release build)
//! writing JSON, CSV and the Chinese PDF.
//!
//! `cargo bench -p ems-tests --bench annual_report [-- DAYS]` (default 365 days of 2025). The
//! year is first written through the gateway's own store (ledger, samples, 15-minute rollups;
//! see `demo_data`), which takes minutes and is not what is timed. Needs the release binary
//! (`cargo build --release -p ems-gateway`) and a CJK font (tests/run.sh installs one).

use std::process::Command;
use std::time::Instant;

use ems_tests::*;

/// 2025-01-01T00:00+08:00, the demo plant's local new year.
const YEAR_START_MS: i64 = 1_735_660_800_000;

fn main() {
    let days: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(365);
    let dir = TempDir::new("annual-report");
    let d = dir.path();
    // The broker is never started: the report reads the database only.
    write_gateway_config(d, free_port());
    let config = d.join("gateway.toml");
    let db = ems_gateway::Config::load(&config).unwrap().storage.path;
    let db = if db.is_absolute() { db } else { d.join(db) };
    let started = Instant::now();
    let messages = demo_data::fill(&config, &db, YEAR_START_MS, days);
    println!(
        "{days} days of one-minute polls of the demo plant: {messages} messages written in {:.0} s, database {} MB",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&db).map(|m| m.len() / 1_000_000).unwrap_or(0)
    );
    // One report per enterprise of the demo group: the steel works (three units and eleven
    // boundary meters), the cement plant and the smelter.
    for enterprise in ["works", "cement", "smelter"] {
        for format in ["json", "csv", "pdf"] {
            let mut times = Vec::new();
            for run in 0..3 {
                let out = format!("annual-{enterprise}-{run}.{format}");
                let t = Instant::now();
                let status = Command::new(bin("ems-gateway"))
                    .args([
                        "report",
                        "annual",
                        "--config",
                        "gateway.toml",
                        "--year",
                        "2025",
                        "--enterprise",
                        enterprise,
                    ])
                    .args(["--format", format, "--out", &out])
                    .current_dir(d)
                    .status()
                    .unwrap();
                times.push(t.elapsed().as_secs_f64());
                assert!(
                    status.success(),
                    "ems-gateway report annual --enterprise {enterprise} --format {format}"
                );
                if run == 0 {
                    let bytes = std::fs::metadata(d.join(&out)).unwrap().len();
                    print!("annual report {enterprise:>7} {format:>4}: {bytes:>9} bytes; ");
                }
            }
            times.sort_by(f64::total_cmp);
            println!(
                "median {:.2} s (runs {:.2?} s); goal under 5 s",
                times[1], times
            );
        }
    }
}
