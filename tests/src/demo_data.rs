//! A plant's history written straight into the gateway's store (benchmarks need months of it
//! in minutes): one-minute polls of every meter point the plant accounts for, with synthetic
//! but plausible rates (about 300 kgce and 2 m3 per tonne of product), each counter in
//! hundredths with its minute's increment swinging about its rate, beside its present rate,
//! voltage, current, power factor and frequency (six points a meter).

use std::collections::HashMap;
use std::path::Path;

use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_energy::model::Role;
use ems_gateway::storage::Incoming;
use ems_gateway::store::Store;

/// Meter units per hour for each accounted point: 100 t of product an hour per unit, 300 kgce
/// per tonne shared by the consumed flows, a tenth of it recovered, 2 m3 of water per tonne.
/// Each enterprise's boundary meters follow its units: a purchase 1 % above what they take of
/// its carrier, exports a third and flaring 2 % of what they make, a stock's level rising
/// slowly.
fn rates(plant: &ems_gateway::Plant) -> HashMap<(String, String), (f64, Option<f64>)> {
    let mut out = HashMap::new();
    // kgce an hour of each carrier taken and made, per enterprise.
    let mut taken: HashMap<(Option<&str>, &str), f64> = HashMap::new();
    let mut made: HashMap<(Option<&str>, &str), f64> = HashMap::new();
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
            };
            if let Some(carrier) = &f.carrier {
                let key = (u.enterprise.as_deref(), carrier.as_str());
                match f.role {
                    Role::Consumed => *taken.entry(key).or_default() += per_h,
                    Role::Recovered => *made.entry(key).or_default() += per_h,
                    _ => {}
                }
            }
            let per_h = per_h / f.factor().max(1e-9);
            let per_h = f.max_rate_per_h.map_or(per_h, |m| per_h.min(m / 2.0));
            out.insert((f.device.clone(), f.point.clone()), (per_h, f.rollover));
        }
    }
    for b in &plant.boundary {
        let f = &b.flow;
        let key = (
            b.enterprise.as_deref(),
            f.carrier.as_deref().unwrap_or_default(),
        );
        let of = |m: &HashMap<(Option<&str>, &str), f64>| m.get(&key).copied().unwrap_or(0.0);
        let kgce_per_h = match f.role {
            Role::Purchase => (of(&taken) - of(&made)).max(100.0) * 1.01,
            Role::Export => of(&made) / 3.0,
            Role::Flare => of(&made) * 0.02,
            _ => 10.0,
        };
        let per_h = kgce_per_h / f.factor().max(1e-9);
        let per_h = f.max_rate_per_h.map_or(per_h, |m| per_h.min(m / 2.0));
        out.insert((f.device.clone(), f.point.clone()), (per_h, f.rollover));
    }
    out
}

/// A fixed pseudo-random number in [-1, 1] for a device's point and poll (splitmix64): the same
/// history every run.
fn unit_noise(device: &str, point: usize, k: i64) -> f64 {
    let mut z = device.bytes().fold(point as u64 + 1, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    }) ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// Writes `days` of one-minute polls of every accounted meter of the plant in `config`, from
/// `start_ms`, into the store at `db` through the gateway's own write path: each point's
/// counter, its present rate and four more readings. Returns the messages.
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
    // Each device's counters, from 1 000 of their units.
    let mut totals: HashMap<&str, Vec<f64>> = by_device
        .iter()
        .map(|(d, points)| (*d, vec![1_000.0; points.len()]))
        .collect();
    for k in 0..polls {
        let ts = start + k * 60_000;
        for (device, points) in &by_device {
            let totals = totals.get_mut(device).expect("every device has its totals");
            batch.push(Incoming::built(Telemetry {
                v: 1,
                site: "demo".into(),
                edge: "edge-1".into(),
                device: (*device).into(),
                seq: k as u64 + 1,
                ts_ms: ts,
                points: points
                    .iter()
                    .enumerate()
                    .flat_map(|(i, (p, per_h, roll))| {
                        // A meter's counter in its resolution (hundredths) and its present
                        // rate as a float32, as real meters report them: the minute's
                        // increment swings ±10 % about the rate.
                        let total = &mut totals[i];
                        let swing = 0.1 * unit_noise(device, i, k);
                        let increment = per_h / 60.0 * (1.0 + swing);
                        *total += increment;
                        let counter = (*total * 100.0).floor() * 0.01;
                        let rate = f64::from((increment * 60.0) as f32);
                        // Beside them what a meter's register map also gives, as float32:
                        // voltage, current, power factor, frequency (six points a meter, the
                        // issue's sizing of a plant).
                        let n = |j: usize| unit_noise(device, i * 8 + j, k);
                        let f32_of = |v: f64| f64::from(v as f32);
                        let good = |id: String, v: f64| PointValue {
                            id,
                            v: Some(v),
                            q: Quality::Good,
                        };
                        [
                            good((*p).into(), roll.map_or(counter, |r| counter % r)),
                            good(format!("{p}_rate"), rate),
                            good(format!("{p}_voltage"), f32_of(230.0 + 2.0 * n(1))),
                            good(
                                format!("{p}_current"),
                                f32_of(rate / 0.4 * (1.0 + 0.01 * n(2))),
                            ),
                            good(format!("{p}_pf"), f32_of(0.92 + 0.02 * n(3))),
                            good(format!("{p}_frequency"), f32_of(50.0 + 0.05 * n(4))),
                        ]
                    })
                    .collect(),
                signed: None,
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

/// The days a history bench writes: its first numeric argument, or `default`.
pub fn days_from_args(default: i64) -> i64 {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default)
}

/// 2025-01-01T00:00+08:00, the demo plant's local new year.
pub const YEAR_START_MS: i64 = 1_735_660_800_000;

/// The demo gateway's configuration in `dir` (its broker never started: what reads only the
/// database needs none) and `days` of its plant's history from 2025's first day written into
/// its database, saying how long that took. Returns the database's path.
pub fn demo_year(dir: &Path, days: i64) -> std::path::PathBuf {
    crate::write_gateway_config(dir, crate::free_port());
    let config = dir.join("gateway.toml");
    let db = ems_gateway::Config::load(&config).unwrap().storage.path;
    let db = if db.is_absolute() { db } else { dir.join(db) };
    let started = std::time::Instant::now();
    let messages = fill(&config, &db, YEAR_START_MS, days);
    println!(
        "{days} days of one-minute polls of the demo plant: {messages} messages written in {:.0} s, database {} MB",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&db).map(|m| m.len() / 1_000_000).unwrap_or(0)
    );
    db
}
