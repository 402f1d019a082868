//! Property test of the store: whatever the arrival order and batching of a meter's readings,
//! the rollups, the standing anomalies and the recomputation are those of the readings in time
//! order.

use std::collections::HashMap;

use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_energy::counter::{CounterRule, GapFill, PointSlot};
use ems_gateway::storage::{AccountingRules, Incoming, WriteRules};
use ems_gateway::store::Store;
use proptest::prelude::*;

const ROLLOVER: f64 = 10_000.0;

fn message(seq: u64, ts_ms: i64, v: f64) -> Incoming {
    Incoming::built(Telemetry {
        v: 1,
        site: "s".into(),
        edge: "e".into(),
        device: "m".into(),
        seq,
        ts_ms,
        points: vec![PointValue {
            id: "total".into(),
            v: Some(v),
            q: Quality::Good,
        }],
        signed: None,
    })
}

/// A meter's readings with what goes wrong on site: steady steps, wraps, spikes (a bad read),
/// a counter that jumps for good, a meter replaced (back to near zero), pauses.
fn eventful_readings(events: &[(u8, f64)]) -> Vec<(i64, f64)> {
    let mut t = 0;
    let mut v = 9_000.0;
    let mut out = vec![(t, v)];
    for &(kind, x) in events {
        t += 60_000 + (x as i64 % 7) * 60_000;
        let shown = match kind % 8 {
            // A spike: one reading far off, the counter itself unchanged.
            0 => (v + 5_000.0 + x) % ROLLOVER,
            // The meter is replaced: a new one counting from zero.
            1 => {
                v = x % 20.0;
                v
            }
            // The counter jumps for good.
            2 => {
                v = (v + 3_000.0) % ROLLOVER;
                v
            }
            _ => {
                v = (v + x % 40.0) % ROLLOVER;
                v
            }
        };
        out.push((t, shown));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any arrival order, in batches of any size: the rollups, the standing anomalies and the
    /// recomputation from raw samples are those of the readings in time order.
    #[test]
    fn arrival_order_does_not_change_the_rollups(
        events in proptest::collection::vec((any::<u8>(), 0.0f64..1_000.0), 2..40),
        order in any::<u64>(),
        batch_size in 1usize..12,
    ) {
        let samples = eventful_readings(&events);
        let rule = CounterRule {
            rollover: Some(ROLLOVER),
            max_rate_per_h: Some(2_400.0),
            frozen_after_ms: 3_600_000,
            fill: GapFill::Rate,
            level: false,
            gauge: false,
        };
        let mut tracked = HashMap::new();
        tracked.insert("m".to_string(), HashMap::from([("total".to_string(), rule)]));
        let rules: WriteRules = AccountingRules { tracked, max_gap_ms: 900_000 }.into();
        let dir = std::env::temp_dir().join(format!("ems-prop-{}-{order}-{batch_size}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut in_order = Store::open(&dir.join("a.db")).unwrap();
        let batch: Vec<Incoming> = samples.iter().enumerate().map(|(i, &(t, v))| message(i as u64 + 1, t, v)).collect();
        in_order.write_batch(&batch, &rules, 0).unwrap();
        let mut shuffled = batch.clone();
        let mut seed = order;
        for i in (1..shuffled.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = (seed >> 33) as usize % (i + 1);
            shuffled.swap(i, j);
        }
        let mut late = Store::open(&dir.join("b.db")).unwrap();
        for chunk in shuffled.chunks(batch_size) {
            late.write_batch(chunk, &rules, 0).unwrap();
        }
        let read = |s: &Store| s.reader().unwrap().point_slots("m", "total", 0, i64::MAX).unwrap();
        let (a, b) = (read(&in_order), read(&late));
        let near = |x: f64, y: f64| (x - y).abs() <= 1e-6 * x.abs().max(1.0);
        let nonzero = |rows: Vec<(i64, PointSlot)>| -> Vec<_> {
            rows.into_iter().filter(|(_, p)| p.delta.abs() > 1e-9 || p.covered_ms != 0 || p.estimated.abs() > 1e-9).collect()
        };
        let (a, b) = (nonzero(a), nonzero(b));
        prop_assert_eq!(a.len(), b.len(), "{:?} vs {:?}", a, b);
        for (x, y) in a.iter().zip(&b) {
            prop_assert_eq!(x.0, y.0);
            prop_assert!(near(x.1.delta, y.1.delta) && x.1.covered_ms == y.1.covered_ms && near(x.1.estimated, y.1.estimated), "{:?} vs {:?}", x, y);
        }
        let standing = |s: &Store| {
            let mut v: Vec<_> = s.reader().unwrap().anomalies(10_000).unwrap().into_iter()
                .filter(|a| a.withdrawn.is_none()).map(|a| (a.at, a.kind)).collect();
            v.sort();
            v
        };
        prop_assert_eq!(standing(&in_order), standing(&late));
        let check = late.reader().unwrap().verify_rollups(&rules.accounting).unwrap();
        prop_assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
