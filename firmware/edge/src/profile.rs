//! Device profiles: the register map of a meter model, shared by every device of that model.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ems_config::{ConfigError, Source};
use ems_core::{DataType, WordOrder};
use serde::Deserialize;

/// Profiles shipped in the binary, referenced by name from a site config.
const BUILT_IN: &[(&str, &str)] = &[
    ("dtsu666.toml", include_str!("../profiles/dtsu666.toml")),
    ("sdm630.toml", include_str!("../profiles/sdm630.toml")),
    (
        "flow-totalizer.toml",
        include_str!("../profiles/flow-totalizer.toml"),
    ),
    (
        "belt-scale.toml",
        include_str!("../profiles/belt-scale.toml"),
    ),
    (
        "water-meter.toml",
        include_str!("../profiles/water-meter.toml"),
    ),
    (
        "ems-sim-totalizer.toml",
        include_str!("../profiles/ems-sim-totalizer.toml"),
    ),
    (
        "ems-sim-dtsu666.toml",
        include_str!("../profiles/ems-sim-dtsu666.toml"),
    ),
    (
        "ems-sim-sdm630.toml",
        include_str!("../profiles/ems-sim-sdm630.toml"),
    ),
    (
        "ems-sim-flow-totalizer.toml",
        include_str!("../profiles/ems-sim-flow-totalizer.toml"),
    ),
    (
        "ems-sim-belt-scale.toml",
        include_str!("../profiles/ems-sim-belt-scale.toml"),
    ),
    (
        "ems-sim-water-meter.toml",
        include_str!("../profiles/ems-sim-water-meter.toml"),
    ),
];

/// A profile file as written: it may extend another profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    /// Name of a profile whose points (and register limit) this one starts from.
    #[serde(default)]
    extends: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    max_registers: Option<u16>,
    #[serde(default)]
    points: Vec<PointDef>,
}

/// A device model's register map, with any `extends` resolved.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Most registers the device returns in one request (Modbus allows 125).
    pub max_registers: u16,
    pub points: Vec<PointDef>,
}

const DEFAULT_MAX_REGISTERS: u16 = 125;

/// Which register table a point lives in (function code 3 or 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    #[default]
    Holding,
    Input,
}

/// What the edge does with a point beyond reporting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PointRole {
    #[default]
    Value,
    /// The device's real-time clock, ms since the Unix epoch: stamps the poll when the device
    /// config says `clock = "device"`.
    Clock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointDef {
    pub id: String,
    /// Zero-based register address (the number on the wire, not the "4xxxx" reference).
    pub address: u16,
    #[serde(default)]
    pub table: Table,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default)]
    pub order: WordOrder,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    #[serde(default)]
    pub unit: String,
    /// A cumulative counter (energy, volume, mass); the gateway takes deltas of it.
    #[serde(default)]
    pub counter: bool,
    #[serde(default)]
    pub role: PointRole,
}

fn one() -> f64 {
    1.0
}

impl Profile {
    fn validate(&self, src: &Source) -> Result<(), ConfigError> {
        let mut ids = std::collections::HashSet::new();
        for (i, p) in self.points.iter().enumerate() {
            if !ids.insert(&p.id) {
                return Err(src.error(
                    &format!("points[{i}].id"),
                    format!("duplicate point id `{}`", p.id),
                ));
            }
            if u32::from(p.address) + u32::from(p.data_type.registers()) > 65_536 {
                return Err(src.error(
                    &format!("points[{i}].address"),
                    "point runs past register 65535",
                ));
            }
            if !p.scale.is_finite() || p.scale == 0.0 || !p.offset.is_finite() {
                return Err(src.error(
                    &format!("points[{i}].scale"),
                    "scale must be finite and non-zero",
                ));
            }
        }
        if self.max_registers == 0 || self.max_registers > 125 {
            return Err(src.error("max_registers", "must be 1..=125"));
        }
        Ok(())
    }

    pub fn clock_point(&self) -> Option<usize> {
        self.points.iter().position(|p| p.role == PointRole::Clock)
    }
}

/// All profiles known to a site: the built-in library plus any from a profiles directory.
#[derive(Debug, Clone, Default)]
pub struct Library {
    /// Shared: thousands of devices of one meter type hold one copy of its map.
    profiles: BTreeMap<String, Arc<Profile>>,
}

impl Library {
    pub fn built_in() -> Self {
        let mut lib = Library::default();
        for (name, text) in BUILT_IN {
            lib.add(&Source::embedded(
                &format!("<built-in profile {name}>"),
                text,
            ))
            .unwrap_or_else(|e| panic!("built-in profile: {e}"));
        }
        lib
    }

    /// Adds one profile file; a profile it extends must be known already.
    pub fn add(&mut self, src: &Source) -> Result<(), ConfigError> {
        let file: ProfileFile = src.parse()?;
        let (mut points, mut max_registers) = (Vec::new(), DEFAULT_MAX_REGISTERS);
        if let Some(parent) = &file.extends {
            let Some(p) = self.profiles.get(parent) else {
                return Err(src.error(
                    "extends",
                    format!("unknown profile `{parent}` (it must come first)"),
                ));
            };
            points = p.points.clone();
            max_registers = p.max_registers;
        }
        points.extend(file.points);
        let profile = Profile {
            name: file.name,
            description: file.description,
            max_registers: file.max_registers.unwrap_or(max_registers),
            points,
        };
        profile.validate(src)?;
        self.profiles
            .insert(profile.name.clone(), Arc::new(profile));
        Ok(())
    }

    /// Adds every `*.toml` in `dir` in name order; a profile there replaces a built-in one of the
    /// same name.
    pub fn load_dir(&mut self, dir: &Path) -> Result<(), ConfigError> {
        let entries = std::fs::read_dir(dir).map_err(|e| ConfigError {
            file: dir.to_owned(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read profiles directory: {e}"),
        })?;
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        {
            self.add(&Source::read(&path)?)?;
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.profiles.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_load() {
        let lib = Library::built_in();
        let p = lib.get("ems-sim-totalizer").unwrap();
        assert_eq!(p.clock_point(), Some(0));
        assert!(p.points.iter().any(|p| p.counter));
    }

    #[test]
    fn duplicate_point_ids_are_refused() {
        let text = "name = \"x\"\n[[points]]\nid = \"a\"\naddress = 0\ntype = \"u16\"\n[[points]]\nid = \"a\"\naddress = 1\ntype = \"u16\"\n";
        let err = Library::default()
            .add(&Source::embedded("x.toml", text))
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("points[1].id"));
    }

    #[test]
    fn a_simulator_variant_is_the_real_map_plus_its_clock() {
        let lib = Library::built_in();
        for model in [
            "dtsu666",
            "sdm630",
            "flow-totalizer",
            "belt-scale",
            "water-meter",
        ] {
            let real = lib.get(model).unwrap();
            let sim = lib.get(&format!("ems-sim-{model}")).unwrap();
            assert_eq!(sim.points.len(), real.points.len() + 1, "{model}");
            assert_eq!(sim.max_registers, real.max_registers, "{model}");
            assert!(
                real.clock_point().is_none() && sim.clock_point().is_some(),
                "{model}"
            );
            assert!(
                real.points.iter().any(|p| p.counter),
                "{model} has a counter"
            );
        }
        let err = Library::default()
            .add(&Source::embedded(
                "y.toml",
                "name = \"y\"\nextends = \"nope\"\n",
            ))
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("extends"));
    }
}
