//! Standard-coal coefficients as data (gateway/energy/data/coefficients.toml), with their sources.

use std::collections::BTreeMap;

use ems_config::{ConfigError, Source};
use serde::{Deserialize, Serialize};

/// Which electricity coefficient a figure uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ElectricityBasis {
    /// 当量值, 0.1229 kgce/kWh: what most limit standards are built on.
    #[default]
    Equivalent,
    /// 等价值, from the year's thermal-power coal rate.
    Equal,
}

impl ElectricityBasis {
    /// Index into a pair of (equivalent, equal-value) figures.
    pub fn index(self) -> usize {
        match self {
            ElectricityBasis::Equivalent => 0,
            ElectricityBasis::Equal => 1,
        }
    }
}

pub const BUILT_IN: &str = include_str!("../data/coefficients.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: String,
    kj_per_kgce: f64,
    carrier: Vec<Carrier>,
}

/// What a carrier is to the standards' figures: clinker comprehensive coal (GB 16780) counts
/// fuels only, not electricity, heat or working media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CarrierKind {
    /// Coal, coke, oil, gases burnt.
    Fuel,
    Electricity,
    /// Heat and steam.
    Heat,
    /// Energy-consuming working media (耗能工质): oxygen, nitrogen, compressed air, water.
    WorkingMedium,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carrier {
    pub code: String,
    pub name_zh: String,
    pub name_en: String,
    /// Physical unit the coefficient is per.
    pub unit: String,
    pub kgce_per_unit: f64,
    /// Fuel, electricity, heat or working medium; a plant's own file may leave it out, and a
    /// figure that needs it (fuel only) is then not judged, with the reason.
    #[serde(default)]
    pub kind: Option<CarrierKind>,
    pub source: SourceRef,
    /// Figures of particular years, each with its source: the equal value of electricity
    /// follows the year's thermal-power supply coal rate. A period's hours in such a year use
    /// that year's figure; hours of a year without one use `kgce_per_unit` (and say so: see
    /// [`Carrier::figure_of`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_year: Vec<YearFigure>,
}

/// A carrier's figure for one calendar year (the plant's local year).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YearFigure {
    pub year: i32,
    pub kgce_per_unit: f64,
    pub source: SourceRef,
}

impl Carrier {
    /// The figure in force in `year`: that year's own, or the carrier's general one.
    pub fn figure_of(&self, year: i32) -> f64 {
        self.by_year
            .iter()
            .find(|y| y.year == year)
            .map_or(self.kgce_per_unit, |y| y.kgce_per_unit)
    }
}

/// Where a figure comes from: standard, edition, table, and whether it was checked against the
/// licensed text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    pub standard: String,
    pub edition: String,
    pub table: String,
    pub verified: bool,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone)]
pub struct Coefficients {
    pub version: String,
    pub kj_per_kgce: f64,
    carriers: BTreeMap<String, Carrier>,
}

impl Coefficients {
    pub fn built_in() -> Self {
        Coefficients::from_source(&Source::embedded("<built-in coefficients>", BUILT_IN))
            .expect("built-in coefficients are valid")
    }

    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let file: File = src.parse()?;
        let mut carriers = BTreeMap::new();
        for (i, c) in file.carrier.into_iter().enumerate() {
            if !(c.kgce_per_unit.is_finite() && c.kgce_per_unit > 0.0) {
                return Err(src.error(
                    &format!("carrier[{i}].kgce_per_unit"),
                    "must be a positive number",
                ));
            }
            if unit_factor(&c.unit, &c.unit).is_none() {
                return Err(src.error(
                    &format!("carrier[{i}].unit"),
                    format!("unknown unit `{}`", c.unit),
                ));
            }
            let mut years = std::collections::BTreeSet::new();
            for (j, y) in c.by_year.iter().enumerate() {
                let key = |k: &str| format!("carrier[{i}].by_year[{j}].{k}");
                if !(1950..=2200).contains(&y.year) || !years.insert(y.year) {
                    return Err(src.error(&key("year"), "a year from 1950 on, each once"));
                }
                if !(y.kgce_per_unit.is_finite() && y.kgce_per_unit > 0.0) {
                    return Err(src.error(&key("kgce_per_unit"), "must be a positive number"));
                }
            }
            if carriers.insert(c.code.clone(), c).is_some() {
                return Err(src.error(&format!("carrier[{i}].code"), "duplicate carrier code"));
            }
        }
        Ok(Coefficients {
            version: file.version,
            kj_per_kgce: file.kj_per_kgce,
            carriers,
        })
    }

    pub fn get(&self, code: &str) -> Option<&Carrier> {
        self.carriers.get(code)
    }

    pub fn all(&self) -> impl Iterator<Item = &Carrier> {
        self.carriers.values()
    }
}

/// How many `to` units one `from` unit is, for the units meters count in.
pub fn unit_factor(from: &str, to: &str) -> Option<f64> {
    // Each unit as (dimension, size in the dimension's base unit).
    fn base(u: &str) -> Option<(&'static str, f64)> {
        Some(match u {
            "kg" => ("mass", 1.0),
            "t" => ("mass", 1_000.0),
            "kWh" => ("energy_e", 1.0),
            "MWh" => ("energy_e", 1_000.0),
            "m3" => ("volume", 1.0),
            "km3" => ("volume", 1_000.0),
            "MJ" => ("heat", 1.0),
            "GJ" => ("heat", 1_000.0),
            _ => return None,
        })
    }
    let (df, sf) = base(from)?;
    let (dt, st) = base(to)?;
    (df == dt).then_some(sf / st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_figure_names_its_source() {
        let c = Coefficients::built_in();
        assert!(c.all().count() >= 15);
        for carrier in c.all() {
            assert!(
                !carrier.source.standard.is_empty() && !carrier.source.edition.is_empty(),
                "{}",
                carrier.code
            );
            assert!(!carrier.source.table.is_empty(), "{}", carrier.code);
        }
    }

    #[test]
    fn coefficients_agree_with_their_heating_values() {
        // The appendix prints heating values converted from kcal with the 20 degC calorie
        // (4.1816 kJ), and each coefficient is kcal / 7 000: so coefficient = LHV / 29 271.2,
        // to the four digits printed. (Dividing by 29 307 kJ instead is 0.12 % off.)
        let c = Coefficients::built_in();
        for (code, lhv) in [
            ("raw_coal", 20_908.0),
            ("coke", 28_435.0),
            ("natural_gas", 35_544.0),
            ("bfg", 3_763.0),
        ] {
            let k = c.get(code).unwrap().kgce_per_unit;
            let expected = lhv / (7_000.0 * 4.1816);
            assert!((k - expected).abs() < 6e-5, "{code}: {k} vs {expected}");
        }
        // Electricity: 860 kcal/kWh (3 600 kJ with the international calorie) / 7 000.
        assert!((c.get("electricity").unwrap().kgce_per_unit - 860.0 / 7_000.0).abs() < 6e-5);
    }

    #[test]
    fn unit_conversion() {
        assert_eq!(unit_factor("t", "kg"), Some(1_000.0));
        assert_eq!(unit_factor("MWh", "kWh"), Some(1_000.0));
        assert_eq!(unit_factor("kg", "t"), Some(0.001));
        assert_eq!(unit_factor("t", "m3"), None);
        assert_eq!(unit_factor("furlong", "m3"), None);
    }
}
