//! A large site: some 900 meters behind one edge. Its retained status (which lists every meter) is
//! far beyond the 10 kB an MQTT client library allows by default; the edge must still connect,
//! publish and have every reading acknowledged by the broker. The board's watchdog is fed while
//! the agent runs and disarmed when it stops cleanly.

use std::time::Duration;

use ems_tests::*;

#[test]
fn an_edge_with_nine_hundred_meters_delivers_everything() {
    let dir = TempDir::new("large-site");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let (mut sim, sim_addr) = start_sim(d, &[]);
    write_edge_config(d, &sim_addr, broker.port, 500);
    // The demo plant's meters, each configured again under its own id until the site has at
    // least nine hundred.
    let path = d.join("edge.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.find("[[devices]]").unwrap();
    let (head, devices) = text.split_at(first);
    let mut site = head.to_owned();
    let copies = 900usize.div_ceil(demo_meter_count());
    for copy in 0..copies {
        site.push_str(&devices.replace("\nid = \"", &format!("\nid = \"c{copy}-")));
        site.push('\n');
    }
    assert_eq!(
        site.matches("[[devices]]").count(),
        copies * demo_meter_count()
    );
    // The board's watchdog: a plain file stands in for /dev/watchdog (each write feeds it).
    std::fs::write(d.join("watchdog"), b"").unwrap();
    site.push_str("[board]\nwatchdog = \"watchdog\"\nhang_after_s = 30\n");
    std::fs::write(&path, site).unwrap();

    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    std::thread::sleep(Duration::from_secs(6));
    stop_edge_all_delivered(&mut edge, Duration::from_secs(30));
    assert!(
        !edge.stderr().contains("connection lost"),
        "{}",
        edge.stderr_tail()
    );
    // Fed about once a second while it ran, then disarmed by the clean stop.
    let fed = std::fs::read(d.join("watchdog")).unwrap();
    assert!(fed.len() >= 4 && fed.ends_with(b"V"), "{fed:?}");
    assert!(fed[..fed.len() - 1].iter().all(|&b| b == 0), "{fed:?}");
    let seq = edge_sequence_numbers(d);
    assert_eq!(seq.len(), copies * demo_meter_count());
    assert!(seq.values().all(|&n| n >= 3), "every meter polled: {seq:?}");
    assert!(sim.terminate(Duration::from_secs(10)).success());
}
