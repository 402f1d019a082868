//! The gateway's configuration (TOML): its runtime parts (broker, storage, what ingest accepts,
//! quarantine, HTTP, alarms, the sinks), each component's own table, and the plant's tables
//! (`[accounting]`, `[enterprise]` or `[[enterprises]]`, `[[units]]`, `[[boundary]]`), which
//! ems-energy turns into the plant model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ems_config::{ConfigError, Source};
use ems_energy::coefficients::Coefficients;
use ems_energy::limits::Limits;
use ems_energy::model::{AccountingConfig, EnterpriseConfig, UnitConfig};
use ems_energy::Plant;
use serde::Deserialize;

use crate::storage::{AccountingRules, WriteRules};

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayConfig {
    mqtt: MqttConfig,
    storage: StorageConfig,
    #[serde(default)]
    http: HttpConfig,
    #[serde(default)]
    accounting: AccountingConfig,
    #[serde(default)]
    alarms: AlarmsConfig,
    ingest: AcceptConfig,
    #[serde(default)]
    quarantine: QuarantineConfig,
    #[serde(default)]
    enterprise: Option<EnterpriseConfig>,
    /// A group's several enterprises on one gateway (instead of `[enterprise]`).
    #[serde(default)]
    enterprises: Vec<EnterpriseConfig>,
    #[serde(default)]
    influx: Option<crate::influx::InfluxConfig>,
    #[serde(default)]
    upload: Option<crate::upload::UploadConfig>,
    #[serde(default)]
    cluster: Option<ClusterConfig>,
    #[serde(default)]
    evidence: EvidenceConfig,
    units: Vec<UnitConfig>,
    #[serde(default)]
    boundary: Vec<ems_energy::model::FlowConfig>,
}

/// The loaded, checked configuration: each component's part, and the plant.
#[derive(Debug, Clone)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub storage: StorageConfig,
    pub http: HttpConfig,
    pub alarms: AlarmsConfig,
    /// What ingest accepts.
    pub ingest: AcceptConfig,
    pub quarantine: QuarantineConfig,
    /// The InfluxDB 2 sink (off when absent).
    pub influx: Option<crate::influx::InfluxConfig>,
    /// The provincial platform upload (off when absent).
    pub upload: Option<crate::upload::UploadConfig>,
    /// This gateway's slot among several writing one PostgreSQL database (absent: alone).
    pub cluster: Option<ClusterConfig>,
    /// `ingest.earliest`, ms since the epoch.
    pub earliest_ms: i64,
    pub plant: Arc<Plant>,
    /// Each enrolled edge's public key (`[evidence] edge_keys`).
    pub edge_keys: Arc<EdgeKeys>,
    /// The key the gateway signs its reports with (`[evidence] report_key_file`).
    pub report_key: Option<ems_process::key_file::SigningSeed>,
    /// SHA-256 of what the figures were drawn with: `configuration` (this file), `coefficients`
    /// and `limits` (the data files, or the built-in ones).
    pub digests: std::collections::BTreeMap<String, String>,
}

pub use crate::evidence::EdgeKeys;

