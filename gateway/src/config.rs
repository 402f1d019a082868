//! The gateway's configuration (TOML): broker, storage, HTTP, and the plant's accounting model.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ems_config::{ConfigError, Source, Spanned};
use serde::{Deserialize, Serialize};

use crate::accounting::Calendar;
use crate::coefficients::{unit_factor, Coefficients};
use crate::limits::Limits;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub mqtt: MqttConfig,
    pub storage: StorageConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub accounting: AccountingConfig,
    #[serde(default)]
    pub alarms: AlarmsConfig,
    /// What ingest accepts: the plant's sites, edges and devices, and the bounds of time and
    /// numbering a message must keep.
    pub ingest: AcceptConfig,
    #[serde(default)]
    pub quarantine: QuarantineConfig,
    #[serde(default)]
    pub enterprise: Option<EnterpriseConfig>,
    /// The InfluxDB 2 sink (off when absent).
    #[serde(default)]
    pub influx: Option<crate::influx::InfluxConfig>,
    /// The provincial platform upload (off when absent).
    #[serde(default)]
    pub upload: Option<crate::upload::UploadConfig>,
    pub units: Vec<UnitConfig>,
}

/// The enterprise the gateway accounts for, and its sites and workshops: the levels above the
/// process units that reports add up to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnterpriseConfig {
    pub name: String,
    /// Unified social credit code (统一社会信用代码).
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub workshops: Vec<WorkshopConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkshopConfig {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Client id; the broker keeps this session (and its unacknowledged messages) while the
    /// gateway is down, so keep it stable.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

fn default_mqtt_port() -> u16 {
    1883
}
fn default_client_id() -> String {
    "ems-gateway".into()
}
fn default_topic_prefix() -> String {
    "ems/v1".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// SQLite database file.
    pub path: PathBuf,
    /// Raw samples older than this many days are deleted (checked hourly); rollups, the ledger,
    /// alarms and quarantine are kept. Absent: raw samples are kept for ever.
    #[serde(default)]
    pub raw_retention_days: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Operators and their bearer tokens: acknowledging alarms and declaring gaps lost needs
    /// one.
    #[serde(default)]
    pub operators: std::collections::BTreeMap<String, String>,
    /// Viewers and their bearer tokens: with `open_viewing = false`, reading the API needs a
    /// viewer's or an operator's token.
    #[serde(default)]
    pub viewers: std::collections::BTreeMap<String, String>,
    /// Whether the dashboard and the read API are open to anyone who reaches the port (the
    /// energy centre's own network); writing always needs an operator.
    #[serde(default = "default_true")]
    pub open_viewing: bool,
}

fn default_true() -> bool {
    true
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            operators: Default::default(),
            viewers: Default::default(),
            open_viewing: true,
        }
    }
}

/// What ingest accepts (`[ingest]`). A message outside it is quarantined with its reason and
/// counted, never stored as data: what a faulty meter, a board without a clock or a stranger on
/// the plant network sends must not reach the record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptConfig {
    /// The MQTT sites (the edges' `site`, the topic's second level) this gateway collects.
    pub sites: Vec<String>,
    /// The edges allowed to publish: names, or prefixes ending in `*` (`"line2-*"`).
    pub edges: Vec<String>,
    /// Devices stored besides those the units account for (meters read for information only),
    /// as names or `*`-ended prefixes. A device in neither is quarantined as unknown.
    #[serde(default)]
    pub devices: Vec<String>,
    /// The earliest poll time accepted, RFC 3339: before the plant's commissioning, and in any
    /// case after what a board without a real-time clock reports before NTP (1970, 2000).
    #[serde(default = "default_earliest")]
    pub earliest: String,
    /// How far past the gateway's clock a poll time may be.
    #[serde(default = "default_max_future_s")]
    pub max_future_s: u64,
    /// How far a message's poll time may lie behind its device's newest message: a late
    /// sample recomputes the accounting from there on, so this bounds that work. Must be
    /// shorter than `storage.raw_retention_days`.
    #[serde(default = "default_max_late_s")]
    pub max_late_s: u64,
    /// The most a device's sequence number may jump ahead of its last one (a jump is a gap
    /// the ledger keeps open: a corrupt or hostile number must not open billions).
    #[serde(default = "default_max_seq_jump")]
    pub max_seq_jump: u64,
    /// A storing batch taking longer than this marks the gateway unhealthy (`/healthz`).
    #[serde(default = "default_stall_after_s")]
    pub stall_after_s: u64,
}

