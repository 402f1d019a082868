//! The edge agent's site configuration (TOML): what to poll, how often, and where to send it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ems_config::{ConfigError, Source, Spanned};
use serde::Deserialize;

use crate::board::{BoardSpec, GpioLine};
use crate::link::{Link, Meter};
use crate::profile::{Dialect, Library, Profile};

/// The site configuration of the demo plant (`ems-sim --scenario demo`).
pub const DEMO_CONFIG: &str = include_str!("../examples/demo.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Site (plant) name; first level of the MQTT topics.
    pub site: String,
    /// This agent's name, unique in the site; also its MQTT client id.
    pub edge_id: String,
    /// Where the agent keeps its state (sequence numbers, the spool).
    pub data_dir: PathBuf,
    /// How often every device is polled.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// A device that fails three polls in a row is polled less often (every 2, 4, 8 ...
    /// intervals), at least once this often; its first good reading brings it back. Its
    /// timeouts then stop holding up the other devices on its link.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g. "127.0.0.1:9464"; off when absent.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Extra profiles (`*.toml`), beside the built-in library.
    #[serde(default)]
    pub profiles_dir: Option<Spanned<PathBuf>>,
    pub mqtt: MqttConfig,
    /// The disk spool every poll result passes through (`{data_dir}/spool`).
    #[serde(default)]
    pub spool: crate::spool::SpoolConfig,
    /// The board's LEDs and watchdog (absent: none driven).
    #[serde(default)]
    pub board: Option<BoardConfig>,
    /// Signing (protocol v1.2; absent: messages go unsigned, as v1).
    #[serde(default)]
    pub evidence: Option<EvidenceConfig>,
}

/// `[evidence]`: the board's key, written by `ems-edge keygen --out PATH`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    pub key_file: Spanned<PathBuf>,
}

/// `[board]`: GPIO lines as `/dev/gpiochipN:LINE`, the watchdog as a device path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardConfig {
    /// Blinks while every link completes its cycles and the publisher runs.
    #[serde(default)]
    pub run_led: Option<Spanned<String>>,
    /// Lit while a device keeps failing or the broker is out of reach.
    #[serde(default)]
    pub fault_led: Option<Spanned<String>>,
    /// Fed while the agent is alive (e.g. "/dev/watchdog"); disarmed on a clean stop.
    #[serde(default)]
    pub watchdog: Option<PathBuf>,
    /// The agent counts as hung when a link or the publisher shows no progress this long.
    #[serde(default = "default_hang_after_s")]
    pub hang_after_s: u64,
}

fn default_hang_after_s() -> u64 {
    60
}

fn default_poll_interval_ms() -> u64 {
    1_000
}
fn default_max_backoff_ms() -> u64 {
    60_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// MQTT over TLS: the broker's CA and, for brokers that require them, this edge's
    /// certificate and key (PEM files).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Hold each result until the gateway says it is committed (protocol v1.1), once the
    /// gateway has been heard to say so; `false` releases results on the broker's PUBACK (v1).
    #[serde(default = "yes")]
    pub commit_acks: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Spanned<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub client_key: Option<Spanned<PathBuf>>,
}

/// The PEM files [`TlsConfig`] names, read at start so that a wrong path stops the agent with
/// the line that names it rather than a connection that keeps failing.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    /// Certificate chain and private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

fn default_mqtt_port() -> u16 {
    1883
}
pub fn default_topic_prefix() -> String {
    "ems/v1".into()
}
fn default_keep_alive_s() -> u64 {
    30
}

