//! Helpers for end-to-end tests: the real binaries, a real Mosquitto, temporary directories.
//!
//! The binaries are the workspace's own debug builds (`cargo build --workspace`, which
//! `tests/run.sh` does first). Every server binds a free port; nothing assumes a fixed one.

pub mod demo_data;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// Path of a workspace binary next to the test executable's profile directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (tests/run.sh does)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("ems-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process, killed when dropped; its stderr goes to a file for failure reports.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
}

impl Proc {
    pub fn start(program: &Path, args: &[&str], dir: &Path) -> Proc {
        let name = program.file_name().unwrap().to_string_lossy().into_owned();
        let stderr_path = dir.join(format!("{name}-{}.stderr", free_port()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name,
            child,
            lines,
            stderr_path,
        }
    }

    /// The rest of the first stdout line starting with `prefix`.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => panic!(
                    "{} printed no `{prefix}` line in {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr_tail()
                ),
            }
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next stdout line, if one comes within `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -TERM {} failed", self.pid());
        self.wait(timeout)
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private VictoriaMetrics (Debian's `victoria-metrics`, which accepts the InfluxDB v2 write
/// API) on a free port, keeping every timestamp (100-year retention: simulated plants live in
/// the past) and one value per series and millisecond.
pub struct VictoriaMetrics {
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl VictoriaMetrics {
    pub fn start(dir: &Path) -> VictoriaMetrics {
        let mut vm = VictoriaMetrics {
            port: free_port(),
            dir: dir.to_owned(),
            proc: None,
        };
        vm.restart();
        vm
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "already running");
        let listen = format!("-httpListenAddr=127.0.0.1:{}", self.port);
        let storage = format!("-storageDataPath={}", self.dir.join("vm-data").display());
        let p = Proc::start(
            Path::new("/usr/bin/victoria-metrics"),
            &[
                &listen,
                &storage,
                "-retentionPeriod=100y",
                "-dedup.minScrapeInterval=1ms",
            ],
            &self.dir,
        );
        let url = self.url();
        eventually("VictoriaMetrics up", Duration::from_secs(20), || {
            ureq::get(&format!("{url}/health")).call().is_ok()
        });
        self.proc = Some(p);
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            assert!(p.terminate(Duration::from_secs(20)).success());
        }
    }

    /// Every series whose name matches the regex `name`, as VictoriaMetrics exports them
    /// (`{"metric": {labels}, "values": [...], "timestamps": [...]}`), after a flush.
    /// The raw samples the server holds, counted by device and point (a point whose quality
    /// changed is another series there; counted together).
    pub fn samples_per_point(&self) -> HashMap<(String, String), usize> {
        let mut n: HashMap<(String, String), usize> = HashMap::new();
        for s in self.export("ems_sample_value") {
            *n.entry((
                s["metric"]["device"].as_str().unwrap().to_owned(),
                s["metric"]["point"].as_str().unwrap().to_owned(),
            ))
            .or_default() += s["timestamps"].as_array().unwrap().len();
        }
        n
    }

    pub fn export(&self, name: &str) -> Vec<serde_json::Value> {
        ureq::post(&format!("{}/internal/force_flush", self.url()))
            .send_empty()
            .ok();
        let mut resp = ureq::post(&format!("{}/api/v1/export", self.url()))
            .send_form([("match[]", format!("{{__name__=~\"{name}\"}}"))])
            .unwrap();
        resp.body_mut()
            .read_to_string()
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A private Mosquitto on a free port (the machine's own on 1883 is left alone).
pub struct Mosquitto {
    pub port: u16,
    conf: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Mosquitto::with_settings(dir, "persistence false\n")
    }

    /// A broker that keeps sessions and queued messages across a restart.
    pub fn start_persistent(dir: &Path) -> Mosquitto {
        let store = dir.join("mosquitto-store");
        std::fs::create_dir_all(&store).unwrap();
        // Started as root, mosquitto drops to its own user: let that user write its database.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).unwrap();
        Mosquitto::with_settings(
            dir,
            &format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                store.display()
            ),
        )
    }

    /// A broker with the configuration the gateway ships (gateway/dist/mosquitto.conf), on a
    /// free port of its own with its database in `dir`.
    pub fn start_shipped(dir: &Path) -> Mosquitto {
        let store = dir.join("mosquitto-store");
        std::fs::create_dir_all(&store).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o777)).unwrap();
        let text =
            std::fs::read_to_string(workspace().join("gateway/dist/mosquitto.conf")).unwrap();
        let port = free_port();
        let replaced = text
            .replace("listener 1883\n", &format!("listener {port} 127.0.0.1\n"))
            .replace(
                "persistence_location /var/lib/mosquitto/",
                &format!("persistence_location {}/", store.display()),
            );
        assert_ne!(
            replaced, text,
            "the shipped file has its listener and database lines"
        );
        Mosquitto::with_text(dir, port, &replaced)
    }

    /// SIGKILL, as in a crash or a power cut: nothing is saved.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// A broker with `extra` lines in its configuration (after its plain listener on `port`).
    pub fn with_settings(dir: &Path, extra: &str) -> Mosquitto {
        let port = free_port();
        // Queue a long gateway outage's worth of messages (the default keeps only 1 000).
        Mosquitto::with_text(
            dir,
            port,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n{extra}"),
        )
    }

    /// A broker with exactly `text` as its configuration, its first listener on `port`.
    pub fn with_text(dir: &Path, port: u16, text: &str) -> Mosquitto {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(&conf, text).unwrap();
        let mut m = Mosquitto {
            port,
            conf,
            dir: dir.to_owned(),
            proc: None,
        };
        m.restart();
        m
    }

    /// Stops the broker (SIGTERM: it saves its state if persistent).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            assert!(
                p.terminate(Duration::from_secs(10)).success(),
                "mosquitto stop"
            );
        }
    }

    /// Starts it again on the same port with the same settings.
    pub fn restart(&mut self) {
        let program = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("mosquitto is not installed (tests/run.sh installs it)");
        self.proc = Some(Proc::start(
            &program,
            &["-c", self.conf.to_str().unwrap()],
            &self.dir,
        ));
        wait_for_port(self.port, Duration::from_secs(10));
    }
}

pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET a path from an HTTP server and parse the JSON body.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let body = get_text(addr, path);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

pub fn get_text(addr: &str, path: &str) -> String {
    let mut resp = ureq::get(&format!("http://{addr}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    // Whole-record exports (samples.csv over days of the demo plant) outgrow ureq's 10 MB default.
    resp.body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {path}: body: {e}"))
}

/// GETs a path with an `Authorization` header value if given; returns the status and the body
/// whatever the status.
pub fn get_status(addr: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    let mut req = ureq::get(&format!("http://{addr}{path}"))
        .config()
        .http_status_as_error(false)
        .build();
    if let Some(value) = authorization {
        req = req.header("Authorization", value);
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap_or_default())
}

/// The peak resident memory of a process so far, in MiB (`VmHWM`).
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024.0
}

/// POSTs an empty body, with an operator's bearer token if given; returns the status and the
/// JSON body (errors too: they carry `{"error": ...}`).
pub fn post(addr: &str, path: &str, bearer: Option<&str>) -> (u16, serde_json::Value) {
    post_json(addr, path, bearer, None)
}

/// [`post`] with a JSON body.
pub fn post_json(
    addr: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = ureq::post(&format!("http://{addr}{path}"))
        .config()
        .http_status_as_error(false)
        .build();
    if let Some(token) = bearer {
        req = req.header("Authorization", &format!("Bearer {token}"));
    }
    let sent = match body {
        Some(b) => req.send_json(b),
        None => req.send_empty(),
    };
    let mut resp = sent.unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap();
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {body}"));
    (status, json)
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes an example config with the given text replacements; panics if one does not apply,
/// so a change to the example cannot silently leave a test on default addresses.
pub fn write_config(example: &str, replacements: &[(&str, &str)], to: &Path) {
    let mut text = std::fs::read_to_string(workspace().join(example)).unwrap();
    for (from, with) in replacements {
        assert!(text.contains(from), "{example} no longer contains `{from}`");
        text = text.replace(from, with);
    }
    std::fs::write(to, text).unwrap();
}

/// The bearer token of the operator `shift_lead` in the gateway config of the tests.
pub const OPERATOR_TOKEN: &str = "test-operator-token";

/// Writes `gateway.toml` in `dir`: the demo gateway config on the broker at `mqtt_port`, its
/// database `gw.db` in `dir`, HTTP on a free port, alarms evaluated twice a second on the
/// simulator's time (the newest poll time), and one operator (`shift_lead`, [`OPERATOR_TOKEN`]).
pub fn write_gateway_config(dir: &Path, mqtt_port: u16) {
    write_config(
        "gateway/examples/demo.toml",
        &[
            ("port = 1883", &format!("port = {mqtt_port}")),
            ("path = \"ems-gateway.db\"", "path = \"gw.db\""),
            ("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\""),
            (
                "# operators = { shift_lead = \"change-me\" }",
                &format!("operators = {{ shift_lead = \"{OPERATOR_TOKEN}\" }}"),
            ),
            ("check_every_s = 10", "check_every_s = 0.5"),
            ("clock = \"wall\"", "clock = \"data\""),
        ],
        &dir.join("gateway.toml"),
    );
}

/// Starts `ems-gateway serve` with `dir/gateway.toml` and waits until the broker holds its
/// subscription (before that, a broker drops QoS 1 messages nobody subscribed to). Returns the
/// process and its HTTP address.
pub fn start_gateway(dir: &Path) -> (Proc, String) {
    start_gateway_reading_with(dir, None)
}

/// [`start_gateway`] for a gateway whose viewing needs `token`.
pub fn start_gateway_with_token(dir: &Path, token: &str) -> (Proc, String) {
    start_gateway_reading_with(dir, Some(token))
}

fn start_gateway_reading_with(dir: &Path, token: Option<&str>) -> (Proc, String) {
    let p = Proc::start(
        &bin("ems-gateway"),
        &["serve", "--config", "gateway.toml"],
        dir,
    );
    let http = p.wait_line("HTTP ", Duration::from_secs(10));
    eventually(
        "the gateway's subscription",
        Duration::from_secs(10),
        || {
            let mut req = ureq::get(&format!("http://{http}/metrics"));
            if let Some(t) = token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            req.call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .is_some_and(|t| t.contains("ems_gateway_mqtt_subscribed 1"))
        },
    );
    (p, http)
}

/// kgce per metered unit, entered here from GB/T 2589 (2008 appendix A values, via
/// shared/reference/standards.md) independently of the gateway's data file, so that tests
/// recompute the truth's energy on their own. Converter gas at the demo's measured 7 500 kJ/m3.
pub fn kgce_per_unit(carrier: &str, unit: &str) -> f64 {
    match (carrier, unit) {
        ("electricity", "kWh") => 0.1229,
        ("coke", "t") => 971.4,
        ("washed_coal", "t") => 900.0,
        ("raw_coal", "t") => 714.3,
        ("bfg", "m3") => 0.1286,
        ("coke_oven_gas", "m3") => 0.5714,
        ("natural_gas", "m3") => 1.2143,
        // GB/T 2589-2008 appendix A, low-pressure steam.
        ("steam", "t") => 128.6,
        ("converter_gas", "m3") => 7_500.0 / 29_307.0,
        // Energy-consuming working media, GB/T 2589-2008 appendix B (nitrogen as the oxygen
        // plant's by-product).
        ("oxygen", "m3") => 0.4,
        ("nitrogen", "m3") => 0.4,
        other => panic!("no coefficient for {other:?}"),
    }
}

/// Comprehensive energy (kgce) of one truth record, computed from the true physical quantities.
pub fn truth_kgce(rec: &serde_json::Value) -> f64 {
    let mut kgce = 0.0;
    for f in rec["flows"].as_array().unwrap() {
        let sign = match f["role"].as_str().unwrap() {
            "consumed" => 1.0,
            "recovered" => -1.0,
            _ => continue,
        };
        kgce += sign
            * f["qty"].as_f64().unwrap()
            * kgce_per_unit(f["carrier"].as_str().unwrap(), f["unit"].as_str().unwrap());
    }
    kgce
}

/// Electricity (kWh) one truth record's unit drew: gross, as the limit standards count it
/// (power generated inside its boundary is credited in energy, not netted out).
pub fn truth_kwh(rec: &serde_json::Value) -> f64 {
    rec["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["carrier"] == "electricity" && f["role"] == "consumed")
        .map(|f| {
            assert_eq!(f["unit"], "kWh", "{f}");
            f["qty"].as_f64().unwrap()
        })
        .sum()
}

/// One carrier's row of an enterprise balance served by `/api/v1/enterprises/{id}/balance`.
pub fn balance_carrier<'a>(balance: &'a serde_json::Value, carrier: &str) -> &'a serde_json::Value {
    balance["carriers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["carrier"] == carrier)
        .unwrap_or_else(|| panic!("no {carrier} row in {balance}"))
}

/// The enterprise's comprehensive energy (kgce, equivalent basis) in one truth record of its
/// boundary (unit kind `enterprise`): purchases less stock increase less exports, each at this
/// crate's own coefficients; flaring is a loss inside and crosses nothing.
pub fn truth_boundary_kgce(rec: &serde_json::Value) -> f64 {
    let mut kgce = 0.0;
    for f in rec["flows"].as_array().unwrap() {
        let sign = match f["role"].as_str().unwrap() {
            "purchase" => 1.0,
            "stock" | "export" => -1.0,
            _ => continue,
        };
        kgce += sign
            * f["qty"].as_f64().unwrap()
            * kgce_per_unit(f["carrier"].as_str().unwrap(), f["unit"].as_str().unwrap());
    }
    kgce
}

/// How many units the demo scenario simulates (the truth has an interval of each an hour),
/// the enterprise boundary included.
pub fn demo_truth_units() -> usize {
    std::fs::read_to_string(workspace().join("simulators/scenarios/demo.toml"))
        .unwrap()
        .lines()
        .filter(|l| l.trim() == "[[units]]")
        .count()
}

/// How many meters the demo plant has: the devices of the demo edge's configuration.
pub fn demo_meter_count() -> usize {
    std::fs::read_to_string(workspace().join("firmware/edge/examples/demo.toml"))
        .unwrap()
        .lines()
        .filter(|l| l.trim() == "[[devices]]")
        .count()
}

/// The interval records of a truth file.
pub fn truth_intervals(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["record"] == "interval")
        .collect()
}

/// Writes `edge.toml` in `dir`: the demo edge config polling the simulator at `sim_addr` every
/// `poll_ms`, publishing to the broker at `mqtt_port`, its state in `dir/ems-edge-data`.
pub fn write_edge_config(dir: &Path, sim_addr: &str, mqtt_port: u16, poll_ms: u64) {
    write_config(
        "firmware/edge/examples/demo.toml",
        &[
            ("tcp://127.0.0.1:5020", &format!("tcp://{sim_addr}")),
            ("port = 1883", &format!("port = {mqtt_port}")),
            (
                "poll_interval_ms = 1000",
                &format!("poll_interval_ms = {poll_ms}"),
            ),
        ],
        &dir.join("edge.toml"),
    );
}

/// Stops the edge (SIGTERM, waiting up to `timeout`) and asserts that it stopped cleanly with
/// every message it read acknowledged by the broker.
pub fn stop_edge_all_delivered(edge: &mut Proc, timeout: Duration) {
    assert!(
        edge.terminate(timeout).success(),
        "edge exit:\n{}",
        edge.stderr_tail()
    );
    assert!(
        edge.stderr()
            .contains("Stopped; every message was acknowledged."),
        "{}",
        edge.stderr_tail()
    );
}

/// The last sequence number the edge in `dir` gave each device (its durable state).
pub fn edge_sequence_numbers(dir: &Path) -> HashMap<String, u64> {
    ems_edge::seq::SeqStore::read(&dir.join("ems-edge-data"))
        .unwrap()
        .into_iter()
        .collect()
}

/// Waits until the gateway at `http` holds the last number `seq` names for every device, then
/// checks that each number was stored exactly once and none is missing. Returns how many
/// redelivered copies the ledger dropped.
/// A metric's value on the gateway's `/metrics` (one without labels).
pub fn metric(http: &str, name: &str) -> f64 {
    get_text(http, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// The values the gateway's CSV export holds (empty ones left out), counted by device and
/// point.
pub fn values_per_point(csv: &str) -> HashMap<(String, String), usize> {
    let mut stored: HashMap<(String, String), usize> = HashMap::new();
    for line in csv.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        if !cols[4].is_empty() {
            *stored
                .entry((cols[0].to_owned(), cols[2].to_owned()))
                .or_default() += 1;
        }
    }
    stored
}

pub fn assert_stored_exactly_once(http: &str, seq: &HashMap<String, u64>) -> u64 {
    eventually(
        "every sequence number stored",
        Duration::from_secs(30),
        || {
            let devices = get_json(http, "/api/v1/devices");
            let devices = devices.as_array().unwrap();
            devices.len() == seq.len()
                && devices
                    .iter()
                    .all(|d| d["last_seq"].as_u64() == seq.get(d["id"].as_str().unwrap()).copied())
        },
    );
    let mut duplicates = 0;
    for dev in get_json(http, "/api/v1/devices").as_array().unwrap() {
        let id = dev["id"].as_str().unwrap();
        assert_eq!(dev["missing"], 0, "no sequence gaps: {dev}");
        assert_eq!(
            dev["messages"].as_u64(),
            seq.get(id).copied(),
            "each number stored exactly once: {dev}"
        );
        duplicates += dev["duplicates"].as_u64().unwrap();
    }
    duplicates
}

/// A simulator, a gateway and an edge running over one broker.
pub struct Pipeline {
    pub sim: Proc,
    pub gateway: Proc,
    pub http: String,
    pub edge: Proc,
}

/// Starts the demo plant's simulator at 60x, starting four hours back (so that simulated time
/// stays behind the gateway's clock for four minutes of test), with `faults` (TOML inline tables for `--fault`). Returns
/// it and its Modbus TCP address.
pub fn start_sim(dir: &Path, faults: &[&str]) -> (Proc, String) {
    start_sim_with(dir, faults, &[])
}

/// [`start_sim`] with `extra` command-line arguments (e.g. `--rtu-pty`).
pub fn start_sim_with(dir: &Path, faults: &[&str], extra: &[&str]) -> (Proc, String) {
    let start = (chrono::Utc::now() - chrono::Duration::hours(4)).to_rfc3339();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--speed",
        "60",
        "--start",
        &start,
    ];
    for f in faults {
        args.extend(["--fault", f]);
    }
    args.extend(extra);
    let sim = Proc::start(&bin("ems-sim"), &args, dir);
    let addr = sim.wait_line("LISTEN ", Duration::from_secs(10));
    (sim, addr)
}

/// Starts the demo plant's simulator (60x, starting four hours back so that simulated time stays
/// behind the gateway's real clock: a poll time from the future is quarantined, rightly), the
/// gateway (`dir/gateway.toml`) and the edge (`dir/edge.toml`, polling every 100 ms) over the
/// broker at `mqtt_port`.
pub fn start_pipeline(dir: &Path, mqtt_port: u16) -> Pipeline {
    start_pipeline_with(dir, mqtt_port, "")
}

/// [`start_pipeline`] with `gateway_extra` appended to the gateway's config (more tables).
pub fn start_pipeline_with(dir: &Path, mqtt_port: u16, gateway_extra: &str) -> Pipeline {
    start_pipeline_edited(dir, mqtt_port, gateway_extra, |text| text)
}

/// The same, with the gateway's configuration edited first (another storage backend, say).
pub fn start_pipeline_edited(
    dir: &Path,
    mqtt_port: u16,
    gateway_extra: &str,
    edit: impl FnOnce(String) -> String,
) -> Pipeline {
    start_pipeline_with_sim(dir, mqtt_port, gateway_extra, edit, &[])
}

/// The same, with `sim_extra` on the simulator's command line (see [`start_sim_with`]).
pub fn start_pipeline_with_sim(
    dir: &Path,
    mqtt_port: u16,
    gateway_extra: &str,
    edit: impl FnOnce(String) -> String,
    sim_extra: &[&str],
) -> Pipeline {
    let (sim, sim_addr) = start_sim_with(dir, &[], sim_extra);
    write_gateway_config(dir, mqtt_port);
    let path = dir.join("gateway.toml");
    let mut text = edit(std::fs::read_to_string(&path).unwrap());
    // "Today" on the dashboard and in the API is the gateway's (wall-clock) day, while the
    // simulator runs four hours behind it. Between the plant's midnight and 04:00 the data
    // would all be yesterday's, so then the plant keeps UTC days instead: a test of live
    // figures must not hinge on the hour it happens to run at.
    let same_day = |offset: chrono::FixedOffset| {
        let now = chrono::Utc::now();
        let day = |t: chrono::DateTime<chrono::Utc>| t.with_timezone(&offset).date_naive();
        day(now - chrono::Duration::hours(4)) == day(now + chrono::Duration::minutes(15))
    };
    if !same_day(chrono::FixedOffset::east_opt(8 * 3600).unwrap()) {
        assert!(same_day(chrono::FixedOffset::east_opt(0).unwrap()));
        let from = "utc_offset = \"+08:00\"";
        assert!(text.contains(from), "the example's plant keeps +08:00");
        text = text.replace(from, "utc_offset = \"+00:00\"");
    }
    std::fs::write(&path, format!("{text}\n{gateway_extra}")).unwrap();
    let (gateway, http) = start_gateway(dir);
    write_edge_config(dir, &sim_addr, mqtt_port, 100);
    let edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], dir);
    Pipeline {
        sim,
        gateway,
        http,
        edge,
    }
}

/// Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`): the
/// few commands the dashboard test needs, over plain HTTP.
pub struct Browser {
    base: String,
    session: String,
    _driver: Proc,
}

