//! The build of ems-edge for the aarch64 boards (profile `edge`: size-optimised, as it ships), run under qemu-user against ems-sim and
//! a real Mosquitto: what it reads arrives at the gateway, every sequence number exactly once.

use std::path::PathBuf;
use std::time::Duration;

use ems_tests::*;

/// The cross-built binary (`tests/run.sh` builds it).
fn cross_edge(target: &str) -> PathBuf {
    let path = workspace()
        .join("target")
        .join(target)
        .join("edge/ems-edge");
    assert!(
        path.exists(),
        "{} is missing: `cargo build --profile edge -p ems-edge --target {target}` (tests/run.sh does)",
        path.display()
    );
    path
}

/// The ELF header's machine field.
fn elf_machine(path: &std::path::Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn the_aarch64_edge_under_qemu_delivers_everything_to_the_gateway() {
    let edge_bin = cross_edge("aarch64-unknown-linux-gnu");
    assert_eq!(elf_machine(&edge_bin), 183, "EM_AARCH64");

    let dir = TempDir::new("arm");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let (mut sim, sim_addr) = start_sim(d, &[]);
    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);
    write_edge_config(d, &sim_addr, broker.port, 200);
    let edge_path = edge_bin.to_str().unwrap().to_owned();
    let mut edge = Proc::start(
        std::path::Path::new("/usr/bin/qemu-aarch64"),
        &[
            "-L",
            "/usr/aarch64-linux-gnu",
            &edge_path,
            "run",
            "--config",
            "edge.toml",
        ],
        d,
    );
    eventually(
        "data from the emulated board",
        Duration::from_secs(60),
        || {
            get_json(&http, "/api/v1/devices")
                .as_array()
                .is_some_and(|d| {
                    d.len() == demo_meter_count()
                        && d.iter().all(|d| d["messages"].as_i64() >= Some(10))
                })
        },
    );
    // qemu-user hands SIGTERM to the emulated agent, which delivers what it read and stops.
    assert!(
        edge.terminate(Duration::from_secs(30)).success(),
        "{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    assert_eq!(seq.len(), demo_meter_count());
    assert_stored_exactly_once(&http, &seq);
    let bf1 = get_json(&http, "/api/v1/units/bf1/indicators?period=hour");
    assert!(
        bf1.as_array()
            .unwrap()
            .iter()
            .any(|h| h["product_t"].as_f64() > Some(0.0)),
        "the gateway accounts for what the ARM build read: {bf1}"
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
    assert!(sim.terminate(Duration::from_secs(10)).success());
}
