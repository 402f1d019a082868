//! The plant model: the enterprises (one, or a group's several on one gateway), their sites and
//! workshops, the process units and the metered flows across each unit's boundary with their
//! roles and conversion to standard coal, built from the configuration's `[accounting]`,
//! `[enterprise]` (or `[[enterprises]]`), `[[units]]` and `[[boundary]]` tables.

use std::collections::HashSet;
use std::path::PathBuf;

use ems_config::{ConfigError, Source, Spanned};
use serde::{Deserialize, Serialize};

use crate::calendar::Calendar;
use crate::coefficients::{unit_factor, Coefficients};
use crate::counter::{CounterRule, GapFill};
use crate::limits::Limits;

/// An enterprise the gateway accounts for (a key energy-consuming unit with its credit code),
/// and its sites and workshops: the levels above the process units that reports add up to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnterpriseConfig {
    /// Short name in URLs (`/api/v1/enterprises/{id}/...`); the credit code serves as well.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// Unified social credit code (统一社会信用代码).
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
    /// Output value and value added month by month (10 000 yuan), for the comprehensive
    /// energy per 10 000 yuan.
    #[serde(default)]
    pub monthly_values: Vec<crate::intensity::MonthlyValue>,
    /// A CSV file of the same (header `month,output_value,value_added`), read with the
    /// configuration (by the gateway: this crate reads no files) into `monthly_values`.
    #[serde(default)]
    pub monthly_values_csv: Option<Spanned<PathBuf>>,
    /// The year's target: energy per 10 000 yuan of value added (else of output value) at
    /// least this many percent below the previous year's.
    #[serde(default)]
    pub intensity_target_pct: Option<f64>,
    /// Its energy prices: the grid's time-of-use tariff, demand charge, carriers' prices.
    #[serde(default)]
    pub tariff: Option<crate::tariff::TariffConfig>,
}

impl EnterpriseConfig {
    /// What names it in URLs and in the units' and boundary meters' `enterprise` keys: its
    /// `id`, else its credit code.
    pub fn key(&self) -> Option<&str> {
        self.id.as_deref().or(self.code.as_deref())
    }

