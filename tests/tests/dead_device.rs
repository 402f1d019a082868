//! One dead meter on a shared Modbus TCP link: the others' data stays complete, the dead one
//! is polled less often while it is silent, and it is read again by itself once it answers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ems_tests::*;

#[test]
fn a_dead_device_does_not_hold_up_the_others_and_comes_back_by_itself() {
    let dir = TempDir::new("dead");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    // 60x, an hour back; the kiln's coal meter stays silent for the first 12 simulated minutes
    // (12 real seconds).
    let (mut sim, sim_addr) = start_sim(
        d,
        &[r#"{ device = "kiln1-coal", kind = "no_response", at_h = 0.0, for_h = 0.2 }"#],
    );
    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);
    // Every 100 ms; a silent meter times out after 300 ms and backs off to at most 2 s.
    write_config(
        "firmware/edge/examples/demo.toml",
        &[
            ("tcp://127.0.0.1:5020", &format!("tcp://{sim_addr}")),
            ("port = 1883", &format!("port = {}", broker.port)),
            ("poll_interval_ms = 1000", "poll_interval_ms = 100"),
            (
                "max_backoff_ms = 60000",
                "max_backoff_ms = 2000\nmetrics_listen = \"127.0.0.1:0\"",
            ),
            (
                "id = \"kiln1-coal\"\nlink",
                "id = \"kiln1-coal\"\ntimeout_ms = 300\nlink",
            ),
        ],
        &d.join("edge.toml"),
    );
    let started = Instant::now();
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    let metrics_addr = edge.wait_line("METRICS ", Duration::from_secs(10));

    // While the meter is silent, the edge's metrics say so.
    std::thread::sleep(Duration::from_secs(6));
    let metrics = get_text(&metrics_addr, "/metrics");
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
    };
    assert_eq!(value("ems_edge_devices_backing_off "), 1.0);
    assert!(value("ems_edge_point_failures_total{device=\"kiln1-coal\",kind=\"timeout\"} ") > 0.0);
    assert!(value("ems_edge_polls_total{device=\"bf1-coke\"} ") > 30.0);
    assert!(value("ems_edge_delivered_total ") > 100.0);
    assert!(value("ems_edge_spool_depth ") < 1_000.0);
    std::thread::sleep(Duration::from_secs(14));
    assert!(
        edge.terminate(Duration::from_secs(20)).success(),
        "{}",
        edge.stderr_tail()
    );
    let ran = started.elapsed().as_secs_f64();
    let seq = edge_sequence_numbers(d);
    assert_stored_exactly_once(&http, &seq);

    // Per device: messages, and those without a single good point.
    let csv = get_text(
        &http,
        "/api/v1/samples.csv?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
    );
    let mut good: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut all: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for line in csv.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        let seq: u64 = c[1].parse().unwrap();
        all.entry(c[0].into()).or_default().insert(seq);
        if c[5] == "good" {
            good.entry(c[0].into()).or_default().insert(seq);
        }
    }
    let nominal = ran / 0.1;
    for (device, seqs) in &all {
        if device == "kiln1-coal" {
            continue;
        }
        let n = good.get(device).map_or(0, BTreeSet::len);
        assert_eq!(n, seqs.len(), "{device}: every reading good");
        // Without backoff every cycle would wait 300 ms for the dead meter: a quarter of the
        // nominal polls. With it, most of them happen.
        assert!(
            n as f64 > 0.6 * nominal,
            "{device}: {n} polls in {ran:.1} s (nominal {nominal:.0})"
        );
    }
    let dead_all = all["kiln1-coal"].len();
    let dead_good = good.get("kiln1-coal").map_or(0, BTreeSet::len);
    let failed = dead_all - dead_good;
    let fewest = all
        .iter()
        .filter(|(d, _)| *d != "kiln1-coal")
        .map(|(_, s)| s.len())
        .min()
        .unwrap();
    eprintln!(
        "{ran:.1} s: healthy meters {fewest}+ polls (nominal {nominal:.0}); silent meter {failed} failed, {dead_good} good"
    );
    // 12 s silent: polled every cycle it would have failed about 30 times (300 ms + 100 ms).
    assert!(
        (3..=15).contains(&failed),
        "the silent meter was polled less often: {failed} failed polls"
    );
    assert!(
        dead_good as f64 > 0.5 * (ran - 13.0) / 0.1,
        "it is read every cycle again once it answers: {dead_good} good polls"
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
    assert!(sim.terminate(Duration::from_secs(10)).success());
}

