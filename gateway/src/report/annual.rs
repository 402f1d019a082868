//! The enterprise's annual energy utilisation report (能源利用状况报告): energy by carrier,
//! comprehensive energy, each unit's output and unit energy against its limits with the level
//! reached, water against quotas, energy recovered, monthly tables, and the data-quality
//! section every report carries.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{year_periods, Inputs, FORMAT_VERSION};
use crate::view::Reader;
use ems_energy::balance::{enterprise_balance, Balance};
use ems_energy::calendar::{buckets, local_rfc3339, Period};
use ems_energy::figures::{point_completeness, unit_figures};
use ems_energy::indicators::Indicator;
use ems_energy::intensity::{intensity, year_on_year, YearOnYear};
use ems_energy::model::{Function, Role};
use ems_energy::Plant;

/// Completeness a period needs to be reportable (national online-monitoring rules).
pub const MIN_COMPLETENESS: f64 = 0.9;
/// Largest deviation between the sum of a month's daily figures and its monthly figure.
pub const MAX_DAILY_MONTHLY_DEVIATION_PCT: f64 = 5.0;

#[derive(Debug, Clone, Serialize)]
pub struct AnnualReport {
    /// "annual"; with [`FORMAT_VERSION`] in `version`.
    pub report: &'static str,
    pub version: u32,
    pub enterprise: Option<String>,
    pub enterprise_code: Option<String>,
    pub year: i32,
    pub start: String,
    pub end: String,
    pub generated_at: String,
    pub totals: Totals,
    /// The enterprise's totals month by month.
    pub months: Vec<MonthTotals>,
    pub units: Vec<UnitSection>,
    /// The year's energy balance table (能源平衡表) drawn from the enterprise boundary, with the
    /// by-product gas balance and captive power in its carrier rows; null when the plant
    /// declares no boundary meters.
    pub balance: Option<Balance>,
    /// Comprehensive energy per 10 000 yuan of output value and value added, this year and
    /// last, with the change against the enterprise's target; null when the enterprise gives
    /// no monthly values and no target.
    pub intensity: Option<YearOnYear>,
    /// Each site's water intake over the year per tonne of its product, judged on its quota
    /// (GB/T 18916 judges the site, not a unit); empty when no site declares its intake.
    pub sites_water: Vec<ems_energy::balance::SiteWater>,
    pub data_quality: DataQuality,
}

/// Where the enterprise's comprehensive energy is drawn from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrawnFrom {
    /// The boundary meters (`[[boundary]]`): purchases + stock decrease - exports -
    /// non-production use, as GB/T 2589 draws it.
    Boundary,
    /// No boundary meters are declared: the sum of the units, which leaves out losses, flaring
    /// and unmetered users (said so in the report).
    #[default]
    SumOfUnits,
}

/// The enterprise's year: comprehensive energy from its boundary (or, without boundary meters,
/// the units' sum, said in `drawn_from`), and the units' consumption and recovery.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub drawn_from: DrawnFrom,
    /// Summed over the units.
    pub consumed_tce: f64,
    pub recovered_tce: f64,
    /// Comprehensive energy on the plant's electricity basis, drawn as `drawn_from` says.
    pub comprehensive_tce: f64,
    /// The production units' (not non-production) consumed minus recovered: what summing the
    /// units gives.
    pub units_sum_tce: f64,
    /// The same on both electricity bases, side by side: equivalent (当量值) and equal value
    /// (等价值).
    pub comprehensive_equivalent_tce: f64,
    pub comprehensive_equal_value_tce: f64,
    pub water_m3: f64,
    pub by_carrier: Vec<CarrierTotal>,
}

