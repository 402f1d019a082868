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
        "siemens-pac3200.toml",
        include_str!("../profiles/siemens-pac3200.toml"),
    ),
    (
        "schneider-pm5100.toml",
        include_str!("../profiles/schneider-pm5100.toml"),
    ),
    (
        "schneider-iem3000.toml",
        include_str!("../profiles/schneider-iem3000.toml"),
    ),
    (
        "abb-b-series.toml",
        include_str!("../profiles/abb-b-series.toml"),
    ),
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
        "dlt645-2007.toml",
        include_str!("../profiles/dlt645-2007.toml"),
    ),
    (
        "ems-sim-dlt645.toml",
        include_str!("../profiles/ems-sim-dlt645.toml"),
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
    /// Where the map comes from: the manual, its edition or revision, and the section.
    #[serde(default)]
    datasheet: Option<String>,
    #[serde(default)]
    max_registers: Option<u16>,
    /// What the device speaks: Modbus (the default), or `dlt645-2007` / `dlt645-1997`.
    #[serde(default)]
    protocol: Option<ems_core::dlt645::Edition>,
    #[serde(default)]
    points: Vec<PointFile>,
}

/// A device model's register map, with any `extends` resolved.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Where the map comes from (a profile that extends another and names none keeps its).
    pub datasheet: String,
    /// Most registers the device returns in one request (Modbus allows 125).
    pub max_registers: u16,
    /// `None`: Modbus. Otherwise the DL/T 645 edition the meter speaks.
    pub protocol: Option<ems_core::dlt645::Edition>,
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

/// A point as a profile file writes it: a register (`address`, `type`) for Modbus, a data
/// identifier (`di`, `format`) for DL/T 645.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointFile {
    id: String,
    /// Zero-based register address (the number on the wire, not the "4xxxx" reference).
    #[serde(default)]
    address: Option<u16>,
    /// Or the one-based reference a datasheet prints: 40001-49999 or 400001-465536 for
    /// holding register 0 on, 30001-39999 or 300001-365536 for input register 0 on.
    #[serde(default)]
    reference: Option<u32>,
    #[serde(default)]
    table: Option<Table>,
    #[serde(rename = "type", default)]
    data_type: Option<DataType>,
    #[serde(default)]
    order: WordOrder,
    /// DL/T 645: the data identifier as the standard prints it, `"00010000"` (2007) or
    /// `"9010"` (1997).
    #[serde(default)]
    di: Option<String>,
    /// DL/T 645: the value's format as the standard prints it, `"XXXXXX.XX"`.
    #[serde(default)]
    format: Option<String>,
    /// DL/T 645: the top bit of the value is its sign (currents, powers, power factors).
    #[serde(default)]
    signed: bool,
    #[serde(default = "one")]
    scale: f64,
    #[serde(default)]
    offset: f64,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    counter: bool,
    #[serde(default)]
    role: PointRole,
}

/// A point of a device model, ready to read.
#[derive(Debug, Clone)]
pub struct PointDef {
    pub id: String,
    /// Modbus: the zero-based register address, its table, type and word order (for a DL/T 645
    /// point these are unused).
    pub address: u16,
    pub table: Table,
    pub data_type: DataType,
    pub order: WordOrder,
    /// DL/T 645: the data identifier and the value's format.
    pub dlt645: Option<Dlt645Point>,
    pub scale: f64,
    pub offset: f64,
    pub unit: String,
    /// A cumulative counter (energy, volume, mass); the gateway takes deltas of it.
    pub counter: bool,
    pub role: PointRole,
}

/// What a DL/T 645 meter is asked for, and how its answer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dlt645Point {
    pub di: u32,
    pub format: ems_core::dlt645::Format,
}

