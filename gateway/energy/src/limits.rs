//! Limit standards and water quotas as data (gateway/energy/data/limits.toml), and judging a unit
//! figure against them: the corrected thresholds and the level reached.

use std::collections::BTreeMap;

use ems_config::{ConfigError, Source};
use serde::{Deserialize, Serialize};

use crate::coefficients::SourceRef;

pub const BUILT_IN: &str = include_str!("../data/limits.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: String,
    #[serde(default)]
    limit: Vec<Limit>,
    #[serde(default)]
    water_quota: Vec<WaterQuota>,
}

/// Which of a unit's figures a limit judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Figure {
    KgcePerT,
    KwhPerT,
    /// Fuels consumed only, kgce per tonne (clinker comprehensive coal, GB 16780): not
    /// electricity, heat or working media, and no recovered energy credited.
    FuelKgcePerT,
}

impl Figure {
    pub fn unit_label(self) -> &'static str {
        match self {
            Figure::KgcePerT | Figure::FuelKgcePerT => "kgce/t",
            Figure::KwhPerT => "kWh/t",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub code: String,
    pub name_zh: String,
    pub name_en: String,
    pub indicator: Figure,
    /// Thresholds of levels 1, 2 and 3 before corrections. A standard that gives no level 2
    /// for a row (GB 21256-2025's smaller electric arc furnaces) has `nan` there: a figure
    /// between levels 1 and 3 is then level 3, and a new unit, which must reach level 2, is
    /// not judged on that row.
    pub levels: [f64; 3],
    /// The electricity basis the standard's figure is built on (most: the equivalent value).
    #[serde(default)]
    pub basis: crate::coefficients::ElectricityBasis,
    /// The day this edition comes into force (the plant's local date); absent: in force since
    /// before any data. Editions of one standard share its `code`: a period is judged on the
    /// edition in force on its first day.
    #[serde(default)]
    pub effective_from: Option<chrono::NaiveDate>,
    pub source: SourceRef,
    #[serde(default)]
    pub correction: Vec<Correction>,
}

/// How a relevant variable moves the thresholds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Correction {
    /// `per_point[level] x (input - base)`.
    Linear {
        input: String,
        base: f64,
        per_point: [f64; 3],
    },
    /// `per_point[level] x min(max(base - input, 0), max_points)`: only a shortfall counts.
    Shortfall {
        input: String,
        base: f64,
        max_points: f64,
        per_point: [f64; 3],
    },
    /// A fixed addition by category (steel grade, ...).
    Category {
        input: String,
        values: BTreeMap<String, f64>,
    },
}

impl Correction {
    pub fn input(&self) -> &str {
        match self {
            Correction::Linear { input, .. }
            | Correction::Shortfall { input, .. }
            | Correction::Category { input, .. } => input,
        }
    }
}

/// A correction input's value for one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputValue {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaterQuota {
    pub code: String,
    pub name_zh: String,
    /// m3 per tonne: at or below meets the quota.
    pub general: f64,
    /// m3 per tonne: at or below is advanced.
    pub advanced: f64,
    pub unit: String,
    pub source: SourceRef,
}

/// Whether a unit is judged as existing (the limit is level 3) or as new or rebuilt (it must
/// reach level 2, the standards' entry value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitStatus {
    #[default]
    Existing,
    New,
}

impl UnitStatus {
    /// The level a unit of this status must reach.
    pub fn limit_level(self) -> u8 {
        match self {
            UnitStatus::Existing => 3,
            UnitStatus::New => 2,
        }
    }
}

/// Where a figure stands against one limit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Judgement {
    pub code: String,
    pub standard: String,
    /// The edition judged on (the one in force on the period's first day).
    pub edition: String,
    pub indicator: Figure,
    pub value: f64,
    /// Corrected thresholds of levels 1, 2, 3 (null in JSON where the standard gives none).
    pub thresholds: [f64; 3],
    /// 1, 2 or 3; `None` above the level-3 threshold.
    pub level: Option<u8>,
    /// The level the unit must reach: 3 for an existing unit, 2 for a new or rebuilt one.
    pub limit_level: u8,
    pub within_limit: bool,
    /// Another edition comes into force within the period (judged on the one at its start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WaterJudgement {
    pub code: String,
    pub standard: String,
    pub value: f64,
    pub general: f64,
    pub advanced: f64,
    /// "advanced", "general" or "above_quota".
    pub grade: &'static str,
}