    /// Whether `name` is its id or its credit code.
    pub fn answers_to(&self, name: &str) -> bool {
        self.id.as_deref() == Some(name) || self.code.as_deref() == Some(name)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub workshops: Vec<WorkshopConfig>,
    /// The water quota (GB/T 18916) the site's intake is judged on, per tonne of its product:
    /// a quota is the site's (main, auxiliary and ancillary production together), not a unit's.
    #[serde(default)]
    pub water_quota: Option<String>,
    /// The units whose product is the site's (an integrated works: its converters' crude steel).
    #[serde(default)]
    pub water_product_units: Vec<String>,
    /// The meters of the water the site takes in (role "water", m3): its intake boundary.
    #[serde(default, skip_serializing)]
    pub water_intake: Vec<FlowConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkshopConfig {
    pub id: String,
    pub name: String,
}

pub use crate::coefficients::ElectricityBasis;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountingConfig {
    /// The plant's UTC offset: days and months start at local midnight. China: "+08:00".
    #[serde(default = "default_utc_offset")]
    pub utc_offset: String,
    #[serde(default)]
    pub electricity: ElectricityBasis,
    /// A coefficients file replacing the built-in one (same format as gateway/energy/data/coefficients.toml).
    #[serde(default)]
    pub coefficients: Option<Spanned<PathBuf>>,
    /// A limits file replacing the built-in one (same format as gateway/energy/data/limits.toml).
    #[serde(default)]
    pub limits: Option<Spanned<PathBuf>>,
    /// When shifts start, local time ("HH:MM"); `period=shift` follows them.
    #[serde(default = "default_shifts")]
    pub shifts: Vec<String>,
    /// Two samples further apart than this leave the time between them uncovered (the delta
    /// still counts, spread evenly, and is marked estimated).
    #[serde(default = "default_max_sample_gap_s")]
    pub max_sample_gap_s: u64,
    /// A counter unchanged for this long is flagged frozen (0: never).
    #[serde(default = "default_frozen_after_s")]
    pub frozen_after_s: u64,
    /// How an interval a counter could not measure (a meter restarted or jumped) is filled;
    /// either way it is marked estimated.
    #[serde(default)]
    pub gap_fill: GapFill,
}

impl Default for AccountingConfig {
    fn default() -> Self {
        AccountingConfig {
            utc_offset: default_utc_offset(),
            electricity: ElectricityBasis::default(),
            coefficients: None,
            limits: None,
            shifts: default_shifts(),
            max_sample_gap_s: default_max_sample_gap_s(),
            frozen_after_s: default_frozen_after_s(),
            gap_fill: Default::default(),
        }
    }
}

fn default_shifts() -> Vec<String> {
    vec!["00:00".into(), "08:00".into(), "16:00".into()]
}

fn default_utc_offset() -> String {
    "+08:00".into()
}
fn default_max_sample_gap_s() -> u64 {
    900
}
fn default_frozen_after_s() -> u64 {
    3_600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitConfig {
    pub id: Spanned<String>,
    pub name: String,
    /// blast_furnace, converter, kiln, electrolysis, power_plant, ...
    pub kind: String,
    /// process (the default), conversion, auxiliary or non_production.
    #[serde(default)]
    pub function: Function,
    /// The workshop (id from `[[enterprise.sites.workshops]]`) the unit belongs to.
    #[serde(default)]
    pub workshop: Option<Spanned<String>>,
    /// The enterprise (id or credit code) the unit belongs to, where a gateway serves several
    /// and the unit names no workshop (a workshop's site says whose it is).
    #[serde(default)]
    pub enterprise: Option<Spanned<String>>,
    pub flows: Vec<FlowConfig>,
    /// Limit standards the unit is judged against (codes from the limits file); the first is
    /// its headline level.
    #[serde(default)]
    pub limits: Vec<Spanned<String>>,
    /// Water-intake quota (code from the limits file).
    #[serde(default)]
    pub water_quota: Option<Spanned<String>>,
    /// `existing` (the default: the limit is level 3) or `new` for a new or rebuilt unit, which
    /// must reach level 2, the standards' entry value.
    #[serde(default)]
    pub status: crate::limits::UnitStatus,
    /// The relevant variables the limits' corrections need: a number, a category, or a ratio
    /// (in %) of the unit's own flows, e.g. `scrap_ratio_pct = { ratio = ["bof1-scrap"],
    /// of = ["bof1-scrap", "bof1-hot-metal"] }`.
    #[serde(default)]
    pub corrections: std::collections::BTreeMap<String, CorrectionConfig>,
    /// A potline's number of cells in series: with its line-current meter, the current
    /// efficiency.
    #[serde(default)]
    pub cells: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum CorrectionConfig {
    Number(f64),
    Text(String),
    Ratio { ratio: Vec<String>, of: Vec<String> },
}

/// One metered flow across a unit's boundary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    pub device: String,
    pub point: String,
    pub role: Role,
    /// Energy carrier code (see the coefficients file); required for consumed and recovered.
    #[serde(default)]
    pub carrier: Option<Spanned<String>>,
    /// Unit the point counts in (t, kg, kWh, MWh, m3, km3, MJ, GJ).
    pub unit: Spanned<String>,
    /// Measured lower heating value, kJ per metered unit: replaces the carrier's coefficient.
    #[serde(default)]
    pub lhv_kj: Option<f64>,
    /// Heating values as the laboratory (or a calorimeter) gives them, each in force from its
    /// time until the next: they replace `lhv_kj` and the table from the first one on.
    #[serde(default)]
    pub lhv: Vec<crate::schedule::HeatingValue>,
    /// The same from a CSV file (`from,lhv_kj`), read by the gateway into `lhv`.
    #[serde(default)]
    pub lhv_csv: Option<Spanned<PathBuf>>,
    /// A calorimeter's point reading the heating value, kJ per metered unit: each 15-minute
    /// slot is counted at the mean of its readings over the slot; a slot it did not read, at
    /// `lhv`, `lhv_kj` or the table as without it.
    #[serde(default)]
    pub lhv_point: Option<PointRef>,
    /// The counter wraps to zero after this value (in the point's engineering unit).
    #[serde(default)]
    pub rollover: Option<f64>,
    /// The most this flow can physically do per hour (in the point's unit): a reading implying
    /// more is a spike and is rejected.
    #[serde(default)]
    pub max_rate_per_h: Option<f64>,
    /// For a recovered flow of a carrier its own unit also consumes: what the meter sees.
    #[serde(default)]
    pub generation: Option<Generation>,
    /// A boundary meter's enterprise (id or credit code), where a gateway serves several.
    #[serde(default)]
    pub enterprise: Option<Spanned<String>>,
}

/// A meter point by its device and point names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PointRef {
    pub device: String,
    pub point: String,
}

/// What a recovered meter sees of a carrier its own unit also burns (the blast furnace's gas,
/// part of it burnt in its own stoves). GB/T 2589 counts the unit's own use once: a gross meter
/// with the own use as consumption, or a net meter alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Generation {
    /// Everything the unit makes; its own use is metered as consumption and counted.
    Gross,
    /// What leaves the unit after its own use: that use is already netted out, so the unit's
    /// meters of it are own use, shown in the balance and counted nothing.
    Net,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Consumed,
    Recovered,
    Product,
    Water,
    /// Raw material (hot metal, scrap): not energy; feeds ratios.
    Material,
    /// A meter inside the boundary, reported and never added: the potline's DC energy
    /// (carrier `electricity_dc`), whose kWh per tonne GB 21346 asks for beside the AC figure.
    Submeter,
    /// Enterprise boundary (`[[boundary]]`): energy bought (grid import, coal, coke, gas).
    Purchase,
    /// Enterprise boundary: energy delivered outside (grid export, gas or steam sold).
    Export,
    /// Enterprise boundary: a stock's level (coal yard, coke bunker, gas holder), read as a
    /// level, not a counter; its change over a period is stock change.
    Stock,
    /// A flare: by-product gas burnt off inside the enterprise, a loss in the gas balance.
    Flare,
}

impl Role {
    /// Whether the role belongs to the enterprise boundary (`[[boundary]]`), not to a unit.
    pub fn is_boundary(self) -> bool {
        matches!(
            self,
            Role::Purchase | Role::Export | Role::Stock | Role::Flare
        )
    }
}

/// What a unit is to the enterprise: where its energy sits in the balance table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    /// Main production: a process unit with a product.
    #[default]
    Process,
    /// Energy conversion inside the enterprise (captive power plant, boiler, oxygen plant):
    /// its consumed flows are conversion input, its recovered flows conversion output.
    Conversion,
    /// Auxiliary production (water works, compressed air station, repair shops): inside the
    /// boundary, an end use.
    Auxiliary,
    /// Non-production users (offices' canteen, dormitories): outside the comprehensive energy,
    /// which subtracts what they consume.
    NonProduction,
}

/// A flow with its conversion to kgce resolved.
#[derive(Debug, Clone)]
pub struct Flow {
    pub device: String,
    pub point: String,
    pub role: Role,
    pub carrier: Option<String>,
    pub unit: String,
    /// kgce per metered unit on the equivalent and the equal-value electricity basis (the
    /// same for every carrier but electricity; for other roles, `factor`).
    pub factors: [f64; 2],
    /// Which of `factors` is the plant's electricity basis ([`Flow::factor`]).
    pub basis: usize,
    /// What its carrier is (fuel, electricity, heat, working medium); none for a carrier whose
    /// data file does not say, or a flow that is not energy.
    pub kind: Option<crate::coefficients::CarrierKind>,
    pub rollover: Option<f64>,
    pub max_rate_per_h: Option<f64>,
    /// A consumed flow its unit's net meter has already netted out (factors zero): shown as own
    /// use, never counted again.
    pub own_use: bool,
    /// Where its factors change in time (a year's figure of its carrier, a laboratory's
    /// heating values): slots are converted at the factors in force then ([`Flow::sum`]).
    pub steps: crate::schedule::Steps,
    /// The first measured heating value's time: from then on its energy is counted at measured
    /// values, not the table's.
    pub measured_from: Option<i64>,
    /// The calorimeter whose readings give its heating value slot by slot
    /// ([`Flow::sum_measured`]), and the kJ a kgce is.
    pub lhv_point: Option<PointRef>,
    pub kj_per_kgce: f64,
}