/// A point of the file checked against its profile's protocol.
fn point_of(
    src: &Source,
    i: usize,
    p: PointFile,
    protocol: Option<ems_core::dlt645::Edition>,
) -> Result<PointDef, ConfigError> {
    let key = |k: &str| format!("points[{i}].{k}");
    let (address, table, data_type, dlt645) = match protocol {
        None => {
            if p.di.is_some() || p.format.is_some() {
                return Err(src.error(
                    &key("di"),
                    "a Modbus profile's points have `address` and `type`; `di` and `format` are DL/T 645's (set `protocol`)",
                ));
            }
            let (address, table) = match (p.address, p.reference) {
                (Some(a), None) => (a, p.table.unwrap_or_default()),
                (None, Some(r)) => {
                    if p.table.is_some() {
                        return Err(src.error(
                            &key("table"),
                            "a reference names its table (4xxxx holding, 3xxxx input): drop `table`",
                        ));
                    }
                    from_reference(r).ok_or_else(|| {
                        src.error(
                            &key("reference"),
                            format!("{r} is not a register reference: 40001-49999 or 400001-465536 (holding), 30001-39999 or 300001-365536 (input)"),
                        )
                    })?
                }
                (Some(_), Some(_)) => {
                    return Err(src.error(
                        &key("reference"),
                        "give `address` (zero-based) or `reference` (one-based, 4xxxx), not both",
                    ))
                }
                (None, None) => {
                    return Err(src.error(
                        &key("address"),
                        "a Modbus point needs its register: `address` (zero-based) or `reference` (one-based 4xxxx)",
                    ))
                }
            };
            let Some(data_type) = p.data_type else {
                return Err(src.error(
                    &key("type"),
                    "a Modbus point needs its type (u16, i32, f32, ...)",
                ));
            };
            (address, table, data_type, None)
        }
        Some(edition) => {
            if p.address.is_some() || p.reference.is_some() || p.data_type.is_some() {
                return Err(src.error(
                    &key("address"),
                    "a DL/T 645 point is read by `di` and `format`, not by register",
                ));
            }
            let digits = 2 * edition.di_len();
            let di =
                p.di.as_deref()
                    .filter(|d| d.len() == digits)
                    .and_then(|d| u32::from_str_radix(d, 16).ok())
                    .ok_or_else(|| {
                        src.error(
                            &key("di"),
                            format!(
                            "the data identifier in {digits} hex digits, as the standard prints it"
                        ),
                        )
                    })?;
            let format = p
                .format
                .as_deref()
                .and_then(|f| ems_core::dlt645::Format::parse(f, p.signed))
                .ok_or_else(|| {
                    src.error(
                        &key("format"),
                        "the value's format as the standard prints it, such as \"XXXXXX.XX\" (an even number of X)",
                    )
                })?;
            (
                0,
                Table::Holding,
                DataType::U16,
                Some(Dlt645Point { di, format }),
            )
        }
    };
    Ok(PointDef {
        id: p.id,
        address,
        table,
        data_type,
        order: p.order,
        dlt645,
        scale: p.scale,
        offset: p.offset,
        unit: p.unit,
        counter: p.counter,
        role: p.role,
    })
}