/// `[evidence]`: the edges enrolled with a key, as `ems-edge keygen` printed it. An enrolled
/// edge's messages must be signed with it; an edge not enrolled is taken as v1 (unsigned, or
/// signed but unverified).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceConfig {
    #[serde(default)]
    edge_keys: std::collections::BTreeMap<String, ems_config::Spanned<String>>,
    /// The gateway's own key (`ems-gateway keygen --out PATH`), with which it signs its JSON
    /// reports; absent: reports carry their evidence unsigned.
    #[serde(default)]
    report_key_file: Option<ems_config::Spanned<PathBuf>>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::from_source(&Source::read(path)?)
    }

    pub fn from_source(src: &Source) -> Result<Config, ConfigError> {
        let mut config: GatewayConfig = src.parse()?;
        let enterprises = config
            .enterprise
            .iter_mut()
            .map(|e| ("enterprise".to_owned(), e))
            .chain(
                config
                    .enterprises
                    .iter_mut()
                    .enumerate()
                    .map(|(i, e)| (format!("enterprises[{i}]"), e)),
            );
        for (key, e) in enterprises {
            if let Some(path) = &e.monthly_values_csv {
                let rows =
                    read_monthly_values(path.get_ref(), &e.monthly_values).map_err(|err| {
                        at_reference(src, &format!("{key}.monthly_values_csv"), path, err)
                    })?;
                e.monthly_values.extend(rows);
            }
        }
        // A zone that does not parse is the plant's error, at its key; heating values are then
        // read against UTC only to report their own faults.
        let tz = config
            .accounting
            .utc_offset
            .parse()
            .unwrap_or(chrono::FixedOffset::east_opt(0).expect("UTC"));
        let flows = config
            .units
            .iter_mut()
            .enumerate()
            .flat_map(|(i, u)| {
                u.flows
                    .iter_mut()
                    .enumerate()
                    .map(move |(j, f)| (format!("units[{i}].flows[{j}]"), f))
            })
            .chain(
                config
                    .boundary
                    .iter_mut()
                    .enumerate()
                    .map(|(j, f)| (format!("boundary[{j}]"), f)),
            );
        for (key, f) in flows {
            if let Some(path) = &f.lhv_csv {
                let rows = read_heating_values(path.get_ref(), &f.lhv, tz)
                    .map_err(|err| at_reference(src, &format!("{key}.lhv_csv"), path, err))?;
                f.lhv.extend(rows);
            }
        }
        let sha256 = |text: &str| {
            use sha2::Digest as _;
            crate::storage::hex(&sha2::Sha256::digest(text.as_bytes()))
        };
        let mut digests = std::collections::BTreeMap::new();
        digests.insert("configuration".to_owned(), sha256(&src.text));
        let coefficients = match &config.accounting.coefficients {
            Some(path) => Source::read(path.get_ref())
                .and_then(|text| {
                    digests.insert("coefficients".to_owned(), sha256(&text.text));
                    Coefficients::from_source(&text)
                })
                .map_err(|err| at_reference(src, "accounting.coefficients", path, err))?,
            None => {
                let text = ems_energy::coefficients::BUILT_IN;
                digests.insert("coefficients".to_owned(), sha256(text));
                Coefficients::built_in()
            }
        };
        let limits = match &config.accounting.limits {
            Some(path) => Source::read(path.get_ref())
                .and_then(|text| {
                    digests.insert("limits".to_owned(), sha256(&text.text));
                    Limits::from_source(&text)
                })
                .map_err(|err| at_reference(src, "accounting.limits", path, err))?,
            None => {
                digests.insert("limits".to_owned(), sha256(ems_energy::limits::BUILT_IN));
                Limits::built_in()
            }
        };
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
        let earliest_ms = check_accept(src, &config)?;
        let mut edge_keys = EdgeKeys::new();
        for (edge, key) in &config.evidence.edge_keys {
            let public = ems_core::evidence::PublicKey::from_hex(key.get_ref().trim())
                .map_err(|e| src.error_at(key.span(), &format!("evidence.edge_keys.{edge}"), e))?;
            edge_keys.insert(edge.clone(), public);
        }
        let report_key = match &config.evidence.report_key_file {
            None => None,
            Some(path) => Some(
                ems_process::key_file::read_key(path.get_ref())
                    .map_err(|e| src.error_at(path.span(), "evidence.report_key_file", e))?,
            ),
        };
        match (
            &config.storage.backend,
            &config.storage.url,
            &config.cluster,
        ) {
            (Backend::Postgres, None, _) => {
                return Err(src.error(
                    "storage.url",
                    "backend = \"postgres\" needs the database's connection string",
                ))
            }
            (Backend::Sqlite, _, Some(_)) => return Err(src.error(
                "cluster",
                "gateway slots share a PostgreSQL database: set [storage] backend = \"postgres\"",
            )),
            _ => {}
        }
        if let Some(c) = &config.cluster {
            if !valid_name(&c.slot) || !valid_name(&c.instance) {
                return Err(src.error(
                    "cluster",
                    "slot and instance are names (letters, digits, - _ .)",
                ));
            }
            if c.lease_s == 0 {
                return Err(src.error("cluster.lease_s", "at least one second"));
            }
        }
        let plant = Plant::build(
            src,
            &config.accounting,
            ems_energy::model::EnterpriseTables {
                one: &config.enterprise,
                several: &config.enterprises,
            },
            &config.units,
            &config.boundary,
            coefficients,
            limits,
        )?;
        Ok(Config {
            mqtt: config.mqtt,
            storage: config.storage,
            http: config.http,
            alarms: config.alarms,
            ingest: config.ingest,
            quarantine: config.quarantine,
            influx: config.influx,
            upload: config.upload,
            cluster: config.cluster,
            earliest_ms,
            plant: Arc::new(plant),
            edge_keys: Arc::new(edge_keys),
            report_key,
            digests,
        })
    }

    /// The public half of the key reports are signed with.
    pub fn report_public_key(&self) -> Option<ems_core::evidence::PublicKey> {
        let key = ems_core::evidence::EdgeKey::from_seed(self.report_key.as_ref()?.0);
        ems_core::evidence::PublicKey::from_hex(&key.public_hex()).ok()
    }

    /// What reports and upload records are sealed with: the report key, if there is one, and
    /// the files' digests.
    pub fn sealer(&self) -> crate::report::seal::Sealer {
        crate::report::seal::Sealer {
            key: self
                .report_key
                .as_ref()
                .map(|s| ems_core::evidence::EdgeKey::from_seed(s.0)),
            digests: self.digests.clone(),
        }
    }

    /// A report's inputs from this configuration and `reader`, made at `now_ms`.
    pub fn report_inputs<'a>(
        &'a self,
        reader: &'a crate::view::Reader,
        now_ms: i64,
    ) -> crate::report::Inputs<'a> {
        crate::report::Inputs {
            plant: &self.plant,
            reader,
            now_ms,
            earliest_ms: self.earliest_ms,
        }
    }

    /// What the store checks and keeps: the plant's counter rules, `[ingest]` and `[quarantine]`.
    pub fn write_rules(&self) -> WriteRules {
        WriteRules {
            accounting: self.accounting_rules(),
            max_late_ms: self.ingest.max_late_s as i64 * 1000,
            max_seq_jump: self.ingest.max_seq_jump as i64,
            quarantine_payload_bytes: self.quarantine.max_payload_bytes,
            history_settle_ms: self.storage.history_settle_ms(),
        }
    }

    /// The counter points the plant's units account for.
    pub fn accounting_rules(&self) -> AccountingRules {
        AccountingRules {
            tracked: self.plant.counter_rules(),
            max_gap_ms: self.plant.max_sample_gap_ms,
        }
    }

    /// Whether telemetry of `device` is stored: a unit accounts for it, or `[ingest] devices`
    /// names it.
    pub fn known_device(&self, device: &str) -> bool {
        self.plant.flows().any(|f| f.device == device)
            || self.plant.lhv_points().any(|p| p.device == device)
            || matches_any(&self.ingest.devices, device)
    }
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
    /// Tell each edge what is committed of its devices (protocol v1.1, retained on
    /// `{prefix}/{site}/ack/{edge}`): an edge that hears it keeps every result until it is
    /// committed, not just until the broker's PUBACK. Off only for a broker whose ACL forbids
    /// the gateway to publish there.
    #[serde(default = "yes")]
    pub commit_acks: bool,
}

