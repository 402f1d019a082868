//! A unit's figures over a period from its flows' slots: comprehensive energy, output, unit
//! energy, electricity, water, completeness, the estimated share, and the judgement against
//! its limits with their corrections.

use std::collections::BTreeMap;

use chrono::FixedOffset;
use serde::Serialize;

use crate::calendar::local;
use crate::counter::PointSlot;
use crate::limits::{Figure, InputValue, Judgement, WaterJudgement};
use crate::model::{CorrectionConfig, Role, Unit};

/// Faraday's law for aluminium: 26.98 g/mol over 3 electrons at 26.80 A-h each, 0.3356 kg of
/// metal per kA-h through one cell at 100 % current efficiency.
const FARADAY_KG_PER_KAH: f64 = 0.3356;

/// Completeness a period needs to be reportable (national online-monitoring data quality, >= 90 %).
pub const REPORTABLE_COMPLETENESS: f64 = 0.9;

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
    /// Burnt behind the unit's own net meter: shown, counted nothing (`kgce` 0).
    pub own_use: bool,
    /// The coefficient the period averaged, kgce per metered unit (its hours each at the
    /// figure in force: a year's own, a measured heating value); none without a quantity.
    pub kgce_per_unit: Option<f64>,
    /// For a flow with measured heating values (a laboratory's or a calorimeter's): the share
    /// of its quantity counted at them, the rest at `lhv_kj` or the table's figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_lhv_share: Option<f64>,
}

/// Comprehensive energy on one electricity basis.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct BasisFigure {
    pub energy_kgce: f64,
    pub kgce_per_t: Option<f64>,
    /// The electricity consumed's coefficient on this basis, averaged over the period (on the
    /// equal value, each year's own figure where the data file has one).
    pub electricity_kgce_per_kwh: Option<f64>,
}

/// Comprehensive energy on both electricity bases side by side, whichever the plant headlines.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Bases {
    /// 当量值: electricity at its heat content, 0.1229 kgce/kWh.
    pub equivalent: BasisFigure,
    /// 等价值: electricity at the coal it took to generate.
    pub equal_value: BasisFigure,
}

impl Bases {
    pub fn of(&self, basis: crate::coefficients::ElectricityBasis) -> &BasisFigure {
        match basis {
            crate::coefficients::ElectricityBasis::Equivalent => &self.equivalent,
            crate::coefficients::ElectricityBasis::Equal => &self.equal_value,
        }
    }
}

/// A unit's figures over one period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Indicator {
    pub start: String,
    pub end: String,
    /// Comprehensive energy: consumed minus recovered, kgce, on the plant's electricity basis
    /// (`[accounting] electricity`); both bases are in `bases`.
    pub energy_kgce: f64,
    pub consumed_kgce: f64,
    pub recovered_kgce: f64,
    pub product_t: f64,
    pub kgce_per_t: Option<f64>,
    /// Electricity the unit draws, kWh, and per tonne: gross, as the limit standards count it
    /// (GB 16780 clinker comprehensive electricity, GB 21346 potline AC power). Power generated
    /// inside the boundary (TRT, waste-heat power) is credited in the unit's energy, never netted
    /// out of its electricity.
    pub electricity_kwh: f64,
    pub kwh_per_t: Option<f64>,
    /// Electricity generated inside the boundary and credited (TRT, waste-heat power), kWh.
    pub electricity_generated_kwh: f64,
    /// The potline's DC energy (a submeter inside the boundary, never added), kWh, and per
    /// tonne: GB 21346's DC power consumption beside the AC figure.
    pub dc_kwh: f64,
    pub dc_kwh_per_t: Option<f64>,
    /// The potline's line current over the period (its ampere-hour meter), kA-h, and its
    /// current efficiency: the aluminium made against Faraday's 0.3356 kg per kA-h per cell.
    pub line_kah: f64,
    pub current_efficiency_pct: Option<f64>,
    pub water_m3: f64,
    pub water_m3_per_t: Option<f64>,
    /// Fuels consumed, kgce (coal, coke, oil, gases; not electricity, heat or working media,
    /// nothing recovered credited): the clinker comprehensive coal of GB 16780.
    pub fuel_kgce: f64,
    pub fuel_kgce_per_t: Option<f64>,
    /// Carriers consumed whose kind the coefficients file does not give: the fuel figure then
    /// leaves them out, and a limit on it is not judged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fuel_unknown: Vec<String>,
    /// Share of the period covered by good samples, the weakest meter of the unit deciding.
    pub completeness: f64,
    /// At least 90 % complete: what the national online-monitoring rules accept for reporting.
    pub reportable: bool,
    /// Share of the energy, product and water figures that was spread over sample gaps.
    pub estimated_share: f64,
    pub carriers: Vec<CarrierFigure>,
    pub bases: Bases,
    /// Level reached against the unit's first limit: 1, 2 or 3; null when above the limit or
    /// not judged (no limit, no product, a correction input missing).
    pub level: Option<u8>,
    /// Whether every limit judged is met; null when none was judged.
    pub within_limit: Option<bool>,
    /// Every limit judged, with its corrected thresholds.
    pub limits: Vec<Judgement>,
    /// A period shorter than a month: limits are statistical figures of a reporting period
    /// (month, year), so a shorter period's level is indicative, never an exceedance.
    pub indicative: bool,
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
    indicators_measured(unit, periods, tz, slots, |_| Vec::new())
}

