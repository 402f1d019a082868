//! Device profiles: the register map of a meter model, shared by every device of that model.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ems_config::{ConfigError, Source, Spanned};
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
        "acrel-dtsd1352.toml",
        include_str!("../profiles/acrel-dtsd1352.toml"),
    ),
    (
        "acrel-adl400.toml",
        include_str!("../profiles/acrel-adl400.toml"),
    ),
    (
        "xylem-magflux.toml",
        include_str!("../profiles/xylem-magflux.toml"),
    ),
    (
        "bell-vfm60.toml",
        include_str!("../profiles/bell-vfm60.toml"),
    ),
    (
        "cas-ci600d.toml",
        include_str!("../profiles/cas-ci600d.toml"),
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
        "chint-dtsu666-dlt645.toml",
        include_str!("../profiles/chint-dtsu666-dlt645.toml"),
    ),
    (
        "ems-sim-dlt645.toml",
        include_str!("../profiles/ems-sim-dlt645.toml"),
    ),
    (
        "cjt188-water.toml",
        include_str!("../profiles/cjt188-water.toml"),
    ),
    (
        "cjt188-heat.toml",
        include_str!("../profiles/cjt188-heat.toml"),
    ),
    (
        "ems-sim-cjt188-water.toml",
        include_str!("../profiles/ems-sim-cjt188-water.toml"),
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
    /// What the device speaks: `modbus` (the default), `dlt645-2007`, `dlt645-1997` or
    /// `cjt188`.
    #[serde(default)]
    protocol: Option<Spanned<String>>,
    /// CJ/T 188: the meter type the requests name (0x10 cold water, 0x11 hot water, 0x20 heat,
    /// 0x30 gas ...).
    #[serde(default)]
    meter_type: Option<u8>,
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
    /// What the device speaks, and how its requests are framed.
    pub dialect: Dialect,
    pub points: Vec<PointDef>,
}

const DEFAULT_MAX_REGISTERS: u16 = 125;

/// What a link or a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Modbus,
    Dlt645,
    Cjt188,
}

/// A protocol with what its requests need from the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Modbus,
    Dlt645(ems_core::dlt645::Edition),
    /// CJ/T 188, with the meter type its requests name.
    Cjt188 {
        meter_type: u8,
    },
}

impl Dialect {
    pub fn protocol(self) -> Protocol {
        match self {
            Dialect::Modbus => Protocol::Modbus,
            Dialect::Dlt645(_) => Protocol::Dlt645,
            Dialect::Cjt188 { .. } => Protocol::Cjt188,
        }
    }

    /// Hex digits of a data identifier as the standard prints it (0: registers, not
    /// identifiers).
    pub fn di_digits(self) -> usize {
        match self {
            Dialect::Modbus => 0,
            Dialect::Dlt645(edition) => 2 * edition.di_len(),
            Dialect::Cjt188 { .. } => 4,
        }
    }

    /// A data identifier as the standard prints it: `00010000`, `9010`, `901F`.
    pub fn di_text(self, di: u32) -> String {
        format!("{di:0width$X}", width = self.di_digits())
    }
}

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
/// identifier (`di`, and where in its answer: `byte_offset`, `format`) for DL/T 645 and
/// CJ/T 188.
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
    /// DL/T 645 and CJ/T 188: the data identifier as the standard prints it, `"00010000"`
    /// (DL/T 645-2007), `"9010"` (1997), `"901F"` (CJ/T 188, its default).
    #[serde(default)]
    di: Option<String>,
    /// DL/T 645 and CJ/T 188: where the value starts in the answer, in bytes after the data
    /// identifier (and CJ/T 188's serial number): a block read answers several values.
    #[serde(default)]
    byte_offset: u8,
    /// DL/T 645 and CJ/T 188: the value's format as the standard prints it, `"XXXXXX.XX"`.
    #[serde(default)]
    format: Option<String>,
    /// DL/T 645 and CJ/T 188: the top bit of the value is its sign (currents, powers, power
    /// factors).
    #[serde(default)]
    signed: bool,
    /// CJ/T 188: the value is followed by a unit code byte; the value is converted from the
    /// unit the meter names to the point's `unit` (which must be one of the standard's).
    #[serde(default)]
    unit_code: bool,
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
    /// Names of per-installation multipliers the value is scaled by, each given by every
    /// device of this profile in the site file (`factors = { pt = 100, ct = 40 }`): the PT
    /// and CT ratios of a meter that reports secondary values, a weighing indicator's
    /// division.
    #[serde(default)]
    factors: Vec<String>,
}

