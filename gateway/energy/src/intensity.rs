//! Energy per 10 000 yuan (单位产值综合能耗 and 单位增加值综合能耗, GB/T 2589-2020 section 3):
//! an enterprise's comprehensive energy over its output value and its value added, for a
//! set of months, and the change on the previous year against the enterprise's target (the
//! energy-intensity reduction its province assigns). Values come in 10 000 yuan (万元), month by
//! month, from the configuration or a CSV file; a month without them leaves the figure
//! undrawn and says which, never guessed.

use serde::{Deserialize, Serialize};

/// One month's output value and value added, in 10 000 yuan (万元), at the prices the
/// enterprise reports in (comparable prices for the year-on-year change).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonthlyValue {
    /// "YYYY-MM", local calendar month.
    pub month: String,
    /// Gross industrial output value (工业总产值), 10 000 yuan.
    pub output_value: f64,
    /// Industrial value added (工业增加值), 10 000 yuan; where it is reported.
    #[serde(default)]
    pub value_added: Option<f64>,
}

impl MonthlyValue {
    /// What is wrong with it, if anything: (field, reason).
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        let month_ok = self.month.len() == 7
            && self.month.as_bytes()[4] == b'-'
            && self.month[..4].parse::<u16>().is_ok()
            && self.month[5..]
                .parse::<u8>()
                .is_ok_and(|m| (1..=12).contains(&m));
        if !month_ok {
            return Err(("month", "a month is written YYYY-MM"));
        }
        if !(self.output_value.is_finite() && self.output_value > 0.0) {
            return Err(("output_value", "10 000 yuan, a number above zero"));
        }
        if self
            .value_added
            .is_some_and(|v| !(v.is_finite() && v > 0.0))
        {
            return Err(("value_added", "10 000 yuan, a number above zero"));
        }
        Ok(())
    }
}

/// Comprehensive energy over output value and value added for a set of months.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Intensity {
    /// Comprehensive energy over the months, tce.
    pub tce: f64,
    /// Summed over the months, 10 000 yuan; null when a month has none.
    pub output_value: Option<f64>,
    pub value_added: Option<f64>,
    /// tce per 10 000 yuan.
    pub tce_per_10k_yuan_output: Option<f64>,
    pub tce_per_10k_yuan_value_added: Option<f64>,
    /// Months ("YYYY-MM") without values, which leave the figures undrawn.
    pub months_without_values: Vec<String>,
}

/// The intensity of `tce` spent over `months` ("YYYY-MM"), from `values`.
pub fn intensity(tce: f64, months: &[String], values: &[MonthlyValue]) -> Intensity {
    let mut missing = Vec::new();
    let (mut output, mut added, mut added_complete) = (0.0, 0.0, true);
    for m in months {
        match values.iter().find(|v| &v.month == m) {
            Some(v) => {
                output += v.output_value;
                match v.value_added {
                    Some(a) => added += a,
                    None => added_complete = false,
                }
            }
            None => missing.push(m.clone()),
        }
    }
    let complete = missing.is_empty() && !months.is_empty();
    let output_value = complete.then_some(output);
    let value_added = (complete && added_complete).then_some(added);
    Intensity {
        tce,
        output_value,
        value_added,
        tce_per_10k_yuan_output: output_value.map(|v| tce / v),
        tce_per_10k_yuan_value_added: value_added.map(|v| tce / v),
        months_without_values: missing,
    }
}

/// The year's intensity against the previous year's, judged against the target reduction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct YearOnYear {
    pub this_year: Intensity,
    pub previous_year: Intensity,
    /// Which intensity the change is drawn on: "value_added" where both years have it (the
    /// figure the energy-intensity targets are set on), else "output_value".
    pub basis: Option<&'static str>,
    /// Change on the previous year, percent (negative: less energy per 10 000 yuan).
    pub change_pct: Option<f64>,
    /// The target: at least this reduction, percent.
    pub target_reduction_pct: Option<f64>,
    /// Whether the change reaches the target; null when it is not judged.
    pub target_met: Option<bool>,
    /// Why it is not judged, when it is not.
    pub not_judged: Option<String>,
}