/// Where a device's poll time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClockSource {
    /// The edge's own clock (kept by NTP on the board).
    #[default]
    System,
    /// The device's real-time clock register (the profile's `role = "clock"` point); a poll
    /// whose clock read failed keeps to the device's time base (see [`crate::stamp`]).
    Device,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device name, unique in the site; last level of its data topic.
    pub id: Spanned<String>,
    /// `tcp://host:port`, `rtu:///dev/ttyUSB0?baud=9600&parity=even&stop_bits=1&turnaround_ms=0`,
    /// `rtu+tcp://host:port`, `dlt645:///dev/ttyS1?baud=2400` or `dlt645+tcp://host:port` (see
    /// [`crate::link`]).
    pub link: Spanned<String>,
    /// Modbus: the device's unit id (slave address).
    #[serde(default)]
    pub unit_id: Option<u8>,
    /// DL/T 645 and CJ/T 188: the meter's address, its nameplate number (12 digits for DL/T
    /// 645, 14 for CJ/T 188).
    #[serde(default)]
    pub address: Option<Spanned<String>>,
    pub profile: Spanned<String>,
    #[serde(default)]
    pub clock: ClockSource,
    /// The longest a request waits for its answer. Its first try waits less once the device
    /// has answered a few times: three times its slowest recent answer and 50 ms, never under
    /// `min_timeout_ms`; each retry waits twice as long as the try before, up to this.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The shortest a fitted first try waits (default 100, or `timeout_ms` if that is less;
    /// equal to `timeout_ms`: a fixed timeout).
    #[serde(default)]
    pub min_timeout_ms: Option<Spanned<u64>>,
    /// A request that times out or comes back garbled on a serial bus is sent again this many
    /// times before its points are marked (a TCP connection that timed out is made again on
    /// the next poll instead).
    #[serde(default = "default_retries")]
    pub retries: u8,
    /// The per-installation multipliers its profile's points name (`factors = { pt = 100, ct =
    /// 40 }`: the PT and CT ratios of a meter that reports secondary values). Each one the
    /// profile names must be given, and only those: a ratio is never assumed.
    #[serde(default)]
    pub factors: Option<Spanned<BTreeMap<String, f64>>>,
}

fn default_timeout_ms() -> u64 {
    1_000
}
fn default_retries() -> u8 {
    1
}

/// A device ready to poll: its config with the profile resolved.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub link: Link,
    /// Modbus unit id (0 for a DL/T 645 or CJ/T 188 meter).
    pub unit_id: u8,
    /// A DL/T 645 or CJ/T 188 meter: its address and how it is asked.
    pub meter: Option<Meter>,
    pub profile: Arc<Profile>,
    pub clock: ClockSource,
    pub timeout_ms: u64,
    pub min_timeout_ms: u64,
    pub retries: u8,
    /// The multipliers applied to its profile's points (already in `profile`), for display.
    pub factors: BTreeMap<String, f64>,
}

/// The loaded, checked configuration.
#[derive(Debug, Clone)]
pub struct Site {
    pub config: EdgeConfig,
    pub devices: Vec<Device>,
    pub tls: Option<TlsFiles>,
    pub board: Option<BoardSpec>,
    /// The key every message is signed with, when `[evidence]` names one.
    pub signing: Option<crate::evidence::SigningSeed>,
}

/// The device's profile with its factors applied: every factor its points name must be given,
/// finite and above zero, and none it does not name (a misspelt ratio would silently count
/// nothing).
fn factored(
    table: &ems_config::Part<'_>,
    span: std::ops::Range<usize>,
    profile: &Arc<Profile>,
    factors: &BTreeMap<String, f64>,
    shared: &mut HashMap<String, Arc<Profile>>,
) -> Result<Arc<Profile>, ConfigError> {
    let named = profile.factor_names();
    let error = |key: String, message: String| table.error_at(span.clone(), &key, message);
    if let Some(missing) = named.iter().find(|n| !factors.contains_key(**n)) {
        let all: Vec<String> = named.iter().map(|n| format!("{n} = ...")).collect();
        return Err(error(
            "factors".into(),
            format!(
                "profile `{}` scales its values by `{missing}`, set per installation: give factors = {{ {} }} (1 where there is no transformer); it is never assumed",
                profile.name,
                all.join(", ")
            ),
        ));
    }
    for (name, value) in factors {
        if !named.contains(name.as_str()) {
            return Err(error(
                format!("factors.{name}"),
                format!(
                    "profile `{}` names no factor `{name}` (it names: {})",
                    profile.name,
                    if named.is_empty() {
                        "none".to_string()
                    } else {
                        named.iter().copied().collect::<Vec<_>>().join(", ")
                    }
                ),
            ));
        }
        if !value.is_finite() || *value <= 0.0 {
            return Err(error(
                format!("factors.{name}"),
                "must be a number above zero".into(),
            ));
        }
    }
    if factors.is_empty() {
        return Ok(profile.clone());
    }
    let key = format!("{}{factors:?}", profile.name);
    Ok(shared
        .entry(key)
        .or_insert_with(|| Arc::new(profile.with_factors(factors)))
        .clone())
}

