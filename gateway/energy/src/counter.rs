//! Counters: from a meter's readings to the 15-minute slots.
//!
//! The base rollup is per meter point and 15-minute slot: the counter's increase attributed to
//! that slot (an interval between two readings that spans slots is spread evenly over its time),
//! how much of the slot good readings covered, and how much of the delta came from intervals
//! longer than the allowed sample gap (spread by assumption, hence "estimated"). Every reading,
//! in order or late, is decided by [`CounterTrack::push`]; [`replay`] runs it over a series.

use std::collections::BTreeMap;

use serde::Serialize;

pub const HOUR_MS: i64 = 3_600_000;

/// The base rollup: 15 minutes, the national platform's real-time indicator period. Every
/// longer period (hour, shift, day, month, year) is an exact sum of slots.
pub const SLOT_MS: i64 = 900_000;

/// One point's share of one 15-minute slot.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PointSlot {
    pub delta: f64,
    /// Milliseconds of the slot spanned by intervals no longer than the allowed gap.
    pub covered_ms: i64,
    /// Part of `delta` from longer intervals.
    pub estimated: f64,
}

/// The slots of `rows` (in slot order) with `start <= slot < end`, found by bisection: a
/// year's days each read from a year's slots would otherwise scan them all once a day.
pub fn slots_within(rows: &[(i64, PointSlot)], start: i64, end: i64) -> &[(i64, PointSlot)] {
    debug_assert!(
        rows.windows(2).all(|w| w[0].0 <= w[1].0),
        "slots in slot order"
    );
    let from = rows.partition_point(|(t, _)| *t < start);
    let to = rows.partition_point(|(t, _)| *t < end).max(from);
    &rows[from..to]
}

/// Increase of a counter from `prev` to `next`; `None` when it went backwards without a
/// declared rollover (a reset or a replaced meter: that interval cannot be measured).
pub fn counter_delta(prev: f64, next: f64, rollover: Option<f64>) -> Option<f64> {
    if next >= prev {
        return Some(next - prev);
    }
    let r = rollover?;
    // A wrap: the counter passed its maximum and restarted from zero.
    (prev <= r && next >= 0.0).then_some(r - prev + next)
}

/// How an interval the counter cannot measure (a meter restarted or jumped) is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GapFill {
    /// At the counter's recent rate (an hour-weighted average of its measured intervals),
    /// never below what a restarted meter has counted since zero. Marked estimated.
    #[default]
    Rate,
    /// Not filled: a restarted meter's count since zero is all that is taken (marked
    /// estimated), and a jump's interval is left uncovered, lowering completeness.
    None,
}

/// How a counter point's readings turn into intervals, and what looks wrong with them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CounterRule {
    /// The counter wraps to zero after this value.
    pub rollover: Option<f64>,
    /// The flow's physical maximum, per hour: a reading implying more is a spike.
    pub max_rate_per_h: Option<f64>,
    /// A counter that has not moved for this long is flagged frozen.
    pub frozen_after_ms: i64,
    pub fill: GapFill,
    /// A level, not a counter (a stock: coal yard, gas holder): each interval's delta is the
    /// signed change, a fall is no restart, and a change faster than `max_rate_per_h` either
    /// way is a spike.
    pub level: bool,
    /// A gauge, not a counter (a calorimeter's heating value): each interval's delta is the
    /// reading's integral over it (the trapezoid of its ends, value x hours), so a slot's
    /// measured delta over its covered hours is the reading's mean over the slot.
    pub gauge: bool,
}

/// The state of one counter point between readings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CounterTrack {
    /// The last accepted reading: (time, value).
    pub anchor: Option<(i64, f64)>,
    /// Readings rejected in a row since the anchor.
    pub rejected: u32,
    /// When the counter last changed.
    pub changed_ms: i64,
    /// Recent rate of the measured intervals, per hour (what [`GapFill::Rate`] fills with).
    pub rate_per_h: Option<f64>,
    /// The time of the last reading taken, accepted or rejected: a reading at or before it is
    /// late, and the counter is replayed from a state before it (see [`replay`]).
    pub through_ms: i64,
}

/// After this many rejected readings in a row the counter has really moved: start afresh.
const MAX_REJECTED: u32 = 3;
/// The recent rate forgets with this time constant.
const RATE_TIME_CONSTANT_H: f64 = 1.0;

