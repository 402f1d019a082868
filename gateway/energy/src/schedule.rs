//! Coefficients that change in time: a carrier's figure of the year (the equal value of
//! electricity follows the year's thermal-power supply coal rate) and a gas's heating values as
//! its laboratory or calorimeter gives them. A flow's factors are then a step function of time,
//! applied slot by slot: a month over which the blast-furnace gas got leaner counts each hour at
//! the heating value in force then, and December and January at their own years' figures.

use chrono::{Datelike as _, FixedOffset, NaiveDateTime, TimeZone as _};
use serde::{Deserialize, Serialize};

use crate::counter::PointSlot;

/// A heating value in force from a time on, until the next one (a laboratory's shift sample).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeatingValue {
    /// From when: RFC 3339, or the plant's local time as "YYYY-MM-DD HH:MM".
    pub from: String,
    /// Lower heating value, kJ per metered unit (kJ/m3 of a gas).
    pub lhv_kj: f64,
}

impl HeatingValue {
    /// When it takes effect, ms since the epoch; or what is wrong with it: (field, reason).
    pub fn checked(&self, tz: FixedOffset) -> Result<i64, (&'static str, &'static str)> {
        if !(self.lhv_kj.is_finite() && self.lhv_kj > 0.0) {
            return Err(("lhv_kj", "must be a positive number of kJ per metered unit"));
        }
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(&self.from) {
            return Ok(t.timestamp_millis());
        }
        [
            "%Y-%m-%d %H:%M",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%dT%H:%M:%S",
        ]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(self.from.trim(), f).ok())
        .and_then(|n| tz.from_local_datetime(&n).single())
        .map(|t| t.timestamp_millis())
        .ok_or((
            "from",
            "a time such as \"2026-03-01 08:00\" (local) or RFC 3339",
        ))
    }
}

/// A flow's factors (kgce per metered unit on the equivalent and the equal-value basis) from
/// each instant on, in time order; before the first, the flow's constant factors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Steps(pub Vec<(i64, [f64; 2])>);

impl Steps {
    /// The factors in force at `t`.
    pub fn at(&self, t: i64, before: [f64; 2]) -> [f64; 2] {
        match self.0.partition_point(|(from, _)| *from <= t) {
            0 => before,
            i => self.0[i - 1].1,
        }
    }
}

/// The local calendar year of an instant.
pub fn local_year(t: i64, tz: FixedOffset) -> i32 {
    chrono::DateTime::from_timestamp_millis(t)
        .unwrap_or_default()
        .with_timezone(&tz)
        .year()
}

/// The first local instant of `year`.
pub fn year_start(year: i32, tz: FixedOffset) -> i64 {
    tz.with_ymd_and_hms(year, 1, 1, 0, 0, 0)
        .single()
        .map_or(i64::MIN, |t| t.timestamp_millis())
}

/// A flow's rows over a period, each at the factors in force at its slot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FlowSum {
    /// The quantities as metered (delta, coverage, estimated part).
    pub slot: PointSlot,
    /// kgce on the equivalent and the equal-value basis (for a product or water flow, its
    /// tonnes or m3 twice).
    pub converted: [f64; 2],
    /// The estimated part of `converted`.
    pub estimated: [f64; 2],
    /// The quantity counted at a heating value measured (a laboratory's or calorimeter's), not
    /// the table's; zero for a flow without measured values.
    pub at_measured_lhv: f64,
}

impl crate::model::Flow {
    /// Its factors in force at `t`.
    pub fn factors_at(&self, t: i64) -> [f64; 2] {
        self.steps.at(t, self.factors)
    }

    /// Whether any of its heating values are measured: a laboratory's or a calorimeter's.
    pub fn has_measured_lhv(&self) -> bool {
        self.measured_from.is_some() || self.lhv_point.is_some()
    }