fn default_earliest() -> String {
    "2020-01-01T00:00:00Z".into()
}
fn default_max_future_s() -> u64 {
    600
}
fn default_max_late_s() -> u64 {
    86_400
}
fn default_max_seq_jump() -> u64 {
    10_000_000
}
fn default_stall_after_s() -> u64 {
    60
}

/// `true` when `name` is one of `patterns`: equal to one, or starting with one that ends in `*`.
pub fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// How long refused messages are kept and how much of each (`[quarantine]`). The count and
/// bytes of every refusal by reason are kept for ever.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineConfig {
    /// Entries older than this are deleted (checked hourly); absent: kept for ever.
    #[serde(default = "default_quarantine_retention_days")]
    pub retention_days: Option<u32>,
    /// At most this much of a payload is kept; its full size and SHA-256 always are.
    #[serde(default = "default_quarantine_max_payload_bytes")]
    pub max_payload_bytes: usize,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        QuarantineConfig {
            retention_days: default_quarantine_retention_days(),
            max_payload_bytes: default_quarantine_max_payload_bytes(),
        }
    }
}

fn default_quarantine_retention_days() -> Option<u32> {
    Some(180)
}
fn default_quarantine_max_payload_bytes() -> usize {
    65_536
}

/// When alarms are raised and cleared (see `alarms.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmsConfig {
    /// Real seconds between evaluations.
    #[serde(default = "default_check_every_s")]
    pub check_every_s: f64,
    /// Unit figures are judged over this many trailing hours (whole 15-minute slots).
    #[serde(default = "default_window_h")]
    pub window_h: u32,
    /// "Near the limit": within this percentage of the limit's magnitude below it.
    #[serde(default = "default_near_limit_pct")]
    pub near_limit_pct: f64,
    /// An alarm clears only once the figure is this percentage (of the threshold's magnitude)
    /// back below its threshold, so a figure hovering at the threshold does not flap.
    #[serde(default = "default_hysteresis_pct")]
    pub hysteresis_pct: f64,
    /// A device with no good reading for this long (plant time) is offline.
    #[serde(default = "default_offline_after_s")]
    pub offline_after_s: u64,
    /// What "now" is for alarms: the gateway's clock, or the newest poll time received (for
    /// replayed or simulated plants whose time is not the wall clock's).
    #[serde(default)]
    pub clock: AlarmClock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AlarmClock {
    #[default]
    Wall,
    Data,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        AlarmsConfig {
            check_every_s: default_check_every_s(),
            window_h: default_window_h(),
            near_limit_pct: default_near_limit_pct(),
            hysteresis_pct: default_hysteresis_pct(),
            offline_after_s: default_offline_after_s(),
            clock: AlarmClock::default(),
        }
    }
}