impl Flow {
    /// kgce per metered unit (consumed and recovered flows) on the plant's electricity basis,
    /// tonnes per metered unit (product), m3 per metered unit (water); before any change in time
    /// ([`Flow::factors_at`]).
    pub fn factor(&self) -> f64 {
        self.factors[self.basis]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Unit {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub function: Function,
    /// The key of the enterprise it belongs to (none when no enterprise is configured).
    pub enterprise: Option<String>,
    pub site: Option<String>,
    pub workshop: Option<String>,
    #[serde(skip)]
    pub flows: Vec<Flow>,
    /// Existing or new: the level its limits require.
    pub status: crate::limits::UnitStatus,
    /// Each limit standard with its editions in time; the first is the headline level.
    #[serde(skip)]
    pub limits: Vec<crate::limits::Editions>,
    #[serde(skip)]
    pub water_quota: Option<crate::limits::WaterQuota>,
    #[serde(skip)]
    pub corrections: std::collections::BTreeMap<String, CorrectionConfig>,
    /// A potline's cells in series.
    pub cells: Option<u32>,
}

/// The plant's tables alone, as a file holding only them is read (tests, tools).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlantTables {
    #[serde(default)]
    pub accounting: AccountingConfig,
    #[serde(default)]
    pub enterprise: Option<EnterpriseConfig>,
    #[serde(default)]
    pub enterprises: Vec<EnterpriseConfig>,
    pub units: Vec<UnitConfig>,
    #[serde(default)]
    pub boundary: Vec<FlowConfig>,
}

/// A meter on an enterprise's boundary (`[[boundary]]`): a purchase, export, stock or flare.
#[derive(Debug, Clone)]
pub struct BoundaryMeter {
    /// The key of the enterprise whose boundary it is on (none when none is configured).
    pub enterprise: Option<String>,
    pub flow: Flow,
}

/// A site with its water intake and the quota it is judged on (GB/T 18916: the site's intake
/// per tonne of the site's product).
#[derive(Debug, Clone)]
pub struct Site {
    pub id: String,
    pub name: String,
    /// The key of its enterprise (none when none is configured).
    pub enterprise: Option<String>,
    pub water_quota: Option<crate::limits::WaterQuota>,
    /// Units whose product flows are the site's product.
    pub product_units: Vec<String>,
    /// Its intake meters (m3).
    pub intake: Vec<Flow>,
}

/// The plant, checked: what every figure is computed from.
#[derive(Debug, Clone)]
pub struct Plant {
    /// The enterprises the gateway accounts for: none, one, or a group's several.
    pub enterprises: Vec<EnterpriseConfig>,
    pub units: Vec<Unit>,
    /// The enterprises' boundary meters: purchases, exports, stocks, flares.
    pub boundary: Vec<BoundaryMeter>,
    /// Sites that declare their water intake (in enterprise order).
    pub sites: Vec<Site>,
    pub calendar: Calendar,
    pub coefficients: Coefficients,
    pub limits: Limits,
    pub electricity: ElectricityBasis,
    /// Readings further apart leave the time between them uncovered (estimated).
    pub max_sample_gap_ms: i64,
    pub frozen_after_ms: i64,
    pub gap_fill: GapFill,
}

/// The counter rules of every point the units account for: device -> point -> rule.
pub type CounterRules =
    std::collections::HashMap<String, std::collections::HashMap<String, CounterRule>>;

impl Plant {
    /// Builds and checks the plant from its tables in `src` (errors name the file, line and
    /// key), with the coefficient and limit data in force.
    pub fn build(
        src: &Source,
        accounting: &AccountingConfig,
        enterprise_tables: EnterpriseTables,
        units_config: &[UnitConfig],
        boundary_config: &[FlowConfig],
        coefficients: Coefficients,
        limits: Limits,
    ) -> Result<Plant, ConfigError> {
        let utc_offset: chrono::FixedOffset = accounting.utc_offset.parse().map_err(|_| {
            src.error(
                "accounting.utc_offset",
                "expected an offset such as \"+08:00\"",
            )
        })?;
        let mut shift_starts = Vec::new();
        for (i, text) in accounting.shifts.iter().enumerate() {
            let t = chrono::NaiveTime::parse_from_str(text, "%H:%M").map_err(|_| {
                src.error(
                    &format!("accounting.shifts[{i}]"),
                    "expected a local time such as \"08:00\"",
                )
            })?;
            shift_starts.push(i64::from(chrono::Timelike::num_seconds_from_midnight(&t)) * 1000);
        }
        shift_starts.sort_unstable();
        shift_starts.dedup();
        if shift_starts.is_empty() {
            return Err(src.error("accounting.shifts", "at least one shift start"));
        }
        let calendar = Calendar {
            tz: utc_offset,
            shift_starts,
        };
        let enterprises = &enterprise_tables.checked(src)?;
        let table = |e: usize| {
            if enterprise_tables.one.is_some() {
                "enterprise".to_owned()
            } else {
                format!("enterprises[{e}]")
            }
        };
        let mut keys = HashSet::new();
        for (e, ent) in enterprises.iter().enumerate() {
            match ent.key() {
                None if enterprises.len() > 1 => {
                    return Err(src.error(
                        &format!("{}.id", table(e)),
                        "several enterprises: give each an id (or its credit code)",
                    ))
                }
                Some(k) if !keys.insert(k.to_owned()) => {
                    return Err(src.error(
                        &format!("{}.id", table(e)),
                        format!("duplicate enterprise `{k}`"),
                    ))
                }
                _ => {}
            }
            if let Some(t) = &ent.tariff {
                t.check()
                    .map_err(|(key, why)| src.error(&format!("{}.tariff.{key}", table(e)), why))?;
            }
        }
        for (e, ent) in enterprises.iter().enumerate() {
            let mut months = HashSet::new();
            for (j, v) in ent.monthly_values.iter().enumerate() {
                let key = format!("{}.monthly_values[{j}]", table(e));
                if let Err((field, why)) = v.check() {
                    return Err(src.error(&format!("{key}.{field}"), why));
                }
                if !months.insert(v.month.as_str()) {
                    return Err(src.error(
                        &format!("{key}.month"),
                        format!("{} is given twice", v.month),
                    ));
                }
            }
            if ent
                .intensity_target_pct
                .is_some_and(|t| !(t.is_finite() && (0.0..100.0).contains(&t)))
            {
                return Err(src.error(
                    &format!("{}.intensity_target_pct", table(e)),
                    "a reduction in percent, from 0 to below 100",
                ));
            }
        }
        // Workshop id -> (site id, enterprise key).
        let mut workshops = std::collections::HashMap::new();
        for (e, ent) in enterprises.iter().enumerate() {
            for (i, site) in ent.sites.iter().enumerate() {
                for (j, w) in site.workshops.iter().enumerate() {
                    let owner = (site.id.clone(), ent.key().map(str::to_owned));
                    if workshops.insert(w.id.clone(), owner).is_some() {
                        return Err(src.error(
                            &format!("{}.sites[{i}].workshops[{j}].id", table(e)),
                            format!("duplicate workshop id `{}`", w.id),
                        ));
                    }
                }
            }
        }
        // Which enterprise a unit (by its `enterprise` key or its workshop's) or a boundary
        // meter belongs to; with one enterprise, that one.
        let owner = |key: &str,
                     named: &Option<Spanned<String>>,
                     by_workshop: Option<Option<String>>|
         -> Result<Option<String>, ConfigError> {
            let named_key = match named {
                None => None,
                Some(n) => match enterprises.iter().find(|e| e.answers_to(n.get_ref())) {
                    Some(e) => Some(e.key().map(str::to_owned)),
                    None => {
                        return Err(src.error_at(
                            n.span(),
                            &format!("{key}.enterprise"),
                            format!("unknown enterprise `{}`", n.get_ref()),
                        ))
                    }
                },
            };
            match (named_key, by_workshop) {
                (Some(n), Some(w)) if n != w => Err(src.error(
                    &format!("{key}.enterprise"),
                    "its workshop belongs to another enterprise",
                )),
                (Some(n), _) | (None, Some(n)) => Ok(n),
                (None, None) if enterprises.len() > 1 => Err(src.error(
                    &format!("{key}.enterprise"),
                    "the gateway serves several enterprises: name this one's",
                )),
                (None, None) => Ok(enterprises.first().and_then(|e| e.key().map(str::to_owned))),
            }
        };
        let mut ids = HashSet::new();
        let mut units = Vec::new();
        for (i, u) in units_config.iter().enumerate() {
            if !ids.insert(u.id.get_ref().clone()) {
                return Err(src.error_at(
                    u.id.span(),
                    &format!("units[{i}].id"),
                    "duplicate unit id",
                ));
            }
            let (workshop, site, by_workshop) = match &u.workshop {
                Some(w) => match workshops.get(w.get_ref()) {
                    Some((site, ent)) => (
                        Some(w.get_ref().clone()),
                        Some(site.clone()),
                        Some(ent.clone()),
                    ),
                    None => {
                        return Err(src.error_at(
                            w.span(),
                            &format!("units[{i}].workshop"),
                            format!("unknown workshop `{}`", w.get_ref()),
                        ))
                    }
                },
                None if !workshops.is_empty() => {
                    return Err(src.error(
                        &format!("units[{i}].workshop"),
                        "the enterprise declares workshops: name the unit's",
                    ))
                }
                None => (None, None, None),
            };
            let enterprise = owner(&format!("units[{i}]"), &u.enterprise, by_workshop)?;
            let mut flows = Vec::new();
            for (j, f) in u.flows.iter().enumerate() {
                let key = format!("units[{i}].flows[{j}]");
                if f.role.is_boundary() {
                    return Err(src.error(
                        &format!("{key}.role"),
                        "purchase, export, stock and flare meters belong in [[boundary]]",
                    ));
                }
                if f.enterprise.is_some() {
                    return Err(src.error(
                        &format!("{key}.enterprise"),
                        "a unit's meters belong to the unit's enterprise: name it on the unit",
                    ));
                }
                flows.push(resolve_flow(
                    src,
                    &key,
                    f,
                    &coefficients,
                    (accounting.electricity, utc_offset),
                )?);
            }
            declare_own_use(src, i, u, &mut flows)?;
            let line_current = flows
                .iter()
                .any(|f| f.carrier.as_deref() == Some("line_current"));
            match u.cells {
                Some(0) => {
                    return Err(src.error(
                        &format!("units[{i}].cells"),
                        "a potline has at least one cell",
                    ))
                }
                None if line_current => {
                    return Err(src.error(
                        &format!("units[{i}].cells"),
                        "a line-current meter needs the number of cells in series (cells = N) \
                         for the current efficiency",
                    ))
                }
                _ => {}
            }
            if u.function == Function::Process && !flows.iter().any(|f| f.role == Role::Product) {
                return Err(src.error(
                    &format!("units[{i}].flows"),
                    "a process unit needs at least one product flow",
                ));
            }
            let mut unit_limits = Vec::new();
            for (j, code) in u.limits.iter().enumerate() {
                let Some(editions) = limits.editions(code.get_ref()) else {
                    return Err(src.error_at(
                        code.span(),
                        &format!("units[{i}].limits[{j}]"),
                        format!("unknown limit `{}`", code.get_ref()),
                    ));
                };
                for l in &editions.editions {
                    for c in &l.correction {
                        if !u.corrections.contains_key(c.input()) {
                            return Err(src.error(
                                &format!("units[{i}].corrections"),
                                format!(
                                    "limit `{}` ({} {}) needs `{}`",
                                    l.code,
                                    l.source.standard,
                                    l.source.edition,
                                    c.input()
                                ),
                            ));
                        }
                    }
                }
                unit_limits.push(editions.clone());
            }
            for (name, c) in &u.corrections {
                if let CorrectionConfig::Ratio { ratio, of } = c {
                    for d in ratio.iter().chain(of) {
                        if !flows.iter().any(|f| &f.device == d) {
                            return Err(src.error(
                                &format!("units[{i}].corrections.{name}"),
                                format!("`{d}` is not one of the unit's flows"),
                            ));
                        }
                    }
                }
            }
            let water_quota = match &u.water_quota {
                None => None,
                Some(code) => Some(
                    limits
                        .quota(code.get_ref())
                        .ok_or_else(|| {
                            src.error_at(
                                code.span(),
                                &format!("units[{i}].water_quota"),
                                format!("unknown water quota `{}`", code.get_ref()),
                            )
                        })?
                        .clone(),
                ),
            };
            units.push(Unit {
                id: u.id.get_ref().clone(),
                name: u.name.clone(),
                kind: u.kind.clone(),
                function: u.function,
                enterprise,
                site,
                workshop,
                flows,
                status: u.status,
                limits: unit_limits,
                water_quota,
                corrections: u.corrections.clone(),
                cells: u.cells,
            });
        }
        let mut boundary = Vec::new();
        for (j, f) in boundary_config.iter().enumerate() {
            let key = format!("boundary[{j}]");
            if !f.role.is_boundary() {
                return Err(src.error(
                    &format!("{key}.role"),
                    "a boundary meter is a purchase, export, stock or flare",
                ));
            }
            boundary.push(BoundaryMeter {
                enterprise: owner(&key, &f.enterprise, None)?,
                flow: resolve_flow(
                    src,
                    &key,
                    f,
                    &coefficients,
                    (accounting.electricity, utc_offset),
                )?,
            });
        }
        let sites = sites_of(
            src,
            enterprises,
            &table,
            &units,
            (&coefficients, &limits),
            (accounting.electricity, utc_offset),
        )?;
        // A calorimeter is read as a gauge: it cannot be a counter some flow accounts for too.
        let counted: HashSet<(&str, &str)> = units
            .iter()
            .flat_map(|u| u.flows.iter())
            .chain(boundary.iter().map(|b| &b.flow))
            .chain(sites.iter().flat_map(|s| s.intake.iter()))
            .map(|f| (f.device.as_str(), f.point.as_str()))
            .collect();
        let configured = units_config
            .iter()
            .enumerate()
            .flat_map(|(i, u)| {
                u.flows
                    .iter()
                    .enumerate()
                    .map(move |(j, f)| (format!("units[{i}].flows[{j}].lhv_point"), f))
            })
            .chain(
                boundary_config
                    .iter()
                    .enumerate()
                    .map(|(k, f)| (format!("boundary[{k}].lhv_point"), f)),
            );
        for (key, f) in configured {
            if let Some(p) = &f.lhv_point {
                if counted.contains(&(p.device.as_str(), p.point.as_str())) {
                    return Err(src.error(
                        &key,
                        format!(
                            "`{}`/`{}` is a meter some flow counts; a calorimeter's point reads \
                             a heating value of its own",
                            p.device, p.point
                        ),
                    ));
                }
            }
        }
        Ok(Plant {
            enterprises: enterprises.to_vec(),
            units,
            boundary,
            sites,
            calendar,
            coefficients,
            limits,
            electricity: accounting.electricity,
            max_sample_gap_ms: accounting.max_sample_gap_s as i64 * 1000,
            frozen_after_ms: accounting.frozen_after_s as i64 * 1000,
            gap_fill: accounting.gap_fill,
        })
    }