/// A point of a device model, ready to read.
#[derive(Debug, Clone)]
pub struct PointDef {
    pub id: String,
    /// Modbus: the zero-based register address, its table, type and word order (unused for a
    /// DL/T 645 or CJ/T 188 point).
    pub address: u16,
    pub table: Table,
    pub data_type: DataType,
    pub order: WordOrder,
    /// DL/T 645 and CJ/T 188: the data identifier and where and how its answer holds the value.
    pub meter: Option<MeterPoint>,
    pub scale: f64,
    pub offset: f64,
    pub unit: String,
    /// A cumulative counter (energy, volume, mass); the gateway takes deltas of it.
    pub counter: bool,
    pub role: PointRole,
    /// Per-installation multipliers still to apply (empty once a device's are applied).
    pub factors: Vec<String>,
}

/// What a DL/T 645 or CJ/T 188 meter is asked for, and how its answer reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterPoint {
    pub di: u32,
    /// Bytes of the answer before the value.
    pub at: u8,
    pub format: ems_core::bcd::Format,
    /// CJ/T 188: a unit code byte follows the value; the point's unit, to convert it to.
    pub unit_code: Option<ems_core::cjt188::Unit>,
}

impl MeterPoint {
    /// The point's value in `answer` (the bytes after the identifier): BCD, then converted to
    /// the point's unit from the unit the meter names, if it names one. A unit the standard
    /// does not know, or of another kind, is `decode`: a value is never guessed.
    pub fn decode(&self, answer: &[u8]) -> Result<f64, ems_core::Quality> {
        use ems_core::cjt188::{convert, Unit};
        let at = usize::from(self.at);
        let value = answer
            .get(at..)
            .and_then(|v| ems_core::bcd::decode(v, self.format).ok())
            .ok_or(ems_core::Quality::Decode)?;
        match self.unit_code {
            None => Ok(value),
            Some(want) => answer
                .get(at + usize::from(self.format.bytes))
                .and_then(|&code| Unit::of_code(code))
                .and_then(|given| convert(value, given, want))
                .ok_or(ems_core::Quality::Decode),
        }
    }
}