fn yes() -> bool {
    true
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
    /// SQLite database file (not used with `backend = "postgres"`).
    pub path: PathBuf,
    /// Where ingest commits: `sqlite` (the embedded default) or `postgres` (at `url`).
    #[serde(default)]
    pub backend: Backend,
    /// PostgreSQL connection string (`host=... user=... dbname=...` or a `postgresql://` URL).
    #[serde(default)]
    pub url: Option<String>,
    /// Raw samples older than this many days are deleted (checked hourly); rollups, the ledger,
    /// alarms and quarantine are kept. Absent: raw samples are kept for ever.
    #[serde(default)]
    pub raw_retention_days: Option<u32>,
    /// A device's raw history this many hours behind its newest poll is settled: each whole
    /// UTC day of it is rewritten (hourly) into one compact, lossless block (history.rs).
    /// 0: never.
    #[serde(default = "default_compact_after_h")]
    pub compact_after_h: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sqlite,
    Postgres,
}

/// A gateway slot: the sites one active gateway writes, stood in for by another instance of the
/// same slot (its standby) when its lease in PostgreSQL lapses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The slot's name; every instance of it has the same `[ingest] sites` and MQTT client id.
    pub slot: String,
    /// This instance's name (its lease shows who holds the slot).
    pub instance: String,
    /// The lease's length: a standby takes over at most this long after the active one stopped
    /// renewing (it renews every third of it).
    #[serde(default = "default_lease_s")]
    pub lease_s: u64,
}

fn default_lease_s() -> u64 {
    10
}

fn default_compact_after_h() -> u32 {
    48
}