    /// A plant from a file of only its tables, with the built-in coefficients and limits.
    pub fn from_tables(src: &Source) -> Result<Plant, ConfigError> {
        let t: PlantTables = src.parse()?;
        Plant::build(
            src,
            &t.accounting,
            EnterpriseTables {
                one: &t.enterprise,
                several: &t.enterprises,
            },
            &t.units,
            &t.boundary,
            Coefficients::built_in(),
            Limits::built_in(),
        )
    }

    /// The plant's UTC offset: its days and months start at local midnight.
    pub fn utc_offset(&self) -> chrono::FixedOffset {
        self.calendar.tz
    }

    /// How each accounted counter point's readings turn into intervals.
    pub fn counter_rules(&self) -> CounterRules {
        let mut tracked = CounterRules::new();
        for f in self.flows() {
            tracked.entry(f.device.clone()).or_default().insert(
                f.point.clone(),
                CounterRule {
                    rollover: f.rollover,
                    max_rate_per_h: f.max_rate_per_h,
                    // A stock level stands still between deliveries and use: never "frozen".
                    frozen_after_ms: if f.role == Role::Stock {
                        0
                    } else {
                        self.frozen_after_ms
                    },
                    fill: self.gap_fill,
                    level: f.role == Role::Stock,
                    gauge: false,
                },
            );
        }
        // A calorimeter's heating value is integrated over time, slot by slot.
        for p in self.lhv_points() {
            tracked
                .entry(p.device.clone())
                .or_default()
                .entry(p.point.clone())
                .or_insert(CounterRule {
                    rollover: None,
                    max_rate_per_h: None,
                    frozen_after_ms: 0,
                    fill: GapFill::None,
                    level: false,
                    gauge: true,
                });
        }
        tracked
    }