/// A one-based Modicon reference as a table and a zero-based address: 40001 is holding 0,
/// 30010 input 9; six digits (400001) reach the whole 65 536 registers.
fn from_reference(r: u32) -> Option<(u16, Table)> {
    let (table, first) = match r {
        40_001..=49_999 => (Table::Holding, 40_001),
        30_001..=39_999 => (Table::Input, 30_001),
        400_001..=465_536 => (Table::Holding, 400_001),
        300_001..=365_536 => (Table::Input, 300_001),
        _ => return None,
    };
    Some((u16::try_from(r - first).ok()?, table))
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
        let mut protocol = file.protocol;
        let mut datasheet = String::new();
        if let Some(parent) = &file.extends {
            let Some(p) = self.profiles.get(parent) else {
                return Err(src.error(
                    "extends",
                    format!("unknown profile `{parent}` (it must come first)"),
                ));
            };
            points = p.points.clone();
            max_registers = p.max_registers;
            datasheet = p.datasheet.clone();
            if file.protocol.is_some_and(|f| Some(f) != p.protocol) {
                return Err(src.error("protocol", format!("`{parent}` speaks another protocol")));
            }
            protocol = p.protocol;
        }
        for (i, p) in file.points.into_iter().enumerate() {
            points.push(point_of(src, i, p, protocol)?);
        }
        let profile = Profile {
            name: file.name,
            description: file.description,
            datasheet: file.datasheet.unwrap_or(datasheet),
            max_registers: file.max_registers.unwrap_or(max_registers),
            protocol,
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
    fn a_datasheets_one_based_reference_is_the_register_before_it() {
        let point = |line: &str| {
            let text = format!("name = \"x\"\n[[points]]\nid = \"a\"\n{line}\ntype = \"u16\"\n");
            let mut lib = Library::default();
            lib.add(&Source::embedded("x.toml", &text)).map(|()| {
                let p = &lib.get("x").unwrap().points[0];
                (p.table, p.address)
            })
        };
        // Off by one, as datasheets number them: 40001 is the first holding register, 0.
        assert_eq!(point("reference = 40001").unwrap(), (Table::Holding, 0));
        assert_eq!(
            point("reference = 40031").unwrap(),
            point("address = 30").unwrap()
        );
        assert_eq!(point("reference = 30010").unwrap(), (Table::Input, 9));
        assert_eq!(
            point("reference = 465536").unwrap(),
            (Table::Holding, 65_535)
        );
        assert_eq!(point("reference = 300001").unwrap(), (Table::Input, 0));
        for bad in [
            "reference = 40000",
            "reference = 10001",
            "reference = 50000",
        ] {
            let err = point(bad).unwrap_err();
            assert_eq!(err.key.as_deref(), Some("points[0].reference"), "{bad}");
        }
        let both = point("address = 0\nreference = 40001").unwrap_err();
        assert_eq!(both.key.as_deref(), Some("points[0].reference"));
        let table = point("reference = 40001\ntable = \"input\"").unwrap_err();
        assert_eq!(table.key.as_deref(), Some("points[0].table"));
    }

    /// The named meters of the library, each from a manufacturer's map.
    const NAMED_METERS: [&str; 6] = [
        "dtsu666",
        "sdm630",
        "siemens-pac3200",
        "schneider-pm5100",
        "schneider-iem3000",
        "abb-b-series",
    ];

    #[test]
    fn every_built_in_profile_says_where_its_map_comes_from() {
        let lib = Library::built_in();
        for name in lib.names() {
            let p = lib.get(name).unwrap();
            assert!(
                p.datasheet.len() > 10,
                "{name}: datasheet `{}`",
                p.datasheet
            );
        }
        for name in NAMED_METERS.into_iter().chain(["dlt645-2007"]) {
            let p = lib
                .get(name)
                .unwrap_or_else(|| panic!("{name} is built in"));
            let import = p.points.iter().find(|d| d.id == "import_kwh");
            assert!(
                import.is_some_and(|d| d.counter && d.unit == "kWh"),
                "{name}: an import_kwh counter in kWh, what accounting reads"
            );
        }
    }

    /// What a point of `profile` reads when the meter sends `raw` in its own units.
    fn reads(lib: &Library, profile: &str, id: &str, raw: f64) -> f64 {
        let def = lib.get(profile).unwrap().points.iter().find(|d| d.id == id);
        let def = def.unwrap_or_else(|| panic!("{profile}.{id}"));
        let mut regs = vec![0u16; usize::from(def.data_type.registers())];
        ems_core::decode::encode(raw, def.data_type, def.order, &mut regs);
        let read = crate::device_plan::Read {
            table: def.table,
            start: def.address,
            len: def.data_type.registers(),
            points: vec![],
        };
        crate::device_plan::decode_point(def, &read, &regs).unwrap()
    }

    #[test]
    fn the_named_meters_read_their_units_as_their_manuals_give_them() {
        let lib = Library::built_in();
        let close = |got: f64, want: f64| (got - want).abs() <= want.abs() * 1e-9 + 1e-9;
        for (profile, id, raw, want) in [
            // PAC3200: energies a double in Wh, power a float in W.
            ("siemens-pac3200", "import_kwh", 12_345_678.9, 12_345.678_9),
            ("siemens-pac3200", "power_kw", 1_500.0, 1.5),
            // ABB: energies u64 in 0.01 kWh, power i32 in 0.01 W (signed), PF i16 in 0.001.
            ("abb-b-series", "import_kwh", 123_456_789.0, 1_234_567.89),
            ("abb-b-series", "power_kw", -150_000.0, -1.5),
            ("abb-b-series", "pf", -950.0, -0.95),
            ("abb-b-series", "voltage_l1_v", 2_305.0, 230.5),
            // Schneider: already kW and kWh.
            ("schneider-pm5100", "import_kwh", 4_321.5, 4_321.5),
            ("schneider-iem3000", "power_kw", 12.25, 12.25),
            // CHINT DTSU666: power in 0.1 W.
            ("dtsu666", "p_kw", 15_000.0, 1.5),
        ] {
            let got = reads(&lib, profile, id, raw);
            assert!(
                close(got, want),
                "{profile}.{id}: {raw} read {got}, want {want}"
            );
        }
        // The Schneider manual numbers registers from 1: the PM5100's energy (2700 in its
        // list) is wire address 2699.
        let pm = lib.get("schneider-pm5100").unwrap();
        let import = pm.points.iter().find(|d| d.id == "import_kwh").unwrap();
        assert_eq!(import.address, 2699);
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