impl StorageConfig {
    /// How far behind a device's newest poll its history may be compacted; never: zero (any
    /// message older than the newest then looks for a block).
    pub fn history_settle_ms(&self) -> i64 {
        i64::from(self.compact_after_h) * 3_600_000
    }
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

/// An error reading a file this configuration names: one that could not be read at all is
/// this file's error, at the key that names it (its line and key, the path in the message); a
/// fault inside the named file stays that file's, at its own line.
fn at_reference(
    src: &Source,
    key: &str,
    path: &ems_config::Spanned<std::path::PathBuf>,
    err: ConfigError,
) -> ConfigError {
    if err.line.is_some() || err.file != *path.get_ref() {
        return err;
    }
    let message = format!("{}: {}", path.get_ref().display(), err.message);
    src.error_at(path.span(), key, message)
}

/// The rows of a CSV file with a header, each checked by `check` (which gets the row and the
/// previous rows, and answers with the field and reason of a fault); a row that does not parse
/// or fails its check names the file, the line and the column.
fn read_csv_rows<T: serde::de::DeserializeOwned>(
    path: &Path,
    mut check: impl FnMut(&T, &[T]) -> Result<(), (&'static str, String)>,
) -> Result<Vec<T>, ConfigError> {
    let error = |line: Option<u64>, key: Option<&str>, message: String| ConfigError {
        file: path.to_owned(),
        line: line.map(|l| l as usize),
        column: None,
        key: key.map(str::to_owned),
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| error(None, None, format!("cannot read: {e}")))?;
    let mut rows: Vec<T> = Vec::new();
    for record in reader.deserialize::<T>() {
        let v = record.map_err(|e| {
            let line = e.position().map(|p| p.line());
            error(line, None, e.to_string())
        })?;
        if let Err((field, why)) = check(&v, &rows) {
            return Err(error(Some(rows.len() as u64 + 2), Some(field), why));
        }
        rows.push(v);
    }
    Ok(rows)
}

/// An enterprise's output value and value added from a CSV file (header
/// `month,output_value,value_added`, one row a month, 10 000 yuan; value added may be empty).
/// Errors name the file, the line and the column; a month given twice (here or in the
/// configuration's `monthly_values`) is refused.
fn read_monthly_values(
    path: &Path,
    inline: &[ems_energy::intensity::MonthlyValue],
) -> Result<Vec<ems_energy::intensity::MonthlyValue>, ConfigError> {
    read_csv_rows(path, |v: &ems_energy::intensity::MonthlyValue, before| {
        v.check().map_err(|(field, why)| (field, why.to_owned()))?;
        if inline.iter().chain(before).any(|r| r.month == v.month) {
            return Err(("month", format!("{} is given twice", v.month)));
        }
        Ok(())
    })
}

/// A flow's heating values from a laboratory's CSV file (`from,lhv_kj`: a time, local or RFC
/// 3339, and kJ per metered unit); a bad row or a time given twice names the file and line.
fn read_heating_values(
    path: &Path,
    inline: &[ems_energy::schedule::HeatingValue],
    tz: chrono::FixedOffset,
) -> Result<Vec<ems_energy::schedule::HeatingValue>, ConfigError> {
    let at = |v: &ems_energy::schedule::HeatingValue| v.checked(tz).ok();
    read_csv_rows(path, |v: &ems_energy::schedule::HeatingValue, before| {
        let from = v
            .checked(tz)
            .map_err(|(field, why)| (field, why.to_owned()))?;
        if inline.iter().chain(before).any(|r| at(r) == Some(from)) {
            return Err(("from", format!("{} is given twice", v.from)));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_configs_parse() {
        // Every config shipped in gateway/examples/.
        const EXAMPLES: &[(&str, &str)] = &[("demo.toml", include_str!("../examples/demo.toml"))];
        for (name, text) in EXAMPLES {
            let config = Config::from_source(&Source::embedded(name, text))
                .unwrap_or_else(|e| panic!("{e}"));
            // Five process units and the works' oxygen and power plants.
            let conversion: Vec<&str> = config
                .plant
                .units
                .iter()
                .filter(|u| u.function == ems_energy::model::Function::Conversion)
                .map(|u| u.id.as_str())
                .collect();
            assert_eq!(
                (config.plant.units.len(), conversion),
                (7, vec!["o2p1", "cpp1"])
            );
            assert!(config.known_device("bof1-oxygen") && !config.known_device("intruder"));
        }
    }

    #[test]
    fn a_postgres_backend_needs_its_url_and_a_slot_needs_postgres() {
        let demo = include_str!("../examples/demo.toml");
        let with = |from: &str, to: &str, extra: &str| {
            assert!(demo.contains(from));
            let text = format!("{}\n{extra}", demo.replacen(from, to, 1));
            Config::from_source(&Source::embedded("gw.toml", &text))
        };
        let path = "path = \"ems-gateway.db\"";
        let err = with(path, &format!("{path}\nbackend = \"postgres\""), "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.url"), "{err}");
        let slot = "[cluster]\nslot = \"north\"\ninstance = \"gw-a\"\n";
        let err = with(path, path, slot).unwrap_err().to_string();
        assert!(err.contains("cluster") && err.contains("postgres"), "{err}");
        let err = with(path, &format!("{path}\nbackend = \"mysql\""), "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("backend"), "{err}");
        let postgres = format!("{path}\nbackend = \"postgres\"\nurl = \"host=db dbname=ems\"");
        let c = with(path, &postgres, slot).unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(
            (c.storage.backend, cluster.slot.as_str(), cluster.lease_s),
            (Backend::Postgres, "north", 10)
        );
        let err = with(
            path,
            &postgres,
            "[cluster]\nslot = \"a/b\"\ninstance = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cluster"), "{err}");
    }

    #[test]
    fn a_file_the_configuration_names_and_cannot_be_read_is_its_error_at_the_key() {
        // Found by the gateway_config fuzz target: a missing monthly_values_csv was reported
        // against the CSV's name alone, not this file's line and key.
        let base = "[mqtt]\nhost = \"h\"\n[storage]\npath = \"x.db\"\n[ingest]\nsites = [\"s\"]\nedges = [\"e\"]\n";
        let unit = "[[units]]\nid = \"u\"\nname = \"U\"\nkind = \"kiln\"\n[[units.flows]]\ndevice = \"d\"\npoint = \"total\"\nrole = \"product\"\nunit = \"t\"\n[[units.flows]]\ndevice = \"c\"\npoint = \"total\"\nrole = \"consumed\"\ncarrier = \"raw_coal\"\nunit = \"t\"\n";
        let err = |text: String| {
            Config::from_source(&Source::embedded("gw.toml", &text))
                .unwrap_err()
                .to_string()
        };
        let missing = "/nonexistent/ems-config-test";
        let e = err(format!(
            "{base}[enterprise]\nname = \"W\"\nmonthly_values_csv = \"{missing}.csv\"\n{unit}"
        ));
        assert!(
            e.starts_with("gw.toml:10:")
                && e.contains("key `enterprise.monthly_values_csv`")
                && e.contains(missing),
            "{e}"
        );
        let e = err(format!("{base}{unit}lhv_csv = \"{missing}.csv\"\n"));
        assert!(
            e.starts_with("gw.toml:23:") && e.contains("key `units[0].flows[1].lhv_csv`"),
            "{e}"
        );
        let e = err(format!(
            "{base}[accounting]\ncoefficients = \"{missing}.toml\"\n{unit}"
        ));
        assert!(
            e.starts_with("gw.toml:9:") && e.contains("key `accounting.coefficients`"),
            "{e}"
        );
        let e = err(format!(
            "{base}[accounting]\nlimits = \"{missing}.toml\"\n{unit}"
        ));
        assert!(e.contains("key `accounting.limits`"), "{e}");
    }

    #[test]
    fn what_ingest_accepts_is_checked_with_file_line_and_key() {
        let base = "[mqtt]\nhost = \"h\"\n[storage]\npath = \"x.db\"\n[[units]]\nid = \"u\"\nname = \"U\"\nkind = \"kiln\"\n[[units.flows]]\ndevice = \"d\"\npoint = \"total\"\nrole = \"product\"\nunit = \"t\"\n";
        let err = |ingest: &str| {
            Config::from_source(&Source::embedded("gw.toml", &format!("{base}{ingest}")))
                .unwrap_err()
                .to_string()
        };
        assert!(err("").contains("ingest"), "[ingest] is required");
        assert!(err("[ingest]\nsites = []\nedges = [\"e\"]\n")
            .contains("key `ingest.sites`: name at least one"));
        assert!(
            err("[ingest]\nsites = [\"s\"]\nedges = [\"e/x\"]\n").contains("key `ingest.edges[0]`")
        );
        assert!(
            err("[ingest]\nsites = [\"s\"]\nedges = [\"e\"]\nearliest = \"soon\"\n")
                .contains("key `ingest.earliest`")
        );
        assert!(
            err("[ingest]\nsites = [\"s\"]\nedges = [\"e\"]\nmax_seq_jump = 0\n")
                .contains("key `ingest.max_seq_jump`")
        );
        let retention = base.replace("path = \"x.db\"", "path = \"x.db\"\nraw_retention_days = 1");
        let e = Config::from_source(&Source::embedded(
            "gw.toml",
            &format!("{retention}[ingest]\nsites = [\"s\"]\nedges = [\"e\"]\nmax_late_s = 86400\n"),
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("shorter than storage.raw_retention_days"),
            "{e}"
        );
    }
}
