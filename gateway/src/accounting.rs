//! Accounting: from counter samples to hourly deltas, and from hourly deltas to unit indicators.
//!
//! Pure functions; the store feeds them rows and keeps what they return.
//!
//! The base rollup is per meter point and 15-minute slot: the counter's increase attributed to
//! that slot (an interval between two samples that spans slots is spread evenly over its time),
//! how much of the slot good samples covered, and how much of the delta came from intervals longer than
//! the allowed sample gap (spread by assumption, hence "estimated"). Unit figures for any period
//! are sums of these rows, so they can always be recomputed from raw samples.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone};
use serde::Serialize;

use std::collections::BTreeMap;

use crate::config::{CorrectionConfig, Role, Unit};
use crate::limits::{Figure, InputValue, Judgement, WaterJudgement};

pub const HOUR_MS: i64 = 3_600_000;

/// The base rollup: 15 minutes, the national platform's real-time indicator period. Every
/// longer period (hour, shift, day, month, year) is an exact sum of slots.
pub const SLOT_MS: i64 = 900_000;

/// Completeness a period needs to be reportable (national online-monitoring data quality, >= 90 %).
pub const REPORTABLE_COMPLETENESS: f64 = 0.9;

/// One point's share of one 15-minute slot.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PointSlot {
    pub delta: f64,
    /// Milliseconds of the slot spanned by intervals no longer than the allowed gap.
    pub covered_ms: i64,
    /// Part of `delta` from longer intervals.
    pub estimated: f64,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    #[serde(rename = "15min")]
    Quarter,
    Hour,
    Shift,
    Day,
    Month,
    Year,
}

/// The plant's time: its UTC offset and when its shifts start (ms after local midnight).
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    pub tz: FixedOffset,
    /// Sorted, each in `0..24 h`.
    pub shift_starts: Vec<i64>,
}

impl Calendar {
    /// The shift boundary at or before `ms`.
    fn shift_start(&self, ms: i64) -> i64 {
        let day = midnight(local(ms, self.tz).date_naive(), self.tz);
        [day - 24 * HOUR_MS, day]
            .iter()
            .flat_map(|d| self.shift_starts.iter().map(move |s| d + s))
            .filter(|&b| b <= ms)
            .max()
            .expect("a shift starts within a day of any time")
    }

    fn next_shift(&self, start: i64) -> i64 {
        let day = midnight(local(start, self.tz).date_naive(), self.tz);
        [day, day + 24 * HOUR_MS]
            .iter()
            .flat_map(|d| self.shift_starts.iter().map(move |s| d + s))
            .filter(|&b| b > start)
            .min()
            .expect("a shift starts within a day of any time")
    }
}

/// Period boundaries covering `[from_ms, to_ms)` in the plant's local time.
pub fn buckets(period: Period, from_ms: i64, to_ms: i64, cal: &Calendar) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut start = period_start(period, from_ms, cal);
    while start < to_ms {
        let end = next_start(period, start, cal);
        out.push((start, end));
        start = end;
    }
    out
}

/// At most how many periods [`buckets`] gives for `[from_ms, to_ms)`, computed without
/// building them: what a request is checked against before any work.
pub fn buckets_at_most(period: Period, from_ms: i64, to_ms: i64, cal: &Calendar) -> u64 {
    if to_ms <= from_ms {
        return 0;
    }
    let span = (to_ms as i128 - from_ms as i128) as u128;
    let per = |len: i64| (span / len as u128 + 2) as u64;
    let days = per(24 * HOUR_MS);
    let year_month = |ms: i64| {
        let d = local(ms, cal.tz);
        (i128::from(d.year()), i128::from(d.month()))
    };
    match period {
        Period::Quarter => per(SLOT_MS),
        Period::Hour => per(HOUR_MS),
        Period::Day => days,
        Period::Shift => days.saturating_mul(cal.shift_starts.len() as u64),
        Period::Month | Period::Year => {
            let ((y0, m0), (y1, m1)) = (year_month(from_ms), year_month(to_ms));
            let n = match period {
                Period::Month => (y1 * 12 + m1) - (y0 * 12 + m0) + 1,
                _ => y1 - y0 + 1,
            };
            n.max(0) as u64
        }
    }
}