impl Limit {
    /// Thresholds after corrections; an input the limit needs and was not given is an error.
    pub fn thresholds(&self, inputs: &BTreeMap<String, InputValue>) -> Result<[f64; 3], String> {
        let mut t = self.levels;
        for c in &self.correction {
            let value = inputs
                .get(c.input())
                .ok_or_else(|| format!("{} needs `{}`", self.code, c.input()))?;
            for (level, threshold) in t.iter_mut().enumerate() {
                *threshold += match (c, value) {
                    (
                        Correction::Linear {
                            base, per_point, ..
                        },
                        InputValue::Number(x),
                    ) => per_point[level] * (x - base),
                    (
                        Correction::Shortfall {
                            base,
                            max_points,
                            per_point,
                            ..
                        },
                        InputValue::Number(x),
                    ) => per_point[level] * (base - x).clamp(0.0, *max_points),
                    (Correction::Category { values, .. }, InputValue::Text(s)) => *values
                        .get(s)
                        .ok_or_else(|| format!("`{}` is not a category of {}", s, c.input()))?,
                    _ => {
                        return Err(format!(
                            "`{}` has the wrong type for {}",
                            c.input(),
                            self.code
                        ))
                    }
                };
            }
        }
        Ok(t)
    }

    pub fn judge(
        &self,
        value: f64,
        inputs: &BTreeMap<String, InputValue>,
        status: UnitStatus,
    ) -> Result<Judgement, String> {
        let thresholds = self.thresholds(inputs)?;
        let limit_level = status.limit_level();
        if thresholds[usize::from(limit_level) - 1].is_nan() {
            return Err(format!(
                "{}: not judged: {} gives no level {limit_level} for this row, the level a {} unit must reach",
                self.code,
                self.source.standard,
                if limit_level == 2 { "new" } else { "existing" }
            ));
        }
        // A level the standard does not give (nan) is never reached.
        let level = thresholds
            .iter()
            .position(|&t| value <= t)
            .map(|i| i as u8 + 1);
        Ok(Judgement {
            code: self.code.clone(),
            standard: self.source.standard.clone(),
            edition: self.source.edition.clone(),
            indicator: self.indicator,
            value,
            thresholds,
            level,
            limit_level,
            within_limit: level.is_some_and(|l| l <= limit_level),
            note: None,
        })
    }
}

/// A limit's editions in time, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct Editions {
    pub code: String,
    pub editions: Vec<Limit>,
}

impl Editions {
    /// The edition in force on `day`, if any is yet.
    pub fn in_force(&self, day: chrono::NaiveDate) -> Option<&Limit> {
        self.editions
            .iter()
            .rev()
            .find(|l| l.effective_from.is_none_or(|d| d <= day))
    }

    /// An edition that comes into force after `first` and on or before `last`.
    pub fn change_within(
        &self,
        first: chrono::NaiveDate,
        last: chrono::NaiveDate,
    ) -> Option<&Limit> {
        self.editions
            .iter()
            .find(|l| l.effective_from.is_some_and(|d| first < d && d <= last))
    }

    /// The newest edition.
    pub fn latest(&self) -> &Limit {
        self.editions
            .last()
            .expect("a limit has at least one edition")
    }
}

impl WaterQuota {
    pub fn judge(&self, m3_per_t: f64) -> WaterJudgement {
        let grade = if m3_per_t <= self.advanced {
            "advanced"
        } else if m3_per_t <= self.general {
            "general"
        } else {
            "above_quota"
        };
        WaterJudgement {
            code: self.code.clone(),
            standard: self.source.standard.clone(),
            value: m3_per_t,
            general: self.general,
            advanced: self.advanced,
            grade,
        }
    }
}

/// Every limit and quota known.
#[derive(Debug, Clone)]
pub struct Limits {
    pub version: String,
    limits: BTreeMap<String, Editions>,
    quotas: BTreeMap<String, WaterQuota>,
}