/// One carrier (and role: consumed or recovered) over the year.
#[derive(Debug, Clone, Serialize)]
pub struct CarrierTotal {
    pub carrier: String,
    pub role: Role,
    pub unit: String,
    /// Physical quantity in `unit`.
    pub quantity: f64,
    /// Signed as in the unit figures: recovered energy is negative.
    pub kgce: f64,
    /// The coefficient the year averaged, kgce per `unit` (each hour at the figure in force
    /// then: a year's own equal value of electricity, a laboratory's heating value); none
    /// without a quantity.
    pub kgce_per_unit: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MonthTotals {
    pub start: String,
    pub consumed_tce: f64,
    pub recovered_tce: f64,
    pub comprehensive_tce: f64,
    /// Both bases, drawn as the year's totals are.
    pub comprehensive_equivalent_tce: f64,
    pub comprehensive_equal_value_tce: f64,
    pub units_sum_tce: f64,
    pub water_m3: f64,
    /// Comprehensive energy per 10 000 yuan of output value and of value added; null where the
    /// month has no values.
    pub tce_per_10k_yuan_output: Option<f64>,
    pub tce_per_10k_yuan_value_added: Option<f64>,
}

/// A process unit: its year and its months, each with output, unit energy, limits and water.
#[derive(Debug, Clone, Serialize)]
pub struct UnitSection {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub year: Indicator,
    pub months: Vec<Indicator>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataQuality {
    pub min_completeness: f64,
    pub max_daily_monthly_deviation_pct: f64,
    /// Completeness of every meter point the units and the boundary use, month by month.
    pub meters: Vec<MeterQuality>,
    /// The sequence ledger of every device: duplicates dropped, numbers missing or lost.
    pub sequence: Vec<SequenceQuality>,
    /// Each unit's months: the sum of its daily figures against the monthly figure.
    pub daily_vs_monthly: Vec<DailyVsMonthly>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeterQuality {
    pub device: String,
    pub point: String,
    pub months: Vec<MeterMonth>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeterMonth {
    pub start: String,
    /// Share of the month (up to now) covered by good samples; null for a month not begun.
    pub completeness: Option<f64>,
    pub reportable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SequenceQuality {
    pub device: String,
    pub messages: i64,
    pub duplicates: i64,
    pub missing: i64,
    pub lost: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DailyVsMonthly {
    pub unit: String,
    pub start: String,
    pub month_kgce: f64,
    pub sum_of_days_kgce: f64,
    /// |days - month| / |month|, percent; null when the month is zero.
    pub deviation_pct: Option<f64>,
    pub within_limit: bool,
}

/// Builds the report for the local calendar year `year`. `now_ms` bounds completeness (months
/// not over yet count up to now); `progress(done, total)` is told after each unit.
pub fn build(
    inputs: &Inputs,
    year: i32,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<AnnualReport> {
    let Inputs {
        plant,
        reader,
        now_ms,
        earliest_ms,
    } = *inputs;
    inputs.check_months((year, 1), (year, 12))?;
    let ((start, end), months) = year_periods(plant, year)?;
    let days = buckets(Period::Day, start, end, &plant.calendar);
    let steps = plant.units.len() + 1;
    let mut totals = Totals::default();
    let mut carriers: BTreeMap<(String, String, String), (Role, f64, f64)> = BTreeMap::new();
    let mut month_totals: Vec<MonthTotals> = months
        .iter()
        .map(|&(s, _)| MonthTotals {
            start: local_rfc3339(s, plant.utc_offset()),
            consumed_tce: 0.0,
            recovered_tce: 0.0,
            comprehensive_tce: 0.0,
            comprehensive_equivalent_tce: 0.0,
            comprehensive_equal_value_tce: 0.0,
            units_sum_tce: 0.0,
            water_m3: 0.0,
            tce_per_10k_yuan_output: None,
            tce_per_10k_yuan_value_added: None,
        })
        .collect();
    let mut units = Vec::with_capacity(plant.units.len());
    let mut daily_vs_monthly = Vec::new();
    for (i, unit) in plant.units.iter().enumerate() {
        let year_fig = unit_figures(plant, reader, unit, &[(start, end)])?
            .pop()
            .expect("one period asked, one given");
        let month_figs = unit_figures(plant, reader, unit, &months)?;
        let day_figs = unit_figures(plant, reader, unit, &days)?;
        totals.consumed_tce += year_fig.consumed_kgce / 1000.0;
        totals.recovered_tce += year_fig.recovered_kgce / 1000.0;
        // Non-production users are outside the comprehensive energy (GB/T 2589).
        let production = unit.function != Function::NonProduction;
        if production {
            totals.comprehensive_tce += year_fig.energy_kgce / 1000.0;
            totals.units_sum_tce += year_fig.energy_kgce / 1000.0;
            totals.comprehensive_equivalent_tce += year_fig.bases.equivalent.energy_kgce / 1000.0;
            totals.comprehensive_equal_value_tce += year_fig.bases.equal_value.energy_kgce / 1000.0;
        }
        totals.water_m3 += year_fig.water_m3;
        for c in &year_fig.carriers {
            if matches!(c.role, Role::Consumed | Role::Recovered) {
                let e = carriers
                    .entry((c.carrier.clone(), format!("{:?}", c.role), c.unit.clone()))
                    .or_insert((c.role, 0.0, 0.0));
                e.1 += c.quantity;
                e.2 += c.kgce;
            }
        }
        for (m, (t, fig)) in month_totals.iter_mut().zip(&month_figs).enumerate() {
            t.consumed_tce += fig.consumed_kgce / 1000.0;
            t.recovered_tce += fig.recovered_kgce / 1000.0;
            if production {
                t.comprehensive_tce += fig.energy_kgce / 1000.0;
                t.comprehensive_equivalent_tce += fig.bases.equivalent.energy_kgce / 1000.0;
                t.comprehensive_equal_value_tce += fig.bases.equal_value.energy_kgce / 1000.0;
                t.units_sum_tce += fig.energy_kgce / 1000.0;
            }
            t.water_m3 += fig.water_m3;
            let (ms, me) = months[m];
            let month_days: Vec<Indicator> = days
                .iter()
                .zip(&day_figs)
                .filter(|((ds, _), _)| *ds >= ms && *ds < me)
                .map(|(_, d)| d.clone())
                .collect();
            daily_vs_monthly.push(self::daily_vs_monthly(&unit.id, fig, &month_days));
        }
        units.push(UnitSection {
            id: unit.id.clone(),
            name: unit.name.clone(),
            kind: unit.kind.clone(),
            year: year_fig,
            months: month_figs,
        });
        progress(i + 1, steps);
    }
    totals.by_carrier = carriers
        .into_iter()
        .map(
            |((carrier, _, unit), (role, quantity, kgce))| CarrierTotal {
                carrier,
                role,
                unit,
                quantity,
                kgce,
                kgce_per_unit: (quantity != 0.0).then(|| (kgce / quantity).abs()),
            },
        )
        .collect();
    // The enterprise from its boundary, where it has boundary meters: it replaces the units'
    // sum in the totals, year and months.
    let (year_balance, sites_water) = super::period_balance(plant, reader, (start, end))?;
    let balance = if plant.boundary.is_empty() {
        None
    } else {
        let month_balances = enterprise_balance(plant, reader, &months)?;
        for (t, b) in month_totals.iter_mut().zip(&month_balances) {
            t.comprehensive_tce = b.enterprise.energy_kgce / 1000.0;
            t.comprehensive_equivalent_tce = b.enterprise.equivalent_kgce / 1000.0;
            t.comprehensive_equal_value_tce = b.enterprise.equal_value_kgce / 1000.0;
        }
        if let Some(b) = &year_balance {
            totals.drawn_from = DrawnFrom::Boundary;
            totals.comprehensive_tce = b.enterprise.energy_kgce / 1000.0;
            totals.comprehensive_equivalent_tce = b.enterprise.equivalent_kgce / 1000.0;
            totals.comprehensive_equal_value_tce = b.enterprise.equal_value_kgce / 1000.0;
        }
        year_balance
    };
    let enterprise = plant.sole_enterprise();
    let values = enterprise.map_or(&[][..], |e| &e.monthly_values[..]);
    for (m, t) in month_totals.iter_mut().enumerate() {
        let i = intensity(t.comprehensive_tce, &[month_name(year, m)], values);
        t.tce_per_10k_yuan_output = i.tce_per_10k_yuan_output;
        t.tce_per_10k_yuan_value_added = i.tce_per_10k_yuan_value_added;
    }
    let target = enterprise.and_then(|e| e.intensity_target_pct);
    let intensity = if values.is_empty() && target.is_none() {
        None
    } else {
        let names = |y: i32| (0..12).map(|m| month_name(y, m)).collect::<Vec<_>>();
        let ((previous_start, _), _) = year_periods(plant, year - 1)?;
        let (previous_tce, previous_complete) =
            comprehensive_tce(plant, reader, (previous_start, start))?;
        Some(year_on_year(
            self::intensity(totals.comprehensive_tce, &names(year), values),
            self::intensity(previous_tce, &names(year - 1), values),
            previous_complete,
            target,
        ))
    };
    let data_quality = DataQuality {
        min_completeness: MIN_COMPLETENESS,
        max_daily_monthly_deviation_pct: MAX_DAILY_MONTHLY_DEVIATION_PCT,
        meters: meter_quality(plant, reader, &months, earliest_ms, now_ms)?,
        sequence: sequence_quality(plant, reader)?,
        daily_vs_monthly,
    };
    progress(steps, steps);
    Ok(AnnualReport {
        report: "annual",
        version: FORMAT_VERSION,
        enterprise: enterprise.map(|e| e.name.clone()),
        enterprise_code: enterprise.and_then(|e| e.code.clone()),
        year,
        start: local_rfc3339(start, plant.utc_offset()),
        end: local_rfc3339(end, plant.utc_offset()),
        generated_at: local_rfc3339(now_ms, plant.utc_offset()),
        totals,
        months: month_totals,
        units,
        balance,
        intensity,
        sites_water,
        data_quality,
    })
}

/// "YYYY-MM" of month `m` (zero-based) of `year`.
fn month_name(year: i32, m: usize) -> String {
    format!("{year}-{:02}", m + 1)
}

/// The enterprise's comprehensive energy (tce, the plant's basis) over `span`, drawn as the
/// year's totals are (its boundary, else its production units), and whether its data are
/// complete enough to report.
fn comprehensive_tce(
    plant: &Plant,
    reader: &Reader,
    span: (i64, i64),
) -> anyhow::Result<(f64, bool)> {
    if !plant.boundary.is_empty() {
        let b = enterprise_balance(plant, reader, &[span])?
            .pop()
            .expect("one period asked, one given");
        return Ok((
            b.enterprise.energy_kgce / 1000.0,
            b.completeness >= MIN_COMPLETENESS,
        ));
    }
    let (mut tce, mut complete) = (0.0, true);
    for unit in plant
        .units
        .iter()
        .filter(|u| u.function != Function::NonProduction)
    {
        let f = unit_figures(plant, reader, unit, &[span])?
            .pop()
            .expect("one period asked, one given");
        tce += f.energy_kgce / 1000.0;
        complete &= f.completeness >= MIN_COMPLETENESS;
    }
    Ok((tce, complete))
}

/// A month's energy against the sum of its days' (the 5 % rule of the online-monitoring upload).
pub(crate) fn daily_vs_monthly(
    unit: &str,
    month: &Indicator,
    days: &[Indicator],
) -> DailyVsMonthly {
    let sum_of_days: f64 = days.iter().map(|d| d.energy_kgce).sum();
    let deviation_pct = (month.energy_kgce != 0.0)
        .then(|| 100.0 * (sum_of_days - month.energy_kgce).abs() / month.energy_kgce.abs());
    DailyVsMonthly {
        unit: unit.to_owned(),
        start: month.start.clone(),
        month_kgce: month.energy_kgce,
        sum_of_days_kgce: sum_of_days,
        deviation_pct,
        within_limit: deviation_pct.is_none_or(|d| d <= MAX_DAILY_MONTHLY_DEVIATION_PCT),
    }
}

/// The sequence ledger of every device behind the plant's figures (an enterprise's plant: its
/// own devices, never another's of the same gateway).
pub(crate) fn sequence_quality(
    plant: &Plant,
    reader: &Reader,
) -> anyhow::Result<Vec<SequenceQuality>> {
    let devices: std::collections::HashSet<&str> =
        plant.flows().map(|f| f.device.as_str()).collect();
    Ok(reader
        .devices()?
        .into_iter()
        .filter(|d| devices.contains(d.id.as_str()))
        .map(|d| SequenceQuality {
            device: d.id,
            messages: d.messages,
            duplicates: d.duplicates,
            missing: d.missing,
            lost: d.lost,
        })
        .collect())
}

/// Completeness of every meter point the units use, for each of `months` (up to `now_ms`).
pub(crate) fn meter_quality(
    plant: &Plant,
    reader: &Reader,
    months: &[(i64, i64)],
    earliest_ms: i64,
    now_ms: i64,
) -> anyhow::Result<Vec<MeterQuality>> {
    let points = plant.read_points();
    let (Some(first), Some(last)) = (months.first(), months.last()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(points.len());
    for (device, point) in points {
        let slots = reader.point_slots(&device, &point, first.0, last.1)?;
        let months = months
            .iter()
            .map(|&(s, e)| {
                let completeness = point_completeness(&slots, (s, e), earliest_ms, now_ms);
                MeterMonth {
                    start: local_rfc3339(s, plant.utc_offset()),
                    completeness,
                    reportable: completeness.is_some_and(|c| c >= MIN_COMPLETENESS),
                }
            })
            .collect();
        out.push(MeterQuality {
            device,
            point,
            months,
        });
    }
    Ok(out)
}