/// A time in the plant's local offset, RFC 3339: how reports and the API write period bounds.
pub fn local_rfc3339(ms: i64, tz: FixedOffset) -> String {
    local(ms, tz).to_rfc3339()
}

fn local(ms: i64, tz: FixedOffset) -> DateTime<FixedOffset> {
    tz.timestamp_millis_opt(ms)
        .single()
        .expect("fixed offsets are unambiguous")
}

fn midnight(d: NaiveDate, tz: FixedOffset) -> i64 {
    tz.from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
        .single()
        .expect("fixed offsets are unambiguous")
        .timestamp_millis()
}

fn period_start(period: Period, ms: i64, cal: &Calendar) -> i64 {
    let tz = cal.tz;
    let offset = i64::from(tz.local_minus_utc()) * 1000;
    match period {
        Period::Quarter => ms - (ms + offset).rem_euclid(SLOT_MS),
        Period::Hour => ms - (ms + offset).rem_euclid(HOUR_MS),
        Period::Shift => cal.shift_start(ms),
        Period::Year => midnight(
            NaiveDate::from_ymd_opt(local(ms, tz).year(), 1, 1).expect("1 January exists"),
            tz,
        ),
        Period::Day => midnight(local(ms, tz).date_naive(), tz),
        Period::Month => midnight(
            local(ms, tz)
                .date_naive()
                .with_day(1)
                .expect("day 1 exists"),
            tz,
        ),
    }
}

fn next_start(period: Period, start: i64, cal: &Calendar) -> i64 {
    let tz = cal.tz;
    match period {
        Period::Quarter => start + SLOT_MS,
        Period::Hour => start + HOUR_MS,
        Period::Shift => cal.next_shift(start),
        Period::Year => midnight(
            NaiveDate::from_ymd_opt(local(start, tz).year() + 1, 1, 1).expect("1 January exists"),
            tz,
        ),
        Period::Day => start + 24 * HOUR_MS,
        Period::Month => {
            let d = local(start, tz).date_naive();
            let (y, m) = if d.month() == 12 {
                (d.year() + 1, 1)
            } else {
                (d.year(), d.month() + 1)
            };
            midnight(
                NaiveDate::from_ymd_opt(y, m, 1).expect("first of month exists"),
                tz,
            )
        }
    }
}

/// One carrier's part in a period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CarrierFigure {
    pub device: String,
    pub carrier: String,
    pub role: Role,
    pub quantity: f64,
    pub unit: String,
    /// Signed: recovered energy is negative.
    pub kgce: f64,
}

/// A unit's figures over one period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Indicator {
    pub start: String,
    pub end: String,
    /// Comprehensive energy: consumed minus recovered, kgce.
    pub energy_kgce: f64,
    pub consumed_kgce: f64,
    pub recovered_kgce: f64,
    pub product_t: f64,
    pub kgce_per_t: Option<f64>,
    /// Net electricity consumed (consumed minus recovered), kWh, and per tonne.
    pub electricity_kwh: f64,
    pub kwh_per_t: Option<f64>,
    pub water_m3: f64,
    pub water_m3_per_t: Option<f64>,
    /// Share of the period covered by good samples, the weakest meter of the unit deciding.
    pub completeness: f64,
    /// At least 90 % complete: what the national online-monitoring rules accept for reporting.
    pub reportable: bool,
    /// Share of the energy, product and water figures that was spread over sample gaps.
    pub estimated_share: f64,
    pub carriers: Vec<CarrierFigure>,
    /// Level reached against the unit's first limit: 1, 2 or 3; null when above the limit or
    /// not judged (no limit, no product, a correction input missing).
    pub level: Option<u8>,
    /// Whether every limit judged is met; null when none was judged.
    pub within_limit: Option<bool>,
    /// Every limit judged, with its corrected thresholds.
    pub limits: Vec<Judgement>,
    /// Why a limit could not be judged in this period.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limit_errors: Vec<String>,
    pub water_quota: Option<WaterJudgement>,
    /// The correction inputs used (the relevant variables of the standards).
    pub corrections: BTreeMap<String, InputValue>,
}