impl Limits {
    pub fn built_in() -> Self {
        Limits::from_source(&Source::embedded("<built-in limits>", BUILT_IN))
            .expect("built-in limits are valid")
    }

    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let file: File = src.parse()?;
        let mut limits: BTreeMap<String, Editions> = BTreeMap::new();
        for (i, l) in file.limit.into_iter().enumerate() {
            let [l1, l2, l3] = l.levels;
            let ordered = if l2.is_nan() {
                l1 <= l3
            } else {
                l1 <= l2 && l2 <= l3
            };
            if !(l1.is_finite() && l3.is_finite() && (l2.is_finite() || l2.is_nan()) && ordered) {
                return Err(src.error(
                    &format!("limit[{i}].levels"),
                    "three finite thresholds, level 1 lowest (level 2 may be nan where the standard gives none)",
                ));
            }
            let e = limits.entry(l.code.clone()).or_insert_with(|| Editions {
                code: l.code.clone(),
                editions: Vec::new(),
            });
            if e.editions
                .iter()
                .any(|o| o.effective_from == l.effective_from)
            {
                return Err(src.error(
                    &format!("limit[{i}].code"),
                    "duplicate code: editions of one limit need different `effective_from` dates",
                ));
            }
            e.editions.push(l);
            e.editions.sort_by_key(|l| l.effective_from);
        }
        let mut quotas = BTreeMap::new();
        for (i, q) in file.water_quota.into_iter().enumerate() {
            if !(q.advanced.is_finite() && q.general.is_finite()) || q.advanced > q.general {
                return Err(src.error(
                    &format!("water_quota[{i}].advanced"),
                    "finite, and not above `general`",
                ));
            }
            if quotas.insert(q.code.clone(), q).is_some() {
                return Err(src.error(&format!("water_quota[{i}].code"), "duplicate code"));
            }
        }
        Ok(Limits {
            version: file.version,
            limits,
            quotas,
        })
    }

    /// The newest edition of the limit `code`.
    pub fn limit(&self, code: &str) -> Option<&Limit> {
        self.limits.get(code).map(Editions::latest)
    }

    /// Every edition of the limit `code`.
    pub fn editions(&self, code: &str) -> Option<&Editions> {
        self.limits.get(code)
    }

    pub fn quota(&self, code: &str) -> Option<&WaterQuota> {
        self.quotas.get(code)
    }

    /// Every edition of every limit.
    pub fn limits(&self) -> impl Iterator<Item = &Limit> {
        self.limits.values().flat_map(|e| &e.editions)
    }

    pub fn quotas(&self) -> impl Iterator<Item = &WaterQuota> {
        self.quotas.values()
    }
}

#[cfg(test)]
mod tests {
    //! Golden examples, computed by hand from the figures in gateway/energy/data/limits.toml.
    use super::*;

    fn inputs(pairs: &[(&str, InputValue)]) -> BTreeMap<String, InputValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn num(x: f64) -> InputValue {
        InputValue::Number(x)
    }

