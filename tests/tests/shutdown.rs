//! SIGTERM stops every binary cleanly, and nothing in flight is lost: the gateway is stopped
//! and restarted while the edge keeps publishing, then the edge is stopped; every sequence
//! number must be stored exactly once.

use std::collections::HashMap;
use std::time::Duration;

use ems_tests::*;

#[test]
fn sigterm_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let dir = TempDir::new("shutdown");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let truth = d.join("truth.jsonl");
    let mut sim = Proc::start(
        &bin("ems-sim"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--speed",
            "60",
            "--truth",
            truth.to_str().unwrap(),
        ],
        d,
    );
    let sim_addr = sim.wait_line("LISTEN ", Duration::from_secs(10));
    let port = broker.port.to_string();
    write_gateway_config(d, broker.port);
    let start_gateway = || start_gateway(d);
    let (mut gateway, _) = start_gateway();
    write_config(
        "firmware/edge/examples/demo.toml",
        &[
            ("tcp://127.0.0.1:5020", &format!("tcp://{sim_addr}")),
            ("port = 1883", &format!("port = {port}")),
            ("poll_interval_ms = 1000", "poll_interval_ms = 100"),
        ],
        &d.join("edge.toml"),
    );
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    std::thread::sleep(Duration::from_secs(3));

    // The gateway goes down mid-stream; the broker holds its session's messages meanwhile.
    assert!(
        gateway.terminate(Duration::from_secs(20)).success(),
        "gateway exit:\n{}",
        gateway.stderr_tail()
    );
    std::thread::sleep(Duration::from_secs(2));
    let (mut gateway, http) = start_gateway();
    std::thread::sleep(Duration::from_secs(2));

    assert!(
        edge.terminate(Duration::from_secs(20)).success(),
        "edge exit:\n{}",
        edge.stderr_tail()
    );
    assert!(
        edge.stderr().contains("every message was acknowledged"),
        "{}",
        edge.stderr_tail()
    );
    let seq: HashMap<String, u64> =
        serde_json::from_str(&std::fs::read_to_string(d.join("ems-edge-data/seq.json")).unwrap())
            .unwrap();
    assert!(
        seq.values().all(|&n| n >= 50),
        "the edge polled throughout: {seq:?}"
    );
    eventually(
        "every sequence number stored",
        Duration::from_secs(20),
        || {
            let devices = get_json(&http, "/api/v1/devices");
            let devices = devices.as_array().unwrap();
            devices.len() == seq.len()
                && devices
                    .iter()
                    .all(|d| d["last_seq"].as_u64() == seq.get(d["id"].as_str().unwrap()).copied())
        },
    );
    for dev in get_json(&http, "/api/v1/devices").as_array().unwrap() {
        let id = dev["id"].as_str().unwrap();
        assert_eq!(dev["missing"], 0, "{dev}");
        assert_eq!(
            dev["messages"].as_u64(),
            seq.get(id).copied(),
            "each number stored once: {dev}"
        );
    }

    assert!(
        gateway.terminate(Duration::from_secs(20)).success(),
        "gateway exit:\n{}",
        gateway.stderr_tail()
    );
    assert!(
        sim.terminate(Duration::from_secs(10)).success(),
        "sim exit:\n{}",
        sim.stderr_tail()
    );
    // The simulator closed the interval in progress and flushed it.
    let text = std::fs::read_to_string(&truth).unwrap();
    let intervals = text
        .lines()
        .filter(|l| l.contains("\"record\":\"interval\""))
        .count();
    assert_eq!(
        intervals % 5,
        0,
        "whole sets of the five units: {intervals}"
    );
    assert!(intervals >= 5, "the partial hour was written at shutdown");
}