    /// Every meter point the figures read, once each, sorted: the flows' and the calorimeters'.
    pub fn read_points(&self) -> Vec<(String, String)> {
        let flows = self.flows().map(|f| (f.device.clone(), f.point.clone()));
        let lhv = self
            .lhv_points()
            .map(|p| (p.device.clone(), p.point.clone()));
        let mut points: Vec<(String, String)> = flows.chain(lhv).collect();
        points.sort();
        points.dedup();
        points
    }

    /// The calorimeter points some flow takes its heating value from.
    pub fn lhv_points(&self) -> impl Iterator<Item = &PointRef> {
        self.flows().filter_map(|f| f.lhv_point.as_ref())
    }

    pub fn unit(&self, id: &str) -> Option<&Unit> {
        self.units.iter().find(|u| u.id == id)
    }

    /// Every (device, point) some unit or the boundary accounts for, with its flow.
    pub fn flows(&self) -> impl Iterator<Item = &Flow> {
        self.units
            .iter()
            .flat_map(|u| u.flows.iter())
            .chain(self.boundary.iter().map(|b| &b.flow))
            .chain(self.sites.iter().flat_map(|s| s.intake.iter()))
    }

    /// The enterprise answering to `name` (its id or credit code).
    pub fn enterprise(&self, name: &str) -> Option<&EnterpriseConfig> {
        self.enterprises.iter().find(|e| e.answers_to(name))
    }

