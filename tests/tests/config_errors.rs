//! A bad configuration stops each binary at start with the file, line and key.

use std::time::Duration;

use ems_tests::*;

fn run_expecting_failure(binary: &str, args: &[&str], dir: &std::path::Path) -> String {
    let mut p = Proc::start(&bin(binary), args, dir);
    let status = p.wait(Duration::from_secs(20));
    assert!(!status.success(), "{binary} accepted a bad config");
    p.stderr()
}

#[test]
fn edge_names_file_line_and_key() {
    let dir = TempDir::new("cfg-edge");
    // Line 10 of the example is `unit_id = 11` of the first device; make it a string.
    let example =
        std::fs::read_to_string(workspace().join("firmware/edge/examples/demo.toml")).unwrap();
    let line = example.lines().position(|l| l == "unit_id = 11").unwrap() + 1;
    write_config(
        "firmware/edge/examples/demo.toml",
        &[("unit_id = 11", "unit_id = \"eleven\"")],
        &dir.path().join("edge.toml"),
    );
    let err = run_expecting_failure("ems-edge", &["run", "--config", "edge.toml"], dir.path());
    assert!(err.contains(&format!("edge.toml:{line}:")), "{err}");
    assert!(err.contains("devices[0].unit_id"), "{err}");
}

#[test]
fn gateway_names_file_line_and_key() {
    let dir = TempDir::new("cfg-gw");
    let example = std::fs::read_to_string(workspace().join("gateway/examples/demo.toml")).unwrap();
    let line = example
        .lines()
        .position(|l| l == "carrier = \"coke\"")
        .unwrap()
        + 1;
    write_config(
        "gateway/examples/demo.toml",
        &[("carrier = \"coke\"", "carrier = \"cokes\"")],
        &dir.path().join("gw.toml"),
    );
    let err = run_expecting_failure("ems-gateway", &["serve", "--config", "gw.toml"], dir.path());
    assert!(err.contains(&format!("gw.toml:{line}:")), "{err}");
    assert!(
        err.contains("units[0].flows[1].carrier") && err.contains("unknown carrier `cokes`"),
        "{err}"
    );
}

#[test]
fn gateway_refuses_unknown_keys() {
    let dir = TempDir::new("cfg-gw2");
    write_config(
        "gateway/examples/demo.toml",
        &[("[storage]", "[storage]\npth = \"typo.db\"")],
        &dir.path().join("gw.toml"),
    );
    let err = run_expecting_failure("ems-gateway", &["serve", "--config", "gw.toml"], dir.path());
    assert!(err.contains("gw.toml:") && err.contains("pth"), "{err}");
}

#[test]
fn simulator_names_file_line_and_key() {
    let dir = TempDir::new("cfg-sim");
    let example =
        std::fs::read_to_string(workspace().join("simulators/scenarios/demo.toml")).unwrap();
    let line = example
        .lines()
        .position(|l| l == "flow = \"coke\"")
        .unwrap()
        + 1;
    write_config(
        "simulators/scenarios/demo.toml",
        &[("flow = \"coke\"", "flow = \"coal\"")],
        &dir.path().join("plant.toml"),
    );
    let err = run_expecting_failure(
        "ems-sim",
        &["--scenario", "plant.toml", "--listen", "127.0.0.1:0"],
        dir.path(),
    );
    assert!(err.contains(&format!("plant.toml:{line}:")), "{err}");
    assert!(err.contains("meters[1].flow"), "{err}");
}