/// Below this share of a flow's total, an estimated amount is rounding left over, not an
/// estimate: a slot's `estimated` is a running sum, and a late sample takes the estimated
/// interval it splits out again, which in floating point can leave ~1e-16 where readings
/// replaced every estimate. A real one is far larger: one second bridged in a year is 3e-8.
const ESTIMATE_RESIDUE: f64 = 1e-12;

fn without_rounding_residue(estimated: f64, total: f64) -> f64 {
    if estimated.abs() <= ESTIMATE_RESIDUE * total.abs() {
        0.0
    } else {
        estimated
    }
}

/// Computes a unit's indicators; `slots(flow_index)` gives that flow's rows as (slot, row).
pub fn indicators(
    unit: &Unit,
    periods: &[(i64, i64)],
    tz: FixedOffset,
    slots: impl Fn(usize) -> Vec<(i64, PointSlot)>,
) -> Vec<Indicator> {
    let rows: Vec<Vec<(i64, PointSlot)>> = (0..unit.flows.len()).map(&slots).collect();
    periods
        .iter()
        .map(|&(start, end)| {
            let mut ind = Indicator {
                start: local(start, tz).to_rfc3339(),
                end: local(end, tz).to_rfc3339(),
                energy_kgce: 0.0,
                consumed_kgce: 0.0,
                recovered_kgce: 0.0,
                product_t: 0.0,
                kgce_per_t: None,
                electricity_kwh: 0.0,
                kwh_per_t: None,
                water_m3: 0.0,
                water_m3_per_t: None,
                completeness: 1.0,
                reportable: false,
                estimated_share: 0.0,
                carriers: Vec::new(),
                level: None,
                within_limit: None,
                limits: Vec::new(),
                limit_errors: Vec::new(),
                water_quota: None,
                corrections: BTreeMap::new(),
            };
            let (mut total_abs, mut estimated_abs) = (0.0, 0.0);
            let mut by_device: BTreeMap<&str, f64> = BTreeMap::new();
            for (flow, rows) in unit.flows.iter().zip(&rows) {
                let mut sum = PointSlot::default();
                for (_, r) in rows.iter().filter(|(h, _)| *h >= start && *h < end) {
                    sum.delta += r.delta;
                    sum.covered_ms += r.covered_ms;
                    sum.estimated += r.estimated;
                }
                sum.estimated = without_rounding_residue(sum.estimated, sum.delta);
                ind.completeness = ind
                    .completeness
                    .min(sum.covered_ms as f64 / (end - start) as f64);
                let value = sum.delta * flow.factor;
                *by_device.entry(flow.device.as_str()).or_default() += value;
                if flow.role == Role::Material {
                    continue;
                }
                total_abs += value.abs();
                estimated_abs += (sum.estimated * flow.factor).abs();
                let kgce = match flow.role {
                    Role::Consumed => {
                        ind.consumed_kgce += value;
                        value
                    }
                    Role::Recovered => {
                        ind.recovered_kgce += value;
                        -value
                    }
                    Role::Product => {
                        ind.product_t += value;
                        continue;
                    }
                    Role::Water => {
                        ind.water_m3 += value;
                        continue;
                    }
                    Role::Material => continue,
                };
                if flow.carrier.as_deref() == Some("electricity") {
                    let kwh = sum.delta
                        * crate::coefficients::unit_factor(&flow.unit, "kWh").unwrap_or(0.0);
                    ind.electricity_kwh += if flow.role == Role::Recovered {
                        -kwh
                    } else {
                        kwh
                    };
                }
                ind.carriers.push(CarrierFigure {
                    device: flow.device.clone(),
                    carrier: flow.carrier.clone().unwrap_or_default(),
                    role: flow.role,
                    quantity: sum.delta,
                    unit: flow.unit.clone(),
                    kgce,
                });
            }
            ind.energy_kgce = ind.consumed_kgce - ind.recovered_kgce;
            if ind.product_t > 0.0 {
                ind.kgce_per_t = Some(ind.energy_kgce / ind.product_t);
                ind.kwh_per_t = Some(ind.electricity_kwh / ind.product_t);
                ind.water_m3_per_t = Some(ind.water_m3 / ind.product_t);
            }
            if total_abs > 0.0 {
                ind.estimated_share = estimated_abs / total_abs;
            }
            ind.completeness = ind.completeness.clamp(0.0, 1.0);
            ind.reportable = ind.completeness >= REPORTABLE_COMPLETENESS;
            judge(unit, &mut ind, &by_device);
            ind
        })
        .collect()
}

