//! Property tests of the counter arithmetic: whatever the increments, wraps and arrival order,
//! the slots add up to what really flowed.

use std::collections::HashMap;

use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_gateway::accounting::{
    add_event, apportion, CounterEvent, CounterRule, CounterTrack, GapFill,
};
use ems_gateway::store::{AccountingRules, Incoming, Store};
use proptest::prelude::*;

const ROLLOVER: f64 = 10_000.0;

fn rule() -> CounterRule {
    CounterRule {
        rollover: Some(ROLLOVER),
        max_rate_per_h: None,
        frozen_after_ms: 0,
        fill: GapFill::None,
    }
}

/// Readings (time, shown value) of a counter starting at `start` and increasing by `steps`,
/// each taken `dt_ms` apart, shown modulo the rollover.
fn readings(start: f64, steps: &[f64], dt_ms: i64) -> Vec<(i64, f64)> {
    let mut total = start;
    let mut out = vec![(0, start % ROLLOVER)];
    for (i, s) in steps.iter().enumerate() {
        total += s;
        out.push(((i as i64 + 1) * dt_ms, total % ROLLOVER));
    }
    out
}

proptest! {
    #[test]
    fn deltas_across_rollovers_add_up_to_the_true_increase(
        start in 0.0..ROLLOVER,
        steps in proptest::collection::vec(0.0..(ROLLOVER * 0.9), 1..60),
        dt_ms in 1_000i64..3_600_000,
    ) {
        let mut track = CounterTrack::default();
        let mut counted = 0.0;
        for (ts, v) in readings(start, &steps, dt_ms) {
            for e in track.push(ts, v, &rule()) {
                if let CounterEvent::Interval { delta, bridged, .. } = e {
                    prop_assert!(!bridged, "a wrap is not a restart");
                    counted += delta;
                }
            }
        }
        let truth: f64 = steps.iter().sum();
        prop_assert!((counted - truth).abs() < 1e-6 * truth.max(1.0), "{counted} vs {truth}");
    }

    #[test]
    fn apportioning_keeps_every_unit_and_covers_the_interval(
        from in 0i64..10_000_000,
        len in 1i64..20_000_000,
        delta in 0.0f64..1e9,
    ) {
        let (mut sum, mut ms) = (0.0, 0);
        apportion(from, from + len, delta, |_, d, m| { sum += d; ms += m; });
        prop_assert!((sum - delta).abs() <= 1e-9 * delta.max(1.0));
        prop_assert_eq!(ms, len);
    }

    #[test]
    fn a_restarted_counter_is_never_counted_as_negative(
        before in proptest::collection::vec(0.0f64..500.0, 1..20),
        after in proptest::collection::vec(0.0f64..500.0, 1..20),
    ) {
        let r = CounterRule { rollover: None, ..rule() };
        let mut track = CounterTrack::default();
        let mut v = 5_000.0;
        let mut slots_total = 0.0;
        let mut estimated = 0.0;
        let mut t = 0;
        let mut feed = |track: &mut CounterTrack, t: i64, v: f64| {
            for e in track.push(t, v, &r) {
                add_event(&e, 900_000, |_, p| { slots_total += p.delta; estimated += p.estimated; });
            }
        };
        feed(&mut track, t, v);
        for s in &before { t += 60_000; v += s; feed(&mut track, t, v); }
        // The meter is replaced: the new one starts from zero.
        v = 0.0;
        for s in &after { t += 60_000; v += s; feed(&mut track, t, v); }
        prop_assert!(slots_total >= 0.0);
        let known: f64 = before.iter().sum::<f64>() + after.iter().skip(1).sum::<f64>();
        // Everything but the interval across the swap is measured; that one is estimated.
        prop_assert!((slots_total - estimated - known).abs() < 1e-6 * known.max(1.0), "{slots_total} - {estimated} vs {known}");
    }
}

fn message(seq: u64, ts_ms: i64, v: f64) -> Incoming {
    Incoming::Telemetry(Telemetry {
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
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn arrival_order_does_not_change_the_rollups(
        steps in proptest::collection::vec(0.0f64..900.0, 2..25),
        order in any::<u64>(),
    ) {
        let samples = readings(500.0, &steps, 300_000);
        let mut tracked = HashMap::new();
        tracked.insert(
            "m".to_string(),
            HashMap::from([("total".to_string(), rule())]),
        );
        let rules = AccountingRules { tracked, max_gap_ms: 900_000 };
        let dir = std::env::temp_dir().join(format!("ems-prop-{}-{order}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut in_order = Store::open(&dir.join("a.db")).unwrap();
        let batch: Vec<Incoming> = samples.iter().enumerate().map(|(i, &(t, v))| message(i as u64 + 1, t, v)).collect();
        in_order.write_batch(&batch, &rules, 0).unwrap();
        // A shuffle that keeps the first reading first (the anchor every later one is measured from).
        let mut shuffled = batch.clone();
        let mut seed = order;
        for i in (2..shuffled.len()).rev() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = 1 + (seed >> 33) as usize % i;
            shuffled.swap(i, j);
        }
        let mut late = Store::open(&dir.join("b.db")).unwrap();
        late.write_batch(&shuffled, &rules, 0).unwrap();
        let read = |s: &Store| s.reader().unwrap().point_slots("m", "total", 0, i64::MAX).unwrap();
        let (a, b) = (read(&in_order), read(&late));
        let total = |rows: &[(i64, ems_gateway::accounting::PointSlot)]| rows.iter().map(|(_, p)| p.delta).sum::<f64>();
        prop_assert!((total(&a) - total(&b)).abs() < 1e-6 * total(&a).max(1.0));
        for (x, y) in a.iter().zip(&b) {
            prop_assert_eq!(x.0, y.0);
            prop_assert!((x.1.delta - y.1.delta).abs() < 1e-6 * x.1.delta.abs().max(1.0), "{:?} vs {:?}", x, y);
        }
        prop_assert!(late.reader().unwrap().verify_rollups(&rules).unwrap().mismatches.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