fn read_pem(src: &Source, key: &str, path: &Spanned<PathBuf>) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path.get_ref()).map_err(|e| {
        src.error_at(
            path.span(),
            key,
            format!("cannot read {}: {e}", path.get_ref().display()),
        )
    })?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Err(src.error_at(
            path.span(),
            key,
            format!("{} is not a PEM file", path.get_ref().display()),
        ));
    }
    Ok(bytes)
}

impl Site {
    pub fn load(path: &Path) -> Result<Site, ConfigError> {
        Site::from_source(&Source::read(path)?)
    }

    pub fn from_source(src: &Source) -> Result<Site, ConfigError> {
        // Each [[devices]] table is read, checked and dropped in turn: a site of thousands of
        // meters never has all its raw tables in memory at once.
        let (config, tables): (EdgeConfig, _) =
            src.parse_apart("devices").map_err(|mut e: ConfigError| {
                if e.key.as_deref() == Some("devices") {
                    e.message = "list the meters as [[devices]] tables".into();
                }
                e
            })?;
        if tables.is_empty() {
            return Err(src.error("devices", "no [[devices]] tables: list the meters to poll"));
        }
        let mut library = Library::built_in();
        if let Some(dir) = &config.profiles_dir {
            // A directory that cannot be read is this file's error, at its key; a bad profile
            // in it is that profile file's, at its own line and key.
            let path = dir.get_ref();
            library.load_dir(path).map_err(|e| {
                if e.file == *path && e.line.is_none() {
                    let message = format!("{}: {}", path.display(), e.message);
                    src.error_at(dir.span(), "profiles_dir", message)
                } else {
                    e
                }
            })?;
        }
        if config.poll_interval_ms == 0 {
            return Err(src.error("poll_interval_ms", "must be above zero"));
        }
        for (key, name) in [("site", &config.site), ("edge_id", &config.edge_id)] {
            if !valid_topic_level(name) {
                return Err(src.error(key, "must be non-empty without '/', '+' or '#'"));
            }
        }
        let mut ids = HashSet::new();
        // Devices of one profile with the same factors share one copy of it.
        let mut shared = HashMap::new();
        let mut devices = Vec::with_capacity(tables.len());
        for table in &tables {
            let d: DeviceConfig = table.parse()?;
            let id = d.id.get_ref();
            if !valid_topic_level(id) {
                return Err(table.error_at(
                    d.id.span(),
                    "id",
                    "must be non-empty without '/', '+' or '#'",
                ));
            }
            if !ids.insert(id.clone()) {
                return Err(table.error_at(
                    d.id.span(),
                    "id",
                    format!("duplicate device id `{id}`"),
                ));
            }
            let link: Link = d
                .link
                .get_ref()
                .parse()
                .map_err(|e: String| table.error_at(d.link.span(), "link", e))?;
            // One bus, one set of line settings and one protocol: two would fight over the port.
            if let Link::Serial(_, line) = &link {
                let clash = devices.iter().find_map(|other: &Device| match &other.link {
                    Link::Serial(_, o)
                        if o.path == line.path
                            && (o != line || other.link.protocol() != link.protocol()) =>
                    {
                        Some(other.link.clone())
                    }
                    _ => None,
                });
                if let Some(other) = clash {
                    return Err(table.error_at(
                        d.link.span(),
                        "link",
                        format!("{} is already used as {other}: one serial port, one set of line settings", line.path.display()),
                    ));
                }
            }
            let Some(profile) = library.get(d.profile.get_ref()) else {
                let known: Vec<_> = library.names().collect();
                return Err(table.error_at(
                    d.profile.span(),
                    "profile",
                    format!(
                        "unknown profile `{}`; known: {}",
                        d.profile.get_ref(),
                        known.join(", ")
                    ),
                ));
            };
            if link.protocol() != profile.dialect.protocol() {
                return Err(table.error_at(
                    d.profile.span(),
                    "profile",
                    format!(
                        "profile `{}` and link {link} speak different protocols",
                        profile.name
                    ),
                ));
            }
            let (unit_id, meter) = match (profile.dialect, d.unit_id, &d.address) {
                (Dialect::Modbus, Some(unit), None) => (unit, None),
                (Dialect::Modbus, None, _) => {
                    return Err(table.error("unit_id", "a Modbus device needs its unit id"))
                }
                (Dialect::Modbus, Some(_), Some(a)) => return Err(table.error_at(
                    a.span(),
                    "address",
                    "`address` is a DL/T 645 or CJ/T 188 meter's; a Modbus device has `unit_id`",
                )),
                (dialect, None, Some(a)) => match Meter::parse(dialect, a.get_ref()) {
                    Ok(meter) => (0, Some(meter)),
                    Err(e) => return Err(table.error_at(a.span(), "address", e)),
                },
                (_, None, None) => {
                    return Err(table.error(
                        "address",
                        "a DL/T 645 or CJ/T 188 meter needs its address (its nameplate number)",
                    ))
                }
                (_, Some(_), _) => {
                    return Err(table.error(
                        "unit_id",
                        "`unit_id` is Modbus's; a DL/T 645 or CJ/T 188 meter has `address`",
                    ))
                }
            };
            if d.clock == ClockSource::Device && profile.clock_point().is_none() {
                return Err(table.error(
                    "clock",
                    format!("profile `{}` has no clock point", profile.name),
                ));
            }
            let min_timeout_ms = match d.min_timeout_ms {
                None => d.timeout_ms.min(100),
                Some(m) if *m.get_ref() > d.timeout_ms => {
                    return Err(table.error_at(
                        m.span(),
                        "min_timeout_ms",
                        format!("must be at most timeout_ms ({})", d.timeout_ms),
                    ))
                }
                Some(m) => m.into_inner(),
            };
            // Missing factors are the profile line's business: it is what asks for them.
            let span = d
                .factors
                .as_ref()
                .map_or_else(|| d.profile.span(), Spanned::span);
            let factors = d.factors.map(Spanned::into_inner).unwrap_or_default();
            let profile = factored(table, span, profile, &factors, &mut shared)?;
            devices.push(Device {
                id: d.id.into_inner(),
                link,
                unit_id,
                meter,
                profile,
                factors,
                clock: d.clock,
                timeout_ms: d.timeout_ms,
                min_timeout_ms,
                retries: d.retries,
            });
        }
        let tls = match &config.mqtt.tls {
            None => None,
            Some(t) => Some(TlsFiles {
                ca: read_pem(src, "mqtt.tls.ca_file", &t.ca_file)?,
                client: match (&t.client_cert, &t.client_key) {
                    (None, None) => None,
                    (Some(cert), Some(key)) => Some((
                        read_pem(src, "mqtt.tls.client_cert", cert)?,
                        read_pem(src, "mqtt.tls.client_key", key)?,
                    )),
                    _ => {
                        return Err(src.error("mqtt.tls", "client_cert and client_key go together"))
                    }
                },
            }),
        };
        let board = match &config.board {
            None => None,
            Some(b) => {
                let line = |key: &str, v: &Option<Spanned<String>>| {
                    v.as_ref()
                        .map(|v| {
                            v.get_ref()
                                .parse::<GpioLine>()
                                .map_err(|e| src.error_at(v.span(), key, e))
                        })
                        .transpose()
                };
                Some(BoardSpec {
                    run_led: line("board.run_led", &b.run_led)?,
                    fault_led: line("board.fault_led", &b.fault_led)?,
                    watchdog: b.watchdog.clone(),
                    hang_after: std::time::Duration::from_secs(b.hang_after_s.max(1)),
                })
            }
        };
        let signing = match &config.evidence {
            None => None,
            Some(e) => Some(
                crate::evidence::read_key(e.key_file.get_ref())
                    .map_err(|msg| src.error_at(e.key_file.span(), "evidence.key_file", msg))?,
            ),
        };
        Ok(Site {
            config,
            devices,
            tls,
            board,
            signing,
        })
    }
}

