//! The edge's disk spool against a real Mosquitto: what the edge has read survives a broker
//! outage and a SIGKILL of the edge itself, and is delivered exactly once after its restart.

use std::time::Duration;

use ems_tests::*;

/// Bytes in the edge's spool segments.
fn spooled_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("ems-edge-data/spool"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn an_edge_killed_during_a_broker_outage_delivers_everything_after_its_restart() {
    let dir = TempDir::new("spool");
    let d = dir.path();
    let mut broker = Mosquitto::start_persistent(d);
    let Pipeline {
        sim: _sim,
        mut gateway,
        http,
        mut edge,
    } = start_pipeline(d, broker.port);
    eventually("data stored", Duration::from_secs(20), || {
        get_json(&http, "/api/v1/devices")
            .as_array()
            .is_some_and(|d| d.len() == 30 && d.iter().all(|d| d["messages"].as_i64() > Some(3)))
    });

    // The broker goes away; the edge goes on polling into its spool, then dies without warning.
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    let before_kill = edge_sequence_numbers(d);
    edge.kill();
    assert!(
        spooled_bytes(d) > 0,
        "what the edge read during the outage is on disk"
    );

    broker.restart();
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    // Back online, the edge reports the backlog it starts to replay.
    eventually(
        "the edge reports its spool backlog",
        Duration::from_secs(15),
        || get_json(&http, "/api/v1/edges")[0]["spool_depth"].as_i64() > Some(0),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        edge.terminate(Duration::from_secs(30)).success(),
        "{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    for (device, n) in &before_kill {
        assert!(seq[device] > *n, "{device}: polled again after the restart");
    }
    let redelivered = assert_stored_exactly_once(&http, &seq);
    let e = get_json(&http, "/api/v1/edges")[0].clone();
    assert_eq!(
        (&e["online"], &e["spool_depth"], &e["spool_dropped"]),
        (&false.into(), &0.into(), &0.into()),
        "stopped cleanly with everything delivered: {e}"
    );
    eprintln!("{redelivered} copies delivered twice and dropped by the gateway");
    assert!(
        spooled_bytes(d) < 1_000_000,
        "delivered segments are deleted"
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}