    /// The only enterprise, where the gateway serves exactly one.
    pub fn sole_enterprise(&self) -> Option<&EnterpriseConfig> {
        match self.enterprises.as_slice() {
            [e] => Some(e),
            _ => None,
        }
    }

    /// The plant of one enterprise (answering to `name`): its units and boundary meters only,
    /// so every figure drawn from it is that enterprise's. None if no enterprise answers.
    pub fn of_enterprise(&self, name: &str) -> Option<Plant> {
        let e = self.enterprise(name)?;
        let key = e.key().map(str::to_owned);
        Some(Plant {
            enterprises: vec![e.clone()],
            units: self
                .units
                .iter()
                .filter(|u| u.enterprise == key)
                .cloned()
                .collect(),
            boundary: self
                .boundary
                .iter()
                .filter(|b| b.enterprise == key)
                .cloned()
                .collect(),
            sites: self
                .sites
                .iter()
                .filter(|s| s.enterprise == key)
                .cloned()
                .collect(),
            // Field by field: `..self.clone()` would copy every unit and meter only to drop them.
            calendar: self.calendar.clone(),
            coefficients: self.coefficients.clone(),
            limits: self.limits.clone(),
            electricity: self.electricity,
            max_sample_gap_ms: self.max_sample_gap_ms,
            frozen_after_ms: self.frozen_after_ms,
            gap_fill: self.gap_fill,
        })
    }
}

/// The sites that declare a water intake or quota, checked: intake meters count water (m3), the
/// quota is known, the product units are the enterprise's own and make a product (errors name
/// `enterprises[e].sites[s].key`).
fn sites_of(
    src: &Source,
    enterprises: &[EnterpriseConfig],
    table: &dyn Fn(usize) -> String,
    units: &[Unit],
    (coefficients, limits): (&Coefficients, &Limits),
    zone: (ElectricityBasis, chrono::FixedOffset),
) -> Result<Vec<Site>, ConfigError> {
    let mut sites = Vec::new();
    for (e, ent) in enterprises.iter().enumerate() {
        let owner = ent.key().map(str::to_owned);
        for (n, site) in ent.sites.iter().enumerate() {
            let key = |k: &str| format!("{}.sites[{n}].{k}", table(e));
            if site.water_intake.is_empty()
                && site.water_quota.is_none()
                && site.water_product_units.is_empty()
            {
                continue;
            }
            let mut intake = Vec::new();
            for (j, f) in site.water_intake.iter().enumerate() {
                let at = key(&format!("water_intake[{j}]"));
                if f.role != Role::Water {
                    return Err(src.error(
                        &format!("{at}.role"),
                        "a site's intake meter counts water: role = \"water\"",
                    ));
                }
                intake.push(resolve_flow(src, &at, f, coefficients, zone)?);
            }
            let water_quota = match &site.water_quota {
                None => None,
                Some(code) => Some(
                    limits
                        .quota(code)
                        .ok_or_else(|| {
                            src.error(&key("water_quota"), format!("unknown water quota `{code}`"))
                        })?
                        .clone(),
                ),
            };
            for (j, id) in site.water_product_units.iter().enumerate() {
                let unit = units.iter().find(|u| &u.id == id && u.enterprise == owner);
                if !unit.is_some_and(|u| u.flows.iter().any(|f| f.role == Role::Product)) {
                    return Err(src.error(
                        &key(&format!("water_product_units[{j}]")),
                        format!("`{id}` is not a unit of this enterprise with a product flow"),
                    ));
                }
            }
            if water_quota.is_some() && (intake.is_empty() || site.water_product_units.is_empty()) {
                return Err(src.error(
                    &key("water_quota"),
                    "a quota is judged on the site's intake per tonne of its product: give \
                     water_intake meters and water_product_units",
                ));
            }
            sites.push(Site {
                id: site.id.clone(),
                name: site.name.clone(),
                enterprise: owner.clone(),
                water_quota,
                product_units: site.water_product_units.clone(),
                intake,
            });
        }
    }
    Ok(sites)
}

/// The enterprise tables as written: `[enterprise]` (one) or `[[enterprises]]` (a group's
/// several), one or the other.
#[derive(Clone, Copy)]
pub struct EnterpriseTables<'a> {
    pub one: &'a Option<EnterpriseConfig>,
    pub several: &'a [EnterpriseConfig],
}

impl EnterpriseTables<'_> {
    fn checked(&self, src: &Source) -> Result<Vec<EnterpriseConfig>, ConfigError> {
        match (self.one, self.several.is_empty()) {
            (Some(_), false) => Err(src.error(
                "enterprises",
                "give either [enterprise] (one) or [[enterprises]] (several), not both",
            )),
            (Some(e), true) => Ok(vec![e.clone()]),
            (None, _) => Ok(self.several.to_vec()),
        }
    }
}

