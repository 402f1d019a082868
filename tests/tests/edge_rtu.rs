//! The edge on a Modbus RTU bus: every meter of the demo plant on one serial line at 9600 baud
//! (the simulator's pseudo-terminal, with the line's timing), one meter answering with bad CRCs
//! and then cut-short frames for a while. The others' readings stay all good, the bus never
//! loses step (the faulty meter reads good again once it is healthy), and every reading reaches
//! the gateway exactly once. Two meters on a noisy line spoil every third answer: the one read
//! with the default single retry loses no reading, the one read without retries does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ems_tests::*;

#[test]
fn meters_on_one_rtu_bus_survive_a_meter_sending_corrupt_frames() {
    let dir = TempDir::new("rtu");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    // 60x: bad CRCs from simulated minute 6 to 12, cut-short frames from 12 to 18.
    let (mut sim, _) = start_sim_with(
        d,
        &[
            r#"{ device = "kiln1-coal", kind = "corrupt_frame", at_h = 0.1, for_h = 0.1 }"#,
            r#"{ device = "kiln1-coal", kind = "corrupt_frame", truncate = true, at_h = 0.2, for_h = 0.1 }"#,
            r#"{ device = "bf1-coke", kind = "corrupt_frame", every = 3, at_h = 0.0, for_h = 10.0 }"#,
            r#"{ device = "bf1-pci", kind = "corrupt_frame", every = 3, at_h = 0.0, for_h = 10.0 }"#,
        ],
        &["--rtu-pty", "--baud", "9600"],
    );
    let pty = sim.wait_line("RTU ", Duration::from_secs(10));
    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);
    write_config(
        "firmware/edge/examples/demo.toml",
        &[
            (
                "tcp://127.0.0.1:5020",
                &format!("rtu://{pty}?baud=9600&parity=even"),
            ),
            ("port = 1883", &format!("port = {}", broker.port)),
            (
                "id = \"kiln1-coal\"\nlink",
                "id = \"kiln1-coal\"\ntimeout_ms = 300\nlink",
            ),
            (
                "id = \"bf1-pci\"\nlink",
                "id = \"bf1-pci\"\nretries = 0\nlink",
            ),
        ],
        &d.join("edge.toml"),
    );
    let mut plan = Proc::start(&bin("ems-edge"), &["plan", "--config", "edge.toml"], d);
    assert!(plan.wait(Duration::from_secs(10)).success());
    let link = plan.wait_line("link ", Duration::from_secs(1));
    assert!(link.starts_with("rtu:///dev/"), "one RTU bus: {link}");

    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    // Until the faulty meter has read good twice after its last bad reading (its backoff, 1, 3,
    // 7, 15 ... cycles of several seconds on this bus, ends within the site's max_backoff_ms,
    // a minute, of the fault's end), and every other meter five times. A fixed wait was too
    // short when the fault happened to push the backoff far: the test failed on a quiet machine.
    let wait = |readings: &BTreeMap<String, BTreeMap<u64, bool>>| {
        let faulty: Vec<bool> = readings
            .get("kiln1-coal")
            .map(|r| r.values().copied().collect())
            .unwrap_or_default();
        let recovered = faulty
            .iter()
            .rposition(|g| !g)
            .is_some_and(|last_bad| faulty[last_bad + 1..].len() >= 2);
        recovered && readings.len() == demo_meter_count() && readings.values().all(|r| r.len() >= 5)
    };
    let started = std::time::Instant::now();
    eventually(
        "the faulty meter to read good again",
        Duration::from_secs(180),
        || {
            // Not before the fault has come and gone (simulated minutes 6 to 18 at 60x).
            if started.elapsed() < Duration::from_secs(20) {
                return false;
            }
            // The whole record each time: a look every second is enough.
            std::thread::sleep(Duration::from_secs(1));
            wait(&readings_of(&http).0)
        },
    );
    // A stop waits for the poll cycle under way (the whole bus at 9 600 baud) and the delivery.
    assert!(
        edge.terminate(Duration::from_secs(60)).success(),
        "{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    assert_eq!(
        seq.len(),
        demo_meter_count(),
        "every meter of the plant was read"
    );
    assert_stored_exactly_once(&http, &seq);

    let (readings, kinds) = readings_of(&http);
    let without_retries = &readings["bf1-pci"];
    assert!(
        without_retries.values().any(|g| !g),
        "bf1-pci, read without retries, shows the noise: {without_retries:?}"
    );
    for (device, r) in &readings {
        if device == "kiln1-coal" || device == "bf1-pci" {
            continue;
        }
        assert!(r.len() >= 5, "{device}: {} readings in 45 s", r.len());
        assert!(
            r.values().all(|g| *g),
            "{device}: every reading good: {r:?} {kinds:?}\n{}",
            edge.stderr_tail()
        );
    }
    let faulty: Vec<bool> = readings["kiln1-coal"].values().copied().collect();
    eprintln!(
        "kiln1-coal over RTU: {faulty:?}; failure kinds {kinds:?}; others {}+ readings",
        readings.values().map(BTreeMap::len).min().unwrap()
    );
    let first_bad = faulty
        .iter()
        .position(|g| !g)
        .expect("the corrupt frames were noticed");
    let last_bad = faulty.iter().rposition(|g| !g).unwrap();
    assert!(first_bad > 0, "good before the fault");
    assert!(
        faulty[last_bad + 1..].len() >= 2,
        "good again after the fault: the bus kept step"
    );
    assert!(
        kinds.iter().all(|k| k == "crc" || k == "timeout"),
        "{kinds:?}"
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
    assert!(sim.terminate(Duration::from_secs(10)).success());
}

/// Per device, in sequence order, whether each stored reading was all good; and the qualities
/// of the points that were not.
fn readings_of(http: &str) -> (BTreeMap<String, BTreeMap<u64, bool>>, BTreeSet<String>) {
    let csv = get_text(
        http,
        "/api/v1/samples.csv?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
    );
    let mut readings: BTreeMap<String, BTreeMap<u64, bool>> = BTreeMap::new();
    let mut kinds = BTreeSet::new();
    for line in csv.lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        let good = c[5] == "good";
        if !good {
            kinds.insert(c[5].to_owned());
        }
        let all_good = readings
            .entry(c[0].into())
            .or_default()
            .entry(c[1].parse().unwrap())
            .or_insert(true);
        *all_good &= good;
    }
    (readings, kinds)
}