/// What one reading did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CounterEvent {
    /// An interval to add to the slots. `bridged`: not measured by the counter (a restart or a
    /// jump, see [`GapFill`]); it counts but is estimated.
    Interval {
        from_ms: i64,
        to_ms: i64,
        delta: f64,
        bridged: bool,
    },
    /// Rejected: the rate it implies exceeds the flow's maximum.
    Spike { rate_per_h: f64 },
    /// The counter went back to near zero: a meter replaced or reset. Counting resumes from
    /// the new reading; the interval is bridged.
    Restart { from: f64, to: f64 },
    /// Several rejected readings in a row: the counter jumped for good; counting resumes from
    /// there and the interval is bridged (or left unmeasured with [`GapFill::None`]).
    Jump { from: f64, to: f64 },
    /// The counter has not moved for longer than allowed.
    Frozen { since_ms: i64 },
}

impl CounterTrack {
    /// Takes the next reading in time order; returns what it did.
    pub fn push(&mut self, ts_ms: i64, value: f64, rule: &CounterRule) -> Vec<CounterEvent> {
        let mut out = Vec::new();
        let Some((t0, v0)) = self.anchor else {
            *self = CounterTrack {
                anchor: Some((ts_ms, value)),
                changed_ms: ts_ms,
                through_ms: ts_ms,
                ..*self
            };
            return out;
        };
        if ts_ms <= t0 {
            return out;
        }
        self.through_ms = self.through_ms.max(ts_ms);
        let hours = (ts_ms - t0) as f64 / HOUR_MS as f64;
        let too_fast = |d: f64| rule.max_rate_per_h.is_some_and(|max| d / hours > max);
        let bridge = |counted: f64, rate: Option<f64>| CounterEvent::Interval {
            from_ms: t0,
            to_ms: ts_ms,
            delta: match (rule.fill, rate) {
                (GapFill::Rate, Some(rate)) => (rate * hours).max(counted),
                _ => counted,
            },
            bridged: true,
        };
        if rule.gauge {
            if value != v0 {
                self.changed_ms = ts_ms;
            }
            self.anchor = Some((ts_ms, value));
            self.rejected = 0;
            out.push(CounterEvent::Interval {
                from_ms: t0,
                to_ms: ts_ms,
                delta: (v0 + value) / 2.0 * hours,
                bridged: false,
            });
            return out;
        }
        if rule.level {
            return self.push_level((t0, v0), ts_ms, value, hours, rule);
        }
        let wrap_or_forward = counter_delta(v0, value, rule.rollover);
        if let Some(delta) = wrap_or_forward.filter(|d| !too_fast(*d)) {
            out.push(CounterEvent::Interval {
                from_ms: t0,
                to_ms: ts_ms,
                delta,
                bridged: false,
            });
            let w = 1.0 - (-hours / RATE_TIME_CONSTANT_H).exp();
            let rate = delta / hours;
            self.rate_per_h = Some(self.rate_per_h.map_or(rate, |r| r + (rate - r) * w));
            if value != v0 {
                self.changed_ms = ts_ms;
            } else if rule.frozen_after_ms > 0
                && t0 - self.changed_ms <= rule.frozen_after_ms
                && ts_ms - self.changed_ms > rule.frozen_after_ms
            {
                out.push(CounterEvent::Frozen {
                    since_ms: self.changed_ms,
                });
            }
        } else if value < v0 && value >= 0.0 && !too_fast(value) {
            // Backwards, and not a wrap the flow could have made: a new meter counting from zero.
            out.push(CounterEvent::Restart {
                from: v0,
                to: value,
            });
            out.push(bridge(value, self.rate_per_h));
            self.changed_ms = ts_ms;
        } else {
            self.rejected += 1;
            if self.rejected < MAX_REJECTED {
                out.push(CounterEvent::Spike {
                    rate_per_h: wrap_or_forward.unwrap_or(value) / hours,
                });
                return out;
            }
            out.push(CounterEvent::Jump {
                from: v0,
                to: value,
            });
            if rule.fill == GapFill::Rate && self.rate_per_h.is_some() {
                out.push(bridge(0.0, self.rate_per_h));
            }
            self.changed_ms = ts_ms;
        }
        self.anchor = Some((ts_ms, value));
        self.rejected = 0;
        out
    }
}

