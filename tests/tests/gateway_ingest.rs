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

#[test]
fn a_broker_killed_while_the_gateway_is_away_loses_nothing_with_the_shipped_settings() {
    // Mosquitto writes what it queued for the gateway to disk only at each autosave (by
    // default every 30 minutes); the shipped configuration saves every second. On protocol v1
    // the edges forgot a message once the broker acknowledged it, and a killed broker lost
    // 13 to 18 polls a device here; on v1.1 the edge keeps each until the gateway confirms it
    // and sends again what the broker lost.
    let dir = TempDir::new("broker-kill");
    let d = dir.path();
    let mut broker = Mosquitto::start_shipped(d);
    let Pipeline {
        sim: _sim,
        mut gateway,
        http: _,
        mut edge,
    } = start_pipeline(d, broker.port);
    eventually(
        "the edge hears the gateway confirm its commits",
        Duration::from_secs(10),
        || {
            d.join("ems-edge-data/spool/gateway-confirms-commits")
                .exists()
        },
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
    let gateway_gone = edge_sequence_numbers(d);
    // Five seconds of polls (every 100 ms) queue at the broker for the gateway's session.
    std::thread::sleep(Duration::from_secs(5));
    let at_kill = edge_sequence_numbers(d);
    let queued = at_kill
        .iter()
        .map(|(dev, n)| n - gateway_gone.get(dev).copied().unwrap_or(0))
        .min()
        .unwrap();
    assert!(
        queued >= 30,
        "each device polled through the outage: {queued}"
    );
    broker.kill();
    broker.restart();
    std::thread::sleep(Duration::from_secs(2));
    let (g, http) = start_gateway(d);
    gateway = g;
    // Live polls after the restart, so that the ledger sees past what was lost.
    std::thread::sleep(Duration::from_secs(2));
    stop_edge_all_delivered(&mut edge, Duration::from_secs(30));
    let numbered = edge_sequence_numbers(d);
    eventually("the last polls stored", Duration::from_secs(20), || {
        get_json(&http, "/api/v1/devices")
            .as_array()
            .unwrap()
            .iter()
            .all(|dev| {
                numbered.get(dev["id"].as_str().unwrap()) == dev["last_seq"].as_u64().as_ref()
            })
    });
    let devices = get_json(&http, "/api/v1/devices");
    let worst = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|dev| numbered[dev["id"].as_str().unwrap()] as i64 - dev["messages"].as_i64().unwrap())
        .max()
        .unwrap();
    eprintln!("polls lost by the killed broker, worst device: {worst} of at least {queued} queued");
    assert_eq!(worst, 0, "no poll lost; gaps {}", devices[0]["gaps"]);
    assert_eq!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["missing"].as_u64().unwrap())
            .sum::<u64>(),
        0
    );
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

/// One message published: topic and payload, with the reason code it must be quarantined for
/// ("" for a good message, stored).
struct Case {
    topic: String,
    payload: String,
    reason: &'static str,
}

fn case(topic: &str, payload: impl Into<String>, reason: &'static str) -> Case {
    Case {
        topic: topic.into(),
        payload: payload.into(),
        reason,
    }
}

