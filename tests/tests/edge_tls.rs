//! The edge publishes over MQTT with TLS to a broker that requires a client certificate (a
//! test CA made with openssl; Mosquitto's TLS listener), with a username and password on top:
//! every reading arrives once, and the edge's retained status says it is online.

use std::time::Duration;

use ems_tests::*;

#[test]
fn the_edge_delivers_over_tls_with_a_client_certificate() {
    let dir = TempDir::new("tls");
    let d = dir.path();
    make_ca(d);
    sign_certificate(d, "broker", "subjectAltName=IP:127.0.0.1");
    sign_certificate(d, "edge", "extendedKeyUsage=clientAuth");
    // The gateway uses the plain listener; the edge only the TLS one.
    let tls_port = free_port();
    let broker = Mosquitto::with_settings(
        d,
        &format!(
            "persistence false\nlistener {tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/broker.pem\nkeyfile {0}/broker.key\nrequire_certificate true\n",
            d.display()
        ),
    );
    let (mut sim, sim_addr) = start_sim(d, &[]);
    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);
    write_config(
        "firmware/edge/examples/demo.toml",
        &[
            ("tcp://127.0.0.1:5020", &format!("tcp://{sim_addr}")),
            ("port = 1883", &format!("port = {tls_port}\nusername = \"edge-1\"\npassword = \"secret\"")),
            ("poll_interval_ms = 1000", "poll_interval_ms = 200"),
            (
                "\n[spool]",
                "\n[mqtt.tls]\nca_file = \"ca.pem\"\nclient_cert = \"edge.pem\"\nclient_key = \"edge.key\"\n\n[spool]",
            ),
        ],
        &d.join("edge.toml"),
    );
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    eventually("the edge online", Duration::from_secs(30), || {
        get_json(&http, "/api/v1/edges")
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["online"] == true))
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        edge.terminate(Duration::from_secs(20)).success(),
        "{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    assert_eq!(seq.len(), demo_meter_count());
    assert!(seq.values().all(|&n| n >= 10), "{seq:?}");
    assert_stored_exactly_once(&http, &seq);
    assert!(
        !edge.stderr().contains("connection lost"),
        "{}",
        edge.stderr_tail()
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
    assert!(sim.terminate(Duration::from_secs(10)).success());
}