impl CounterTrack {
    /// A level's next reading: the signed change is the interval's delta; a change too fast
    /// for the stock is a spike, and after [`MAX_REJECTED`] in a row the level has really moved
    /// (a stocktaking correction): counting resumes from it, that interval unmeasured.
    fn push_level(
        &mut self,
        (t0, v0): (i64, f64),
        ts_ms: i64,
        value: f64,
        hours: f64,
        rule: &CounterRule,
    ) -> Vec<CounterEvent> {
        let delta = value - v0;
        let too_fast = rule
            .max_rate_per_h
            .is_some_and(|max| delta.abs() / hours > max);
        let mut out = Vec::new();
        if too_fast {
            self.rejected += 1;
            if self.rejected < MAX_REJECTED {
                out.push(CounterEvent::Spike {
                    rate_per_h: delta / hours,
                });
                return out;
            }
            out.push(CounterEvent::Jump {
                from: v0,
                to: value,
            });
        } else {
            out.push(CounterEvent::Interval {
                from_ms: t0,
                to_ms: ts_ms,
                delta,
                bridged: false,
            });
        }
        if value != v0 {
            self.changed_ms = ts_ms;
        }
        self.anchor = Some((ts_ms, value));
        self.rejected = 0;
        out
    }
}

/// What replaying a counter's readings gave: the slot rollups, every finding other than an
/// interval (spike, restart, jump, frozen) with the reading's time and value, the state after
/// the last reading of each slot, and the state at the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replay {
    pub slots: BTreeMap<i64, PointSlot>,
    pub findings: Vec<(i64, f64, CounterEvent)>,
    pub checkpoints: Vec<(i64, CounterTrack)>,
    pub end: CounterTrack,
}

/// The 15-minute slot a time falls in.
pub fn slot_of(ts_ms: i64) -> i64 {
    ts_ms - ts_ms.rem_euclid(SLOT_MS)
}

/// Replays `readings` (in time order) from the state `start` through [`CounterTrack::push`],
/// the one function that decides every reading, in order or late: what ingest keeps for a late
/// reading is the difference between the replays with and without it, so the rollups always
/// equal a replay of all stored readings in time order (what the integrity check computes).
pub fn replay(
    start: CounterTrack,
    readings: impl IntoIterator<Item = (i64, f64)>,
    rule: &CounterRule,
    max_gap_ms: i64,
) -> Replay {
    let mut out = Replay {
        end: start,
        ..Replay::default()
    };
    for (ts, value) in readings {
        for event in out.end.push(ts, value, rule) {
            add_event(&event, max_gap_ms, |slot, r| {
                let e = out.slots.entry(slot).or_default();
                e.delta += r.delta;
                e.covered_ms += r.covered_ms;
                e.estimated += r.estimated;
            });
            if !matches!(event, CounterEvent::Interval { .. }) {
                out.findings.push((ts, value, event));
            }
        }
        let slot = slot_of(ts);
        match out.checkpoints.last_mut() {
            Some((s, t)) if *s == slot => *t = out.end,
            _ => out.checkpoints.push((slot, out.end)),
        }
    }
    out
}

/// Adds one accepted interval into slots: a bridged one counts but is estimated and uncovered.
pub fn add_event(event: &CounterEvent, max_gap_ms: i64, mut add: impl FnMut(i64, PointSlot)) {
    if let CounterEvent::Interval {
        from_ms,
        to_ms,
        delta,
        bridged,
    } = *event
    {
        let gap = if bridged { -1 } else { max_gap_ms };
        add_interval(from_ms, to_ms, delta, gap, &mut add);
    }
}

/// Spreads `delta` evenly over `[from_ms, to_ms)`, calling `f(slot_start, part, part_ms)` for
/// each 15-minute slot touched.
pub fn apportion(from_ms: i64, to_ms: i64, delta: f64, mut f: impl FnMut(i64, f64, i64)) {
    if to_ms <= from_ms {
        return;
    }
    let span = (to_ms - from_ms) as f64;
    let mut t = from_ms;
    while t < to_ms {
        let slot = t - t.rem_euclid(SLOT_MS);
        let end = (slot + SLOT_MS).min(to_ms);
        f(slot, delta * (end - t) as f64 / span, end - t);
        t = end;
    }
}