/// Derives the correction inputs of one period and judges the unit's figures.
fn judge(unit: &Unit, ind: &mut Indicator, by_device: &BTreeMap<&str, f64>) {
    let sum = |devices: &[String]| {
        devices
            .iter()
            .map(|d| by_device.get(d.as_str()).copied().unwrap_or(0.0))
            .sum::<f64>()
    };
    for (name, c) in &unit.corrections {
        let value = match c {
            CorrectionConfig::Number(x) => Some(InputValue::Number(*x)),
            CorrectionConfig::Text(t) => Some(InputValue::Text(t.clone())),
            CorrectionConfig::Ratio { ratio, of } => {
                let den = sum(of);
                (den > 0.0).then(|| InputValue::Number(100.0 * sum(ratio) / den))
            }
        };
        if let Some(v) = value {
            ind.corrections.insert(name.clone(), v);
        }
    }
    for limit in &unit.limits {
        let figure = match limit.indicator {
            Figure::KgcePerT => ind.kgce_per_t,
            Figure::KwhPerT => ind.kwh_per_t,
        };
        let Some(value) = figure else { continue };
        match limit.judge(value, &ind.corrections) {
            Ok(j) => ind.limits.push(j),
            Err(e) => ind.limit_errors.push(e),
        }
    }
    if let Some(first) = ind
        .limits
        .first()
        .filter(|j| unit.limits.first().is_some_and(|l| l.code == j.code))
    {
        ind.level = first.level;
    }
    if !ind.limits.is_empty() {
        ind.within_limit =
            Some(ind.limits.iter().all(|j| j.within_limit) && ind.limit_errors.is_empty());
    }
    if let (Some(q), Some(w)) = (&unit.water_quota, ind.water_m3_per_t) {
        ind.water_quota = Some(q.judge(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flow;

    fn rule() -> CounterRule {
        CounterRule {
            rollover: Some(1_000.0),
            max_rate_per_h: Some(100.0),
            frozen_after_ms: 2 * HOUR_MS,
            fill: GapFill::Rate,
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

    #[test]
    fn days_and_months_start_at_local_midnight() {
        let cst: FixedOffset = "+08:00".parse().unwrap();
        let cal = Calendar {
            tz: cst,
            shift_starts: vec![0, 8 * HOUR_MS, 16 * HOUR_MS],
        };
        // 2026-01-31T20:00:00+08:00 .. 2026-02-02T00:00:00+08:00
        let from = cst
            .with_ymd_and_hms(2026, 1, 31, 20, 0, 0)
            .unwrap()
            .timestamp_millis();
        let to = cst
            .with_ymd_and_hms(2026, 2, 2, 0, 0, 0)
            .unwrap()
            .timestamp_millis();
        let days = buckets(Period::Day, from, to, &cal);
        assert_eq!(days.len(), 2);
        assert_eq!(
            local(days[0].0, cst).to_rfc3339(),
            "2026-01-31T00:00:00+08:00"
        );
        let months = buckets(Period::Month, from, to, &cal);
        assert_eq!(months.len(), 2);
        assert_eq!(
            local(months[1].0, cst).to_rfc3339(),
            "2026-02-01T00:00:00+08:00"
        );
        assert_eq!(
            local(months[1].1, cst).to_rfc3339(),
            "2026-03-01T00:00:00+08:00"
        );
        let hours = buckets(Period::Hour, from + 1, from + HOUR_MS, &cal);
        assert_eq!(hours, vec![(from, from + HOUR_MS)]);
    }

    #[test]
    fn the_count_of_periods_is_known_before_they_are_built() {
        let cst: FixedOffset = "+08:00".parse().unwrap();
        let cal = Calendar {
            tz: cst,
            shift_starts: vec![0, 8 * HOUR_MS, 16 * HOUR_MS],
        };
        let at = |y, mo, d, h| {
            cst.with_ymd_and_hms(y, mo, d, h, 0, 0)
                .unwrap()
                .timestamp_millis()
        };
        for (from, to) in [
            (at(2026, 1, 31, 20), at(2026, 2, 2, 0)),
            (at(2025, 12, 31, 23), at(2026, 1, 1, 1)),
            (at(2024, 3, 5, 7), at(2026, 11, 17, 13)),
        ] {
            for p in [
                Period::Quarter,
                Period::Hour,
                Period::Shift,
                Period::Day,
                Period::Month,
                Period::Year,
            ] {
                let built = buckets(p, from, to, &cal).len() as u64;
                let bound = buckets_at_most(p, from, to, &cal);
                // An upper bound, and a close one (shifts are counted as whole days of them).
                assert!(
                    built <= bound && bound <= 2 * built + 6,
                    "{p:?}: {built} built, bound {bound}"
                );
            }
        }
        // A thousand years of 15-minute periods is refused on arithmetic alone.
        let (y0, y1) = (at(1000, 1, 1, 0), at(2000, 1, 1, 0));
        assert!(buckets_at_most(Period::Quarter, y0, y1, &cal) > 35_000_000);
    }

    #[test]
    fn quarters_shifts_and_years() {
        let cst: FixedOffset = "+08:00".parse().unwrap();
        // Shifts at 08:00, 16:00 and 00:00 local, written in any order.
        let cal = Calendar {
            tz: cst,
            shift_starts: vec![0, 8 * HOUR_MS, 16 * HOUR_MS],
        };
        let at = |d, h, m| {
            cst.with_ymd_and_hms(2026, 1, d, h, m, 0)
                .unwrap()
                .timestamp_millis()
        };
        let q = buckets(Period::Quarter, at(5, 10, 7), at(5, 10, 40), &cal);
        assert_eq!(
            q,
            vec![
                (at(5, 10, 0), at(5, 10, 15)),
                (at(5, 10, 15), at(5, 10, 30)),
                (at(5, 10, 30), at(5, 10, 45))
            ]
        );
        let s = buckets(Period::Shift, at(5, 7, 0), at(5, 17, 0), &cal);
        assert_eq!(
            s,
            vec![
                (at(5, 0, 0), at(5, 8, 0)),
                (at(5, 8, 0), at(5, 16, 0)),
                (at(5, 16, 0), at(6, 0, 0))
            ]
        );
        // A plant whose shifts start at 07:30, 15:30 and 23:30: the night shift spans midnight.
        let cal2 = Calendar {
            tz: cst,
            shift_starts: vec![
                7 * HOUR_MS + 1_800_000,
                15 * HOUR_MS + 1_800_000,
                23 * HOUR_MS + 1_800_000,
            ],
        };
        let night = buckets(Period::Shift, at(6, 2, 0), at(6, 3, 0), &cal2);
        assert_eq!(night, vec![(at(5, 23, 30), at(6, 7, 30))]);
        let y = buckets(Period::Year, at(5, 0, 0), at(5, 1, 0), &cal);
        assert_eq!(local(y[0].0, cst).to_rfc3339(), "2026-01-01T00:00:00+08:00");
        assert_eq!(local(y[0].1, cst).to_rfc3339(), "2027-01-01T00:00:00+08:00");
    }

    fn flow(device: &str, role: Role, carrier: Option<&str>, unit: &str, factor: f64) -> Flow {
        Flow {
            device: device.into(),
            point: "total".into(),
            role,
            carrier: carrier.map(Into::into),
            unit: unit.into(),
            factor,
            rollover: None,
            max_rate_per_h: None,
        }
    }

    /// A unit of `kind` with no limits to judge and no corrections.
    fn unjudged(kind: &str, flows: Vec<Flow>) -> Unit {
        Unit {
            id: kind.into(),
            name: kind.into(),
            kind: kind.into(),
            site: None,
            workshop: None,
            limits: Vec::new(),
            water_quota: None,
            corrections: BTreeMap::new(),
            flows,
        }
    }

    #[test]
    fn an_estimate_taken_back_leaves_no_estimated_share_and_a_real_one_shows() {
        let unit = unjudged(
            "kiln",
            vec![
                flow("clinker", Role::Product, None, "t", 1.0),
                flow("power", Role::Consumed, Some("electricity"), "kWh", 0.1229),
            ],
        );
        let tz: FixedOffset = "+00:00".parse().unwrap();
        let day = [(0, 24 * HOUR_MS)];
        // A gap bridged at 0.1 + 0.2, then taken out again as the replayed readings came:
        // floating point leaves 5.6e-17 in the slot.
        let residue = 0.1 + 0.2 - 0.3;
        assert_ne!(residue, 0.0);
        let slot = |delta: f64, estimated: f64| {
            vec![(
                0,
                PointSlot {
                    delta,
                    covered_ms: 24 * HOUR_MS,
                    estimated,
                },
            )]
        };
        let replayed = indicators(&unit, &day, tz, |i| slot(1_000.0 * (i + 1) as f64, residue));
        assert_eq!(replayed[0].estimated_share, 0.0);
        // One second of the day's 2 000 kWh bridged (0.023 kWh) is an estimate and says so.
        let bridged = 2_000.0 / 86_400.0;
        let real = indicators(&unit, &day, tz, |i| {
            slot(1_000.0 * (i + 1) as f64, if i == 1 { bridged } else { 0.0 })
        });
        assert!(real[0].estimated_share > 0.0, "{}", real[0].estimated_share);
    }

    #[test]
    fn converter_figure_goes_negative_when_recovery_exceeds_use() {
        // Hand-computed: 150 t steel; 4 200 kWh x 0.1229 = 516.18 kgce consumed;
        // 15 000 m3 LDG at 7 500 kJ/m3 = 3 838.67 kgce recovered; net -3 322.49 kgce, -22.15 kgce/t.
        let unit = unjudged(
            "converter",
            vec![
                flow("steel", Role::Product, None, "t", 1.0),
                flow("power", Role::Consumed, Some("electricity"), "kWh", 0.1229),
                flow(
                    "ldg",
                    Role::Recovered,
                    Some("converter_gas"),
                    "m3",
                    7_500.0 / 29_307.0,
                ),
                flow("water", Role::Water, None, "m3", 1.0),
            ],
        );
        let full = |delta: f64| {
            vec![(
                0,
                PointSlot {
                    delta,
                    covered_ms: HOUR_MS,
                    estimated: 0.0,
                },
            )]
        };
        let deltas = [150.0, 4_200.0, 15_000.0, 75.0];
        let tz: FixedOffset = "+00:00".parse().unwrap();
        let ind = indicators(&unit, &[(0, HOUR_MS)], tz, |i| full(deltas[i]));
        let i = &ind[0];
        assert!((i.consumed_kgce - 516.18).abs() < 1e-9);
        assert!((i.recovered_kgce - 3_838.673).abs() < 1e-3);
        assert!(
            (i.kgce_per_t.unwrap() - (-22.150)).abs() < 1e-3,
            "{:?}",
            i.kgce_per_t
        );
        assert_eq!(i.water_m3_per_t, Some(0.5));
        assert_eq!(i.completeness, 1.0);
        assert_eq!(
            i.carriers
                .iter()
                .find(|c| c.carrier == "converter_gas")
                .unwrap()
                .kgce
                .signum(),
            -1.0
        );
    }

    #[test]
    fn converter_level_with_the_scrap_ratio_taken_from_its_own_scales() {
        // Hand-computed: 150 t steel, 4 200 kWh and 15 000 m3 LDG as above: -22.150 kgce/t.
        // Charged 27 t scrap and 135 t hot metal: scrap ratio 27 / 162 = 16.667 %, so GB 21256
        // table 4 moves up by 0.23 x 16.667 = 3.833: -26.167 / -24.167 / -8.167. -22.150 is
        // above level 2 and within level 3.
        let limits = crate::limits::Limits::built_in();
        let mut corrections = BTreeMap::new();
        corrections.insert(
            "scrap_ratio_pct".to_string(),
            CorrectionConfig::Ratio {
                ratio: vec!["scrap".into()],
                of: vec!["scrap".into(), "hot_metal".into()],
            },
        );
        corrections.insert(
            "steel_category".to_string(),
            CorrectionConfig::Text("plain_carbon".into()),
        );
        let unit = Unit {
            id: "bof1".into(),
            name: "BOF".into(),
            kind: "converter".into(),
            site: None,
            workshop: None,
            limits: vec![limits.limit("converter").unwrap().clone()],
            water_quota: None,
            corrections,
            flows: vec![
                flow("steel", Role::Product, None, "t", 1.0),
                flow("power", Role::Consumed, Some("electricity"), "kWh", 0.1229),
                flow(
                    "ldg",
                    Role::Recovered,
                    Some("converter_gas"),
                    "m3",
                    7_500.0 / 29_307.0,
                ),
                flow("scrap", Role::Material, None, "t", 1.0),
                flow("hot_metal", Role::Material, None, "t", 1.0),
            ],
        };
        let deltas = [150.0, 4_200.0, 15_000.0, 27.0, 135.0];
        let tz: FixedOffset = "+00:00".parse().unwrap();
        let ind = indicators(&unit, &[(0, HOUR_MS)], tz, |i| {
            vec![(
                0,
                PointSlot {
                    delta: deltas[i],
                    covered_ms: HOUR_MS,
                    estimated: 0.0,
                },
            )]
        });
        let i = &ind[0];
        assert!((i.kgce_per_t.unwrap() + 22.150).abs() < 1e-3);
        match i.corrections.get("scrap_ratio_pct") {
            Some(InputValue::Number(x)) => assert!((x - 16.6667).abs() < 1e-3, "{x}"),
            other => panic!("{other:?}"),
        }
        let j = &i.limits[0];
        let want = [-26.1667, -24.1667, -8.1667];
        assert!(
            j.thresholds
                .iter()
                .zip(want)
                .all(|(a, b)| (a - b).abs() < 1e-3),
            "{:?}",
            j.thresholds
        );
        assert_eq!((i.level, i.within_limit), (Some(3), Some(true)));
        assert!(
            i.carriers.iter().all(|c| c.role != Role::Material),
            "materials are not energy"
        );
    }

    #[test]
    fn the_weakest_meter_decides_completeness_and_no_product_means_no_ratio() {
        let unit = unjudged(
            "kiln",
            vec![
                flow("clinker", Role::Product, None, "t", 1.0),
                flow("coal", Role::Consumed, Some("raw_coal"), "t", 714.3),
            ],
        );
        let tz: FixedOffset = "+00:00".parse().unwrap();
        let ind = indicators(&unit, &[(0, HOUR_MS)], tz, |i| {
            let covered = if i == 0 { HOUR_MS } else { HOUR_MS / 2 };
            vec![(
                0,
                PointSlot {
                    delta: if i == 0 { 0.0 } else { 1.0 },
                    covered_ms: covered,
                    estimated: 0.0,
                },
            )]
        });
        assert_eq!(ind[0].completeness, 0.5);
        assert!(!ind[0].reportable, "under 90 % is not reportable");
        assert_eq!(ind[0].kgce_per_t, None);
    }
}
