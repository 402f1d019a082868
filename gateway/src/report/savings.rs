//! The energy-savings verification of one unit: a monthly baseline regressed on output over a
//! baseline period, against a reporting period (see [`super::baseline`]). Months below the
//! reportable completeness are left out of both periods and listed.

use serde::Serialize;

use super::annual::{
    meter_quality, sequence_quality, MeterQuality, SequenceQuality, MIN_COMPLETENESS,
};
use super::InvalidRequest;
use super::{months_span, Inputs, Month, FORMAT_VERSION};
use ems_energy::baseline::{verify, Interval, Observation, Verification};
use ems_energy::calendar::{buckets, Period};
use ems_energy::figures::unit_figures;
use ems_energy::Plant;

#[derive(Debug, Clone, Serialize)]
pub struct SavingsReport {
    /// "savings"; with [`FORMAT_VERSION`] in `version`.
    pub report: &'static str,
    pub version: u32,
    pub unit: String,
    pub unit_name: String,
    pub baseline_months: Vec<Observation>,
    pub reporting_months: Vec<Observation>,
    /// Months left out: under the reportable completeness (the unit's or a variable's meter),
    /// or without output.
    pub excluded: Vec<String>,
    pub verification: Verification,
    /// The unit's meter points month by month over both periods, and the devices' ledgers.
    pub data_quality: SavingsQuality,
}

#[derive(Debug, Clone, Serialize)]
pub struct SavingsQuality {
    pub min_completeness: f64,
    pub meters: Vec<MeterQuality>,
    pub sequence: Vec<SequenceQuality>,
}

fn month_range(plant: &Plant, from: Month, to: Month) -> anyhow::Result<Vec<(i64, i64)>> {
    let (start, end) = months_span(plant, from, to)?;
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

/// Builds the verification of `unit` for the two month ranges (inclusive). The baseline is
/// regressed on output and on each of `variables`: meter points (device, point) whose monthly
/// increase is a relevant variable (heating degree-days, ore grade tonnes, ...).
pub fn build(
    inputs: &Inputs,
    unit: &str,
    baseline: (Month, Month),
    reporting: (Month, Month),
    variables: &[(String, String)],
) -> anyhow::Result<SavingsReport> {
    let Inputs {
        plant,
        reader,
        earliest_ms,
        ..
    } = *inputs;
    let u = plant
        .unit(unit)
        .ok_or_else(|| InvalidRequest(format!("no unit `{unit}` in the configuration")))?;
    inputs.check_months(baseline.0, baseline.1)?;
    inputs.check_months(reporting.0, reporting.1)?;
    let mut excluded = Vec::new();
    let mut observe = |range: (Month, Month)| -> anyhow::Result<Vec<Observation>> {
        let months = month_range(plant, range.0, range.1)?;
        let figures = unit_figures(plant, reader, u, &months)?;
        // Each variable's increase per month; a month missing part of one is left out too.
        let mut extra: Vec<Vec<(f64, i64)>> = Vec::with_capacity(variables.len());
        for (device, point) in variables {
            let slots =
                reader.point_slots(device, point, months[0].0, months[months.len() - 1].1)?;
            extra.push(
                months
                    .iter()
                    .map(|&(s, e)| {
                        let inside = slots.iter().filter(|(t, _)| (s..e).contains(t));
                        let covered: i64 = inside.clone().map(|(_, r)| r.covered_ms).sum();
                        (inside.map(|(_, r)| r.delta).sum(), covered)
                    })
                    .collect(),
            );
        }
        Ok(figures
            .into_iter()
            .zip(&months)
            .enumerate()
            .filter_map(|(i, (f, &(s, e)))| {
                let var_complete = extra
                    .iter()
                    .all(|v| v[i].1 as f64 >= MIN_COMPLETENESS * (e - s) as f64);
                let label = f.start.get(..7).unwrap_or(&f.start).to_owned();
                if f.completeness < MIN_COMPLETENESS || f.product_t <= 0.0 || !var_complete {
                    excluded.push(label);
                    return None;
                }
                Some(Observation {
                    label,
                    energy_kgce: f.energy_kgce,
                    variables: std::iter::once(f.product_t)
                        .chain(extra.iter().map(|v| v[i].0))
                        .collect(),
                })
            })
            .collect())
    };
    let baseline_months = observe(baseline)?;
    let reporting_months = observe(reporting)?;
    let mut all_months = month_range(plant, baseline.0, baseline.1)?;
    all_months.extend(month_range(plant, reporting.0, reporting.1)?);
    // Whole months: a savings period is judged on months that are over.
    let meters = meter_quality(plant, reader, &all_months, earliest_ms, i64::MAX)?
        .into_iter()
        .filter(|m| {
            u.flows
                .iter()
                .any(|f| f.device == m.device && f.point == m.point)
        })
        .collect();
    let names: Vec<String> = std::iter::once("output_t".to_owned())
        .chain(variables.iter().map(|(d, p)| format!("{d}/{p}")))
        .collect();
    let verification = verify(
        &names,
        &baseline_months,
        &reporting_months,
        Interval::Monthly,
    )
    // The stored months do not support a fit: the request cannot be answered as asked.
    .map_err(|e| InvalidRequest(format!("{e:#}")))?;
    Ok(SavingsReport {
        report: "savings",
        version: FORMAT_VERSION,
        unit: u.id.clone(),
        unit_name: u.name.clone(),
        baseline_months,
        reporting_months,
        excluded,
        verification,
        data_quality: SavingsQuality {
            min_completeness: MIN_COMPLETENESS,
            meters,
            sequence: sequence_quality(plant, reader)?
                .into_iter()
                .filter(|s| u.flows.iter().any(|f| f.device == s.device))
                .collect(),
        },
    })
}