/// Adds the interval between two good samples of a point into its slots.
pub fn add_interval(
    from_ms: i64,
    to_ms: i64,
    delta: f64,
    max_gap_ms: i64,
    mut add: impl FnMut(i64, PointSlot),
) {
    let long = to_ms - from_ms > max_gap_ms;
    apportion(from_ms, to_ms, delta, |hour, part, part_ms| {
        add(
            hour,
            PointSlot {
                delta: part,
                covered_ms: if long { 0 } else { part_ms },
                estimated: if long { part } else { 0.0 },
            },
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> CounterRule {
        CounterRule {
            rollover: Some(1_000.0),
            max_rate_per_h: Some(100.0),
            frozen_after_ms: 2 * HOUR_MS,
            fill: GapFill::Rate,
            level: false,
            gauge: false,
        }
    }

    fn intervals(events: &[CounterEvent]) -> Vec<(f64, bool)> {
        events
            .iter()
            .filter_map(|e| {
                if let CounterEvent::Interval { delta, bridged, .. } = e {
                    Some((*delta, *bridged))
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn a_spike_is_rejected_and_counting_resumes_from_the_last_good_reading() {
        let mut t = CounterTrack::default();
        let r = rule();
        t.push(0, 100.0, &r);
        assert_eq!(intervals(&t.push(HOUR_MS, 150.0, &r)), vec![(50.0, false)]);
        // +800 in an hour: the flow cannot do more than 100 an hour.
        let e = t.push(2 * HOUR_MS, 950.0, &r);
        assert!(matches!(e[0], CounterEvent::Spike { .. }), "{e:?}");
        // Back to normal: the interval runs from the last good reading, 150 at 1 h.
        assert_eq!(
            intervals(&t.push(3 * HOUR_MS, 260.0, &r)),
            vec![(110.0, false)]
        );
    }

    #[test]
    fn a_jump_that_stays_re_anchors_instead_of_rejecting_forever() {
        let mut t = CounterTrack::default();
        let r = rule();
        t.push(0, 100.0, &r);
        let events: Vec<_> = (1..=3)
            .flat_map(|h| t.push(h * HOUR_MS, 900.0 + h as f64, &r))
            .collect();
        assert!(
            matches!(events.last(), Some(CounterEvent::Jump { .. })),
            "{events:?}"
        );
        assert_eq!(
            intervals(&t.push(4 * HOUR_MS, 950.0, &r)),
            vec![(47.0, false)]
        );
    }

    #[test]
    fn a_stock_level_counts_its_falls_and_rejects_only_impossible_moves() {
        let mut t = CounterTrack::default();
        let r = CounterRule {
            rollover: None,
            max_rate_per_h: Some(100.0),
            level: true,
            gauge: false,
            ..rule()
        };
        t.push(0, 500.0, &r);
        // Used 40 t in an hour, then a 90 t delivery: signed changes, no restart.
        assert_eq!(intervals(&t.push(HOUR_MS, 460.0, &r)), vec![(-40.0, false)]);
        assert_eq!(
            intervals(&t.push(2 * HOUR_MS, 550.0, &r)),
            vec![(90.0, false)]
        );
        // 300 t gone in an hour is more than the bunker can move: a spike, rejected.
        let spike = t.push(3 * HOUR_MS, 250.0, &r);
        assert!(
            matches!(spike[..], [CounterEvent::Spike { .. }]),
            "{spike:?}"
        );
        assert_eq!(
            intervals(&t.push(4 * HOUR_MS, 520.0, &r)),
            vec![(-30.0, false)]
        );
    }

    #[test]
    fn a_replaced_meter_is_bridged_from_zero_and_marked() {
        let mut t = CounterTrack::default();
        let r = CounterRule {
            rollover: None,
            ..rule()
        };
        t.push(0, 700.0, &r);
        // The new meter reads 30 an hour later: only those 30 are known.
        assert_eq!(intervals(&t.push(HOUR_MS, 30.0, &r)), vec![(30.0, true)]);
        let mut slots = Vec::new();
        add_event(
            &CounterEvent::Interval {
                from_ms: 0,
                to_ms: HOUR_MS,
                delta: 30.0,
                bridged: true,
            },
            900_000,
            |s, p| slots.push((s, p)),
        );
        assert!(slots
            .iter()
            .all(|(_, p)| p.covered_ms == 0 && p.estimated == p.delta));
    }

    #[test]
    fn a_replaced_meter_is_told_from_a_wrap_and_filled_at_the_recent_rate() {
        // Rollover at 1 000 declared, at most 100 an hour, steady 40 an hour.
        let mut t = CounterTrack::default();
        let r = rule();
        for h in 0..=3 {
            t.push(h * HOUR_MS, 500.0 + 40.0 * h as f64, &r);
        }
        // A new meter reads 10 an hour later. As a wrap that would be 1 000 - 620 + 10 = 390
        // in an hour: more than the flow can do, so it is a restart.
        let e = t.push(4 * HOUR_MS, 10.0, &r);
        assert!(
            matches!(
                e[0],
                CounterEvent::Restart {
                    from: 620.0,
                    to: 10.0
                }
            ),
            "{e:?}"
        );
        let filled = intervals(&e);
        assert_eq!(filled.len(), 1);
        assert!(
            (filled[0].0 - 40.0).abs() < 1e-9 && filled[0].1,
            "{filled:?}"
        );
        // And counting goes on from the new meter's reading.
        assert_eq!(
            intervals(&t.push(5 * HOUR_MS, 50.0, &r)),
            vec![(40.0, false)]
        );
        // A real wrap near the top stays a measured interval.
        let mut t = CounterTrack::default();
        t.push(0, 980.0, &r);
        assert_eq!(intervals(&t.push(HOUR_MS, 20.0, &r)), vec![(40.0, false)]);
    }

    #[test]
    fn a_jump_is_filled_at_the_recent_rate_or_left_open_as_declared() {
        let run = |fill: GapFill| {
            let r = CounterRule { fill, ..rule() };
            let mut t = CounterTrack::default();
            t.push(0, 100.0, &r);
            t.push(HOUR_MS, 130.0, &r);
            (2..=4)
                .flat_map(|h| t.push(h * HOUR_MS, 900.0 + h as f64, &r))
                .collect::<Vec<_>>()
        };
        let filled = run(GapFill::Rate);
        assert!(matches!(filled[2], CounterEvent::Jump { .. }), "{filled:?}");
        // From the last good reading (1 h) to the jump's (4 h): three hours at 30 an hour.
        assert_eq!(intervals(&filled), vec![(90.0, true)]);
        let open = run(GapFill::None);
        assert!(intervals(&open).is_empty(), "{open:?}");
    }

    #[test]
    fn a_counter_that_stops_moving_is_flagged_once() {
        let mut t = CounterTrack::default();
        let r = rule();
        t.push(0, 100.0, &r);
        let frozen: usize = (1..=6)
            .map(|h| {
                t.push(h * HOUR_MS, 100.0, &r)
                    .iter()
                    .filter(|e| matches!(e, CounterEvent::Frozen { .. }))
                    .count()
            })
            .sum();
        assert_eq!(frozen, 1, "flagged when it passes two hours, once");
        t.push(7 * HOUR_MS, 120.0, &r);
        let again: usize = (8..=10)
            .map(|h| {
                t.push(h * HOUR_MS, 120.0, &r)
                    .iter()
                    .filter(|e| matches!(e, CounterEvent::Frozen { .. }))
                    .count()
            })
            .sum();
        assert_eq!(again, 1, "a new episode is flagged again");
    }

    #[test]
    fn deltas_with_and_without_rollover() {
        assert_eq!(counter_delta(10.0, 15.5, None), Some(5.5));
        assert_eq!(counter_delta(99_990.0, 10.0, Some(100_000.0)), Some(20.0));
        assert_eq!(
            counter_delta(500.0, 3.0, None),
            None,
            "a reset is not a measurement"
        );
    }

    #[test]
    fn an_interval_is_spread_over_the_slots_it_spans() {
        let mut parts = Vec::new();
        // 00:10 to 00:50, 40 minutes, 80 units: 5 + 15 + 15 + 5 minutes.
        apportion(600_000, 3_000_000, 80.0, |h, d, ms| parts.push((h, d, ms)));
        assert_eq!(
            parts,
            vec![
                (0, 10.0, 300_000),
                (SLOT_MS, 30.0, SLOT_MS),
                (2 * SLOT_MS, 30.0, SLOT_MS),
                (3 * SLOT_MS, 10.0, 300_000)
            ]
        );
    }

    #[test]
    fn long_intervals_count_but_are_estimated_and_uncovered() {
        let mut rows = Vec::new();
        add_interval(0, 2 * HOUR_MS, 100.0, 900_000, |h, r| rows.push((h, r)));
        assert!(rows
            .iter()
            .all(|(_, r)| r.covered_ms == 0 && r.estimated == r.delta));
        let total: f64 = rows.iter().map(|(_, r)| r.delta).sum();
        assert_eq!(total, 100.0);
    }
}
