//! The broker as a plant runs it: no anonymous clients, the edge over TLS identified by its
//! client certificate, the gateway by its password, and an access list: the edge's own rules
//! as `ems-edge acl` prints them, the gateway's from docs/deployment.md. The edge's readings
//! all arrive; what it publishes outside its rules is refused by the broker and never reaches
//! the gateway, while a message on its own topics does.

use std::process::Command;
use std::time::Duration;

use ems_tests::*;

/// The gateway's rules (docs/deployment.md, "Broker access").
const GATEWAY_ACL: &str = "user gateway
topic read ems/v1/+/data/+
topic read ems/v1/+/status/+
topic write ems/v1/+/ack/+
topic write ems/v1/alarms/#
";

/// Publishes as the edge (its certificate) with MQTT 5, so that a refusal comes back: the
/// client's warnings.
fn publish_as_edge(dir: &std::path::Path, port: u16, topic: &str, payload: &str) -> String {
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            "mqttv5",
            "-q",
            "1",
        ])
        .args([
            "--cafile",
            "ca.pem",
            "--cert",
            "edge-1.pem",
            "--key",
            "edge-1.key",
        ])
        .args(["-t", topic, "-m", payload])
        .current_dir(dir)
        .output()
        .expect("mosquitto_pub is installed (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_edge_may_publish_only_its_own_topics() {
    let dir = TempDir::new("acl");
    let d = dir.path();
    make_ca(d);
    sign_certificate(d, "broker", "subjectAltName=IP:127.0.0.1");
    // The edge's certificate names it: the broker takes the common name as its username.
    sign_certificate(d, "edge-1", "extendedKeyUsage=clientAuth");
    let (mut sim, sim_addr) = start_sim(d, &[]);
    let port = free_port();
    let tls_port = free_port();
    write_edge_config(d, &sim_addr, tls_port, 200);
    let edge_toml = d.join("edge.toml");
    let text = std::fs::read_to_string(&edge_toml).unwrap();
    std::fs::write(
        &edge_toml,
        text.replacen(
            "\n[spool]",
            "\n[mqtt.tls]\nca_file = \"ca.pem\"\nclient_cert = \"edge-1.pem\"\nclient_key = \"edge-1.key\"\n\n[spool]",
            1,
        ),
    )
    .unwrap();
    let acl = Command::new(bin("ems-edge"))
        .args(["acl", "--config", "edge.toml"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        acl.status.success(),
        "{}",
        String::from_utf8_lossy(&acl.stderr)
    );
    let edge_acl = String::from_utf8(acl.stdout).unwrap();
    std::fs::write(d.join("acl"), format!("{GATEWAY_ACL}\n{edge_acl}")).unwrap();
    let passwd = d.join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args([
            "-b",
            "-c",
            passwd.to_str().unwrap(),
            "gateway",
            "gateway-secret",
        ])
        .status()
        .expect("mosquitto_passwd (Debian's mosquitto)");
    assert!(made.success());
    // Started as root, mosquitto drops to its own user: let it read its files.
    use std::os::unix::fs::PermissionsExt as _;
    for f in ["acl", "passwd"] {
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let _broker = Mosquitto::with_text(
        d,
        port,
        &format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {0}/passwd\nacl_file {0}/acl\npersistence false\n\
             listener {port} 127.0.0.1\n\
             listener {tls_port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/broker.pem\nkeyfile {0}/broker.key\nrequire_certificate true\nuse_identity_as_username true\n",
            d.display()
        ),
    );
    write_gateway_config(d, port);
    let gw = d.join("gateway.toml");
    let text = std::fs::read_to_string(&gw).unwrap();
    let from = "[mqtt]\n";
    assert!(text.contains(from));
    std::fs::write(
        &gw,
        text.replacen(
            from,
            "[mqtt]\nusername = \"gateway\"\npassword = \"gateway-secret\"\n",
            1,
        ),
    )
    .unwrap();
    let (mut gateway, http) = start_gateway(d);
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    eventually(
        "every meter's readings through the access list",
        Duration::from_secs(30),
        || {
            get_json(&http, "/api/v1/devices")
                .as_array()
                .is_some_and(|d| {
                    d.len() == demo_meter_count()
                        && d.iter().all(|d| d["messages"].as_i64() > Some(3))
                })
        },
    );
    // The commit marks reach the edge through its read rule (protocol v1.1).
    eventually(
        "the edge hears the gateway's marks",
        Duration::from_secs(10),
        || {
            d.join("ems-edge-data/spool/gateway-confirms-commits")
                .exists()
        },
    );

    let now = chrono::Utc::now().timestamp_millis() - 4 * 3_600_000;
    let message = |site: &str, device: &str| {
        format!(
            r#"{{"v":1,"site":"{site}","edge":"edge-1","device":"{device}","seq":1,"ts_ms":{now},"points":[{{"id":"total","v":1.0,"q":"good"}}]}}"#
        )
    };
    // Outside its rules: another site, a device not its own, another edge's status.
    for (topic, payload) in [
        ("ems/v1/other/data/bf1-coke", message("other", "bf1-coke")),
        ("ems/v1/demo/data/not-mine", message("demo", "not-mine")),
        (
            "ems/v1/demo/status/edge-2",
            r#"{"v":1,"site":"demo","edge":"edge-2","online":true}"#.to_owned(),
        ),
    ] {
        let said = publish_as_edge(d, tls_port, topic, &payload);
        assert!(said.contains("Not authorized"), "{topic}: {said}");
    }
    // On its own topic the broker lets it through; this one names another device, so the
    // gateway keeps it aside, which shows it arrived.
    let said = publish_as_edge(
        d,
        tls_port,
        "ems/v1/demo/data/bf1-coke",
        &message("demo", "x"),
    );
    assert!(!said.contains("Not authorized"), "{said}");
    eventually(
        "the permitted message at the gateway",
        Duration::from_secs(10),
        || {
            get_json(&http, "/api/v1/quarantine")
                .as_array()
                .is_some_and(|q| !q.is_empty())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let quarantine = get_json(&http, "/api/v1/quarantine");
    let reasons: Vec<&str> = quarantine
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons.len(),
        1,
        "only the permitted message arrived: {reasons:?}"
    );
    assert!(reasons[0].starts_with("mismatch:"), "{reasons:?}");
    assert!(
        get_json(&http, "/api/v1/edges")
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["edge"] != "edge-2"),
        "another edge's status was refused"
    );

    stop_edge_all_delivered(&mut edge, Duration::from_secs(30));
    let seq = edge_sequence_numbers(d);
    assert_stored_exactly_once(&http, &seq);
    assert!(gateway.terminate(Duration::from_secs(20)).success());
    sim.terminate(Duration::from_secs(10));
}