fn default_check_every_s() -> f64 {
    10.0
}
fn default_window_h() -> u32 {
    24
}
fn default_near_limit_pct() -> f64 {
    5.0
}
fn default_hysteresis_pct() -> f64 {
    2.0
}
fn default_offline_after_s() -> u64 {
    600
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

/// Which electricity coefficient the comprehensive energy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ElectricityBasis {
    /// 当量值, 0.1229 kgce/kWh: what the limit standards use.
    #[default]
    Equivalent,
    /// 等价值, from the year's thermal-power coal rate.
    Equal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountingConfig {
    /// The plant's UTC offset: days and months start at local midnight. China: "+08:00".
    #[serde(default = "default_utc_offset")]
    pub utc_offset: String,
    #[serde(default)]
    pub electricity: ElectricityBasis,
    /// A coefficients file replacing the built-in one (same format as gateway/data/coefficients.toml).
    #[serde(default)]
    pub coefficients: Option<PathBuf>,
    /// A limits file replacing the built-in one (same format as gateway/data/limits.toml).
    #[serde(default)]
    pub limits: Option<PathBuf>,
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
    pub gap_fill: crate::accounting::GapFill,
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
    /// blast_furnace, converter, kiln, electrolysis, ...
    pub kind: String,
    /// The workshop (id from `[[enterprise.sites.workshops]]`) the unit belongs to.
    #[serde(default)]
    pub workshop: Option<Spanned<String>>,
    pub flows: Vec<FlowConfig>,
    /// Limit standards the unit is judged against (codes from the limits file); the first is
    /// its headline level.
    #[serde(default)]
    pub limits: Vec<Spanned<String>>,
    /// Water-intake quota (code from the limits file).
    #[serde(default)]
    pub water_quota: Option<Spanned<String>>,
    /// The relevant variables the limits' corrections need: a number, a category, or a ratio
    /// (in %) of the unit's own flows, e.g. `scrap_ratio_pct = { ratio = ["bof1-scrap"],
    /// of = ["bof1-scrap", "bof1-hot-metal"] }`.
    #[serde(default)]
    pub corrections: std::collections::BTreeMap<String, CorrectionConfig>,
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
    /// The counter wraps to zero after this value (in the point's engineering unit).
    #[serde(default)]
    pub rollover: Option<f64>,
    /// The most this flow can physically do per hour (in the point's unit): a reading implying
    /// more is a spike and is rejected.
    #[serde(default)]
    pub max_rate_per_h: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Consumed,
    Recovered,
    Product,
    Water,
    /// Raw material or working medium (hot metal, scrap, oxygen): not energy; feeds ratios.
    Material,
}

/// A flow with its conversion to kgce resolved.
#[derive(Debug, Clone)]
pub struct Flow {
    pub device: String,
    pub point: String,
    pub role: Role,
    pub carrier: Option<String>,
    pub unit: String,
    /// kgce per metered unit (consumed and recovered flows), tonnes per metered unit (product),
    /// m3 per metered unit (water).
    pub factor: f64,
    pub rollover: Option<f64>,
    pub max_rate_per_h: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unit {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub site: Option<String>,
    pub workshop: Option<String>,
    #[serde(skip)]
    pub flows: Vec<Flow>,
    #[serde(skip)]
    pub limits: Vec<crate::limits::Limit>,
    #[serde(skip)]
    pub water_quota: Option<crate::limits::WaterQuota>,
    #[serde(skip)]
    pub corrections: std::collections::BTreeMap<String, CorrectionConfig>,
}

/// The loaded, checked configuration.
#[derive(Debug, Clone)]
pub struct Plant {
    pub config: GatewayConfig,
    pub units: Vec<Unit>,
    pub utc_offset: chrono::FixedOffset,
    pub calendar: Calendar,
    pub coefficients: Coefficients,
    pub limits: Limits,
    /// `ingest.earliest`, ms since the epoch.
    pub earliest_ms: i64,
}

/// Checks `[ingest]` and `[quarantine]`; returns the earliest acceptable time.
fn check_accept(src: &Source, config: &GatewayConfig) -> Result<i64, ConfigError> {
    let a = &config.ingest;
    for (key, names) in [("ingest.sites", &a.sites), ("ingest.edges", &a.edges)] {
        if names.is_empty() {
            return Err(src.error(key, "name at least one (what this gateway collects)"));
        }
    }
    for (key, names) in [
        ("ingest.sites", &a.sites),
        ("ingest.edges", &a.edges),
        ("ingest.devices", &a.devices),
    ] {
        if let Some((i, bad)) = names
            .iter()
            .enumerate()
            .find(|(_, n)| !valid_name(n.strip_suffix('*').unwrap_or(n)))
        {
            return Err(src.error(
                &format!("{key}[{i}]"),
                format!("`{bad}` is not a name: 1 to {MAX_NAME_LEN} letters, digits, `_`, `-`, `.` or `:`"),
            ));
        }
    }
    if a.sites.iter().any(|s| s.ends_with('*')) {
        return Err(src.error("ingest.sites", "sites are names, not patterns"));
    }
    let earliest = chrono::DateTime::parse_from_rfc3339(&a.earliest)
        .map_err(|e| src.error("ingest.earliest", format!("not an RFC 3339 time: {e}")))?
        .timestamp_millis();
    if a.max_seq_jump == 0 || a.max_seq_jump > i64::MAX as u64 / 4 {
        return Err(src.error("ingest.max_seq_jump", "from 1 to 2^61"));
    }
    if a.max_late_s == 0 || a.max_late_s > 366 * 86_400 {
        return Err(src.error("ingest.max_late_s", "from 1 s to a year"));
    }
    if a.max_future_s > 7 * 86_400 {
        return Err(src.error("ingest.max_future_s", "at most a week"));
    }
    if a.stall_after_s == 0 {
        return Err(src.error("ingest.stall_after_s", "at least one second"));
    }
    if let Some(days) = config.storage.raw_retention_days {
        if u64::from(days) * 86_400 <= a.max_late_s {
            return Err(src.error(
                "ingest.max_late_s",
                "must be shorter than storage.raw_retention_days: a late sample is accounted against the raw samples around it",
            ));
        }
    }
    if config.quarantine.max_payload_bytes < 1_024 {
        return Err(src.error(
            "quarantine.max_payload_bytes",
            "at least 1024 bytes (enough to see what was sent)",
        ));
    }
    Ok(earliest)
}

/// The longest site, edge, device or point name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// A site, edge, device or point name: what a topic level and a ledger key may hold.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

impl Plant {
    pub fn load(path: &Path) -> Result<Plant, ConfigError> {
        Plant::from_source(&Source::read(path)?)
    }

    pub fn from_source(src: &Source) -> Result<Plant, ConfigError> {
        let config: GatewayConfig = src.parse()?;
        let coefficients = match &config.accounting.coefficients {
            Some(path) => Coefficients::from_source(&Source::read(path)?)?,
            None => Coefficients::built_in(),
        };
        let limits = match &config.accounting.limits {
            Some(path) => Limits::from_source(&Source::read(path)?)?,
            None => Limits::built_in(),
        };
        let utc_offset: chrono::FixedOffset =
            config.accounting.utc_offset.parse().map_err(|_| {
                src.error(
                    "accounting.utc_offset",
                    "expected an offset such as \"+08:00\"",
                )
            })?;
        let mut shift_starts = Vec::new();
        for (i, text) in config.accounting.shifts.iter().enumerate() {
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
        let a = &config.alarms;
        if !(a.check_every_s.is_finite() && a.check_every_s > 0.0) {
            return Err(src.error(
                "alarms.check_every_s",
                "must be a positive number of seconds",
            ));
        }
        if a.window_h == 0 {
            return Err(src.error("alarms.window_h", "at least one hour"));
        }
        for (key, pct) in [
            ("alarms.near_limit_pct", a.near_limit_pct),
            ("alarms.hysteresis_pct", a.hysteresis_pct),
        ] {
            if !(0.0..100.0).contains(&pct) {
                return Err(src.error(key, "a percentage from 0 to below 100"));
            }
        }
        if let Some(i) = &config.influx {
            if !(i.rollup_settle_s.is_finite() && (0.0..=86_400.0).contains(&i.rollup_settle_s)) {
                return Err(src.error("influx.rollup_settle_s", "seconds from 0 to 86400"));
            }
        }
        let calendar = Calendar {
            tz: utc_offset,
            shift_starts,
        };
        let earliest_ms = check_accept(src, &config)?;
        // Workshop id -> site id.
        let mut workshops = std::collections::HashMap::new();
        for (i, site) in config.enterprise.iter().flat_map(|e| &e.sites).enumerate() {
            for (j, w) in site.workshops.iter().enumerate() {
                if workshops.insert(w.id.clone(), site.id.clone()).is_some() {
                    return Err(src.error(
                        &format!("enterprise.sites[{i}].workshops[{j}].id"),
                        format!("duplicate workshop id `{}`", w.id),
                    ));
                }
            }
        }
        let mut ids = HashSet::new();
        let mut units = Vec::new();
        for (i, u) in config.units.iter().enumerate() {
            if !ids.insert(u.id.get_ref().clone()) {
                return Err(src.error_at(
                    u.id.span(),
                    &format!("units[{i}].id"),
                    "duplicate unit id",
                ));
            }
            let (workshop, site) = match &u.workshop {
                Some(w) => match workshops.get(w.get_ref()) {
                    Some(site) => (Some(w.get_ref().clone()), Some(site.clone())),
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
                None => (None, None),
            };
            let mut flows = Vec::new();
            for (j, f) in u.flows.iter().enumerate() {
                let key = |k: &str| format!("units[{i}].flows[{j}].{k}");
                let unit = f.unit.get_ref();
                let factor = match f.role {
                    Role::Material => Some(1.0),
                    Role::Product => unit_factor(unit, "t"),
                    Role::Water => unit_factor(unit, "m3"),
                    Role::Consumed | Role::Recovered => {
                        let Some(code) = &f.carrier else {
                            return Err(src.error(
                                &key("carrier"),
                                "consumed and recovered flows need a carrier",
                            ));
                        };
                        let code_str = if code.get_ref() == "electricity"
                            && config.accounting.electricity == ElectricityBasis::Equal
                        {
                            "electricity_equal"
                        } else {
                            code.get_ref().as_str()
                        };
                        let Some(carrier) = coefficients.get(code_str) else {
                            return Err(src.error_at(
                                code.span(),
                                &key("carrier"),
                                format!("unknown carrier `{}`", code.get_ref()),
                            ));
                        };
                        match f.lhv_kj {
                            Some(lhv) if lhv.is_finite() && lhv > 0.0 => {
                                Some(lhv / coefficients.kj_per_kgce)
                            }
                            Some(_) => {
                                return Err(src.error(&key("lhv_kj"), "must be a positive number"))
                            }
                            None => {
                                unit_factor(unit, &carrier.unit).map(|k| k * carrier.kgce_per_unit)
                            }
                        }
                    }
                };
                let Some(factor) = factor else {
                    return Err(src.error_at(
                        f.unit.span(),
                        &key("unit"),
                        format!("unit `{unit}` does not fit a {:?} flow", f.role),
                    ));
                };
                flows.push(Flow {
                    device: f.device.clone(),
                    point: f.point.clone(),
                    role: f.role,
                    carrier: f.carrier.as_ref().map(|c| c.get_ref().clone()),
                    unit: unit.clone(),
                    factor,
                    rollover: f.rollover,
                    max_rate_per_h: f.max_rate_per_h,
                });
            }
            if !flows.iter().any(|f| f.role == Role::Product) {
                return Err(src.error(
                    &format!("units[{i}].flows"),
                    "a unit needs at least one product flow",
                ));
            }
            let mut unit_limits = Vec::new();
            for (j, code) in u.limits.iter().enumerate() {
                let Some(l) = limits.limit(code.get_ref()) else {
                    return Err(src.error_at(
                        code.span(),
                        &format!("units[{i}].limits[{j}]"),
                        format!("unknown limit `{}`", code.get_ref()),
                    ));
                };
                for c in &l.correction {
                    if !u.corrections.contains_key(c.input()) {
                        return Err(src.error(
                            &format!("units[{i}].corrections"),
                            format!("limit `{}` needs `{}`", l.code, c.input()),
                        ));
                    }
                }
                unit_limits.push(l.clone());
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
                site,
                workshop,
                flows,
                limits: unit_limits,
                water_quota,
                corrections: u.corrections.clone(),
            });
        }
        Ok(Plant {
            config,
            units,
            utc_offset,
            calendar,
            coefficients,
            limits,
            earliest_ms,
        })
    }

    pub fn unit(&self, id: &str) -> Option<&Unit> {
        self.units.iter().find(|u| u.id == id)
    }

    /// Whether telemetry of `device` is stored: a unit accounts for it, or `[ingest] devices`
    /// names it.
    pub fn known_device(&self, device: &str) -> bool {
        self.flows().any(|f| f.device == device) || matches_any(&self.config.ingest.devices, device)
    }

    /// Every (device, point) some unit accounts for, with its flow.
    pub fn flows(&self) -> impl Iterator<Item = &Flow> {
        self.units.iter().flat_map(|u| u.flows.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[ingest]` table every config needs, for the configs written out in these tests.
    const INGEST: &str = "[ingest]\nsites = [\"s\"]\nedges = [\"e\"]\n";

    #[test]
    fn shipped_example_configs_parse() {
        // Every config shipped in gateway/examples/.
        const EXAMPLES: &[(&str, &str)] = &[("demo.toml", include_str!("../examples/demo.toml"))];
        for (name, text) in EXAMPLES {
            let plant =
                Plant::from_source(&Source::embedded(name, text)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(plant.units.len(), 5);
        }
    }

    #[test]
    fn units_sit_in_declared_workshops() {
        let demo = Plant::from_source(&Source::embedded(
            "demo.toml",
            include_str!("../examples/demo.toml"),
        ))
        .unwrap();
        let bof = demo.unit("bof1").unwrap();
        assert_eq!(
            (bof.workshop.as_deref(), bof.site.as_deref()),
            (Some("steelmaking"), Some("main"))
        );
        let head = "[mqtt]\nhost = \"h\"\n[storage]\npath = \"x.db\"\n[enterprise]\nname = \"E\"\n[[enterprise.sites]]\nid = \"s\"\nname = \"S\"\nworkshops = [{ id = \"w\", name = \"W\" }]\n[[units]]\nid = \"u\"\nname = \"U\"\nkind = \"kiln\"\n";
        let flows = "[[units.flows]]\ndevice = \"d\"\npoint = \"total\"\nrole = \"product\"\nunit = \"t\"\n";
        let err = |unit: &str| {
            Plant::from_source(&Source::embedded(
                "gw.toml",
                &format!("{head}{unit}{flows}{INGEST}"),
            ))
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            err("workshop = \"ww\"\n"),
            "gw.toml:15:12: key `units[0].workshop`: unknown workshop `ww`"
        );
        assert!(err("").contains("key `units[0].workshop`: the enterprise declares workshops"));
    }

    #[test]
    fn coefficients_follow_the_metered_unit_and_measured_heating_value() {
        let plant = Plant::from_source(&Source::embedded(
            "demo.toml",
            include_str!("../examples/demo.toml"),
        ))
        .unwrap();
        let bf = plant.unit("bf1").unwrap();
        let coke = bf
            .flows
            .iter()
            .find(|f| f.carrier.as_deref() == Some("coke"))
            .unwrap();
        assert_eq!(coke.unit, "t");
        assert!((coke.factor - 971.4).abs() < 1e-9);
        let bof = plant.unit("bof1").unwrap();
        let ldg = bof
            .flows
            .iter()
            .find(|f| f.carrier.as_deref() == Some("converter_gas"))
            .unwrap();
        assert!((ldg.factor - 7_500.0 / 29_307.0).abs() < 1e-12);
    }

    #[test]
    fn limits_and_their_correction_inputs_are_checked() {
        let base = "[mqtt]\nhost = \"h\"\n[storage]\npath = \"x.db\"\n[[units]]\nid = \"u\"\nname = \"U\"\nkind = \"converter\"\n";
        let flows = "[[units.flows]]\ndevice = \"d\"\npoint = \"total\"\nrole = \"product\"\nunit = \"t\"\n";
        let err = |unit: &str| {
            Plant::from_source(&Source::embedded(
                "gw.toml",
                &format!("{base}{unit}{flows}{INGEST}"),
            ))
            .unwrap_err()
        };
        let e = err("limits = [\"converterr\"]\n");
        assert_eq!(
            e.to_string(),
            "gw.toml:9:11: key `units[0].limits[0]`: unknown limit `converterr`"
        );
        let e = err("limits = [\"converter\"]\n");
        assert!(
            e.to_string()
                .contains("limit `converter` needs `scrap_ratio_pct`"),
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
        let text = "[mqtt]\nhost = \"h\"\n[storage]\npath = \"x.db\"\n[[units]]\nid = \"u\"\nname = \"U\"\nkind = \"kiln\"\n[[units.flows]]\ndevice = \"d\"\npoint = \"total\"\nrole = \"consumed\"\ncarrier = \"unobtainium\"\nunit = \"t\"\n";
        let text = format!("{text}{INGEST}");
        let err = Plant::from_source(&Source::embedded("gw.toml", &text)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "gw.toml:13:11: key `units[0].flows[0].carrier`: unknown carrier `unobtainium`"
        );
    }
}