/// The same, `lhv(flow_index)` giving the rows of the calorimeter a flow takes its heating
/// value from (empty without one).
pub fn indicators_measured(
    unit: &Unit,
    periods: &[(i64, i64)],
    tz: FixedOffset,
    slots: impl Fn(usize) -> Vec<(i64, PointSlot)>,
    lhv: impl Fn(usize) -> Vec<(i64, PointSlot)>,
) -> Vec<Indicator> {
    let rows: Vec<Vec<(i64, PointSlot)>> = (0..unit.flows.len()).map(&slots).collect();
    let lhv: Vec<Vec<(i64, PointSlot)>> = (0..unit.flows.len()).map(&lhv).collect();
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
                electricity_generated_kwh: 0.0,
                dc_kwh: 0.0,
                dc_kwh_per_t: None,
                line_kah: 0.0,
                current_efficiency_pct: None,
                water_m3: 0.0,
                water_m3_per_t: None,
                fuel_kgce: 0.0,
                fuel_kgce_per_t: None,
                fuel_unknown: Vec::new(),
                completeness: 1.0,
                reportable: false,
                estimated_share: 0.0,
                carriers: Vec::new(),
                bases: Bases::default(),
                level: None,
                within_limit: None,
                limits: Vec::new(),
                indicative: end - start < INDICATIVE_BELOW_MS,
                limit_errors: Vec::new(),
                water_quota: None,
                corrections: BTreeMap::new(),
            };
            let (mut total_abs, mut estimated_abs) = (0.0, 0.0);
            let mut by_device: BTreeMap<&str, f64> = BTreeMap::new();
            let mut electricity_on_bases = [0.0f64; 2];
            for ((flow, rows), lhv) in unit.flows.iter().zip(&rows).zip(&lhv) {
                let flow_sum = flow.sum_measured(rows, lhv, start, end);
                let mut sum = flow_sum.slot;
                sum.estimated = without_rounding_residue(sum.estimated, sum.delta);
                ind.completeness = ind
                    .completeness
                    .min(sum.covered_ms as f64 / (end - start) as f64);
                // Each slot at the factors in force then: on the plant's basis for energy, the
                // flow's one factor (tonnes, m3) otherwise.
                let value = flow_sum.converted[flow.basis];
                let estimated_value = if sum.estimated == 0.0 {
                    0.0
                } else {
                    flow_sum.estimated[flow.basis]
                };
                *by_device.entry(flow.device.as_str()).or_default() += value;
                match flow.role {
                    Role::Material => continue,
                    Role::Submeter => {
                        if flow.carrier.as_deref() == Some("line_current") {
                            ind.line_kah += value;
                        } else {
                            ind.dc_kwh += value;
                        }
                        continue;
                    }
                    _ => {}
                }
                total_abs += value.abs();
                estimated_abs += estimated_value.abs();
                let on_bases = flow_sum.converted;
                let sign = match flow.role {
                    Role::Consumed => 1.0,
                    Role::Recovered => -1.0,
                    _ => 0.0,
                };
                ind.bases.equivalent.energy_kgce += sign * on_bases[0];
                ind.bases.equal_value.energy_kgce += sign * on_bases[1];
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
                    // Never a unit's (the plant checks): the enterprise balance's.
                    Role::Material
                    | Role::Submeter
                    | Role::Purchase
                    | Role::Export
                    | Role::Stock
                    | Role::Flare => continue,
                };
                if flow.role == Role::Consumed && !flow.own_use {
                    match flow.kind {
                        Some(crate::coefficients::CarrierKind::Fuel) => ind.fuel_kgce += value,
                        Some(_) => {}
                        None => {
                            let code = flow.carrier.clone().unwrap_or_default();
                            if !ind.fuel_unknown.contains(&code) {
                                ind.fuel_unknown.push(code);
                            }
                        }
                    }
                }
                if flow.carrier.as_deref() == Some("electricity") {
                    let kwh = sum.delta
                        * crate::coefficients::unit_factor(&flow.unit, "kWh").unwrap_or(0.0);
                    if flow.role == Role::Recovered {
                        ind.electricity_generated_kwh += kwh;
                    } else {
                        ind.electricity_kwh += kwh;
                        for (e, b) in electricity_on_bases.iter_mut().zip(on_bases) {
                            *e += b;
                        }
                    }
                }
                ind.carriers.push(CarrierFigure {
                    device: flow.device.clone(),
                    carrier: flow.carrier.clone().unwrap_or_default(),
                    role: flow.role,
                    quantity: sum.delta,
                    unit: flow.unit.clone(),
                    kgce,
                    own_use: flow.own_use,
                    kgce_per_unit: (sum.delta != 0.0).then(|| value / sum.delta),
                    measured_lhv_share: flow.has_measured_lhv().then(|| {
                        if sum.delta == 0.0 {
                            0.0
                        } else {
                            flow_sum.at_measured_lhv / sum.delta
                        }
                    }),
                });
            }
            ind.energy_kgce = ind.consumed_kgce - ind.recovered_kgce;
            if ind.electricity_kwh > 0.0 {
                for (b, e) in [&mut ind.bases.equivalent, &mut ind.bases.equal_value]
                    .into_iter()
                    .zip(electricity_on_bases)
                {
                    b.electricity_kgce_per_kwh = Some(e / ind.electricity_kwh);
                }
            }
            if ind.product_t > 0.0 {
                ind.kgce_per_t = Some(ind.energy_kgce / ind.product_t);
                ind.fuel_kgce_per_t = Some(ind.fuel_kgce / ind.product_t);
                ind.kwh_per_t = Some(ind.electricity_kwh / ind.product_t);
                ind.water_m3_per_t = Some(ind.water_m3 / ind.product_t);
                if ind.dc_kwh > 0.0 {
                    ind.dc_kwh_per_t = Some(ind.dc_kwh / ind.product_t);
                }
                if let Some(cells) = unit.cells.filter(|_| ind.line_kah > 0.0) {
                    let theory_t = FARADAY_KG_PER_KAH * ind.line_kah * f64::from(cells) / 1000.0;
                    ind.current_efficiency_pct = Some(100.0 * ind.product_t / theory_t);
                }
                for b in [&mut ind.bases.equivalent, &mut ind.bases.equal_value] {
                    b.kgce_per_t = Some(b.energy_kgce / ind.product_t);
                }
            }
            if total_abs > 0.0 {
                ind.estimated_share = estimated_abs / total_abs;
            }
            ind.completeness = ind.completeness.clamp(0.0, 1.0);
            ind.reportable = ind.completeness >= REPORTABLE_COMPLETENESS;
            let days = (
                local(start, tz).date_naive(),
                local(end - 1, tz).date_naive(),
            );
            judge(unit, &mut ind, &by_device, days);
            ind
        })
        .collect()
}