#[test]
fn edge_probe_reads_a_device_once_and_shows_each_point_with_its_quality() {
    let dir = TempDir::new("probe");
    let sim = Proc::start(
        &bin("ems-sim"),
        &["--listen", "127.0.0.1:0", "--speed", "0.0001"],
        dir.path(),
    );
    let addr = sim.wait_line("LISTEN ", Duration::from_secs(10));
    // bf1-power, a DTSU666 (unit 14), read with the real meter's profile.
    let mut probe = Proc::start(
        &bin("ems-edge"),
        &[
            "probe",
            "--link",
            &format!("tcp://{addr}"),
            "--unit-id",
            "14",
            "--profile",
            "dtsu666",
        ],
        dir.path(),
    );
    assert!(
        probe.wait(Duration::from_secs(15)).success(),
        "{}",
        probe.stderr()
    );
    let mut lines = Vec::new();
    while let Some(l) = probe.next_line(Duration::from_millis(200)) {
        lines.push(l);
    }
    let text = lines.join("\n");
    assert!(text.contains("requests touching"), "{text}");
    // It names the profile and where its map comes from, to check against the meter's manual.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("profile dtsu666: ") && l.contains("(map: CHINT DTSU666")),
        "{text}"
    );
    let import = lines
        .iter()
        .find(|l| l.starts_with("import_kwh"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        import.ends_with("good") && import.contains("kWh"),
        "{import}"
    );
    let v: f64 = import.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(v > 10_000.0, "{import}");
    // It prints the requests it sends, with inclusive register ranges.
    assert!(
        text.contains(
            "request holding 16414-16425 (0x401E-0x4029, 12 registers): import_kwh, export_kwh"
        ),
        "{text}"
    );
}

/// Runs `ems-edge probe` on the simulator at `addr` for `unit` with `profile`; exit status and
/// what it printed.
fn probe(dir: &std::path::Path, addr: &str, unit: &str, profile: &str) -> (bool, String) {
    let mut probe = Proc::start(
        &bin("ems-edge"),
        &[
            "probe",
            "--link",
            &format!("tcp://{addr}"),
            "--unit-id",
            unit,
            "--profile",
            profile,
        ],
        dir,
    );
    let ok = probe.wait(Duration::from_secs(15)).success();
    let mut lines = Vec::new();
    while let Some(l) = probe.next_line(Duration::from_millis(200)) {
        lines.push(l);
    }
    (ok, lines.join("\n"))
}

#[test]
fn probe_bisects_a_refused_range_to_exactly_its_registers_and_fails_when_nothing_is_good() {
    let dir = TempDir::new("probe-refused");
    // bf1-power (a DTSU666, unit 14) refuses 0x2010-0x2011, inside the gap the read of its
    // instantaneous block bridges between the current (0x200C) and the power (0x2012).
    let sim = Proc::start(
        &bin("ems-sim"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--speed",
            "0.0001",
            "--fault",
            r#"{ device = "bf1-power", kind = "refuse_registers", from = 8208, to = 8209, for_h = 1000.0 }"#,
        ],
        dir.path(),
    );
    let addr = sim.wait_line("LISTEN ", Duration::from_secs(10));
    let (ok, text) = probe(dir.path(), &addr, "14", "dtsu666");
    assert!(ok, "{text}");
    let refused: Vec<&str> = text.lines().filter(|l| l.starts_with("refused:")).collect();
    assert_eq!(
        refused,
        ["refused: holding 8208-8209 (0x2010-0x2011, 2 registers) (exception 02 on a bridged read)"],
        "{text}"
    );
    assert!(
        text.lines().filter(|l| l.ends_with(" good")).count() >= 5,
        "every point read: {text}"
    );
    // A unit id nobody answers: nothing good, and the probe says so by its exit status.
    let (ok, text) = probe(dir.path(), &addr, "99", "dtsu666");
    assert!(!ok, "{text}");
}

#[test]
fn every_binary_has_help() {
    let dir = TempDir::new("help");
    for b in ["ems-sim", "ems-edge", "ems-gateway"] {
        let mut p = Proc::start(&bin(b), &["--help"], dir.path());
        assert!(p.wait(Duration::from_secs(10)).success(), "{b} --help");
        assert!(
            p.wait_line("Usage:", Duration::from_secs(1)).contains(b),
            "{b}"
        );
    }
}