/// Checks one flow's table and resolves its conversion to kgce (errors name `key`).
fn resolve_flow(
    src: &Source,
    key: &str,
    f: &FlowConfig,
    coefficients: &Coefficients,
    (basis, tz): (ElectricityBasis, chrono::FixedOffset),
) -> Result<Flow, ConfigError> {
    let key = |k: &str| format!("{key}.{k}");
    let unit = f.unit.get_ref();
    let mut factors = [0.0; 2];
    let factor = match f.role {
        Role::Material => Some(1.0),
        Role::Submeter => {
            match f.carrier.as_ref().map(|c| c.get_ref().as_str()) {
                Some("electricity_dc") => unit_factor(unit, "kWh"),
                // The line's ampere-hour totaliser, in kA-h.
                Some("line_current") => match unit.as_str() {
                    "kAh" => Some(1.0),
                    "Ah" => Some(0.001),
                    _ => None,
                },
                _ => return Err(src.error(
                    &key("carrier"),
                    "a submeter is the potline's DC energy (carrier = \"electricity_dc\") or its \
                     line current's ampere-hours (carrier = \"line_current\")",
                )),
            }
        }
        Role::Product => unit_factor(unit, "t"),
        Role::Water => unit_factor(unit, "m3"),
        Role::Consumed
        | Role::Recovered
        | Role::Purchase
        | Role::Export
        | Role::Stock
        | Role::Flare => {
            let Some(code) = &f.carrier else {
                return Err(src.error(&key("carrier"), "an energy flow needs a carrier"));
            };
            // Electricity on both bases; any other carrier is the same on both.
            let codes = match code.get_ref().as_str() {
                "electricity" => ["electricity", "electricity_equal"],
                other => [other, other],
            };
            for (b, code_str) in factors.iter_mut().zip(codes) {
                let Some(carrier) = coefficients.get(code_str) else {
                    return Err(src.error_at(
                        code.span(),
                        &key("carrier"),
                        format!("unknown carrier `{code_str}`"),
                    ));
                };
                *b = match f.lhv_kj {
                    Some(lhv) if lhv.is_finite() && lhv > 0.0 => lhv / coefficients.kj_per_kgce,
                    Some(_) => return Err(src.error(&key("lhv_kj"), "must be a positive number")),
                    None => match unit_factor(unit, &carrier.unit) {
                        Some(k) => k * carrier.kgce_per_unit,
                        None => {
                            return Err(src.error_at(
                                f.unit.span(),
                                &key("unit"),
                                format!("unit `{unit}` does not fit a {:?} flow", f.role),
                            ))
                        }
                    },
                };
            }
            Some(factors[basis.index()])
        }
    };
    let Some(factor) = factor else {
        return Err(src.error_at(
            f.unit.span(),
            &key("unit"),
            format!("unit `{unit}` does not fit a {:?} flow", f.role),
        ));
    };
    let energy = !matches!(
        f.role,
        Role::Material | Role::Submeter | Role::Product | Role::Water
    );
    let (steps, measured_from) = if energy {
        steps_of(src, &key, f, coefficients, tz)?
    } else if !f.lhv.is_empty() || f.lhv_kj.is_some() {
        return Err(src.error(&key("lhv"), "only an energy flow has a heating value"));
    } else if f.lhv_point.is_some() {
        return Err(src.error(&key("lhv_point"), "only an energy flow has a heating value"));
    } else {
        (crate::schedule::Steps::default(), None)
    };
    Ok(Flow {
        device: f.device.clone(),
        point: f.point.clone(),
        role: f.role,
        carrier: f.carrier.as_ref().map(|c| c.get_ref().clone()),
        unit: unit.clone(),
        factors: if energy { factors } else { [factor; 2] },
        basis: basis.index(),
        kind: f
            .carrier
            .as_ref()
            .filter(|_| energy)
            .and_then(|c| coefficients.get(c.get_ref()))
            .and_then(|c| c.kind),
        rollover: f.rollover,
        max_rate_per_h: f.max_rate_per_h,
        own_use: false,
        steps,
        measured_from,
        lhv_point: f.lhv_point.clone(),
        kj_per_kgce: coefficients.kj_per_kgce,
    })
}

/// Where an energy flow's factors change in time: at each year its carrier has a figure of its
/// own (and the year after), and at each measured heating value. A measured value replaces the
/// table and `lhv_kj` from its time on; before the first, the table or `lhv_kj` holds.
fn steps_of(
    src: &Source,
    key: &dyn Fn(&str) -> String,
    f: &FlowConfig,
    coefficients: &Coefficients,
    tz: chrono::FixedOffset,
) -> Result<(crate::schedule::Steps, Option<i64>), ConfigError> {
    use crate::schedule::{local_year, year_start, Steps};
    let mut measured: Vec<(i64, f64)> = Vec::with_capacity(f.lhv.len());
    for (k, hv) in f.lhv.iter().enumerate() {
        let from = hv
            .checked(tz)
            .map_err(|(field, why)| src.error(&key(&format!("lhv[{k}].{field}")), why))?;
        if measured.iter().any(|(t, _)| *t == from) {
            return Err(src.error(
                &key(&format!("lhv[{k}].from")),
                format!("{} is given twice", hv.from),
            ));
        }
        measured.push((from, hv.lhv_kj));
    }
    measured.sort_by_key(|(t, _)| *t);
    let code = f
        .carrier
        .as_ref()
        .map(|c| c.get_ref().as_str())
        .unwrap_or_default();
    let codes = match code {
        "electricity" => ["electricity", "electricity_equal"],
        other => [other, other],
    };
    let carriers = codes.map(|c| coefficients.get(c));
    let per_unit = carriers.map(|c| {
        c.and_then(|c| unit_factor(f.unit.get_ref(), &c.unit))
            .unwrap_or(0.0)
    });
    let mut at: std::collections::BTreeSet<i64> = measured.iter().map(|(t, _)| *t).collect();
    if f.lhv_kj.is_none() {
        for c in carriers.iter().flatten() {
            for y in &c.by_year {
                at.insert(year_start(y.year, tz));
                at.insert(year_start(y.year + 1, tz));
            }
        }
    }
    let factors_at = |t: i64| -> [f64; 2] {
        let lhv = match measured.partition_point(|(from, _)| *from <= t) {
            0 => f.lhv_kj,
            i => Some(measured[i - 1].1),
        };
        let mut out = [0.0; 2];
        for b in 0..2 {
            out[b] = match (lhv, carriers[b]) {
                (Some(lhv), _) => lhv / coefficients.kj_per_kgce,
                (None, Some(c)) => per_unit[b] * c.figure_of(local_year(t, tz)),
                (None, None) => 0.0,
            };
        }
        out
    };
    let steps = Steps(at.into_iter().map(|t| (t, factors_at(t))).collect());
    Ok((steps, measured.first().map(|(t, _)| *t)))
}