/// The shortest month: a period this long or longer is a reporting period.
pub(crate) const INDICATIVE_BELOW_MS: i64 = 28 * 24 * 3_600_000;

/// Derives the correction inputs of one period and judges the unit's figures on the edition of
/// each limit in force on the period's first local day (`days`: its first and last).
fn judge(
    unit: &Unit,
    ind: &mut Indicator,
    by_device: &BTreeMap<&str, f64>,
    days: (chrono::NaiveDate, chrono::NaiveDate),
) {
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
    for editions in &unit.limits {
        let Some(limit) = editions.in_force(days.0) else {
            ind.limit_errors.push(format!(
                "{}: no edition in force on {}",
                editions.code, days.0
            ));
            continue;
        };
        // Each standard on its own electricity basis, whichever the plant headlines.
        let figure = match limit.indicator {
            Figure::KgcePerT => ind.bases.of(limit.basis).kgce_per_t,
            Figure::KwhPerT => ind.kwh_per_t,
            Figure::FuelKgcePerT if !ind.fuel_unknown.is_empty() => {
                ind.limit_errors.push(format!(
                    "{}: not judged: the coefficients file does not say whether {} is a fuel (`kind`)",
                    limit.code,
                    ind.fuel_unknown.join(", ")
                ));
                continue;
            }
            Figure::FuelKgcePerT => ind.fuel_kgce_per_t,
        };
        let Some(value) = figure else { continue };
        match limit.judge(value, &ind.corrections, unit.status) {
            Ok(mut j) => {
                if let Some(next) = editions.change_within(days.0, days.1) {
                    j.note = Some(format!(
                        "{} {} comes into force on {} within this period: judged on {} {}, in force at its start",
                        next.source.standard,
                        next.source.edition,
                        next.effective_from.map(|d| d.to_string()).unwrap_or_default(),
                        limit.source.standard,
                        limit.source.edition
                    ));
                }
                ind.limits.push(j)
            }
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
    use crate::counter::HOUR_MS;
    use crate::model::Flow;
    fn flow(device: &str, role: Role, carrier: Option<&str>, unit: &str, factor: f64) -> Flow {
        Flow {
            factors: [factor; 2],
            device: device.into(),
            point: "total".into(),
            role,
            carrier: carrier.map(Into::into),
            unit: unit.into(),
            rollover: None,
            max_rate_per_h: None,
            own_use: false,
            basis: 0,
            kind: None,
            steps: Default::default(),
            measured_from: None,
            lhv_point: None,
            kj_per_kgce: 29_307.0,
        }
    }

    /// A unit of `kind` with no limits to judge and no corrections.
    fn unjudged(kind: &str, flows: Vec<Flow>) -> Unit {
        Unit {
            id: kind.into(),
            name: kind.into(),
            kind: kind.into(),
            function: Default::default(),
            enterprise: None,
            site: None,
            workshop: None,
            status: Default::default(),
            limits: Vec::new(),
            water_quota: None,
            corrections: BTreeMap::new(),
            cells: None,
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
        let replayed = indicators_measured(
            &unit,
            &day,
            tz,
            |i| slot(1_000.0 * (i + 1) as f64, residue),
            |_| Vec::new(),
        );
        assert_eq!(replayed[0].estimated_share, 0.0);
        // One second of the day's 2 000 kWh bridged (0.023 kWh) is an estimate and says so.
        let bridged = 2_000.0 / 86_400.0;
        let real = indicators_measured(
            &unit,
            &day,
            tz,
            |i| slot(1_000.0 * (i + 1) as f64, if i == 1 { bridged } else { 0.0 }),
            |_| Vec::new(),
        );
        assert!(real[0].estimated_share > 0.0, "{}", real[0].estimated_share);
    }

    /// A unit of `text` (a `[[units]]` table) as the gateway builds it, with the coefficients of
    /// the data file, and its figures over one period whose flows moved by `deltas`.
    fn golden(text: &str, deltas: &[f64]) -> Indicator {
        let plant =
            crate::model::Plant::from_tables(&ems_config::Source::embedded("gw.toml", text))
                .unwrap_or_else(|e| panic!("{e}"));
        let unit = &plant.units[0];
        let tz: FixedOffset = "+08:00".parse().unwrap();
        let (start, end) = (day_ms(2026, 9, 1), day_ms(2026, 10, 1));
        indicators_measured(
            unit,
            &[(start, end)],
            tz,
            |i| {
                vec![(
                    start,
                    PointSlot {
                        delta: deltas[i],
                        covered_ms: end - start,
                        estimated: 0.0,
                    },
                )]
            },
            |_| Vec::new(),
        )
        .remove(0)
    }

    const FLOW: &str = "[[units.flows]]\npoint = \"total\"\n";

    /// The built-in coefficients file with one edit in carrier `code`'s entry: `edit` gets where
    /// `find` first occurs after its code and gives the range to replace and the replacement.
    fn with_carrier_edit(
        code: &str,
        find: &str,
        edit: impl Fn(usize) -> (usize, usize, &'static str),
    ) -> String {
        let data = crate::coefficients::BUILT_IN;
        let at = data.find(&format!("code = \"{code}\"")).unwrap();
        let (from, to, with) = edit(at + data[at..].find(find).unwrap());
        format!("{}{with}{}", &data[..from], &data[to..])
    }

    /// The plant of `text` (its tables) with the coefficients file `data`.
    fn plant_with(text: &str, data: &str) -> crate::model::Plant {
        let coefficients = crate::coefficients::Coefficients::from_source(
            &ems_config::Source::embedded("coefficients.toml", data),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let src = ems_config::Source::embedded("gw.toml", text);
        let t: crate::model::PlantTables = src.parse().unwrap();
        crate::model::Plant::build(
            &src,
            &t.accounting,
            crate::model::EnterpriseTables {
                one: &t.enterprise,
                several: &t.enterprises,
            },
            &t.units,
            &t.boundary,
            coefficients,
            crate::limits::Limits::built_in(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Hourly slots of `per_hour` from local midnight of `day` (+08:00) for `hours`.
    fn hourly(from_ms: i64, hours: i64, per_hour: f64) -> Vec<(i64, PointSlot)> {
        (0..hours)
            .map(|h| {
                (
                    from_ms + h * HOUR_MS,
                    PointSlot {
                        delta: per_hour,
                        covered_ms: HOUR_MS,
                        estimated: 0.0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn golden_day_counts_each_hour_of_gas_at_the_heating_value_the_laboratory_gave_for_it() {
        // Written by hand: a reheating furnace burns 10 000 m3 of blast-furnace gas an hour and
        // heats 100 t of slab, one local day (+08:00). Its flow says 3 600 kJ/m3; the
        // laboratory measured 3 300 from 08:00 and 3 000 from 16:00.
        //   00-08   80 000 m3 x 3 600 kJ = 288 000 000 kJ
        //   08-16   80 000 m3 x 3 300 kJ = 264 000 000 kJ
        //   16-24   80 000 m3 x 3 000 kJ = 240 000 000 kJ
        //   792 000 000 kJ / 29 307 kJ/kgce = 27 024.26 kgce, 11.260 kgce/t of 2 400 t;
        //   at 3 600 all day it would read 12.283 kgce/t. Two thirds of the gas at measured
        //   values. The day before the first measurement is the flow's own 3 600 throughout.
        let text = format!(
            "[[units]]\nid = \"rf1\"\nname = \"Reheating furnace\"\nkind = \"reheating_furnace\"\n\
             {FLOW}device = \"slab\"\nrole = \"product\"\nunit = \"t\"\n\
             {FLOW}device = \"bfg\"\nrole = \"consumed\"\ncarrier = \"bfg\"\nunit = \"m3\"\nlhv_kj = 3600.0\n\
             lhv = [{{ from = \"2026-03-01 08:00\", lhv_kj = 3300.0 }}, {{ from = \"2026-03-01T08:00:00Z\", lhv_kj = 3000.0 }}]\n"
        );
        let plant =
            crate::model::Plant::from_tables(&ems_config::Source::embedded("gw.toml", &text))
                .unwrap_or_else(|e| panic!("{e}"));
        let unit = &plant.units[0];
        let tz: FixedOffset = "+08:00".parse().unwrap();
        let midnight = day_ms(2026, 3, 1);
        let day_before = (midnight - 24 * HOUR_MS, midnight);
        let day = (midnight, midnight + 24 * HOUR_MS);
        let figures = indicators(unit, &[day_before, day], tz, |i| {
            hourly(midnight - 24 * HOUR_MS, 48, [100.0, 10_000.0][i])
        });
        let kgce = 792_000_000.0 / 29_307.0;
        assert!(
            (figures[1].energy_kgce - kgce).abs() < 1e-6,
            "{:?}",
            figures[1]
        );
        assert!((figures[1].kgce_per_t.unwrap() - 11.260).abs() < 5e-4);
        let gas = figures[1]
            .carriers
            .iter()
            .find(|c| c.device == "bfg")
            .unwrap();
        assert!(
            (gas.measured_lhv_share.unwrap() - 2.0 / 3.0).abs() < 1e-12,
            "{gas:?}"
        );
        assert!((gas.kgce_per_unit.unwrap() - 3_300.0 / 29_307.0).abs() < 1e-12);
        let before = &figures[0];
        assert!((before.energy_kgce - 240_000.0 * 3_600.0 / 29_307.0).abs() < 1e-6);
        let gas = before.carriers.iter().find(|c| c.device == "bfg").unwrap();
        assert_eq!(gas.measured_lhv_share, Some(0.0));
    }

    #[test]
    fn golden_new_year_counts_electricitys_equal_value_at_each_years_figure() {
        // Written by hand: a data file whose equal value of electricity has a figure for 2026
        // only (0.300 kgce/kWh, a test's figure), the general one 0.404. 1 000 kWh an hour from
        // 2025-12-31 00:00 to 2026-01-02 00:00 local (+08:00):
        //   equal value   24 000 kWh x 0.404 + 24 000 kWh x 0.300 = 9 696 + 7 200 = 16 896 kgce
        //                 (0.352 kgce/kWh over the two days)
        //   equivalent    48 000 kWh x 0.1229                    = 5 899.2 kgce
        let by_year = "\n[[carrier.by_year]]\nyear = 2026\nkgce_per_unit = 0.300\nsource = { standard = \"test\", edition = \"-\", table = \"-\", verified = false }\n";
        // After the carrier's `source` line: the year's figure belongs to it.
        let data = with_carrier_edit("electricity_equal", "\nsource = ", |at| {
            let end = at + 1 + crate::coefficients::BUILT_IN[at + 1..].find('\n').unwrap();
            (end, end, by_year)
        });
        let text = format!(
            "[accounting]\nelectricity = \"equal\"\n[[units]]\nid = \"mill\"\nname = \"Mill\"\nkind = \"rolling_mill\"\n\
             {FLOW}device = \"steel\"\nrole = \"product\"\nunit = \"t\"\n\
             {FLOW}device = \"power\"\nrole = \"consumed\"\ncarrier = \"electricity\"\nunit = \"kWh\"\n"
        );
        let plant = plant_with(&text, &data);
        let tz: FixedOffset = "+08:00".parse().unwrap();
        let from = day_ms(2025, 12, 31);
        let two_days = (from, from + 48 * HOUR_MS);
        let last_day_of_2025 = (from, from + 24 * HOUR_MS);
        let f = indicators(&plant.units[0], &[two_days, last_day_of_2025], tz, |_| {
            hourly(from, 48, 1_000.0)
        });
        // (The product flow moved 1 000 t an hour too; it carries no energy.)
        assert!(
            (f[0].bases.equal_value.energy_kgce - 16_896.0).abs() < 1e-6,
            "{:?}",
            f[0].bases
        );
        assert!(
            (f[0].energy_kgce - 16_896.0).abs() < 1e-6,
            "the plant headlines the equal value"
        );
        assert!((f[0].bases.equivalent.energy_kgce - 5_899.2).abs() < 1e-6);
        let per_kwh = f[0].bases.equal_value.electricity_kgce_per_kwh.unwrap();
        assert!((per_kwh - 0.352).abs() < 1e-12, "{per_kwh}");
        let per_kwh = |b: &BasisFigure| b.electricity_kgce_per_kwh.unwrap();
        assert!((per_kwh(&f[0].bases.equivalent) - 0.1229).abs() < 1e-12);
        assert!(
            (per_kwh(&f[1].bases.equal_value) - 0.404).abs() < 1e-12,
            "2025 has no figure of its own"
        );
    }

    #[test]
    fn golden_converter_month_counts_its_working_media_and_credits_exported_steam() {
        // Written by hand from GB/T 2589's definitions (working media, appendix B, are energy;
        // recovered gas and exported steam are credited), with the data file's coefficients: a
        // month of 100 000 t of steel.
        //   electricity     2 800 000 kWh x 0.1229            =   344 120.00 kgce
        //   oxygen          5 500 000 m3  x 0.4000            = 2 200 000.00
        //   nitrogen        1 500 000 m3  x 0.4000            =   600 000.00
        //   compressed air  2 000 000 m3  x 0.0400            =    80 000.00
        //                                          consumed   = 3 224 120.00
        //   converter gas  13 000 000 m3 at 7 500 kJ/m3 / 29 307 = 3 326 850.24
        //   steam exported     10 000 t x 128.6 kgce/t        = 1 286 000.00
        //     (GB/T 2589's low-pressure steam, not the petrochemical per-grade table)
        //                                          recovered  = 4 612 850.24
        //   comprehensive: -1 388 730.24 kgce, -13.887 kgce/t. Without its working media the
        //   same converter would read -42.687 kgce/t.
        let flow = |device: &str, rest: &str| format!("{FLOW}device = \"{device}\"\n{rest}\n");
        let text = [
            "[[units]]\nid = \"bof1\"\nname = \"BOF\"\nkind = \"converter\"\n".to_string(),
            flow("steel", "role = \"product\"\nunit = \"t\""),
            flow(
                "power",
                "role = \"consumed\"\ncarrier = \"electricity\"\nunit = \"kWh\"",
            ),
            flow(
                "o2",
                "role = \"consumed\"\ncarrier = \"oxygen\"\nunit = \"m3\"",
            ),
            flow(
                "n2",
                "role = \"consumed\"\ncarrier = \"nitrogen\"\nunit = \"m3\"",
            ),
            flow(
                "air",
                "role = \"consumed\"\ncarrier = \"compressed_air\"\nunit = \"m3\"",
            ),
            flow(
                "ldg",
                "role = \"recovered\"\ncarrier = \"converter_gas\"\nunit = \"m3\"\nlhv_kj = 7500.0",
            ),
            flow(
                "steam",
                "role = \"recovered\"\ncarrier = \"steam\"\nunit = \"t\"",
            ),
        ]
        .concat();
        let deltas = [1e5, 2.8e6, 5.5e6, 1.5e6, 2e6, 1.3e7, 1e4];
        let i = golden(&text, &deltas);
        assert!(
            (i.consumed_kgce - 3_224_120.0).abs() < 1e-6,
            "{}",
            i.consumed_kgce
        );
        assert!(
            (i.recovered_kgce - 4_612_850.24).abs() < 0.01,
            "{}",
            i.recovered_kgce
        );
        let k = i.kgce_per_t.unwrap();
        assert!((k - (-13.887)).abs() < 5e-4, "{k}");
        let o2 = i.carriers.iter().find(|c| c.carrier == "oxygen").unwrap();
        assert!((o2.kgce - 2_200_000.0).abs() < 1e-6, "{o2:?}");
    }

    #[test]
    fn golden_kiln_month_keeps_gross_electricity_and_credits_waste_heat_power_in_energy() {
        // GB 16780-2021: clinker comprehensive electricity is the line's gross power; the
        // waste-heat power supplied is credited in comprehensive energy, not netted out of
        // electricity. 100 000 t of clinker:
        //   raw coal     14 350 t  x 714.3 kgce/t  = 10 250 205.0 kgce
        //   electricity  5 500 000 kWh x 0.1229    =    675 950.0
        //   waste-heat power 3 000 000 kWh x 0.1229 = -  368 700.0
        //   comprehensive 10 557 455.0 kgce, 105.575 kgce/t; electricity 55 kWh/t (not 25).
        let flow = |device: &str, rest: &str| format!("{FLOW}device = \"{device}\"\n{rest}\n");
        let text = [
            "[[units]]\nid = \"kiln1\"\nname = \"kiln\"\nkind = \"kiln\"\n".to_string(),
            flow("clinker", "role = \"product\"\nunit = \"t\""),
            flow(
                "coal",
                "role = \"consumed\"\ncarrier = \"raw_coal\"\nunit = \"t\"",
            ),
            flow(
                "power",
                "role = \"consumed\"\ncarrier = \"electricity\"\nunit = \"kWh\"",
            ),
            flow(
                "whr",
                "role = \"recovered\"\ncarrier = \"electricity\"\nunit = \"kWh\"\ngeneration = \"gross\"",
            ),
        ]
        .concat();
        let i = golden(&text, &[1e5, 14_350.0, 5.5e6, 3e6]);
        assert!(
            (i.energy_kgce - 10_557_455.0).abs() < 1e-3,
            "{}",
            i.energy_kgce
        );
        assert_eq!(i.electricity_kwh, 5.5e6);
        assert_eq!(i.kwh_per_t, Some(55.0));
        assert_eq!(i.electricity_generated_kwh, 3e6);
        // Both electricity bases side by side: at the equal value (0.404 kgce/kWh in the data
        // file) the net 2 500 000 kWh are 1 010 000 kgce: 11 260 205 kgce, 112.602 kgce/t.
        assert!((i.bases.equivalent.energy_kgce - 10_557_455.0).abs() < 1e-3);
        let equal = i.bases.equal_value.kgce_per_t.unwrap();
        assert!((equal - 112.602_05).abs() < 1e-6, "{equal}");
        // A plant that headlines the equal value still has each limit judged on its own
        // basis: GB 16780's clinker figure on the equivalent value, 105.57, level 2 (level 3 at
        // the equal value's 112.60).
        let equal_plant = format!(
            "[accounting]\nelectricity = \"equal\"\n{}",
            text.replace(
                "kind = \"kiln\"\n",
                "kind = \"kiln\"\nlimits = [\"clinker_comprehensive\"]\n"
            )
        );
        let i = golden(&equal_plant, &[1e5, 14_350.0, 5.5e6, 3e6]);
        assert!((i.kgce_per_t.unwrap() - 112.602_05).abs() < 1e-6);
        let j = &i.limits[0];
        assert!((j.value - 105.574_55).abs() < 1e-6, "{j:?}");
        assert_eq!(i.level, Some(2));
    }

    #[test]
    fn golden_kiln_month_draws_clinker_comprehensive_coal_from_its_fuels_alone() {
        // GB 16780-2021's clinker comprehensive coal: the fuels burnt for the clinker per
        // tonne, no electricity and no waste-heat credit. The kiln month above:
        //   raw coal 14 350 t x 714.3 kgce/t = 10 250 205 kgce / 100 000 t = 102.502 kgce/t:
        //   level 3 of 94/100/109, within the limit of an existing line, not a new one's level 2.
        let flow = |device: &str, rest: &str| format!("{FLOW}device = \"{device}\"\n{rest}\n");
        let text = [
            "[[units]]\nid = \"kiln1\"\nname = \"kiln\"\nkind = \"kiln\"\nlimits = [\"clinker_comprehensive_coal\"]\n".to_string(),
            flow("clinker", "role = \"product\"\nunit = \"t\""),
            flow("coal", "role = \"consumed\"\ncarrier = \"raw_coal\"\nunit = \"t\""),
            flow("power", "role = \"consumed\"\ncarrier = \"electricity\"\nunit = \"kWh\""),
            flow(
                "whr",
                "role = \"recovered\"\ncarrier = \"electricity\"\nunit = \"kWh\"\ngeneration = \"gross\"",
            ),
        ]
        .concat();
        let i = golden(&text, &[1e5, 14_350.0, 5.5e6, 3e6]);
        assert!((i.fuel_kgce - 10_250_205.0).abs() < 1e-3, "{}", i.fuel_kgce);
        assert!((i.fuel_kgce_per_t.unwrap() - 102.502_05).abs() < 1e-9);
        let j = &i.limits[0];
        assert_eq!(
            (j.code.as_str(), j.level, j.within_limit),
            ("clinker_comprehensive_coal", Some(3), true)
        );
        let new_line = golden(
            &text.replace("kind = \"kiln\"\n", "kind = \"kiln\"\nstatus = \"new\"\n"),
            &[1e5, 14_350.0, 5.5e6, 3e6],
        );
        assert!(
            !new_line.limits[0].within_limit,
            "a new line must reach level 2 (100)"
        );

        // A plant's own coefficients file that does not say raw coal is a fuel: the coal
        // figure is not judged, and says why.
        let data = with_carrier_edit("raw_coal", "kind = \"fuel\"\n", |at| {
            (at, at + "kind = \"fuel\"\n".len(), "")
        });
        let plant = plant_with(&text, &data);
        let tz: FixedOffset = "+08:00".parse().unwrap();
        let sept = day_ms(2026, 9, 1);
        let i = indicators(&plant.units[0], &[(sept, sept + HOUR_MS)], tz, |k| {
            vec![(
                sept,
                PointSlot {
                    delta: [1e5, 14_350.0, 5.5e6, 3e6][k],
                    covered_ms: HOUR_MS,
                    estimated: 0.0,
                },
            )]
        })
        .remove(0);
        assert!(i.limits.is_empty(), "{:?}", i.limits);
        assert_eq!(i.fuel_unknown, ["raw_coal"]);
        assert!(
            i.limit_errors[0].contains("whether raw_coal is a fuel"),
            "{:?}",
            i.limit_errors
        );
    }

    #[test]
    fn a_potlines_dc_meter_is_reported_per_tonne_and_never_added() {
        // GB 21346: AC power per tonne is the limit's figure; the DC energy (12 725 kWh/t here,
        // inside the boundary, behind the rectifiers) is the potline's own KPI. 30 t of
        // aluminium, 393 600 kWh AC, 381 750 kWh DC.
        let flow = |device: &str, rest: &str| format!("{FLOW}device = \"{device}\"\n{rest}\n");
        let text = [
            "[[units]]\nid = \"pot1\"\nname = \"potline\"\nkind = \"electrolysis\"\n".to_string(),
            flow("al", "role = \"product\"\nunit = \"t\""),
            flow(
                "ac",
                "role = \"consumed\"\ncarrier = \"electricity\"\nunit = \"kWh\"",
            ),
            flow(
                "dc",
                "role = \"submeter\"\ncarrier = \"electricity_dc\"\nunit = \"kWh\"",
            ),
        ]
        .concat();
        let i = golden(&text, &[30.0, 393_600.0, 381_750.0]);
        assert_eq!(i.kwh_per_t, Some(13_120.0));
        assert_eq!(i.dc_kwh_per_t, Some(12_725.0));
        assert!(
            (i.energy_kgce - 393_600.0 * 0.1229).abs() < 1e-6,
            "not added"
        );
        let bad = text.replace("carrier = \"electricity_dc\"", "carrier = \"electricity\"");
        let err = crate::model::Plant::from_tables(&ems_config::Source::embedded("gw.toml", &bad))
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("units[0].flows[2].carrier"));
    }

    #[test]
    fn a_potlines_current_efficiency_is_drawn_by_faraday() {
        // 9.0612 t of aluminium from 100 kA-h through 300 cells in series: Faraday allows
        // 0.3356 x 100 x 300 = 10 068 kg, so the current efficiency is 90.0 %.
        let flow = |device: &str, rest: &str| format!("{FLOW}device = \"{device}\"\n{rest}\n");
        let text = [
            "[[units]]\nid = \"pot1\"\nname = \"potline\"\nkind = \"electrolysis\"\ncells = 300\n"
                .to_string(),
            flow("al", "role = \"product\"\nunit = \"t\""),
            flow(
                "line",
                "role = \"submeter\"\ncarrier = \"line_current\"\nunit = \"kAh\"",
            ),
        ]
        .concat();
        let i = golden(&text, &[9.0612, 100.0]);
        assert_eq!(i.line_kah, 100.0);
        let eta = i.current_efficiency_pct.unwrap();
        assert!((eta - 90.0).abs() < 1e-9, "{eta}");
        assert_eq!(i.energy_kgce, 0.0, "the line current is no energy");
        // The same meter in A-h.
        let i = golden(&text.replace("\"kAh\"", "\"Ah\""), &[9.0612, 100_000.0]);
        assert!((i.current_efficiency_pct.unwrap() - 90.0).abs() < 1e-9);
        // Without the number of cells there is no efficiency to draw: the file says so.
        let err = crate::model::Plant::from_tables(&ems_config::Source::embedded(
            "gw.toml",
            &text.replace("cells = 300\n", ""),
        ))
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("units[0].cells"));
        assert!(err.to_string().contains("number of cells"), "{err}");
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

    /// The hand-computed converter of the tests below: 150 t steel, 4 200 kWh and 15 000 m3
    /// LDG (-22.150 kgce/t), 27 t scrap and 135 t hot metal charged, judged on GB 21256.
    fn judged_converter(status: crate::limits::UnitStatus) -> Unit {
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
        Unit {
            id: "bof1".into(),
            name: "BOF".into(),
            kind: "converter".into(),
            function: Default::default(),
            enterprise: None,
            site: None,
            workshop: None,
            status,
            limits: vec![limits.editions("converter").unwrap().clone()],
            water_quota: None,
            corrections,
            cells: None,
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
        }
    }

    /// The figures of `unit` over each of `periods`, its flows having moved by the converter's
    /// deltas in each.
    fn converter_periods(unit: &Unit, periods: &[(i64, i64)]) -> Vec<Indicator> {
        let deltas = [150.0, 4_200.0, 15_000.0, 27.0, 135.0];
        let tz: FixedOffset = "+08:00".parse().unwrap();
        indicators(unit, periods, tz, |i| {
            // In slot order, as a store reads them.
            let mut slots: Vec<(i64, PointSlot)> = periods
                .iter()
                .map(|&(start, end)| {
                    (
                        start,
                        PointSlot {
                            delta: deltas[i],
                            covered_ms: end - start,
                            estimated: 0.0,
                        },
                    )
                })
                .collect();
            slots.sort_by_key(|(t, _)| *t);
            slots
        })
    }

    /// Local midnight (+08:00) of a day, in ms.
    fn day_ms(y: i32, m: u32, d: u32) -> i64 {
        chrono::NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis()
            - 8 * HOUR_MS
    }

    #[test]
    fn converter_level_with_the_scrap_ratio_taken_from_its_own_scales() {
        // Hand-computed: -22.150 kgce/t. Scrap ratio 27 / 162 = 16.667 %, so GB 21256-2025
        // table 4 moves up by 0.23 x 16.667 = 3.833: -26.167 / -24.167 / -8.167. -22.150 is
        // above level 2 and within level 3. An hour of August 2026 (the 2025 edition in force).
        let unit = judged_converter(crate::limits::UnitStatus::Existing);
        let aug = day_ms(2026, 8, 3);
        let ind = converter_periods(&unit, &[(aug, aug + HOUR_MS)]);
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
    fn a_period_is_judged_on_the_edition_in_force_and_a_new_unit_on_level_two() {
        let existing = judged_converter(crate::limits::UnitStatus::Existing);
        let (june, july, aug) = (day_ms(2026, 6, 1), day_ms(2026, 7, 1), day_ms(2026, 8, 1));
        let year = (day_ms(2026, 1, 1), day_ms(2027, 1, 1));
        let ind = converter_periods(
            &existing,
            &[
                (june, july),
                (july, aug),
                year,
                (day_ms(2013, 1, 1), day_ms(2013, 2, 1)),
            ],
        );
        // June 2026: GB 21256-2013 (-30 / -25 / -10, no corrections modelled): -22.150 is level 3.
        let j = &ind[0].limits[0];
        assert_eq!(j.standard, "GB 21256-2013");
        assert_eq!(j.thresholds, [-30.0, -25.0, -10.0]);
        assert_eq!((j.level, j.within_limit), (Some(3), true));
        // July 2026: the 2025 edition, with its scrap-ratio correction.
        let j = &ind[1].limits[0];
        assert_eq!(j.standard, "GB 21256-2025");
        assert!(
            (j.thresholds[2] - (-8.1667)).abs() < 1e-3,
            "{:?}",
            j.thresholds
        );
        // The year 2026 starts under the 2013 edition, and says the 2025 one comes in.
        let j = &ind[2].limits[0];
        assert_eq!(j.standard, "GB 21256-2013");
        assert!(
            j.note.as_deref().is_some_and(|n| n.contains("2026-07-01")),
            "{j:?}"
        );
        // Before any edition: not judged, with the reason; never "over the limit".
        assert!(ind[3].limits.is_empty() && ind[3].level.is_none());
        assert_eq!(ind[3].within_limit, None);
        assert!(ind[3].limit_errors[0].contains("no edition in force on 2013-01-01"));
        // Months are reporting periods; an hour is indicative.
        assert!(!ind[0].indicative && !ind[2].indicative);
        let hour = converter_periods(&existing, &[(july, july + HOUR_MS)]);
        assert!(hour[0].indicative);
        // A new unit must reach level 2, the entry value: level 3 is not within its limit.
        let new = judged_converter(crate::limits::UnitStatus::New);
        let ind = converter_periods(&new, &[(july, aug)]);
        let j = &ind[0].limits[0];
        assert_eq!(
            (j.level, j.limit_level, j.within_limit),
            (Some(3), 2, false)
        );
        assert_eq!(ind[0].within_limit, Some(false));
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