/// A point of the file checked against its profile's protocol.
fn point_of(
    src: &Source,
    i: usize,
    p: PointFile,
    dialect: Dialect,
) -> Result<PointDef, ConfigError> {
    let key = |k: &str| format!("points[{i}].{k}");
    let (address, table, data_type, meter) = match dialect {
        Dialect::Modbus => {
            if p.di.is_some() || p.format.is_some() || p.unit_code || p.byte_offset != 0 {
                return Err(src.error(
                    &key("di"),
                    "a Modbus profile's points have `address` and `type`; `di`, `byte_offset`, `format` and `unit_code` are DL/T 645's and CJ/T 188's (set `protocol`)",
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
        Dialect::Dlt645(_) | Dialect::Cjt188 { .. } => {
            if p.address.is_some() || p.reference.is_some() || p.data_type.is_some() {
                return Err(src.error(
                    &key("address"),
                    "a DL/T 645 or CJ/T 188 point is read by `di` and `format`, not by register",
                ));
            }
            let digits = dialect.di_digits();
            let di = match (p.di.as_deref(), dialect) {
                (None, Dialect::Cjt188 { .. }) => Some(u32::from(ems_core::cjt188::READ_DATA)),
                (d, _) => d
                    .filter(|d| d.len() == digits)
                    .and_then(|d| u32::from_str_radix(d, 16).ok()),
            };
            let di = di.ok_or_else(|| {
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
                .and_then(|f| ems_core::bcd::Format::parse(f, p.signed))
                .ok_or_else(|| {
                    src.error(
                        &key("format"),
                        "the value's format as the standard prints it, such as \"XXXXXX.XX\" (an even number of X)",
                    )
                })?;
            let unit_code = match (p.unit_code, dialect) {
                (false, _) => None,
                (true, Dialect::Cjt188 { .. }) => {
                    Some(ems_core::cjt188::Unit::named(&p.unit).ok_or_else(|| {
                        let known: Vec<&str> =
                            ems_core::cjt188::UNITS.iter().map(|u| u.name).collect();
                        src.error(
                            &key("unit"),
                            format!(
                                "a value with a unit code is converted to `unit`, one of the standard's: {}",
                                known.join(", ")
                            ),
                        )
                    })?)
                }
                (true, _) => {
                    return Err(src.error(
                        &key("unit_code"),
                        "unit codes are CJ/T 188's; DL/T 645 values have fixed units",
                    ))
                }
            };
            let meter = MeterPoint {
                di,
                at: p.byte_offset,
                format,
                unit_code,
            };
            (0, Table::Holding, DataType::U16, Some(meter))
        }
    };
    if let Some(bad) = p.factors.iter().find(|f| {
        f.is_empty()
            || !f
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }) {
        return Err(src.error(
            &key("factors"),
            format!(
                "`{bad}` is not a factor name: lowercase letters, digits and _, such as \"ct\""
            ),
        ));
    }
    Ok(PointDef {
        id: p.id,
        address,
        table,
        data_type,
        order: p.order,
        meter,
        scale: p.scale,
        offset: p.offset,
        unit: p.unit,
        counter: p.counter,
        role: p.role,
        factors: p.factors,
    })
}

/// The file's `protocol` (and CJ/T 188's `meter_type`).
fn dialect_of(src: &Source, file: &ProfileFile) -> Result<Dialect, ConfigError> {
    use ems_core::dlt645::Edition;
    let name = file.protocol.as_ref().map(|p| p.get_ref().as_str());
    let dialect = match name {
        None | Some("modbus") => Dialect::Modbus,
        Some("dlt645-2007") => Dialect::Dlt645(Edition::V2007),
        Some("dlt645-1997") => Dialect::Dlt645(Edition::V1997),
        Some("cjt188") => match file.meter_type {
            Some(meter_type) => Dialect::Cjt188 { meter_type },
            None => {
                return Err(src.error(
                    "meter_type",
                    "a CJ/T 188 profile names its meter type: 0x10 cold water, 0x11 hot water, 0x20 heat, 0x30 gas",
                ))
            }
        },
        Some(other) => {
            let span = file.protocol.as_ref().map(|p| p.span()).unwrap_or_default();
            return Err(src.error_at(
                span,
                "protocol",
                format!("unknown protocol `{other}`: modbus, dlt645-2007, dlt645-1997 or cjt188"),
            ));
        }
    };
    if file.meter_type.is_some() && !matches!(dialect, Dialect::Cjt188 { .. }) {
        return Err(src.error(
            "meter_type",
            "`meter_type` is CJ/T 188's (protocol = \"cjt188\")",
        ));
    }
    Ok(dialect)
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

    /// The per-installation factors its points name, each once, in name order.
    pub fn factor_names(&self) -> std::collections::BTreeSet<&str> {
        self.points
            .iter()
            .flat_map(|p| p.factors.iter().map(String::as_str))
            .collect()
    }

    /// This profile as one installation reads it: each point that names factors multiplied by
    /// their values (engineering value and offset alike). Every named factor must be in
    /// `factors`; the caller checks that first.
    pub fn with_factors(&self, factors: &BTreeMap<String, f64>) -> Profile {
        let mut profile = self.clone();
        for p in &mut profile.points {
            let times: f64 = p.factors.iter().map(|f| factors[f]).product();
            p.scale *= times;
            p.offset *= times;
            p.factors.clear();
        }
        profile
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
        let mut dialect = dialect_of(src, &file)?;
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
            if file.protocol.is_some() && dialect != p.dialect {
                return Err(src.error("protocol", format!("`{parent}` speaks another protocol")));
            }
            dialect = p.dialect;
        }
        for (i, p) in file.points.into_iter().enumerate() {
            points.push(point_of(src, i, p, dialect)?);
        }
        let profile = Profile {
            name: file.name,
            description: file.description,
            datasheet: file.datasheet.unwrap_or(datasheet),
            max_registers: file.max_registers.unwrap_or(max_registers),
            dialect,
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
    const NAMED_METERS: [&str; 9] = [
        "dtsu666",
        "chint-dtsu666-dlt645",
        "acrel-dtsd1352",
        "acrel-adl400",
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
        point_reads(lib.get(profile).unwrap(), id, raw)
    }

    /// What point `id` of `profile` reads when the meter sends `raw` in its own units.
    fn point_reads(profile: &Profile, id: &str, raw: f64) -> f64 {
        let def = profile.points.iter().find(|d| d.id == id);
        let def = def.unwrap_or_else(|| panic!("{}.{id}", profile.name));
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
    fn the_chint_meter_on_dlt645_asks_only_what_a_single_rate_meter_answers() {
        let lib = Library::built_in();
        let chint = lib.get("chint-dtsu666-dlt645").unwrap();
        assert_eq!(
            chint.dialect,
            Dialect::Dlt645(ems_core::dlt645::Edition::V2007)
        );
        let dis: Vec<u32> = chint.points.iter().map(|p| p.meter.unwrap().di).collect();
        assert!(dis.contains(&0x0001_0000) && dis.contains(&0x0002_0000));
        // The maximum demand answers its minute after the value: 98.5 kW at 2026-01-01 00:00.
        let max = chint
            .points
            .iter()
            .find(|p| p.id == "max_demand_kw")
            .unwrap();
        let answer = [0x00, 0x50, 0x98, 0x00, 0x00, 0x01, 0x01, 0x26];
        assert_eq!(max.meter.unwrap().decode(&answer), Ok(98.5));
        // The per-tariff energies (00010100..00010400) a single-rate meter refuses.
        assert!(
            dis.iter()
                .all(|di| !(0x0001_0100..=0x0001_0400).contains(di)),
            "{dis:08X?}"
        );
    }

    #[test]
    fn secondary_values_read_as_primary_through_the_devices_ratios() {
        let lib = Library::built_in();
        let factors = BTreeMap::from([("pt".to_string(), 100.0), ("ct".to_string(), 40.0)]);
        for name in ["acrel-dtsd1352", "acrel-adl400"] {
            let meter = lib.get(name).unwrap();
            assert_eq!(
                meter.factor_names().into_iter().collect::<Vec<_>>(),
                ["ct", "pt"],
                "{name}"
            );
            let primary = meter.with_factors(&factors);
            let read = |id: &str, raw: f64| point_reads(&primary, id, raw);
            // 1 234.56 secondary kWh through 10 000/100 V and 200/5 A.
            assert!((read("import_kwh", 123_456.0) - 4_938_240.0).abs() < 1e-6);
            assert!((read("p_kw", -1_500.0) + 6_000.0).abs() < 1e-9);
            assert!((read("ia_a", 250.0) - 100.0).abs() < 1e-9);
            assert!((read("ua_v", 577.0) - 5_770.0).abs() < 1e-9);
            assert!((read("pf", -950.0) + 0.95).abs() < 1e-12);
            assert!((read("frequency_hz", 5_001.0) - 50.01).abs() < 1e-12);
        }
    }

    #[test]
    fn the_named_flowmeters_and_scale_read_as_their_manuals_give_them() {
        let lib = Library::built_in();
        // MagFlux: the total a u64 in mm3, least significant word first on the wire.
        let mag = lib.get("xylem-magflux").unwrap();
        let total = mag.points.iter().find(|d| d.id == "volume_m3").unwrap();
        let mut regs = [0u16; 4];
        ems_core::decode::encode(
            12_345_678_900_000.0,
            total.data_type,
            total.order,
            &mut regs,
        );
        assert_eq!(
            regs[0],
            (12_345_678_900_000_u64 & 0xFFFF) as u16,
            "LS word first"
        );
        assert!(
            (reads(&lib, "xylem-magflux", "volume_m3", 12_345_678_900_000.0) - 12_345.678_9).abs()
                < 1e-9
        );
        assert!((reads(&lib, "xylem-magflux", "flow_m3_h", 0.01) - 36.0).abs() < 1e-6);
        // VFM-60: the manual's example, 916.49 read from 44 65 1F CE, and the total at 0x0024.
        let vortex = lib.get("bell-vfm60").unwrap();
        let flow = vortex.points.iter().find(|d| d.id == "flow_per_h").unwrap();
        let read = crate::device_plan::Read {
            table: flow.table,
            start: 0,
            len: 2,
            points: vec![],
        };
        let got = crate::device_plan::decode_point(flow, &read, &[0x4465, 0x1FCE]).unwrap();
        assert!((got - 916.49).abs() < 0.01, "{got}");
        let total = vortex.points.iter().find(|d| d.id == "total").unwrap();
        assert!(total.counter && total.address == 0x24);
        // CI-600D: 40008 is wire address 7; counts times the scale's division, signed.
        let scale = lib.get("cas-ci600d").unwrap();
        assert_eq!(scale.points[0].address, 7);
        let tonnes = scale.with_factors(&BTreeMap::from([("resolution".to_string(), 0.01)]));
        let gross = &tonnes.points[0];
        let read = crate::device_plan::Read {
            table: gross.table,
            start: 7,
            len: 2,
            points: vec![],
        };
        let got = crate::device_plan::decode_point(gross, &read, &[0xFFFF, 0xFF38]).unwrap();
        assert!((got + 2.0).abs() < 1e-12, "-200 counts of 0.01 t: {got}");
    }

    #[test]
    fn a_cjt188_heat_meter_reads_in_the_profiles_units_whatever_unit_it_is_set_to() {
        let lib = Library::built_in();
        let heat = lib.get("cjt188-heat").unwrap();
        assert_eq!(heat.dialect, Dialect::Cjt188 { meter_type: 0x20 });
        // The reply to 901F after its identifier and SER: settlement heat 1.00 GJ (11H),
        // current heat 2.50 MWh (08H), power 12.34 kW (17H), flow 1.2345 m3/h (35H), volume
        // 789.01 m3 (2CH), supply 75.20 and return 50.05 degC, 12 345 h, time, status.
        let answer = [
            0x00, 0x01, 0x00, 0x00, 0x11, 0x50, 0x02, 0x00, 0x00, 0x08, 0x34, 0x12, 0x00, 0x00,
            0x17, 0x45, 0x23, 0x01, 0x00, 0x35, 0x01, 0x89, 0x07, 0x00, 0x2C, 0x20, 0x75, 0x00,
            0x05, 0x50, 0x00, 0x45, 0x23, 0x01, 0x00, 0x00, 0x00, 0x01, 0x01, 0x26, 0x20, 0x00,
            0x00,
        ];
        let read = |id: &str| {
            let p = heat.points.iter().find(|p| p.id == id).unwrap();
            p.meter.unwrap().decode(&answer)
        };
        let settled = read("settlement_day_heat_kwh").unwrap();
        assert!((settled - 277.777_777_78).abs() < 1e-6, "{settled}");
        assert_eq!(read("heat_kwh"), Ok(2_500.0));
        assert_eq!(read("power_kw"), Ok(12.34));
        assert_eq!(read("flow_m3_h"), Ok(1.2345));
        assert_eq!(read("volume_m3"), Ok(789.01));
        assert_eq!(read("supply_c"), Ok(75.2));
        assert_eq!(read("return_c"), Ok(50.05));
        assert_eq!(read("working_h"), Ok(12_345.0));
        // A unit code the standard does not have, or of another kind, is never guessed at.
        let mut odd = answer;
        odd[9] = 0x2D;
        let heat_point = heat.points.iter().find(|p| p.id == "heat_kwh").unwrap();
        assert_eq!(
            heat_point.meter.unwrap().decode(&odd),
            Err(ems_core::Quality::Decode)
        );
        odd[9] = 0x2C;
        assert_eq!(
            heat_point.meter.unwrap().decode(&odd),
            Err(ems_core::Quality::Decode)
        );
        assert_eq!(
            heat_point.meter.unwrap().decode(&answer[..8]),
            Err(ems_core::Quality::Decode)
        );
    }

    #[test]
    fn a_meter_protocols_keys_are_checked_against_its_protocol() {
        let add = |text: &str| Library::default().add(&Source::embedded("x.toml", text));
        let cjt = "name = \"x\"\nprotocol = \"cjt188\"\nmeter_type = 0x10\n[[points]]\nid = \"a\"\nformat = \"XXXXXX.XX\"\n";
        assert!(add(cjt).is_ok(), "901F is CJ/T 188's default identifier");
        let err = add(&format!("{cjt}unit_code = true\nunit = \"m3/d\"\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("points[0].unit"));
        let err = add("name = \"x\"\nprotocol = \"cjt188\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("meter_type"));
        let err = add("name = \"x\"\nprotocol = \"mbus\"\n").unwrap_err();
        assert_eq!((err.key.as_deref(), err.line), (Some("protocol"), Some(2)));
        let dlt = "name = \"x\"\nprotocol = \"dlt645-2007\"\n[[points]]\nid = \"a\"\ndi = \"00010000\"\nformat = \"XXXXXX.XX\"\nunit_code = true\n";
        let err = add(dlt).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("points[0].unit_code"));
        let modbus =
            "name = \"x\"\n[[points]]\nid = \"a\"\naddress = 0\ntype = \"u16\"\nbyte_offset = 2\n";
        let err = add(modbus).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("points[0].di"));
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
