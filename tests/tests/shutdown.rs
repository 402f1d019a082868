//! SIGTERM stops every binary cleanly, and nothing in flight is lost: the gateway is stopped
//! and restarted while the edge keeps publishing, then the edge is stopped; every sequence
//! number must be stored exactly once.

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
    write_gateway_config(d, broker.port);
    let start_gateway = || start_gateway(d);
    let (mut gateway, _) = start_gateway();
    write_edge_config(d, &sim_addr, broker.port, 100);
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

    stop_edge_all_delivered(&mut edge, Duration::from_secs(20));
    let seq = edge_sequence_numbers(d);
    assert!(
        seq.values().all(|&n| n >= 50),
        "the edge polled throughout: {seq:?}"
    );
    assert_stored_exactly_once(&http, &seq);

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
    let units = demo_truth_units();
    assert_eq!(
        intervals % units,
        0,
        "whole sets of the {units} units: {intervals}"
    );
    assert!(
        intervals >= units,
        "the partial hour was written at shutdown"
    );
}