impl Browser {
    /// Starts `chromedriver` on a free port and opens a headless session of `width` x `height`.
    pub fn start(dir: &Path, width: u32, height: u32) -> Browser {
        let port = free_port();
        let driver = Proc::start(
            Path::new("/usr/bin/chromedriver"),
            &[&format!("--port={port}")],
            dir,
        );
        let base = format!("http://127.0.0.1:{port}");
        eventually("chromedriver", Duration::from_secs(20), || {
            ureq::get(&format!("{base}/status")).call().is_ok()
        });
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         &format!("--window-size={width},{height}"),
                         &format!("--user-data-dir={}", dir.join("chromium-profile").display())],
            },
        }}});
        let resp: serde_json::Value = ureq::post(&format!("{base}/session"))
            .send_json(&caps)
            .expect("a Chromium session")
            .body_mut()
            .read_json()
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {resp}"))
            .to_owned();
        Browser {
            base,
            session,
            _driver: driver,
        }
    }

    fn command(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let mut resp = ureq::post(&url)
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(&body)
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let v: serde_json::Value = resp.body_mut().read_json().unwrap();
        assert!(resp.status().is_success(), "WebDriver {path} failed: {v}");
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.command("url", serde_json::json!({ "url": url }));
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub fn js(&self, script: &str) -> serde_json::Value {
        self.command(
            "execute/sync",
            serde_json::json!({ "script": script, "args": [] }),
        )
    }

    /// Waits until `script` returns something truthy; returns it.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        eventually(what, timeout, || {
            last = self.js(script);
            !(last.is_null() || last == false || last == "" || last == 0)
        });
        last
    }

    /// Saves a PNG of the viewport at `path`.
    pub fn screenshot(&self, path: &Path) {
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let v: serde_json::Value = ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v["value"].as_str().unwrap(),
        )
        .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
    }
}

/// Where tests leave what a person may want to look at (screenshots): `target/test-artifacts`.
pub fn artifacts_dir(test: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-artifacts")
        .join(test)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA in `dir` (openssl): ca.pem and ca.key, valid two days.
pub fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ems test CA",
        ],
    );
}

/// A certificate the test CA signs: `{name}.pem` and `{name}.key` (readable by all, so a
/// broker that drops root can load it), with `extension` (e.g. `subjectAltName=IP:127.0.0.1`).
pub fn sign_certificate(dir: &Path, name: &str, extension: &str) {
    let (key, csr, ext, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(
        dir.join(&ext),
        format!("{extension}\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o644)).unwrap();
}
