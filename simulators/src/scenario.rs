//! Scenario files: the plant to simulate (units and their meters).

use std::collections::HashSet;
use std::path::Path;

use ems_config::{ConfigError, Source, Spanned};
use serde::Deserialize;

use crate::faults::FaultSpec;
use crate::meter::{Meter, MeterModel};
use crate::model::{State, UnitKind, UnitModel};

/// The scenarios built into the binary, by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("demo", include_str!("../scenarios/demo.toml")),
    ("steelworks", include_str!("../scenarios/steelworks.toml")),
    ("aluminium", include_str!("../scenarios/aluminium.toml")),
    ("cement", include_str!("../scenarios/cement.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    /// For people reading the file; the simulator does not use it.
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    #[serde(default = "default_seed")]
    seed: u64,
    units: Vec<UnitConf>,
    meters: Vec<MeterConf>,
    /// Operating states over time.
    #[serde(default)]
    schedule: Vec<ScheduleConf>,
    #[serde(default)]
    faults: Vec<FaultSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleConf {
    unit: Spanned<String>,
    /// Hours after the start of the run.
    at_h: f64,
    state: StateName,
    /// reduced: output as a share of normal.
    #[serde(default)]
    load: Option<f64>,
    /// restart: hours to reach normal output.
    #[serde(default)]
    hours: Option<f64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StateName {
    Normal,
    Reduced,
    Stopped,
    Restart,
    NoRecovery,
}

fn default_seed() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitConf {
    id: Spanned<String>,
    /// For people reading the file (and the gateway config that mirrors it).
    #[allow(dead_code)]
    name: String,
    kind: UnitKind,
    capacity_t_per_h: f64,
    /// An enterprise's units (a group's scenario has several enterprises); an enterprise
    /// without the list has every unit no other enterprise lists.
    #[serde(default)]
    members: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeterConf {
    device: Spanned<String>,
    unit_id: Spanned<u8>,
    unit: Spanned<String>,
    flow: Spanned<String>,
    #[serde(default = "default_model")]
    model: MeterModel,
    #[serde(default)]
    initial: f64,
}

fn default_model() -> MeterModel {
    MeterModel::EmsSimTotalizer
}

/// Which enterprise each unit is inside: by the enterprises' `members`, the rest to the one
/// enterprise without a list (errors name the key).
fn enterprises(src: &Source, units: &[UnitConf]) -> Result<Vec<Option<usize>>, ConfigError> {
    let is_enterprise = |u: &UnitConf| u.kind == UnitKind::Enterprise;
    let mut of: Vec<Option<usize>> = units
        .iter()
        .enumerate()
        .map(|(i, u)| is_enterprise(u).then_some(i))
        .collect();
    let mut catch_all = None;
    for (e, u) in units.iter().enumerate() {
        let key = format!("units[{e}].members");
        match (&u.members, is_enterprise(u)) {
            (Some(_), false) => {
                return Err(src.error(
                    &key,
                    "only an enterprise (kind = \"enterprise\") has members",
                ))
            }
            (None, true) if catch_all.is_some() => return Err(src.error(
                &key,
                "several enterprises: list each one's members (one may leave the rest to itself)",
            )),
            (None, true) => catch_all = Some(e),
            (None, false) => {}
            (Some(members), true) => {
                for (j, m) in members.iter().enumerate() {
                    let Some(i) = units.iter().position(|u| u.id.get_ref() == m.get_ref()) else {
                        return Err(src.error_at(
                            m.span(),
                            &format!("{key}[{j}]"),
                            format!("no unit `{}`", m.get_ref()),
                        ));
                    };
                    if is_enterprise(&units[i]) || of[i].is_some() {
                        return Err(src.error_at(
                            m.span(),
                            &format!("{key}[{j}]"),
                            format!("`{}` is an enterprise or another's member", m.get_ref()),
                        ));
                    }
                    of[i] = Some(e);
                }
            }
        }
    }
    for o in &mut of {
        if o.is_none() {
            *o = catch_all;
        }
    }
    // A conversion unit is drawn from what its enterprise's units take: it needs one.
    for (i, u) in units.iter().enumerate() {
        if u.kind.is_derived() && of[i].is_none() {
            return Err(src.error(
                &format!("units[{i}].kind"),
                "an oxygen or power plant is drawn from its enterprise's units: \
                 add an enterprise (kind = \"enterprise\") it is inside",
            ));
        }
    }
    Ok(of)
}

/// A validated scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub units: Vec<UnitModel>,
    /// For each unit, the index of the enterprise whose boundary it is inside (an enterprise's
    /// own index for itself); none where the scenario has no enterprise.
    pub enterprise_of: Vec<Option<usize>>,
    pub meters: Vec<Meter>,
    /// (unit index, hours after start, state).
    pub schedule: Vec<(usize, f64, State)>,
    pub faults: Vec<FaultSpec>,
}

impl Scenario {
    /// Replaces the random seed (and so every unit's variation) with `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.seed = seed;
        for (i, u) in self.units.iter_mut().enumerate() {
            *u = UnitModel::new(u.id.clone(), u.kind, u.capacity_t_per_h, unit_seed(seed, i));
        }
    }

    /// A built-in scenario by name, or a scenario file by path.
    pub fn load(name_or_path: &str) -> Result<Scenario, ConfigError> {
        match BUILT_IN.iter().find(|(name, _)| *name == name_or_path) {
            Some((name, text)) => Scenario::from_source(&Source::embedded(
                &format!("<built-in scenario {name}>"),
                text,
            )),
            None => Scenario::from_source(&Source::read(Path::new(name_or_path))?),
        }
    }

    pub fn from_source(src: &Source) -> Result<Scenario, ConfigError> {
        let file: ScenarioFile = src.parse()?;
        let mut unit_ids = HashSet::new();
        let mut units = Vec::new();
        for (i, u) in file.units.iter().enumerate() {
            if !unit_ids.insert(u.id.get_ref().clone()) {
                return Err(src.error_at(
                    u.id.span(),
                    &format!("units[{i}].id"),
                    "duplicate unit id",
                ));
            }
            if !u.capacity_t_per_h.is_finite() || u.capacity_t_per_h <= 0.0 {
                return Err(src.error(
                    &format!("units[{i}].capacity_t_per_h"),
                    "must be above zero",
                ));
            }
            units.push(UnitModel::new(
                u.id.get_ref().clone(),
                u.kind,
                u.capacity_t_per_h,
                unit_seed(file.seed, i),
            ));
        }
        let enterprise_of = enterprises(src, &file.units)?;
        let mut devices = HashSet::new();
        let mut addresses = HashSet::new();
        let mut meters = Vec::new();
        for (i, m) in file.meters.iter().enumerate() {
            let key = |k: &str| format!("meters[{i}].{k}");
            if !devices.insert(m.device.get_ref().clone()) {
                return Err(src.error_at(m.device.span(), &key("device"), "duplicate device name"));
            }
            let unit_id = *m.unit_id.get_ref();
            if unit_id == 0 || unit_id > 247 || !addresses.insert(unit_id) {
                return Err(src.error_at(
                    m.unit_id.span(),
                    &key("unit_id"),
                    "unit id must be 1..=247 and unique in the scenario",
                ));
            }
            let Some(unit_index) = units.iter().position(|u| &u.id == m.unit.get_ref()) else {
                return Err(src.error_at(
                    m.unit.span(),
                    &key("unit"),
                    format!("no unit `{}`", m.unit.get_ref()),
                ));
            };
            let flows = units[unit_index].kind.flows();
            let Some(flow_index) = flows.iter().position(|f| f.name == m.flow.get_ref()) else {
                let names: Vec<_> = flows.iter().map(|f| f.name).collect();
                return Err(src.error_at(
                    m.flow.span(),
                    &key("flow"),
                    format!(
                        "unit `{}` has no flow `{}`; it has {}",
                        m.unit.get_ref(),
                        m.flow.get_ref(),
                        names.join(", ")
                    ),
                ));
            };
            if !(m.initial.is_finite() && m.initial >= 0.0 && m.initial < m.model.rollover()) {
                return Err(src.error(
                    &key("initial"),
                    format!(
                        "must be 0 up to the meter's rollover {}",
                        m.model.rollover()
                    ),
                ));
            }
            meters.push(Meter {
                device: m.device.get_ref().clone(),
                unit_id,
                model: m.model,
                unit_index,
                flow_index,
                initial: m.initial,
                replaced: None,
            });
        }
        let mut schedule = Vec::new();
        for (i, c) in file.schedule.iter().enumerate() {
            let key = |k: &str| format!("schedule[{i}].{k}");
            let Some(unit) = units.iter().position(|u| &u.id == c.unit.get_ref()) else {
                return Err(src.error_at(
                    c.unit.span(),
                    &key("unit"),
                    format!("no unit `{}`", c.unit.get_ref()),
                ));
            };
            if !(c.at_h.is_finite() && c.at_h >= 0.0) {
                return Err(src.error(&key("at_h"), "must be zero or more hours"));
            }
            let state = match c.state {
                StateName::Normal => State::Normal,
                StateName::Stopped => State::Stopped,
                StateName::NoRecovery => State::NoRecovery,
                StateName::Reduced => match c.load {
                    Some(load) if load > 0.0 && load < 1.0 => State::Reduced { load },
                    _ => {
                        return Err(
                            src.error(&key("load"), "a reduced state needs `load` between 0 and 1")
                        )
                    }
                },
                StateName::Restart => match c.hours {
                    Some(hours) if hours > 0.0 && hours.is_finite() => State::Restart { hours },
                    _ => return Err(src.error(&key("hours"), "a restart needs `hours` above zero")),
                },
            };
            schedule.push((unit, c.at_h, state));
        }
        for (i, f) in file.faults.iter().enumerate() {
            if f.device != "*" && !meters.iter().any(|m| m.device == f.device) {
                return Err(src.error(
                    &format!("faults[{i}].device"),
                    format!("no meter `{}`", f.device),
                ));
            }
            if let Err((k, msg)) = f.resolve(0) {
                return Err(src.error(&format!("faults[{i}].{k}"), msg));
            }
        }
        Ok(Scenario {
            schedule,
            faults: file.faults,
            name: file.name,
            seed: file.seed,
            units,
            enterprise_of,
            meters,
        })
    }
}

fn unit_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_mul(1_000_003)
        .wrapping_add(index as u64 * 7919)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_scenarios_parse() {
        for (name, _) in BUILT_IN {
            let s = Scenario::load(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!s.meters.is_empty(), "{name}");
        }
    }

    #[test]
    fn bad_schedules_and_faults_name_their_key() {
        let base = "name = \"t\"\n[[units]]\nid = \"k1\"\nname = \"Kiln\"\nkind = \"kiln\"\ncapacity_t_per_h = 200.0\n[[meters]]\ndevice = \"k1-coal\"\nunit_id = 1\nunit = \"k1\"\nflow = \"coal\"\n";
        let err = |extra: &str| {
            Scenario::from_source(&Source::embedded("p.toml", &format!("{base}{extra}")))
                .unwrap_err()
        };
        let e = err("[[schedule]]\nunit = \"k9\"\nat_h = 1.0\nstate = \"stopped\"\n");
        assert!(
            e.to_string()
                .starts_with("p.toml:13:8: key `schedule[0].unit`"),
            "{e}"
        );
        let e = err("[[schedule]]\nunit = \"k1\"\nat_h = 1.0\nstate = \"reduced\"\n");
        assert_eq!(e.key.as_deref(), Some("schedule[0].load"));
        let e = err("[[faults]]\ndevice = \"k1-gas\"\nkind = \"freeze\"\nfor_h = 1.0\n");
        assert_eq!(e.key.as_deref(), Some("faults[0].device"));
        let e = err("[[faults]]\ndevice = \"k1-coal\"\nkind = \"exception\"\nfor_h = 1.0\n");
        assert_eq!(e.key.as_deref(), Some("faults[0].code"));
        let e = err("[[faults]]\ndevice = \"k1-coal\"\nkind = \"melt\"\n");
        assert!(
            e.line.is_some() && e.to_string().contains("faults[0].kind"),
            "{e}"
        );
    }

    #[test]
    fn unknown_flow_names_line_and_key() {
        let text = "name = \"t\"\n[[units]]\nid = \"k1\"\nname = \"Kiln\"\nkind = \"kiln\"\ncapacity_t_per_h = 200.0\n\n[[meters]]\ndevice = \"k1-gas\"\nunit_id = 1\nunit = \"k1\"\nflow = \"gas\"\n";
        let err = Scenario::from_source(&Source::embedded("plant.toml", text)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("plant.toml:12:8: key `meters[0].flow`"),
            "{msg}"
        );
        assert!(msg.contains("clinker"), "lists the flows it has: {msg}");
    }

    #[test]
    fn a_groups_enterprises_name_their_members_once() {
        let unit = |id: &str, kind: &str, members: &str| {
            format!("[[units]]\nid = \"{id}\"\nname = \"{id}\"\nkind = \"{kind}\"\ncapacity_t_per_h = 1.0\n{members}")
        };
        let meter =
            "[[meters]]\ndevice = \"k1-coal\"\nunit_id = 1\nunit = \"k1\"\nflow = \"coal\"\n";
        let load = |units: &[String]| {
            Scenario::from_source(&Source::embedded(
                "g.toml",
                &format!("name = \"g\"\n{}{meter}", units.concat()),
            ))
        };
        let kiln = unit("k1", "kiln", "");
        let pot = unit("p1", "electrolysis", "");
        let ok = load(&[
            kiln.clone(),
            pot.clone(),
            unit("e1", "enterprise", "members = [\"k1\"]\n"),
            unit("e2", "enterprise", ""),
        ])
        .unwrap();
        // The one enterprise without a list takes the units no other lists.
        assert_eq!(ok.enterprise_of, [Some(2), Some(3), Some(2), Some(3)]);
        let e = load(&[
            kiln.clone(),
            unit("e1", "enterprise", "members = [\"k1\"]\n"),
            unit("e2", "enterprise", "members = [\"k1\"]\n"),
        ])
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("units[2].members[0]"), "{e}");
        let e = load(&[
            kiln.clone(),
            unit("e1", "enterprise", ""),
            unit("e2", "enterprise", ""),
        ])
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("units[2].members"), "{e}");
        let e = load(&[unit("k1", "kiln", "members = [\"k1\"]\n")]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("units[0].members"), "{e}");
        let e = load(&[
            kiln.clone(),
            unit("e1", "enterprise", "members = [\"k9\"]\n"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("no unit `k9`"), "{e}");
        // A power plant is drawn from its enterprise's units: none, no plant.
        let e = load(&[kiln, unit("cpp", "power_plant", "")]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("units[1].kind"), "{e}");
    }
}