    fn close(a: [f64; 3], b: [f64; 3]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn every_limit_names_its_standard_and_table() {
        let l = Limits::built_in();
        assert!(l.limits().count() >= 13 && l.quotas().count() >= 5);
        for x in l.limits() {
            assert!(
                x.source.standard.starts_with("GB") && !x.source.table.is_empty(),
                "{}",
                x.code
            );
        }
    }

    #[test]
    fn a_row_without_a_level_2_grades_to_level_3_and_leaves_a_new_unit_unjudged() {
        // GB 21256-2025, electric arc furnaces of 50-70 t: 61 / (none) / 72 kgce/t.
        let l = Limits::built_in();
        let eaf = l.editions("eaf_50t_to_70t").unwrap().latest();
        let none = inputs(&[]);
        let judged = |v: f64| eaf.judge(v, &none, UnitStatus::Existing).unwrap();
        assert_eq!(judged(60.0).level, Some(1));
        let mid = judged(65.0);
        assert_eq!((mid.level, mid.within_limit), (Some(3), true), "{mid:?}");
        assert!(mid.thresholds[1].is_nan());
        assert_eq!(judged(72.5).level, None);
        let new = eaf.judge(65.0, &none, UnitStatus::New).unwrap_err();
        assert!(
            new.contains("gives no level 2") && new.contains("new"),
            "{new}"
        );
        // In JSON the missing level is null, never a number.
        let json = serde_json::to_value(&mid).unwrap();
        assert_eq!(json["thresholds"], serde_json::json!([61.0, null, 72.0]));
        // Only level 2 may be missing, and the others stay ordered.
        let file = |levels: &str| {
            format!("version = \"t\"\n[[limit]]\ncode = \"x\"\nname_zh = \"x\"\nname_en = \"x\"\nindicator = \"kgce_per_t\"\nlevels = {levels}\nsource = {{ standard = \"GB 1\", edition = \"1\", table = \"1\", verified = false }}\n")
        };
        for bad in [
            "[nan, 2.0, 3.0]",
            "[1.0, 2.0, nan]",
            "[3.0, nan, 1.0]",
            "[1.0, inf, 3.0]",
        ] {
            let e = Limits::from_source(&Source::embedded("limits.toml", &file(bad))).unwrap_err();
            assert_eq!(e.key.as_deref(), Some("limit[0].levels"), "{bad}");
        }
    }

    #[test]
    fn blast_furnace_feed_grade_shortfall_is_capped_at_five_points() {
        let bf = Limits::built_in().limit("blast_furnace").unwrap().clone();
        // 60 % feed: 2 points short, +7.22 on every level.
        let t = bf
            .thresholds(&inputs(&[("feed_grade_pct", num(60.0))]))
            .unwrap();
        assert!(close(t, [368.22, 377.22, 422.22]), "{t:?}");
        // 55 %: 7 points short, counted as 5: +18.05.
        let t = bf
            .thresholds(&inputs(&[("feed_grade_pct", num(55.0))]))
            .unwrap();
        assert!(close(t, [379.05, 388.05, 433.05]), "{t:?}");
        // Above 62 % nothing is deducted.
        let t = bf
            .thresholds(&inputs(&[("feed_grade_pct", num(64.0))]))
            .unwrap();
        assert!(close(t, [361.0, 370.0, 415.0]));
        // 373 kgce/t at 60 % feed: above level 1 (368.22), within level 2 (377.22).
        let j = bf
            .judge(
                373.0,
                &inputs(&[("feed_grade_pct", num(60.0))]),
                UnitStatus::Existing,
            )
            .unwrap();
        assert_eq!((j.level, j.within_limit), (Some(2), true));
    }

    #[test]
    fn converter_negative_figure_with_scrap_ratio_correction() {
        let bof = Limits::built_in().limit("converter").unwrap().clone();
        // 15 % scrap: +3.45; plain carbon steel: +0. Thresholds -26.55 / -24.55 / -8.55.
        let ins = inputs(&[
            ("scrap_ratio_pct", num(15.0)),
            ("steel_category", InputValue::Text("plain_carbon".into())),
        ]);
        let t = bof.thresholds(&ins).unwrap();
        assert!(close(t, [-26.55, -24.55, -8.55]), "{t:?}");
        // -27.2 kgce/t reaches level 1 (at or below -26.55).
        assert_eq!(
            bof.judge(-27.2, &ins, UnitStatus::Existing).unwrap().level,
            Some(1)
        );
        // -25.0: level 2. -10.0: level 3. +2.0 (recovery out of service): above the limit.
        assert_eq!(
            bof.judge(-25.0, &ins, UnitStatus::Existing).unwrap().level,
            Some(2)
        );
        assert_eq!(
            bof.judge(-10.0, &ins, UnitStatus::Existing).unwrap().level,
            Some(3)
        );
        let above = bof.judge(2.0, &ins, UnitStatus::Existing).unwrap();
        assert_eq!((above.level, above.within_limit), (None, false));
        // Deep-drawing steel adds 1.5 more.
        let deep = inputs(&[
            ("scrap_ratio_pct", num(15.0)),
            (
                "steel_category",
                InputValue::Text("deep_drawing_pipeline".into()),
            ),
        ]);
        assert!(close(
            bof.thresholds(&deep).unwrap(),
            [-25.05, -23.05, -7.05]
        ));
    }

    #[test]
    fn cement_clinker_ratio_correction_differs_by_level() {
        let cement = Limits::built_in()
            .limit("cement_comprehensive")
            .unwrap()
            .clone();
        // 80 % clinker: 5 points above 75: +5.50 / +5.75 / +6.00.
        let t = cement
            .thresholds(&inputs(&[("clinker_ratio_pct", num(80.0))]))
            .unwrap();
        assert!(close(t, [85.5, 92.75, 100.0]), "{t:?}");
        // 70 %: 5 points below: -5.50 / -5.75 / -6.00.
        let t = cement
            .thresholds(&inputs(&[("clinker_ratio_pct", num(70.0))]))
            .unwrap();
        assert!(close(t, [74.5, 81.25, 88.0]), "{t:?}");
        assert_eq!(
            cement
                .judge(
                    90.0,
                    &inputs(&[("clinker_ratio_pct", num(80.0))]),
                    UnitStatus::Existing
                )
                .unwrap()
                .level,
            Some(2)
        );
    }

    #[test]
    fn aluminium_clinker_eaf_and_coke() {
        let l = Limits::built_in();
        let none = BTreeMap::new();
        assert_eq!(
            l.limit("aluminium_liquid_ac")
                .unwrap()
                .judge(13_119.0, &none, UnitStatus::Existing)
                .unwrap()
                .level,
            Some(3)
        );
        assert_eq!(
            l.limit("aluminium_liquid_ac")
                .unwrap()
                .judge(12_990.0, &none, UnitStatus::Existing)
                .unwrap()
                .level,
            Some(2)
        );
        assert_eq!(
            l.limit("clinker_comprehensive")
                .unwrap()
                .judge(105.6, &none, UnitStatus::Existing)
                .unwrap()
                .level,
            Some(2)
        );
        assert_eq!(
            l.limit("clinker_electricity")
                .unwrap()
                .judge(25.0, &none, UnitStatus::Existing)
                .unwrap()
                .level,
            Some(1)
        );
        // EAF, 30 % hot metal: -24 on every level: 37 / 40 / 48.
        let eaf = l.limit("eaf_70t_and_above").unwrap();
        assert!(close(
            eaf.thresholds(&inputs(&[("hot_metal_ratio_pct", num(30.0))]))
                .unwrap(),
            [37.0, 40.0, 48.0]
        ));
        // Coke, wet quenching: level 3 only, +46.46.
        let coke = l.limit("coke_top_charging").unwrap();
        assert!(close(
            coke.thresholds(&inputs(&[("wet_quenching", num(1.0))]))
                .unwrap(),
            [110.0, 110.0, 181.46]
        ));
    }

    #[test]
    fn missing_or_mistyped_inputs_are_errors_not_guesses() {
        let bof = Limits::built_in().limit("converter").unwrap().clone();
        assert!(bof
            .judge(-20.0, &BTreeMap::new(), UnitStatus::Existing)
            .unwrap_err()
            .contains("scrap_ratio_pct"));
        let wrong = inputs(&[
            ("scrap_ratio_pct", num(10.0)),
            ("steel_category", InputValue::Text("mystery".into())),
        ]);
        assert!(bof.judge(-20.0, &wrong, UnitStatus::Existing).is_err());
    }

    #[test]
    fn water_quotas_grade_the_intake() {
        let q = Limits::built_in().quota("cement_clinker").unwrap().clone();
        assert_eq!(q.judge(0.2).grade, "advanced");
        assert_eq!(q.judge(0.25).grade, "general");
        assert_eq!(q.judge(0.6).grade, "above_quota");
    }

    #[test]
    fn editions_take_over_on_their_day_and_one_day_has_one_edition() {
        let l = Limits::built_in();
        let day = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let bof = l.editions("converter").unwrap();
        let std_on = |d| bof.in_force(d).map(|e| e.source.standard.as_str());
        assert_eq!(std_on(day(2013, 9, 30)), None);
        assert_eq!(std_on(day(2026, 6, 30)), Some("GB 21256-2013"));
        assert_eq!(std_on(day(2026, 7, 1)), Some("GB 21256-2025"));
        assert!(bof
            .change_within(day(2026, 1, 1), day(2026, 12, 31))
            .is_some());
        assert!(bof
            .change_within(day(2026, 7, 1), day(2026, 7, 31))
            .is_none());
        assert_eq!(
            l.limit("converter").unwrap().source.standard,
            "GB 21256-2025"
        );
        // Rows added from section 6 of the reference.
        for code in [
            "cement_preparation_electricity",
            "aluminium_ingot_comprehensive_ac",
            "alumina_bayer_process",
            "coke_stamp_charging",
        ] {
            assert!(l.limit(code).is_some(), "{code}");
        }
        let twice = "version = \"t\"\n[[limit]]\ncode = \"x\"\nname_zh = \"x\"\nname_en = \"x\"\nindicator = \"kgce_per_t\"\nlevels = [1.0, 2.0, 3.0]\neffective_from = \"2020-01-01\"\nsource = { standard = \"GB 1\", edition = \"1\", table = \"1\", verified = false }\n";
        let err = Limits::from_source(&Source::embedded(
            "l.toml",
            &format!("{twice}{}", &twice[14..]),
        ))
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("limit[1].code"));
    }
}
