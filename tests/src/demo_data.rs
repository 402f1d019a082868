//! A plant's history written straight into the gateway's store (benchmarks need months of it
//! in minutes): one-minute polls of every meter point the plant accounts for, with synthetic
//! but plausible rates (about 300 kgce and 2 m3 per tonne of product).

use std::collections::HashMap;
use std::path::Path;

use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_energy::model::Role;
use ems_gateway::storage::Incoming;
use ems_gateway::store::Store;

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
                Role::Submeter => 20_000.0,
                // Boundary meters are not units' flows.
                Role::Purchase | Role::Export | Role::Stock | Role::Flare => continue,
            } / f.factor().max(1e-9);
            let per_h = f.max_rate_per_h.map_or(per_h, |m| per_h.min(m / 2.0));
            out.insert((f.device.clone(), f.point.clone()), (per_h, f.rollover));
        }
    }
    out
}

/// Writes `days` of one-minute polls of every accounted meter of the plant in `config`, from
/// `start_ms`, into the store at `db` through the gateway's own write path. Returns the messages.
pub fn fill(config: &Path, db: &Path, start_ms: i64, days: i64) -> usize {
    let config = ems_gateway::Config::load(config).expect("demo config");
    let rules = config.write_rules();
    let rates = rates(&config.plant);
    // Device -> its points with their rate per hour and rollover.
    type Points<'a> = Vec<(&'a str, f64, Option<f64>)>;
    let mut by_device: HashMap<&str, Points> = HashMap::new();
    for ((d, p), (r, roll)) in &rates {
        by_device.entry(d).or_default().push((p, *r, *roll));
    }
    let mut store = Store::open(db).unwrap();
    let start = start_ms;
    let polls = days * 1_440;
    let mut messages = 0;
    let mut batch = Vec::with_capacity(4_000);
    for k in 0..polls {
        let ts = start + k * 60_000;
        for (device, points) in &by_device {
            batch.push(Incoming::built(Telemetry {
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
