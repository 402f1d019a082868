//! Property tests of the counter arithmetic: whatever the increments, wraps and arrival order,
//! the slots add up to what really flowed.

use std::collections::HashMap;

use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_gateway::accounting::{
    add_event, apportion, CounterEvent, CounterRule, CounterTrack, GapFill,
};
use ems_gateway::store::{AccountingRules, Incoming, Store, WriteRules};
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
        let nonzero = |rows: Vec<(i64, ems_gateway::accounting::PointSlot)>| -> Vec<_> {
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