    /// Its rows in `[start, end)`, each slot converted at the factors in force then.
    pub fn sum(&self, rows: &[(i64, PointSlot)], start: i64, end: i64) -> FlowSum {
        self.sum_measured(rows, &[], start, end)
    }

    /// The same, where its calorimeter read (`lhv`: the calorimeter point's slots, each its
    /// readings' integral over time) each slot at the mean heating value of the slot. `rows`
    /// are in slot order (as a store reads them): the period's are found by bisection.
    pub fn sum_measured(
        &self,
        rows: &[(i64, PointSlot)],
        lhv: &[(i64, PointSlot)],
        start: i64,
        end: i64,
    ) -> FlowSum {
        let mut sum = FlowSum::default();
        for (t, r) in crate::counter::slots_within(rows, start, end) {
            sum.slot.delta += r.delta;
            sum.slot.covered_ms += r.covered_ms;
            sum.slot.estimated += r.estimated;
            let read = self.calorimeter_at(lhv, *t);
            let factors = read.map_or_else(|| self.factors_at(*t), |f| [f, f]);
            for (b, factor) in factors.into_iter().enumerate() {
                sum.converted[b] += r.delta * factor;
                sum.estimated[b] += r.estimated * factor;
            }
            if read.is_some() || self.measured_from.is_some_and(|from| *t >= from) {
                sum.at_measured_lhv += r.delta;
            }
        }
        sum
    }

    /// kgce per metered unit at the calorimeter's mean reading over slot `t`: its measured
    /// integral over the hours it covered; none where it read nothing (or the flow is own use,
    /// counted nothing).
    fn calorimeter_at(&self, lhv: &[(i64, PointSlot)], t: i64) -> Option<f64> {
        if self.own_use || self.lhv_point.is_none() {
            return None;
        }
        let (_, r) = lhv.get(lhv.binary_search_by_key(&t, |(s, _)| *s).ok()?)?;
        let hours = r.covered_ms as f64 / 3_600_000.0;
        let mean = (r.delta - r.estimated) / hours;
        (r.covered_ms > 0 && mean.is_finite() && mean > 0.0).then(|| mean / self.kj_per_kgce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heating_value_takes_effect_at_its_local_time_or_its_stated_instant() {
        let tz: FixedOffset = "+08:00".parse().unwrap();
        let hv = |from: &str, lhv_kj: f64| HeatingValue {
            from: from.into(),
            lhv_kj,
        };
        let local = hv("2026-03-01 08:00", 3_300.0).checked(tz).unwrap();
        let stated = hv("2026-03-01T00:00:00Z", 3_300.0).checked(tz).unwrap();
        assert_eq!(local, stated, "08:00 in Beijing is midnight UTC");
        assert_eq!(hv("2026-03-01", 3_300.0).checked(tz).unwrap_err().0, "from");
        assert_eq!(
            hv("2026-03-01 08:00", 0.0).checked(tz).unwrap_err().0,
            "lhv_kj"
        );
        assert_eq!(
            hv("2026-03-01 08:00", f64::NAN).checked(tz).unwrap_err().0,
            "lhv_kj"
        );
    }

    #[test]
    fn steps_hold_from_their_instant_until_the_next() {
        let steps = Steps(vec![(100, [1.0, 2.0]), (200, [3.0, 4.0])]);
        assert_eq!(steps.at(99, [0.0, 0.5]), [0.0, 0.5]);
        assert_eq!(steps.at(100, [0.0, 0.5]), [1.0, 2.0]);
        assert_eq!(steps.at(199, [0.0, 0.5]), [1.0, 2.0]);
        assert_eq!(steps.at(10_000, [0.0, 0.5]), [3.0, 4.0]);
        let tz: FixedOffset = "+08:00".parse().unwrap();
        let y2026 = year_start(2026, tz);
        assert_eq!(local_year(y2026, tz), 2026);
        assert_eq!(local_year(y2026 - 1, tz), 2025);
    }
}