#[test]
fn every_hostile_or_broken_message_is_kept_aside_and_ingest_goes_on() {
    let dir = TempDir::new("quarantine");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);
    let now = chrono::Utc::now().timestamp_millis();
    let t0 = now - 600_000;
    // Each field written out, so that a case changes exactly the field it is about.
    let msg = |site: &str, edge: &str, device: &str, seq: &str, ts: &str, v: &str| {
        format!(
            r#"{{"v":1,"site":"{site}","edge":"{edge}","device":"{device}","seq":{seq},"ts_ms":{ts},"points":[{{"id":"total_t","v":{v},"q":"good"}}]}}"#
        )
    };
    let ts = |seq: u64| (t0 + seq as i64 * 1_000).to_string();
    let coke_with = |seq: &str, ts: &str, v: &str| msg("demo", "edge-1", "bf1-coke", seq, ts, v);
    let coke = |seq: u64| coke_with(&seq.to_string(), &ts(seq), &(100 + seq).to_string());
    let hot = |seq: u64, dt: i64, v: f64| {
        msg(
            "demo",
            "edge-1",
            "bf1-hot-metal",
            &seq.to_string(),
            &(t0 + dt).to_string(),
            &v.to_string(),
        )
    };
    const COKE: &str = "ems/v1/demo/data/bf1-coke";
    const HOT: &str = "ems/v1/demo/data/bf1-hot-metal";
    let long = "x".repeat(60_000);
    let cases = vec![
        case(COKE, coke(1), ""),
        // Malformed, as before.
        case(COKE, "{\"v\":1,\"site\":", "json"),
        case(COKE, coke(2).replace("\"v\":1,", "\"v\":7,"), "version"),
        case(COKE, coke_with("\"two\"", &ts(2), "102"), "schema"),
        case(COKE, coke_with("2", &ts(2), "NaN"), "json"),
        case(COKE, coke_with("2", &ts(2), "1e999"), "json"),
        case("ems/v1/demo/data/bf1-pci", coke(2), "mismatch"),
        case(
            COKE,
            coke_with("2", &(now + 86_400_000).to_string(), "102"),
            "future",
        ),
        case(
            COKE,
            format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024)),
            "oversized",
        ),
        // Over what an MQTT client reads by default: still read, quarantined and acknowledged
        // (refused, it would come back first after every reconnect and stop the stream).
        case(
            COKE,
            format!("{{\"pad\":\"{}\"}}", "x".repeat(3 << 20)),
            "oversized",
        ),
        case(COKE, coke(2), ""),
        // 1: a late reading slightly below the one before it is a spike, not a full wrap.
        case(HOT, hot(1, 0, 2000.0), ""),
        case(HOT, hot(2, 60_000, 2000.5), ""),
        case(HOT, hot(4, 120_000, 2001.0), ""),
        case(HOT, hot(3, 90_000, 2000.4), ""),
        // 2, 3: times no clock gives: -10^15 ms, and 1970 from a board before NTP.
        case(
            COKE,
            coke_with("3", "-1000000000000000", "103"),
            "too_early",
        ),
        case(COKE, coke_with("3", "0", "0"), "too_early"),
        // 5: sequence numbers at 2^63 and a jump to 2^63 - 1.
        case(
            COKE,
            coke_with("9223372036854775808", &ts(3), "103"),
            "seq_range",
        ),
        case(
            COKE,
            coke_with("9223372036854775807", &ts(3), "103"),
            "seq_jump",
        ),
        // 6: the same device and number with other content.
        case(COKE, coke_with("2", &ts(2), "777"), "conflict"),
        case(COKE, coke(2), ""),
        // 7: what is never the plant's.
        case(
            "ems/v1/other-plant/data/bf1-coke",
            msg("other-plant", "edge-1", "bf1-coke", "3", &ts(3), "103"),
            "site",
        ),
        case(
            "ems/v1/../data/bf1-coke",
            msg("..", "edge-1", "bf1-coke", "3", &ts(3), "103"),
            "site",
        ),
        case(COKE, r#"[1,"demo","edge-1","bf1-coke",3,0,[]]"#, "json"),
        case(
            &format!("ems/v1/demo/data/{long}"),
            msg("demo", "edge-1", &long, "3", &ts(3), "103"),
            "unknown_device",
        ),
        case(
            "ems/v1/demo/data/intruder",
            msg("demo", "edge-1", "intruder", "3", &ts(3), "103"),
            "unknown_device",
        ),
        case(
            COKE,
            msg("demo", "edge-x", "bf1-coke", "3", &ts(3), "103"),
            "unknown_edge",
        ),
        case(
            "ems/v1/demo/status/edge-x",
            r#"{"v":1,"site":"demo","edge":"edge-x","online":true,"devices":["bf1-coke"]}"#,
            "unknown_edge",
        ),
        case(COKE, coke(3), ""),
    ];
    for (i, c) in cases.iter().enumerate() {
        let f = d.join(format!("msg-{i}.json"));
        std::fs::write(&f, &c.payload).unwrap();
        publish(broker.port, &c.topic, &f);
    }
    let expected: Vec<&str> = cases
        .iter()
        .map(|c| c.reason)
        .filter(|r| !r.is_empty())
        .collect();
    let devices = || get_json(&http, "/api/v1/devices");
    let last_seq = |id: &str| {
        devices()
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .map(|d| d["last_seq"].clone())
    };
    eventually("all messages handled", Duration::from_secs(30), || {
        get_json(&http, "/api/v1/quarantine")
            .as_array()
            .unwrap()
            .len()
            == expected.len()
            && last_seq("bf1-coke") == Some(3.into())
            && last_seq("bf1-hot-metal") == Some(4.into())
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
    let entries = quarantine.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|q| q["payload"].as_str().unwrap().contains("\"v\":7")),
        "raw payload kept"
    );
    let conflict = entries
        .iter()
        .find(|q| q["reason"].as_str().unwrap().starts_with("conflict"))
        .unwrap();
    assert_eq!(
        conflict["reason"]
            .as_str()
            .unwrap()
            .matches("sha256 ")
            .count(),
        1,
        "{conflict}"
    );
    assert!(
        conflict["reason"]
            .as_str()
            .unwrap()
            .contains(", this copy "),
        "{conflict}"
    );
    let big = entries
        .iter()
        .find(|q| q["payload_bytes"].as_i64() > Some(3 << 20))
        .unwrap();
    assert!(
        big["truncated"] == true && big["payload"].as_str().unwrap().len() <= 2_048,
        "a listing shows the start"
    );
    let stranger = entries
        .iter()
        .find(|q| {
            q["reason"].as_str().unwrap().starts_with("unknown_device")
                && q["topic"].as_str().unwrap().len() > 1_000
        })
        .unwrap();
    assert!(
        stranger["reason"].as_str().unwrap().len() < 300,
        "a reason shows a long name cut: {}",
        stranger["reason"]
    );

    let metrics = get_text(&http, "/metrics");
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &expected {
        *counts.entry(r).or_default() += 1;
    }
    for (reason, n) in counts {
        let line = format!("ems_gateway_messages_quarantined_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }
    assert!(
        metrics.contains("ems_gateway_messages_conflicting_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ems_gateway_messages_duplicate_total 1"),
        "{metrics}"
    );
    // Only bf1-coke's and bf1-hot-metal's numbers: nothing of the strangers, no 2^63 gap.
    assert!(
        metrics.contains("ems_gateway_sequence_missing 0"),
        "{metrics}"
    );
    let devices = devices();
    let ids: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec!["bf1-coke", "bf1-hot-metal"],
        "no ledger rows for what was refused"
    );
    let coke_row = &devices[0];
    assert_eq!(
        (
            &coke_row["messages"],
            &coke_row["missing"],
            &coke_row["duplicates"],
            &coke_row["conflicts"]
        ),
        (&3.into(), &0.into(), &1.into(), &1.into()),
        "the good messages around the bad ones were stored: {coke_row}"
    );
    assert!(get_json(&http, "/api/v1/edges")
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["id"] != "edge-x"));

    // The late reading below the one before it: 1.0 t, as measured, and a spike on record.
    let from = (chrono::DateTime::from_timestamp_millis(t0 - 3_600_000).unwrap()).to_rfc3339();
    let to = (chrono::DateTime::from_timestamp_millis(now + 3_600_000).unwrap()).to_rfc3339();
    let q = |t: &str| t.replace('+', "%2B");
    let slots = get_json(
        &http,
        &format!(
            "/api/v1/units/bf1/indicators?period=15min&from={}&to={}",
            q(&from),
            q(&to)
        ),
    );
    let output: f64 = slots
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["product_t"].as_f64().unwrap())
        .sum();
    assert!((output - 1.0).abs() < 1e-9, "hot metal {output} t");
    assert!(slots
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["estimated_share"].as_f64().unwrap() < 1e-12));
    let anomalies = get_json(&http, "/api/v1/anomalies");
    assert!(
        anomalies
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["device"] == "bf1-hot-metal" && a["kind"] == "spike"),
        "{anomalies}"
    );
    let integrity = get_json(&http, "/api/v1/integrity");
    assert!(
        integrity["mismatches"].as_array().unwrap().is_empty(),
        "{integrity}"
    );

    // 4, 8: the API refuses before working, 400 (or 413/414), one error shape for all.
    let refused = [
        "/api/v1/units/bf1/indicators?period=15min&from=1000-01-01T00:00:00Z&to=2000-01-01T00:00:00Z",
        "/api/v1/units/bf1/indicators?period=15min&from=0000-01-01T00:00:00Z&to=9999-12-31T00:00:00Z",
        "/api/v1/units/bf1/indicators?period=fortnight",
        "/api/v1/reports/savings?unit=kiln1&baseline=0001-01..9999-12&reporting=2025-01..2025-06",
        "/api/v1/reports/annual?year=2147483647&enterprise=works",
        "/api/v1/reports/annual?year=0&enterprise=works",
        "/api/v1/reports/annual?year=-5000&enterprise=works",
        "/api/v1/reports/annual?year=99999&enterprise=works",
        "/api/v1/reports/annual?year=99999999999&enterprise=works",
        "/api/v1/reports/compliance?month=262143-12&enterprise=works",
        "/api/v1/samples.csv?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/api/v1/alarms/not-a-number/ack",
        "/api/v1/no-such-route",
    ];
    for path in refused {
        let (status, body) = get_status(&http, path, None);
        assert!(matches!(status, 400 | 404 | 405), "{path}: {status} {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert!(v["error"].is_string(), "{path}: {body}");
    }
    let (status, body) = get_status(
        &http,
        &format!("/api/v1/units?pad={}", "p".repeat(10_000)),
        None,
    );
    assert_eq!(status, 414, "{body}");
    let reason = serde_json::json!({ "reason": "r".repeat(100 * 1024) });
    let (status, body) = post_json(
        &http,
        "/api/v1/devices/bf1-coke/gaps/1/lost",
        Some(OPERATOR_TOKEN),
        Some(&reason),
    );
    assert_eq!(status, 413, "{body}");
    // The scheme of a bearer token is case-insensitive (RFC 7235).
    let (status, body) = get_status(
        &http,
        "/api/v1/alarms/999999/ack",
        Some(&format!("bearer {OPERATOR_TOKEN}")),
    );
    assert_eq!(status, 405, "a GET on an operator's route: {body}");
    let ack = ureq::post(&format!("http://{http}/api/v1/alarms/999999/ack"))
        .config()
        .http_status_as_error(false)
        .build()
        .header("Authorization", &format!("BEARER {OPERATOR_TOKEN}"))
        .send_empty()
        .unwrap();
    assert_eq!(
        ack.status().as_u16(),
        404,
        "the operator is known whatever the scheme's case"
    );
    let listed = get_json(&http, "/api/v1/quarantine?limit=10000");
    assert!(listed.as_array().unwrap().len() <= 1_000);
    assert!(
        listed.to_string().len() < 200_000,
        "a listing stays small: {} bytes",
        listed.to_string().len()
    );
    let totals = get_json(&http, "/api/v1/quarantine/totals");
    assert!(
        totals
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["reason"] == "oversized" && t["count"] == 2),
        "{totals}"
    );

    // Ingest goes on: a good message after all of it is stored, and the gateway is healthy in
    // little memory.
    let f = d.join("last.json");
    std::fs::write(&f, coke(4)).unwrap();
    publish(broker.port, COKE, &f);
    eventually(
        "the message after them stored",
        Duration::from_secs(20),
        || last_seq("bf1-coke") == Some(4.into()),
    );
    assert_eq!(get_json(&http, "/healthz")["status"], "ok");
    let peak = peak_rss_mib(gateway.pid());
    eprintln!("gateway peak resident memory {peak:.0} MiB");
    // 29 MiB measured; a message walking a billion slots grew it by 170-320 MB a second.
    assert!(peak < 64.0, "the gateway's peak memory: {peak:.0} MiB");
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}

