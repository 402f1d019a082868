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

fn main() {
    let days = demo_data::days_from_args(365);
    let dir = TempDir::new("annual-report");
    let d = dir.path();
    demo_data::demo_year(d, days);
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
