//! Property tests of the counter arithmetic: whatever the increments, wraps and arrival order,
//! the slots add up to what really flowed.

use ems_energy::counter::{add_event, apportion, CounterEvent, CounterRule, CounterTrack, GapFill};
use proptest::prelude::*;

const ROLLOVER: f64 = 10_000.0;

fn rule() -> CounterRule {
    CounterRule {
        rollover: Some(ROLLOVER),
        max_rate_per_h: None,
        frozen_after_ms: 0,
        fill: GapFill::None,
        level: false,
        gauge: false,
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