/// Compares the two years. `previous_complete` says whether the previous year's energy is
/// drawn from complete data: a change against a partly recorded year is not judged.
pub fn year_on_year(
    this_year: Intensity,
    previous_year: Intensity,
    previous_complete: bool,
    target_reduction_pct: Option<f64>,
) -> YearOnYear {
    let pairs = [
        (
            "value_added",
            this_year.tce_per_10k_yuan_value_added,
            previous_year.tce_per_10k_yuan_value_added,
        ),
        (
            "output_value",
            this_year.tce_per_10k_yuan_output,
            previous_year.tce_per_10k_yuan_output,
        ),
    ];
    let drawn = pairs
        .iter()
        .find_map(|&(basis, now, before)| match (now, before) {
            (Some(n), Some(b)) if b > 0.0 => Some((basis, 100.0 * (n - b) / b)),
            _ => None,
        });
    let not_judged = if !this_year.months_without_values.is_empty() {
        Some(format!(
            "no output value for {}",
            this_year.months_without_values.join(", ")
        ))
    } else if !previous_year.months_without_values.is_empty() {
        Some(format!(
            "no output value for the previous year's {}",
            previous_year.months_without_values.join(", ")
        ))
    } else if !previous_complete {
        Some("the previous year's energy is not completely recorded".to_owned())
    } else if target_reduction_pct.is_none() {
        Some("no target (intensity_target_pct)".to_owned())
    } else {
        None
    };
    let judged = not_judged.is_none();
    YearOnYear {
        basis: drawn.map(|(b, _)| b),
        change_pct: drawn.map(|(_, c)| c),
        target_met: match (judged, drawn, target_reduction_pct) {
            (true, Some((_, change)), Some(target)) => Some(change <= -target),
            _ => None,
        },
        target_reduction_pct,
        not_judged,
        this_year,
        previous_year,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn months(year: i32) -> Vec<String> {
        (1..=12).map(|m| format!("{year}-{m:02}")).collect()
    }

    fn values(year: i32, output: f64, added: Option<f64>) -> Vec<MonthlyValue> {
        months(year)
            .into_iter()
            .map(|month| MonthlyValue {
                month,
                output_value: output,
                value_added: added,
            })
            .collect()
    }

    #[test]
    fn a_year_per_10_000_yuan_and_its_change_against_the_target() {
        // 2024: 120 000 tce over 12 x 50 000 = 600 000 (10 000 yuan) of output value, 12 x
        // 10 000 of value added: 0.2 and 1.0 tce per 10 000 yuan. 2025: 114 000 tce over the
        // same value added: 0.95, a 5 % reduction, against a 3 % target: met.
        let mut all = values(2024, 50_000.0, Some(10_000.0));
        all.extend(values(2025, 50_000.0, Some(10_000.0)));
        let before = intensity(120_000.0, &months(2024), &all);
        assert_eq!(before.tce_per_10k_yuan_output, Some(0.2));
        assert_eq!(before.tce_per_10k_yuan_value_added, Some(1.0));
        let now = intensity(114_000.0, &months(2025), &all);
        let y = year_on_year(now.clone(), before.clone(), true, Some(3.0));
        assert_eq!(y.basis, Some("value_added"));
        assert!((y.change_pct.unwrap() + 5.0).abs() < 1e-9);
        assert_eq!((y.target_met, y.not_judged.as_deref()), (Some(true), None));
        // A 6 % target is missed.
        assert_eq!(
            year_on_year(now.clone(), before.clone(), true, Some(6.0)).target_met,
            Some(false)
        );
        // A partly recorded previous year is not judged, and says why.
        let y = year_on_year(now, before, false, Some(3.0));
        assert_eq!(y.target_met, None);
        assert!(y.not_judged.unwrap().contains("not completely recorded"));
    }

    #[test]
    fn a_month_without_values_leaves_the_figure_undrawn_and_named() {
        let mut all = values(2025, 50_000.0, None);
        all.retain(|v| v.month != "2025-07");
        let i = intensity(100.0, &months(2025), &all);
        assert_eq!(i.output_value, None);
        assert_eq!(i.tce_per_10k_yuan_output, None);
        assert_eq!(i.months_without_values, ["2025-07"]);
        let full = intensity(100.0, &months(2024), &values(2024, 1.0, None));
        let y = year_on_year(i, full, true, Some(3.0));
        assert_eq!(y.target_met, None);
        assert!(y.not_judged.unwrap().contains("2025-07"));
        // Without value added, the change is drawn on output value.
        let a = intensity(110.0, &months(2024), &values(2024, 1.0, None));
        let b = intensity(100.0, &months(2024), &values(2024, 1.0, None));
        let y = year_on_year(b, a, true, Some(3.0));
        assert_eq!(y.basis, Some("output_value"));
        assert_eq!(y.target_met, Some(true));
    }

    #[test]
    fn bad_values_are_named() {
        let v = |month: &str, output_value: f64, value_added: Option<f64>| MonthlyValue {
            month: month.into(),
            output_value,
            value_added,
        };
        assert_eq!(v("2025-13", 1.0, None).check().unwrap_err().0, "month");
        assert_eq!(v("25-01", 1.0, None).check().unwrap_err().0, "month");
        assert_eq!(
            v("2025-01", -1.0, None).check().unwrap_err().0,
            "output_value"
        );
        assert_eq!(
            v("2025-01", 1.0, Some(f64::NAN)).check().unwrap_err().0,
            "value_added"
        );
        assert!(v("2025-01", 1.0, Some(2.0)).check().is_ok());
    }
}
