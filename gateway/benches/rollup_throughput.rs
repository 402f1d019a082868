//! Samples per second through the ledger, deltas and 15-minute rollups, into SQLite.
//!
//! `cargo bench -p ems-gateway --bench rollup_throughput [-- DEVICES POLLS]`
//!
//! DEVICES meters (default 500), each polled POLLS times (default 200) one minute apart; each
//! message carries six points, two of them counters the accounting follows (the shape ems-edge
//! sends). Messages are committed in batches of 2 000, as ingest does. Storage is a fresh file in
//! the temporary directory with the production settings (WAL, synchronous=FULL).

use std::collections::HashMap;
use std::time::Instant;

use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_energy::counter::{CounterRule, GapFill};
use ems_gateway::storage::{AccountingRules, Incoming, WriteRules};
use ems_gateway::store::Store;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(500);
    let polls = args.get(1).copied().unwrap_or(200);
    let path = std::env::temp_dir().join(format!("ems-rollup-bench-{}.db", std::process::id()));
    let mut store = Store::open(&path).expect("open store");
    let mut tracked: HashMap<String, HashMap<String, CounterRule>> = HashMap::new();
    for d in 0..devices {
        for p in ["import_kwh", "export_kwh"] {
            let rule = CounterRule {
                rollover: Some(100_000_000.0),
                max_rate_per_h: Some(1e9),
                frozen_after_ms: 3_600_000,
                fill: GapFill::Rate,
                level: false,
                gauge: false,
            };
            tracked
                .entry(format!("m{d}"))
                .or_default()
                .insert(p.to_string(), rule);
        }
    }
    let rules: WriteRules = AccountingRules {
        tracked,
        max_gap_ms: 900_000,
    }
    .into();
    let t0 = 1_767_196_800_000i64;
    let mut batch = Vec::with_capacity(2_000);
    let (mut messages, mut points, mut counters) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    for poll in 0..polls {
        for d in 0..devices {
            let ts = t0 + poll as i64 * 60_000 + d as i64;
            let e = 1_000.0 + (poll as f64) * (10.0 + d as f64 % 7.0);
            let pv = |id: &str, v: f64| PointValue {
                id: id.into(),
                v: Some(v),
                q: Quality::Good,
            };
            batch.push(Incoming::built(Telemetry {
                v: 1,
                site: "s".into(),
                edge: "e".into(),
                device: format!("m{d}"),
                seq: poll as u64 + 1,
                ts_ms: ts,
                points: vec![
                    pv("import_kwh", e),
                    pv("export_kwh", e * 0.01),
                    pv("p_kw", 600.0),
                    pv("ua_v", 230.0),
                    pv("ia_a", 870.0),
                    pv("pf", 0.95),
                ],
                signed: None,
            }));
            messages += 1;
            points += 6;
            counters += 2;
            if batch.len() == 2_000 {
                store.write_batch(&batch, &rules, ts).expect("commit");
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        store.write_batch(&batch, &rules, t0).expect("commit");
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "{messages} messages, {points} points ({counters} counter samples through deltas and rollups) in {s:.2} s: \
         {:.0} messages/s, {:.0} points/s, {:.0} counter samples/s",
        messages as f64 / s,
        points as f64 / s,
        counters as f64 / s
    );
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}
