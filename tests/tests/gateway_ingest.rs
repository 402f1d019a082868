//! The gateway as the plant's system of record, against a real Mosquitto: killed at any moment
//! it loses nothing and stores nothing twice, its rollups equal a recomputation from the raw
//! samples, and bad input is kept aside with its reason without disturbing good messages.

use std::process::Command;
use std::time::Duration;

use ems_tests::*;

#[test]
fn sigkill_the_gateway_again_and_again_loses_nothing() {
    let dir = TempDir::new("sigkill");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let Pipeline {
        sim: _sim,
        mut gateway,
        http: _,
        mut edge,
    } = start_pipeline(d, broker.port);
    for round in 0..4 {
        // Killed mid-batch: whatever it had not committed was never acknowledged.
        std::thread::sleep(Duration::from_millis(1_500 + 300 * round));
        let ok = Command::new("kill")
            .args(["-KILL", &gateway.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        gateway.wait(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(500));
        gateway = start_gateway(d).0;
    }
    let http = {
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            edge.terminate(Duration::from_secs(20)).success(),
            "{}",
            edge.stderr_tail()
        );
        let ok = Command::new("kill")
            .args(["-KILL", &gateway.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        gateway.wait(Duration::from_secs(5));
        let (g, http) = start_gateway(d);
        gateway = g;
        http
    };
    let seq = edge_sequence_numbers(d);
    let redelivered = assert_stored_exactly_once(&http, &seq);
    eprintln!(
        "{} devices, {} messages each on average, {redelivered} redelivered copies dropped",
        seq.len(),
        seq.values().sum::<u64>() / seq.len() as u64
    );
    let integrity = get_json(&http, "/api/v1/integrity");
    assert_eq!(
        integrity["mismatches"].as_array().unwrap().len(),
        0,
        "rollups equal their recomputation: {integrity}"
    );
    assert!(
        integrity["samples_checked"].as_u64().unwrap() > 1_000,
        "{integrity}"
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}

#[test]
fn a_broker_stopped_and_restarted_mid_stream_loses_nothing() {
    let dir = TempDir::new("broker");
    let d = dir.path();
    let mut broker = Mosquitto::start_persistent(d);
    let Pipeline {
        sim: _sim,
        mut gateway,
        http,
        mut edge,
    } = start_pipeline(d, broker.port);
    std::thread::sleep(Duration::from_secs(2));
    // The broker goes away for a while: the edge keeps polling into its outbox, the gateway
    // keeps trying to reconnect.
    broker.stop();
    std::thread::sleep(Duration::from_secs(4));
    broker.restart();
    std::thread::sleep(Duration::from_secs(3));
    stop_edge_all_delivered(&mut edge, Duration::from_secs(30));
    let seq = edge_sequence_numbers(d);
    assert_stored_exactly_once(&http, &seq);
    assert!(
        seq.values().all(|&n| n >= 60),
        "the edge polled through the outage: {seq:?}"
    );
    assert!(
        get_text(&http, "/metrics").contains("ems_gateway_mqtt_sessions_lost_total 0"),
        "the broker kept the gateway's session"
    );
    assert!(get_json(&http, "/api/v1/integrity")["mismatches"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}

fn publish(port: u16, topic: &str, payload_file: &std::path::Path) {
    let ok = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-f",
            payload_file.to_str().unwrap(),
        ])
        .status()
        .expect("mosquitto_pub is installed (tests/run.sh installs it)");
    assert!(ok.success(), "publish to {topic}");
}

#[test]
fn bad_input_is_quarantined_counted_and_does_not_disturb_good_messages() {
    let dir = TempDir::new("quarantine");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);
    let now = chrono::Utc::now().timestamp_millis();
    let good = |seq: u64| {
        format!(
            r#"{{"v":1,"site":"demo","edge":"e1","device":"bf1-coke","seq":{seq},"ts_ms":{},"points":[{{"id":"total_t","v":{},"q":"good"}}]}}"#,
            now - 60_000 + seq as i64 * 1_000,
            100.0 + seq as f64
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("ems/v1/demo/data/bf1-coke", good(1), ""),
        (
            "ems/v1/demo/data/bf1-coke",
            "{\"v\":1,\"site\":".into(),
            "json",
        ),
        (
            "ems/v1/demo/data/bf1-coke",
            good(2).replace("\"v\":1,", "\"v\":7,"),
            "version",
        ),
        (
            "ems/v1/demo/data/bf1-coke",
            good(2).replace("\"seq\":2", "\"seq\":\"two\""),
            "schema",
        ),
        (
            "ems/v1/demo/data/bf1-coke",
            good(2).replace("102", "NaN"),
            "json",
        ),
        (
            "ems/v1/demo/data/bf1-coke",
            good(2).replace("102", "1e999"),
            "json",
        ),
        ("ems/v1/demo/data/bf1-pci", good(2), "mismatch"),
        (
            "ems/v1/demo/data/bf1-coke",
            good(2).replace(
                &format!("{}", now - 58_000),
                &format!("{}", now + 86_400_000),
            ),
            "future",
        ),
        (
            "ems/v1/demo/data/bf1-coke",
            format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024)),
            "oversized",
        ),
        // Over what an MQTT client reads by default: still read, quarantined and acknowledged
        // (refused, it would come back first after every reconnect and stop the stream).
        (
            "ems/v1/demo/data/bf1-coke",
            format!("{{\"pad\":\"{}\"}}", "x".repeat(3 << 20)),
            "oversized",
        ),
        ("ems/v1/demo/data/bf1-coke", good(2), ""),
    ];
    for (i, (topic, payload, _)) in cases.iter().enumerate() {
        let f = d.join(format!("msg-{i}.json"));
        std::fs::write(&f, payload).unwrap();
        publish(broker.port, topic, &f);
    }
    let expected: Vec<&str> = cases
        .iter()
        .map(|c| c.2)
        .filter(|r| !r.is_empty())
        .collect();
    eventually("all messages handled", Duration::from_secs(20), || {
        get_json(&http, "/api/v1/quarantine")
            .as_array()
            .unwrap()
            .len()
            == expected.len()
            && get_json(&http, "/api/v1/devices")
                .as_array()
                .unwrap()
                .first()
                .is_some_and(|d| d["last_seq"] == 2)
    });
    let quarantine = get_json(&http, "/api/v1/quarantine");
    let mut reasons: Vec<String> = quarantine
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            q["reason"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    reasons.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(reasons, want);
    assert!(
        quarantine
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["payload"].as_str().unwrap().contains("\"v\":7")),
        "raw payload kept"
    );
    let metrics = get_text(&http, "/metrics");
    for (reason, n) in [
        ("json", 3),
        ("version", 1),
        ("schema", 1),
        ("mismatch", 1),
        ("future", 1),
        ("oversized", 2),
    ] {
        let line = format!("ems_gateway_messages_quarantined_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }
    let devices = get_json(&http, "/api/v1/devices");
    let coke = &devices.as_array().unwrap()[0];
    assert_eq!(
        (
            coke["id"].as_str(),
            coke["messages"].as_u64(),
            coke["missing"].as_u64()
        ),
        (Some("bf1-coke"), Some(2), Some(0)),
        "the good messages around the bad ones were stored: {coke}"
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}

#[test]
fn a_gap_counts_as_missing_until_filled_or_declared_lost_by_an_operator() {
    let dir = TempDir::new("lost");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);
    let now = chrono::Utc::now().timestamp_millis();
    let send = |seq: u64| {
        let f = d.join(format!("seq-{seq}.json"));
        std::fs::write(
            &f,
            format!(
                r#"{{"v":1,"site":"demo","edge":"e1","device":"bf1-coke","seq":{seq},"ts_ms":{},"points":[{{"id":"total_t","v":{},"q":"good"}}]}}"#,
                now - 60_000 + seq as i64 * 1_000,
                100.0 + seq as f64
            ),
        )
        .unwrap();
        publish(broker.port, "ems/v1/demo/data/bf1-coke", &f);
    };
    let coke = || get_json(&http, "/api/v1/devices")[0].clone();
    let metric = |name: &str| {
        get_text(&http, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_owned))
            .unwrap_or_else(|| panic!("no metric {name}"))
    };
    for seq in [1, 2, 6, 4] {
        send(seq);
    }
    eventually("four stored", Duration::from_secs(20), || {
        coke()["messages"] == 4
    });
    assert_eq!(coke()["gaps"], serde_json::json!([[3, 3], [5, 5]]));
    assert_eq!(metric("ems_gateway_sequence_missing"), "2");

    let path = "/api/v1/devices/bf1-coke/gaps/3/lost";
    let reason = serde_json::json!({"reason": "edge spool overflowed during the fibre cut"});
    let (status, body) = post_json(&http, path, None, Some(&reason));
    assert_eq!(status, 401, "{body}");
    let blank = serde_json::json!({"reason": "  "});
    let (status, body) = post_json(&http, path, Some(OPERATOR_TOKEN), Some(&blank));
    assert_eq!(status, 400, "a declaration needs a reason: {body}");
    let (status, body) = post_json(
        &http,
        "/api/v1/devices/bf1-coke/gaps/4/lost",
        Some(OPERATOR_TOKEN),
        Some(&reason),
    );
    assert_eq!(status, 404, "4 is stored, not a gap: {body}");
    let (status, body) = post_json(&http, path, Some(OPERATOR_TOKEN), Some(&reason));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["declared_by"], "shift_lead");
    let c = coke();
    assert_eq!((&c["missing"], &c["lost"]), (&1.into(), &1.into()), "{c}");
    assert_eq!(c["lost_ranges"][0]["reason"], reason["reason"]);
    assert_eq!(metric("ems_gateway_sequence_missing"), "1");
    assert_eq!(metric("ems_gateway_sequence_lost"), "1");

    // It turns up after all: stored, and no longer lost.
    send(3);
    eventually("the late number stored", Duration::from_secs(20), || {
        coke()["messages"] == 5
    });
    let c = coke();
    assert_eq!((&c["missing"], &c["lost"]), (&1.into(), &0.into()), "{c}");
    assert_eq!(metric("ems_gateway_sequence_lost"), "0");
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}

#[test]
fn a_backup_taken_while_running_holds_what_was_stored_and_exports_as_csv() {
    let dir = TempDir::new("backup");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let Pipeline {
        sim: _sim,
        mut gateway,
        http,
        mut edge,
    } = start_pipeline(d, broker.port);
    std::thread::sleep(Duration::from_secs(3));

    // While the edge publishes and the gateway commits.
    let mut backup = Proc::start(
        &bin("ems-gateway"),
        &["backup", "--config", "gateway.toml", "--to", "copy.db"],
        d,
    );
    assert!(
        backup.wait(Duration::from_secs(30)).success(),
        "{}",
        backup.stderr()
    );
    let said = backup.wait_line("Backup ", Duration::from_secs(1));
    let copied: u64 = said
        .split(": ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(copied > 100, "{said}");

    // The copy is a working database: export its samples with a config that points at it.
    let text = std::fs::read_to_string(d.join("gateway.toml")).unwrap();
    std::fs::write(
        d.join("copy.toml"),
        text.replace("path = \"gw.db\"", "path = \"copy.db\""),
    )
    .unwrap();
    let (from, to) = (
        (chrono::Utc::now() - chrono::Duration::hours(5)).to_rfc3339(),
        chrono::Utc::now().to_rfc3339(),
    );
    let mut export = Proc::start(
        &bin("ems-gateway"),
        &[
            "export",
            "--config",
            "copy.toml",
            "--from",
            &from,
            "--to",
            &to,
            "--device",
            "bf1-coke",
        ],
        d,
    );
    assert!(
        export.wait(Duration::from_secs(30)).success(),
        "{}",
        export.stderr()
    );
    let mut lines = Vec::new();
    while let Some(l) = export.next_line(Duration::from_millis(200)) {
        lines.push(l);
    }
    assert_eq!(lines[0], "device,seq,point,time,value,quality");
    let totals: Vec<&String> = lines.iter().filter(|l| l.contains(",total_t,")).collect();
    assert!(
        totals.len() > 3
            && totals
                .iter()
                .all(|l| l.starts_with("bf1-coke,") && l.ends_with(",good")),
        "{lines:?}"
    );

    // The live gateway serves the same columns over HTTP, and has at least as much.
    assert!(edge.terminate(Duration::from_secs(20)).success());
    let q = |t: &str| t.replace('+', "%2B");
    let live = get_text(
        &http,
        &format!(
            "/api/v1/samples.csv?device=bf1-coke&from={}&to={}",
            q(&from),
            q(&to)
        ),
    );
    assert!(live.starts_with("device,seq,point,time,value,quality\n"));
    assert!(live.lines().filter(|l| l.contains(",total_t,")).count() >= totals.len());
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}
