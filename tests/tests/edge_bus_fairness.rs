//! A noisy meter on a shared RS-485 bus (issue #18): five meters of a cement kiln on one line at
//! 9600 baud (the simulator's pseudo-terminal, with the line's timing), read through edge,
//! broker and gateway. For a while all five are healthy; then the coal scale answers with bad
//! CRCs, then with frames cut short, then 1.5 s late (past its 1 s timeout). The healthy four keep at least 90 % of
//! the good readings a second they had without it, and the noisy one's points carry `crc` or
//! `timeout`, as each fault is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ems_tests::*;

const HEALTHY: [(&str, u8, &str); 4] = [
    ("kiln1-clinker", 41, "ems-sim-belt-scale"),
    ("kiln1-power", 43, "ems-sim-dtsu666"),
    ("kiln1-whr", 44, "ems-sim-dtsu666"),
    ("kiln1-water", 45, "ems-sim-water-meter"),
];
const NOISY: (&str, u8, &str) = ("kiln1-coal", 42, "ems-sim-belt-scale");
/// Real seconds of each phase; the simulator runs at 60x, so a simulated hour is 60 s.
const PHASE_S: u64 = 12;

/// Each meter's own clock now (ms): readings are stamped with it, and meters' clocks differ.
fn meter_clocks(control: &str) -> BTreeMap<String, i64> {
    get_json(control, "/meters")
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["device"].as_str().unwrap().to_owned(),
                m["clock_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn healthy_meters_keep_their_rate_beside_a_noisy_one_and_its_points_say_why() {
    let dir = TempDir::new("bus-fairness");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let (mut sim, _) = start_sim_with(
        d,
        &[],
        &["--rtu-pty", "--baud", "9600", "--control", "127.0.0.1:0"],
    );
    let control = sim.wait_line("CONTROL ", Duration::from_secs(10));
    let pty = sim.wait_line("RTU ", Duration::from_secs(10));
    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);
    let mut edge_toml = format!(
        "site = \"demo\"\nedge_id = \"edge-1\"\ndata_dir = \"ems-edge-data\"\npoll_interval_ms = 500\n# A failing meter is tried at least every 3 s: each fault below is seen.\nmax_backoff_ms = 3000\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\n",
        broker.port
    );
    for (id, unit, profile) in HEALTHY.iter().chain([&NOISY]) {
        edge_toml.push_str(&format!(
            "[[devices]]\nid = \"{id}\"\nlink = \"rtu://{pty}?baud=9600&parity=even\"\nunit_id = {unit}\nprofile = \"{profile}\"\nclock = \"device\"\n\n"
        ));
    }
    std::fs::write(d.join("edge.toml"), edge_toml).unwrap();
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);

    // Settle (first polls, fitted timeouts), then the quiet phase.
    std::thread::sleep(Duration::from_secs(4));
    let quiet_from = meter_clocks(&control);
    std::thread::sleep(Duration::from_secs(PHASE_S));
    let noisy_from = meter_clocks(&control);
    let phase_h = PHASE_S as f64 / 60.0;
    for (k, fault) in [
        serde_json::json!({ "kind": "corrupt_frame" }),
        serde_json::json!({ "kind": "corrupt_frame", "truncate": true }),
        serde_json::json!({ "kind": "slow", "delay_ms": 1500 }),
    ]
    .into_iter()
    .enumerate()
    {
        let mut fault = fault;
        fault["device"] = NOISY.0.into();
        fault["at_h"] = (k as f64 * phase_h).into();
        fault["for_h"] = phase_h.into();
        let (status, body) = post_json(&control, "/faults", None, Some(&fault));
        assert_eq!(status, 201, "{body}");
    }
    std::thread::sleep(Duration::from_secs(3 * PHASE_S));
    let noisy_to = meter_clocks(&control);
    assert!(
        edge.terminate(Duration::from_secs(20)).success(),
        "{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    assert_stored_exactly_once(&http, &seq);

    // Per device, per reading (seq): its time and whether every point was good; and the
    // noisy meter's failure kinds in each fault's phase.
    let csv = get_text(
        &http,
        "/api/v1/samples.csv?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
    );
    let mut readings: BTreeMap<String, BTreeMap<u64, (i64, bool)>> = BTreeMap::new();
    let mut noisy_kinds: [BTreeSet<String>; 3] = Default::default();
    let (noisy_from_ms, noisy_to_ms) = (noisy_from[NOISY.0], noisy_to[NOISY.0]);
    let phase_ms = (noisy_to_ms - noisy_from_ms) / 3;
    for line in csv.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        let ts = chrono::DateTime::parse_from_rfc3339(c[3])
            .unwrap()
            .timestamp_millis();
        let good = c[5] == "good";
        let r = readings
            .entry(c[0].into())
            .or_default()
            .entry(c[1].parse().unwrap())
            .or_insert((ts, true));
        r.1 &= good;
        if c[0] == NOISY.0 && !good && ts >= noisy_from_ms {
            let phase = (((ts - noisy_from_ms) / phase_ms) as usize).min(2);
            noisy_kinds[phase].insert(c[5].to_owned());
        }
    }
    let rate = |device: &str, from: &BTreeMap<String, i64>, to: &BTreeMap<String, i64>| {
        let (from, to) = (from[device], to[device]);
        let good = readings[device]
            .values()
            .filter(|(ts, good)| *good && (from..to).contains(ts))
            .count();
        // Good readings per simulated minute (a real second).
        good as f64 / ((to - from) as f64 / 60_000.0)
    };
    let mut report = Vec::new();
    for (device, _, _) in HEALTHY {
        let quiet = rate(device, &quiet_from, &noisy_from);
        let noisy = rate(device, &noisy_from, &noisy_to);
        report.push(format!("{device}: {quiet:.2}/s quiet, {noisy:.2}/s noisy"));
        assert!(
            quiet >= 1.5,
            "{device} polled about twice a second: {report:?}"
        );
        assert!(
            noisy >= 0.9 * quiet,
            "{device} kept 90 % of its rate: {report:?}\n{}",
            edge.stderr_tail()
        );
    }
    eprintln!("{report:?}; noisy meter's failures by phase: {noisy_kinds:?}");
    let [bad_crc, cut_short, late] = &noisy_kinds;
    assert_eq!(
        bad_crc.iter().collect::<Vec<_>>(),
        ["crc"],
        "a bad CRC is crc, not a timeout"
    );
    assert_eq!(
        cut_short.iter().collect::<Vec<_>>(),
        ["crc"],
        "a frame cut short is crc at once"
    );
    assert_eq!(
        late.iter().collect::<Vec<_>>(),
        ["timeout"],
        "a late answer is a timeout\n{}",
        edge.stderr_tail()
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
    assert!(sim.terminate(Duration::from_secs(10)).success());
}