fn valid_topic_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_configs_parse() {
        // Every config shipped in firmware/edge/examples/.
        const EXAMPLES: &[(&str, &str)] = &[("demo.toml", DEMO_CONFIG)];
        for (name, text) in EXAMPLES {
            let site =
                Site::from_source(&Source::embedded(name, text)).unwrap_or_else(|e| panic!("{e}"));
            assert!(!site.devices.is_empty());
        }
    }

    #[test]
    fn a_missing_tls_file_names_its_line_and_key() {
        let text = "site = \"s\"\nedge_id = \"e\"\ndata_dir = \"/tmp\"\n[mqtt]\nhost = \"h\"\n[mqtt.tls]\nca_file = \"/nonexistent/ca.pem\"\n\n[[devices]]\nid = \"m1\"\nlink = \"tcp://127.0.0.1:502\"\nunit_id = 1\nprofile = \"dtsu666\"\n";
        let msg = Site::from_source(&Source::embedded("edge.toml", text))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(
                "edge.toml:7:11: key `mqtt.tls.ca_file`: cannot read /nonexistent/ca.pem"
            ),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_gpio_line_names_its_line_and_key() {
        let text = "site = \"s\"\nedge_id = \"e\"\ndata_dir = \"/tmp\"\n[mqtt]\nhost = \"h\"\n[board]\nrun_led = \"gpio17\"\n\n[[devices]]\nid = \"m1\"\nlink = \"tcp://127.0.0.1:502\"\nunit_id = 1\nprofile = \"dtsu666\"\n";
        let msg = Site::from_source(&Source::embedded("edge.toml", text))
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(
                "edge.toml:7:11: key `board.run_led`: `gpio17`: expected /dev/gpiochipN:LINE"
            ),
            "{msg}"
        );
    }

    #[test]
    fn meters_are_listed_as_devices_tables() {
        let head = "site = \"s\"\nedge_id = \"e\"\ndata_dir = \"/tmp\"\n[mqtt]\nhost = \"h\"\n";
        let msg = |text: &str| {
            Site::from_source(&Source::embedded("edge.toml", text))
                .unwrap_err()
                .to_string()
        };
        let none = msg(head);
        assert!(
            none.contains("key `devices`: no [[devices]] tables"),
            "{none}"
        );
        let inline = msg(&format!("devices = [{{ id = \"m1\", link = \"tcp://h:502\", unit_id = 1, profile = \"dtsu666\" }}]\n{head}"));
        assert_eq!(
            inline,
            "edge.toml:1:1: key `devices`: list the meters as [[devices]] tables"
        );
        let dup = msg(&format!("{head}[[devices]]\nid = \"m1\"\nlink = \"tcp://h:502\"\nunit_id = 1\nprofile = \"dtsu666\"\n[[devices]]\nid = \"m1\"\nlink = \"tcp://h:502\"\nunit_id = 2\nprofile = \"dtsu666\"\n"));
        assert!(
            dup.starts_with("edge.toml:12:6: key `devices[1].id`: duplicate device id `m1`"),
            "{dup}"
        );
    }

    #[test]
    fn a_profiles_dir_that_cannot_be_read_names_the_site_files_line_and_key() {
        // Found by the edge_config fuzz target: the error named the directory only.
        let text = "site = \"s\"\nedge_id = \"e\"\ndata_dir = \"/tmp\"\nprofiles_dir = \"/nonexistent/ems-profiles\"\n[mqtt]\nhost = \"h\"\n\n[[devices]]\nid = \"m1\"\nlink = \"tcp://127.0.0.1:502\"\nunit_id = 1\nprofile = \"dtsu666\"\n";
        let err = Site::from_source(&Source::embedded("edge.toml", text)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("edge.toml:4:") && msg.contains("key `profiles_dir`"),
            "{msg}"
        );
        assert!(msg.contains("/nonexistent/ems-profiles"), "{msg}");
    }

    #[test]
    fn unknown_profile_names_line_and_key() {
        let text = "site = \"s\"\nedge_id = \"e\"\ndata_dir = \"/tmp\"\n[mqtt]\nhost = \"h\"\n\n[[devices]]\nid = \"m1\"\nlink = \"tcp://127.0.0.1:502\"\nunit_id = 1\nprofile = \"dtsu666x\"\n";
        let err = Site::from_source(&Source::embedded("edge.toml", text)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "edge.toml:11:11: key `devices[0].profile`: unknown profile `dtsu666x`"
            ),
            "{msg}"
        );
    }

    #[test]
    fn a_meters_ratios_are_given_per_device_and_never_assumed() {
        let site = |device: &str| {
            let text = format!("site = \"s\"\nedge_id = \"e\"\ndata_dir = \"/tmp\"\n[mqtt]\nhost = \"h\"\n\n[[devices]]\nid = \"m1\"\nlink = \"tcp://127.0.0.1:502\"\nunit_id = 1\nprofile = \"acrel-dtsd1352\"\n{device}[[devices]]\nid = \"m2\"\nlink = \"tcp://127.0.0.1:502\"\nunit_id = 2\nprofile = \"acrel-dtsd1352\"\n{device}");
            Site::from_source(&Source::embedded("edge.toml", &text))
        };
        // A 10 kV feeder through 10000/100 V and 200/5 A: energies times 4 000.
        let ok = site("factors = { pt = 100, ct = 40 }\n").unwrap();
        let import = |d: &Device| {
            let p = d
                .profile
                .points
                .iter()
                .find(|p| p.id == "import_kwh")
                .unwrap();
            (p.scale, p.factors.is_empty())
        };
        assert_eq!(import(&ok.devices[0]), (0.01 * 4_000.0, true));
        let current = ok.devices[0]
            .profile
            .points
            .iter()
            .find(|p| p.id == "ia_a")
            .unwrap();
        assert_eq!(current.scale, 0.01 * 40.0);
        assert!(
            Arc::ptr_eq(&ok.devices[0].profile, &ok.devices[1].profile),
            "devices with the same ratios share one copy of the profile"
        );
        let msg = |device: &str| site(device).unwrap_err().to_string();
        let missing = msg("");
        assert!(
            missing.starts_with("edge.toml:11:11: key `devices[0].factors`: profile `acrel-dtsd1352` scales its values by `ct`"),
            "{missing}"
        );
        let half = msg("factors = { pt = 100 }\n");
        assert!(
            half.contains("key `devices[0].factors`") && half.contains("`ct`"),
            "{half}"
        );
        let typo = msg("factors = { pt = 100, ct = 40, cr = 40 }\n");
        assert!(
            typo.starts_with("edge.toml:12:")
                && typo.contains(
                    "key `devices[0].factors.cr`: profile `acrel-dtsd1352` names no factor `cr`"
                ),
            "{typo}"
        );
        let zero = msg("factors = { pt = 100, ct = 0 }\n");
        assert!(
            zero.contains("key `devices[0].factors.ct`: must be a number above zero"),
            "{zero}"
        );
        // A profile without factors takes none.
        let text = "site = \"s\"\nedge_id = \"e\"\ndata_dir = \"/tmp\"\n[mqtt]\nhost = \"h\"\n\n[[devices]]\nid = \"m1\"\nlink = \"tcp://127.0.0.1:502\"\nunit_id = 1\nprofile = \"dtsu666\"\nfactors = { ct = 40 }\n";
        let none = Site::from_source(&Source::embedded("edge.toml", text))
            .unwrap_err()
            .to_string();
        assert!(
            none.contains("names no factor `ct` (it names: none)"),
            "{none}"
        );
    }
}