/// A unit that burns a carrier it also recovers must say, on each recovered meter of it,
/// whether the meter is gross or net, so the own use is counted once; behind a net meter the
/// unit's consumption of that carrier becomes own use (errors name `units[i].flows[j]`).
/// `flows` are `unit.flows` resolved, in the same order.
fn declare_own_use(
    src: &Source,
    i: usize,
    unit: &UnitConfig,
    flows: &mut [Flow],
) -> Result<(), ConfigError> {
    let key = |j: usize| format!("units[{i}].flows[{j}].generation");
    let declared = |j: usize| unit.flows[j].generation;
    let mut net = Vec::new();
    for (j, f) in flows.iter().enumerate() {
        if f.role != Role::Recovered {
            if declared(j).is_some() {
                return Err(src.error(&key(j), "only a recovered flow is gross or net"));
            }
            continue;
        }
        let burnt = flows
            .iter()
            .any(|g| g.role == Role::Consumed && g.carrier == f.carrier);
        let carrier = f.carrier.as_deref().unwrap_or_default();
        match declared(j) {
            None if burnt => {
                return Err(src.error(
                    &key(j),
                    format!(
                        "unit `{}` also consumes {carrier}: say whether `{}` meters all it \
                         generates (generation = \"gross\", its own use counted as consumption) \
                         or what leaves it after its own use (generation = \"net\")",
                        unit.id.get_ref(),
                        f.device
                    ),
                ))
            }
            Some(g) => {
                let other = flows.iter().enumerate().find(|(k, o)| {
                    o.role == Role::Recovered
                        && o.carrier == f.carrier
                        && declared(*k).is_some_and(|og| og != g)
                });
                if let Some((_, o)) = other {
                    return Err(src.error(
                        &key(j),
                        format!(
                            "`{}` and `{}` meter the unit's {carrier} differently: declare both \
                             gross or both net",
                            f.device, o.device
                        ),
                    ));
                }
                if g == Generation::Net {
                    net.push(f.carrier.clone());
                }
            }
            None => {}
        }
    }
    for f in flows.iter_mut() {
        if f.role == Role::Consumed && net.contains(&f.carrier) {
            f.own_use = true;
            f.factors = [0.0; 2];
            f.steps = crate::schedule::Steps::default();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo plant's tables (the gateway's example file without its runtime tables).
    fn demo() -> Plant {
        let text = include_str!("../../examples/demo.toml");
        let start = text
            .find("[accounting]")
            .expect("the example has [accounting]");
        Plant::from_tables(&Source::embedded("demo.toml", &text[start..]))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn units_sit_in_declared_workshops() {
        let demo = demo();
        let bof = demo.unit("bof1").unwrap();
        assert_eq!(
            (bof.workshop.as_deref(), bof.site.as_deref()),
            (Some("steelmaking"), Some("main"))
        );
        let head = "[enterprise]\nname = \"E\"\n[[enterprise.sites]]\nid = \"s\"\nname = \"S\"\nworkshops = [{ id = \"w\", name = \"W\" }]\n[[units]]\nid = \"u\"\nname = \"U\"\nkind = \"kiln\"\n";
        let flows = "[[units.flows]]\ndevice = \"d\"\npoint = \"total\"\nrole = \"product\"\nunit = \"t\"\n";
        let err = |unit: &str| {
            Plant::from_tables(&Source::embedded(
                "gw.toml",
                &format!("{head}{unit}{flows}"),
            ))
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            err("workshop = \"ww\"\n"),
            "gw.toml:11:12: key `units[0].workshop`: unknown workshop `ww`"
        );
        assert!(err("").contains("key `units[0].workshop`: the enterprise declares workshops"));
    }

    #[test]
    fn coefficients_follow_the_metered_unit_and_measured_heating_value() {
        let plant = demo();
        let bf = plant.unit("bf1").unwrap();
        let coke = bf
            .flows
            .iter()
            .find(|f| f.carrier.as_deref() == Some("coke"))
            .unwrap();
        assert_eq!(coke.unit, "t");
        assert!((coke.factor() - 971.4).abs() < 1e-9);
        let bof = plant.unit("bof1").unwrap();
        let ldg = bof
            .flows
            .iter()
            .find(|f| f.carrier.as_deref() == Some("converter_gas"))
            .unwrap();
        assert!((ldg.factor() - 7_500.0 / 29_307.0).abs() < 1e-12);
    }

    #[test]
    fn limits_and_their_correction_inputs_are_checked() {
        let base = "[[units]]\nid = \"u\"\nname = \"U\"\nkind = \"converter\"\n";
        let flows = "[[units.flows]]\ndevice = \"d\"\npoint = \"total\"\nrole = \"product\"\nunit = \"t\"\n";
        let err = |unit: &str| {
            Plant::from_tables(&Source::embedded(
                "gw.toml",
                &format!("{base}{unit}{flows}"),
            ))
            .unwrap_err()
        };
        let e = err("limits = [\"converterr\"]\n");
        assert_eq!(
            e.to_string(),
            "gw.toml:5:11: key `units[0].limits[0]`: unknown limit `converterr`"
        );
        let e = err("limits = [\"converter\"]\n");
        assert!(
            e.to_string()
                .contains("limit `converter` (GB 21256-2025 2025, in force 2026-07-01) needs `scrap_ratio_pct`"),
            "{e}"
        );
        let e = err("limits = [\"converter\"]\ncorrections = { scrap_ratio_pct = { ratio = [\"s\"], of = [\"s\", \"d\"] }, steel_category = \"plain_carbon\" }\n");
        assert!(
            e.to_string().contains("`s` is not one of the unit's flows"),
            "{e}"
        );
        let e = err("water_quota = \"dishwater\"\n");
        assert!(
            e.to_string().contains("unknown water quota `dishwater`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_carrier_names_line_and_key() {
        let text = "[[units]]\nid = \"u\"\nname = \"U\"\nkind = \"kiln\"\n[[units.flows]]\ndevice = \"d\"\npoint = \"total\"\nrole = \"consumed\"\ncarrier = \"unobtainium\"\nunit = \"t\"\n";
        let err = Plant::from_tables(&Source::embedded("gw.toml", text)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gw.toml:9:11: key `units[0].flows[0].carrier`: unknown carrier `unobtainium`"
        );
    }
}
