//! The energy-savings verification of one unit: a monthly baseline regressed on output over a
//! baseline period, against a reporting period (see [`super::baseline`]). Months below the
//! reportable completeness are left out of both periods and listed.

use serde::Serialize;

use super::annual::MIN_COMPLETENESS;
use super::baseline::{verify, Interval, Observation, Verification};
use super::{local_midnight, unit_figures, Month, FORMAT_VERSION};
use crate::accounting::{buckets, Period};
use crate::config::Plant;
use crate::store::Reader;

#[derive(Debug, Clone, Serialize)]
pub struct SavingsReport {
    /// "savings"; with [`FORMAT_VERSION`] in `version`.
    pub report: &'static str,
    pub version: u32,
    pub unit: String,
    pub unit_name: String,
    pub baseline_months: Vec<Observation>,
    pub reporting_months: Vec<Observation>,
    /// Months left out: under the reportable completeness, or without output.
    pub excluded: Vec<String>,
    pub verification: Verification,
}

fn month_range(plant: &Plant, from: Month, to: Month) -> anyhow::Result<Vec<(i64, i64)>> {
    let start = local_midnight(plant, from.0, from.1, 1)?;
    let (y, m) = if to.1 == 12 {
        (to.0 + 1, 1)
    } else {
        (to.0, to.1 + 1)
    };
    let end = local_midnight(plant, y, m, 1)?;
    anyhow::ensure!(
        start < end,
        "{}-{:02} is after {}-{:02}",
        from.0,
        from.1,
        to.0,
        to.1
    );
    Ok(buckets(Period::Month, start, end, &plant.calendar))
}

/// Builds the verification of `unit` for the two month ranges (inclusive).
pub fn build(
    plant: &Plant,
    reader: &Reader,
    unit: &str,
    baseline: (Month, Month),
    reporting: (Month, Month),
) -> anyhow::Result<SavingsReport> {
    let u = plant
        .unit(unit)
        .ok_or_else(|| anyhow::anyhow!("no unit `{unit}` in the configuration"))?;
    let mut excluded = Vec::new();
    let mut observe = |range: (Month, Month)| -> anyhow::Result<Vec<Observation>> {
        let months = month_range(plant, range.0, range.1)?;
        let figures = unit_figures(plant, reader, u, &months)?;
        Ok(figures
            .into_iter()
            .filter_map(|f| {
                let label = f.start.get(..7).unwrap_or(&f.start).to_owned();
                if f.completeness < MIN_COMPLETENESS || f.product_t <= 0.0 {
                    excluded.push(label);
                    return None;
                }
                Some(Observation {
                    label,
                    energy_kgce: f.energy_kgce,
                    variables: vec![f.product_t],
                })
            })
            .collect())
    };
    let baseline_months = observe(baseline)?;
    let reporting_months = observe(reporting)?;
    let verification = verify(
        &["output_t".to_owned()],
        &baseline_months,
        &reporting_months,
        Interval::Monthly,
    )?;
    Ok(SavingsReport {
        report: "savings",
        version: FORMAT_VERSION,
        unit: u.id.clone(),
        unit_name: u.name.clone(),
        baseline_months,
        reporting_months,
        excluded,
        verification,
    })
}
