//! The monthly compliance report: per unit and day, the level reached against the unit's limits
//! and water quota, and every exceedance of the month listed on its own.

use serde::Serialize;

use super::annual::{
    daily_vs_monthly, meter_quality, sequence_quality, DailyVsMonthly, MeterQuality,
    SequenceQuality, MIN_COMPLETENESS,
};
use super::{months_span, Inputs, FORMAT_VERSION};
use ems_energy::balance::EnterpriseEnergy;
use ems_energy::calendar::{buckets, Period};
use ems_energy::figures::unit_figures;
use ems_energy::indicators::Indicator;

#[derive(Debug, Clone, Serialize)]
pub struct ComplianceReport {
    /// "compliance"; with [`FORMAT_VERSION`] in `version`.
    pub report: &'static str,
    pub version: u32,
    pub enterprise: Option<String>,
    /// "YYYY-MM".
    pub month: String,
    /// The enterprise's month from its boundary (GB/T 2589), with how complete its boundary
    /// meters are; null when it declares no boundary meters.
    pub enterprise_energy: Option<EnterpriseMonth>,
    /// Each site's water intake over the month per tonne of its product, judged on its quota
    /// (GB/T 18916); empty when no site declares its intake.
    pub sites_water: Vec<ems_energy::balance::SiteWater>,
    pub units: Vec<UnitMonth>,
    pub data_quality: MonthQuality,
}

/// The enterprise's comprehensive energy over the month, drawn from its boundary.
#[derive(Debug, Clone, Serialize)]
pub struct EnterpriseMonth {
    #[serde(flatten)]
    pub energy: EnterpriseEnergy,
    /// The weakest boundary meter's coverage of the month.
    pub completeness: f64,
    pub reportable: bool,
}

/// The data behind the month: each meter point's completeness and the devices' ledgers.
#[derive(Debug, Clone, Serialize)]
pub struct MonthQuality {
    pub min_completeness: f64,
    pub meters: Vec<MeterQuality>,
    pub sequence: Vec<SequenceQuality>,
    /// Each unit's month against the sum of its days.
    pub daily_vs_monthly: Vec<DailyVsMonthly>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnitMonth {
    pub id: String,
    pub name: String,
    /// The whole month.
    pub month: Indicator,
    pub days: Vec<Indicator>,
    /// Days judged and found above a limit or the water quota: indicative (limits judge a
    /// reporting period, month or year; the month's own judgement is in `month`).
    pub exceedances: Vec<Exceedance>,
    /// Days with output that no limit could judge (an input missing), with the reason.
    pub unjudged_days: Vec<Unjudged>,
    pub days_judged: usize,
    pub days_within_limits: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Exceedance {
    pub day: String,
    /// The limit's or the water quota's code.
    pub code: String,
    pub standard: String,
    pub value: f64,
    /// The threshold exceeded: the corrected limit of the unit's level (3 existing, 2 new), or
    /// the general water quota.
    pub threshold: f64,
    pub unit: &'static str,
    /// A day's figure: a warning, not a legal exceedance.
    pub indicative: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unjudged {
    pub day: String,
    pub reasons: Vec<String>,
}

/// Builds the report for the local month `(year, month)`; `now_ms` bounds the completeness of a
/// month in progress.
pub fn build(inputs: &Inputs, (year, month): (i32, u32)) -> anyhow::Result<ComplianceReport> {
    let Inputs {
        plant,
        reader,
        now_ms,
        earliest_ms,
    } = *inputs;
    inputs.check_months((year, month), (year, month))?;
    let (start, end) = months_span(plant, (year, month), (year, month))?;
    let days = buckets(Period::Day, start, end, &plant.calendar);
    let mut units = Vec::with_capacity(plant.units.len());
    for unit in &plant.units {
        let month_fig = unit_figures(plant, reader, unit, &[(start, end)])?
            .pop()
            .expect("one period asked, one given");
        let day_figs = unit_figures(plant, reader, unit, &days)?;
        let mut exceedances = Vec::new();
        let mut unjudged_days = Vec::new();
        let (mut judged, mut within) = (0, 0);
        for d in &day_figs {
            let day = d.start.get(..10).unwrap_or(&d.start).to_owned();
            if d.within_limit.is_some() {
                judged += 1;
            }
            if d.within_limit == Some(true)
                && d.water_quota
                    .as_ref()
                    .is_none_or(|w| w.grade != "above_quota")
            {
                within += 1;
            }
            for j in d.limits.iter().filter(|j| !j.within_limit) {
                exceedances.push(Exceedance {
                    day: day.clone(),
                    code: j.code.clone(),
                    standard: j.standard.clone(),
                    value: j.value,
                    threshold: j.thresholds[usize::from(j.limit_level.clamp(1, 3)) - 1],
                    unit: j.indicator.unit_label(),
                    indicative: d.indicative,
                });
            }
            if let Some(w) = d.water_quota.as_ref().filter(|w| w.grade == "above_quota") {
                exceedances.push(Exceedance {
                    day: day.clone(),
                    code: w.code.clone(),
                    standard: w.standard.clone(),
                    value: w.value,
                    threshold: w.general,
                    unit: "m3/t",
                    indicative: d.indicative,
                });
            }
            if d.product_t > 0.0 && !d.limit_errors.is_empty() {
                unjudged_days.push(Unjudged {
                    day,
                    reasons: d.limit_errors.clone(),
                });
            }
        }
        units.push(UnitMonth {
            id: unit.id.clone(),
            name: unit.name.clone(),
            month: month_fig,
            days: day_figs,
            exceedances,
            unjudged_days,
            days_judged: judged,
            days_within_limits: within,
        });
    }
    let daily_vs_monthly = units
        .iter()
        .map(|u| daily_vs_monthly(&u.id, &u.month, &u.days))
        .collect();
    let (month_balance, sites_water) = super::period_balance(plant, reader, (start, end))?;
    let enterprise_energy = month_balance
        .filter(|_| !plant.boundary.is_empty())
        .map(|b| EnterpriseMonth {
            energy: b.enterprise,
            completeness: b.completeness,
            reportable: b.completeness >= MIN_COMPLETENESS,
        });
    Ok(ComplianceReport {
        report: "compliance",
        version: FORMAT_VERSION,
        enterprise: plant.sole_enterprise().map(|e| e.name.clone()),
        month: format!("{year}-{month:02}"),
        enterprise_energy,
        sites_water,
        units,
        data_quality: MonthQuality {
            min_completeness: MIN_COMPLETENESS,
            meters: meter_quality(plant, reader, &[(start, end)], earliest_ms, now_ms)?,
            sequence: sequence_quality(plant, reader)?,
            daily_vs_monthly,
        },
    })
}