#[test]
fn a_writer_that_cannot_store_shows_in_healthz_and_metrics_and_recovers() {
    let dir = TempDir::new("stall");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    write_gateway_config(d, broker.port);
    let cfg = d.join("gateway.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let from = "# stall_after_s = 60";
    assert!(text.contains(from));
    std::fs::write(&cfg, text.replace(from, "stall_after_s = 2")).unwrap();
    let (mut gateway, http) = start_gateway(d);
    let now = chrono::Utc::now().timestamp_millis();
    let send = |seq: u64| {
        let f = d.join(format!("stall-{seq}.json"));
        std::fs::write(
            &f,
            format!(
                r#"{{"v":1,"site":"demo","edge":"edge-1","device":"bf1-coke","seq":{seq},"ts_ms":{},"points":[{{"id":"total_t","v":{},"q":"good"}}]}}"#,
                now - 60_000 + seq as i64 * 1_000,
                100 + seq
            ),
        )
        .unwrap();
        publish(broker.port, "ems/v1/demo/data/bf1-coke", &f);
    };
    let messages = || {
        get_json(&http, "/api/v1/devices")
            .as_array()
            .unwrap()
            .first()
            .map(|d| d["messages"].as_u64().unwrap())
    };
    send(1);
    eventually("the first stored", Duration::from_secs(20), || {
        messages() == Some(1)
    });
    assert_eq!(get_status(&http, "/healthz", None).0, 200);
    // Another process holds the database's write lock, as a disk that stopped answering would
    // hold the writer: the next batch cannot commit.
    let lock = rusqlite::Connection::open(d.join("gw.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    send(2);
    eventually("/healthz to say stalled", Duration::from_secs(20), || {
        let (status, body) = get_status(&http, "/healthz", None);
        status == 503 && body.contains("\"stalled\"")
    });
    let busy: f64 = get_text(&http, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("ems_gateway_writer_busy_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(busy >= 2.0, "{busy}");
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    eventually(
        "the second stored once the disk answers",
        Duration::from_secs(30),
        || messages() == Some(2),
    );
    assert_eq!(get_status(&http, "/healthz", None).0, 200);
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
                r#"{{"v":1,"site":"demo","edge":"edge-1","device":"bf1-coke","seq":{seq},"ts_ms":{},"points":[{{"id":"total_t","v":{},"q":"good"}}]}}"#,
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