#[test]
fn a_device_that_takes_only_short_requests_gets_a_shorter_plan() {
    let dir = TempDir::new("short");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    // Two power meters take reads of at most 16 registers (their profile allows 125, and the
    // planner bridges their maps into long reads): the blast furnace's answers longer ones with
    // exception 03, the reheating furnace's ignores them (a timeout).
    let (mut sim, sim_addr) = start_sim(
        d,
        &[
            r#"{ device = "bf1-power", kind = "short_requests", registers = 16, at_h = 0.0, for_h = 10.0 }"#,
            r#"{ device = "rhf1-power", kind = "short_requests", registers = 16, silent = true, at_h = 0.0, for_h = 10.0 }"#,
        ],
    );
    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);
    write_edge_config(d, &sim_addr, broker.port, 100);
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    std::thread::sleep(Duration::from_secs(6));
    assert!(edge.terminate(Duration::from_secs(20)).success());
    let log = edge.stderr();
    for (device, shown_by) in [
        ("bf1-power", "exception 03"),
        ("rhf1-power", "timeouts on long reads"),
    ] {
        assert!(
            log.lines().any(|l| l.contains("length limit lowered")
                && l.contains(device)
                && l.contains(shown_by)),
            "the edge says what it learned of {device}:\n{}",
            edge.stderr_tail()
        );
    }
    let seq = edge_sequence_numbers(d);
    assert_stored_exactly_once(&http, &seq);
    // After at most a few polls every point of each meter reads good, every poll.
    for (device, failed_as) in [("bf1-power", "exception:03"), ("rhf1-power", "timeout")] {
        let csv = get_text(
            &http,
            &format!("/api/v1/samples.csv?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&device={device}"),
        );
        let mut bad_seqs = BTreeSet::new();
        let mut seqs = BTreeSet::new();
        for line in csv.lines().skip(1) {
            let c: Vec<&str> = line.split(',').collect();
            let s: u64 = c[1].parse().unwrap();
            seqs.insert(s);
            if c[5] != "good" {
                assert_eq!(c[5], failed_as, "{line}");
                bad_seqs.insert(s);
            }
        }
        assert!(seqs.len() > 20, "{device}: {} polls", seqs.len());
        assert!(
            !bad_seqs.is_empty() && bad_seqs.iter().all(|&s| s <= 3),
            "{device}: only the first polls fail: {bad_seqs:?}"
        );
    }
    assert!(gateway.terminate(Duration::from_secs(20)).success());
    assert!(sim.terminate(Duration::from_secs(10)).success());
}

/// "N requests touching M registers" after `key=` in a log line.
fn plan_in(line: &str, key: &str) -> (u32, u32) {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()..];
    let words: Vec<&str> = rest.split_whitespace().collect();
    (words[0].parse().unwrap(), words[3].parse().unwrap())
}

fn number_after(line: &str, key: &str) -> f64 {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_meter_behind_a_serial_gateway_is_replanned_for_what_its_reads_take() {
    let dir = TempDir::new("gateway-cost");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    // bf1-power answers as if on a 9 600-baud bus behind a TCP gateway: ~23 ms a request and
    // ~2.3 ms a register, where the planner assumes a 2 ms round trip on Ethernet.
    let (mut sim, sim_addr) = start_sim(
        d,
        &[
            r#"{ device = "bf1-power", kind = "serial_gateway", baud = 9600, at_h = 0.0, for_h = 10.0 }"#,
        ],
    );
    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);
    write_edge_config(d, &sim_addr, broker.port, 100);
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    let deadline = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let log = edge.stderr();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("Request costs measured; replanned.") && l.contains("bf1-power"))
        {
            break l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "bf1-power was not replanned:\n{}",
            edge.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("{line}");
    let (was_requests, was_registers) = plan_in(&line, "was=");
    let (requests, registers) = plan_in(&line, "plan=");
    assert!(
        requests > was_requests && registers < was_registers,
        "gaps no longer bridged at ~2.3 ms a register: {line}"
    );
    let per_register_us = number_after(&line, "per_register_us=");
    assert!(
        (per_register_us / 2292.0 - 1.0).abs() < 0.25,
        "the fitted cost per register is the bus's: {line}"
    );
    let per_request_ms = number_after(&line, "per_request_ms=");
    assert!(
        (15.0..60.0).contains(&per_request_ms),
        "the fitted cost per request is the bus's (~23 ms) and the gateway's: {line}"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop_edge_all_delivered(&mut edge, Duration::from_secs(20));
    let seq = edge_sequence_numbers(d);
    assert_stored_exactly_once(&http, &seq);
    let csv = get_text(
        &http,
        "/api/v1/samples.csv?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&device=bf1-power",
    );
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(rows.len() > 100, "{} samples", rows.len());
    assert!(
        rows.iter().all(|l| l.split(',').nth(5) == Some("good")),
        "every reading of the slow meter good, before and after the new plan"
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
    assert!(sim.terminate(Duration::from_secs(10)).success());
}
