//! Protocol v1.2 end to end, with the real binaries over a real Mosquitto: the board's key made
//! by `ems-edge keygen`, enrolled at the gateway; every reading signed and chained from the meter
//! to the record; forgeries published by another client on the network quarantined and alarmed
//! while the edge's stream goes on; the chain carried across a clean restart of the edge; and
//! `ems-gateway verify` passing on the record, then finding a reading edited in the database.

use std::process::Command;
use std::time::Duration;

use ems_core::evidence::{EdgeKey, CHAIN_START};
use ems_core::wire::Telemetry;
use ems_tests::*;

/// Publishes `payload` QoS 1 as a client of its own (not the edge).
fn publish(port: u16, topic: &str, payload: &str) {
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
            "-m",
            payload,
        ])
        .status()
        .expect("mosquitto_pub is installed (tests/run.sh installs it)");
    assert!(ok.success(), "publish to {topic}");
}

/// Publishes `t` as JSON, QoS 1, on its data topic, as a client of its own.
fn publish_forged(port: u16, t: &Telemetry) {
    let topic = format!("ems/v1/{}/data/{}", t.site, t.device);
    publish(port, &topic, &serde_json::to_string(t).unwrap());
}

/// The quarantine's reason codes, newest first.
fn quarantine_reasons(http: &str) -> Vec<String> {
    get_json(http, "/api/v1/quarantine")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .map(|r| r.split(':').next().unwrap_or_default().to_owned())
        .collect()
}

/// How many evidence alarms `device` has raised.
fn evidence_alarms(http: &str, device: &str) -> usize {
    let subject = format!("{device}/evidence");
    get_json(http, "/api/v1/alarms?limit=1000")
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "evidence" && a["subject"] == subject.as_str())
        .count()
}

/// `device`'s row of `/api/v1/devices`.
fn device_row(http: &str, device: &str) -> serde_json::Value {
    get_json(http, "/api/v1/devices")
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == device)
        .cloned()
        .unwrap_or_else(|| panic!("device {device}"))
}

/// `ems-gateway ARGS` in `dir`, which must succeed.
fn gateway_cmd(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new(bin("ems-gateway"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ems-gateway {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn append(path: &std::path::Path, text: &str) {
    let before = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, format!("{before}\n{text}\n")).unwrap();
}

/// `program keygen --out file` in `dir`: the public key it printed, the file checked to be its
/// owner's alone.
fn keygen(dir: &std::path::Path, program: &str, file: &str) -> String {
    let out = Command::new(bin(program))
        .args(["keygen", "--out", file])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(public.len(), 64, "{public}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.join(file))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{file} is its owner's alone");
    public
}

/// Changes the first non-zero number of the report outside its evidence; returns its path as
/// the verifier names it (`/units/0/days/3/kgce_per_t`).
fn change_a_figure(v: &mut serde_json::Value) -> Option<String> {
    fn walk(v: &mut serde_json::Value, path: String) -> Option<String> {
        match v {
            serde_json::Value::Number(n) if n.as_f64().is_some_and(|x| x != 0.0) => {
                *v = serde_json::json!(n.as_f64().unwrap() * 1.01 + 0.5);
                Some(path)
            }
            serde_json::Value::Object(m) => m
                .iter_mut()
                .filter(|(k, _)| *k != "evidence")
                .find_map(|(k, x)| walk(x, format!("{path}/{k}"))),
            serde_json::Value::Array(a) => a
                .iter_mut()
                .enumerate()
                .find_map(|(i, x)| walk(x, format!("{path}/{i}"))),
            _ => None,
        }
    }
    walk(v, String::new())
}

/// `ems-gateway verify` on `dir/gateway.toml` with `extra` arguments: (success, stdout, stderr).
fn verify(dir: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("ems-gateway"))
        .args(["verify", "--config", "gateway.toml"])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn signed_readings_hold_from_the_meter_to_the_audit() {
    let dir = TempDir::new("evidence");
    let d = dir.path();
    let broker = Mosquitto::start(d);

    // The installer makes the board's key and enrols its public half at the gateway; and the
    // gateway's own key, which its reports are signed with.
    let public = keygen(d, "ems-edge", "edge.key");
    let gateway_public = keygen(d, "ems-gateway", "gateway.key");

    let (_sim, sim_addr) = start_sim(d, &[]);
    write_gateway_config(d, broker.port);
    append(
        &d.join("gateway.toml"),
        "[evidence]\nreport_key_file = \"gateway.key\"",
    );
    let mut enrol = vec!["enrol", "--config", "gateway.toml", "--edge", "edge-1"];
    enrol.extend(["--key", &public, "--by", "installer"]);
    gateway_cmd(
        d,
        &[&enrol[..], &["--reason", "board commissioned"]].concat(),
    );
    // The same edge with another key is refused unless replacing.
    let other_key = EdgeKey::from_seed([44; 32]).public_hex();
    let refused = Command::new(bin("ems-gateway"))
        .args(&enrol[..5])
        .args(["--key", &other_key, "--by", "x", "--reason", "y"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--replace"));
    let (mut gateway, http) = start_gateway(d);
    write_edge_config(d, &sim_addr, broker.port, 100);
    append(&d.join("edge.toml"), "[evidence]\nkey_file = \"edge.key\"");
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);

    let chains_verified = |min: i64| {
        get_json(&http, "/api/v1/devices")
            .as_array()
            .is_some_and(|devices| {
                devices.len() == demo_meter_count()
                    && devices.iter().all(|d| {
                        let c = &d["chain"];
                        d["messages"].as_i64() > Some(min)
                            && c["verified"] == d["messages"]
                            && c["verified_through"] == d["last_seq"]
                    })
            })
    };
    eventually(
        "every meter's readings stored signed and verified",
        Duration::from_secs(30),
        || chains_verified(5),
    );

    // Another client on the network publishes in the edge's name: once with a key of its own,
    // once unsigned. Both are the right format for a real meter.
    let devices = get_json(&http, "/api/v1/devices");
    let target = &devices.as_array().unwrap()[0];
    let device = target["id"].as_str().unwrap().to_owned();
    let last_seq = target["last_seq"].as_u64().unwrap();
    let last_ms = chrono::DateTime::parse_from_rfc3339(target["last_sample"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let mut forged: Telemetry = serde_json::from_value(serde_json::json!({
        "v": 1, "site": "demo", "edge": "edge-1", "device": device, "seq": last_seq + 2,
        "ts_ms": last_ms + 1_000, "points": [{"id": "total", "v": 1.0e9, "q": "good"}]
    }))
    .unwrap();
    publish_forged(broker.port, &forged);
    EdgeKey::from_seed([42; 32]).sign(&mut forged, CHAIN_START);
    publish_forged(broker.port, &forged);
    eventually(
        "both forgeries quarantined",
        Duration::from_secs(10),
        || {
            let reasons = quarantine_reasons(&http);
            reasons.iter().any(|r| r == "unsigned") && reasons.iter().any(|r| r == "signature")
        },
    );
    eventually("both raised as alarms", Duration::from_secs(10), || {
        evidence_alarms(&http, &device) == 2
    });

    // The edge's own stream goes on, and its chain survives a clean restart.
    let before = get_json(&http, "/api/v1/devices");
    assert!(
        edge.terminate(Duration::from_secs(20)).success(),
        "{}",
        edge.stderr_tail()
    );
    assert!(d.join("ems-edge-data/chain.json").exists());
    // While the edge is stopped, a message signed with the board's own key (a key stolen, or
    // an edge's state gone wrong) that does not follow the edge's last message: it breaks the
    // chain, and the edge's own next message still takes its place.
    let last = edge_sequence_numbers(d)[&device];
    eventually(
        "the edge's last message stored",
        Duration::from_secs(10),
        || device_row(&http, &device)["last_seq"].as_u64() == Some(last),
    );
    let last_sample = device_row(&http, &device)["last_sample"]
        .as_str()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis()
        })
        .unwrap();
    let seed = ems_edge::evidence::read_key(&d.join("edge.key")).unwrap();
    let mut astray = forged.clone();
    (astray.seq, astray.ts_ms, astray.signed) = (last + 1, last_sample + 1, None);
    EdgeKey::from_seed(seed.0).sign(&mut astray, [7; 32]);
    publish_forged(broker.port, &astray);
    eventually(
        "the chain breaker quarantined and alarmed",
        Duration::from_secs(10),
        || {
            quarantine_reasons(&http).iter().any(|r| r == "chain")
                && evidence_alarms(&http, &device) == 3
        },
    );
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    let passed = |min: i64| {
        let after = get_json(&http, "/api/v1/devices");
        after.as_array().unwrap().iter().all(|a| {
            let b = before
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["id"] == a["id"])
                .unwrap();
            a["last_seq"].as_i64().unwrap() > b["last_seq"].as_i64().unwrap() + min
        })
    };
    eventually(
        "the stream goes on after the restart",
        Duration::from_secs(30),
        || passed(5),
    );
    stop_edge_all_delivered(&mut edge, Duration::from_secs(30));
    let seq = edge_sequence_numbers(d);
    assert_stored_exactly_once(&http, &seq);
    for dev in get_json(&http, "/api/v1/devices").as_array().unwrap() {
        let c = &dev["chain"];
        assert_eq!(c["verified_through"], dev["last_seq"], "{dev}");
        assert_eq!(c["verified"], dev["messages"], "{dev}");
        assert_eq!(c["restarts"], 0, "a clean restart keeps the chain: {dev}");
        let refused = if dev["id"] == device.as_str() { 3 } else { 0 };
        assert_eq!(c["refused"], refused, "{dev}");
    }
    let integrity = get_json(&http, "/api/v1/integrity");
    let evidence = &integrity["evidence"];
    let stored: u64 = seq.values().sum();
    assert_eq!(evidence["checked"].as_u64(), Some(stored), "{integrity}");
    assert_eq!(evidence["signatures_verified"].as_u64(), Some(stored));
    assert_eq!(
        evidence["findings"].as_array().map(Vec::len),
        Some(0),
        "{integrity}"
    );
    // The gateway logged what its figures are drawn with when it started.
    let audit = get_json(&http, "/api/v1/audit");
    let mut files: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "file_changed" && e["who"] == "gateway")
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    files.sort_unstable();
    assert_eq!(
        files,
        ["coefficients", "configuration", "limits"],
        "{audit}"
    );
    // ... and the installer's enrolment of the board's key, with who and why.
    let enrolled: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "enrol_edge")
        .collect();
    assert_eq!(enrolled.len(), 1, "{audit}");
    assert_eq!(
        (&enrolled[0]["who"], &enrolled[0]["subject"]),
        (
            &serde_json::json!("installer"),
            &serde_json::json!("edge edge-1")
        )
    );
    assert_eq!(
        enrolled[0]["detail"],
        format!("key {public}: board commissioned").as_str()
    );
    assert_eq!(
        integrity["audit"]["findings"].as_array().map(Vec::len),
        Some(0)
    );
    // The energy manager changes the configuration and declares it, with who and why, before
    // the gateway is restarted to take it.
    let first_sha = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "file_changed" && e["subject"] == "configuration")
        .and_then(|e| e["detail"].as_str()?.get(..64))
        .expect("the configuration's first entry")
        .to_owned();
    let mut toml = std::fs::read_to_string(d.join("gateway.toml")).unwrap();
    toml.push_str("# limits reviewed with the provincial energy-saving centre\n");
    std::fs::write(d.join("gateway.toml"), &toml).unwrap();
    let reason = "limits reviewed";
    gateway_cmd(
        d,
        &[
            "declare-change",
            "--config",
            "gateway.toml",
            "--by",
            "energy_manager",
            "--reason",
            reason,
        ],
    );
    let newest = &get_json(&http, "/api/v1/audit?limit=1")[0];
    assert_eq!(
        (&newest["who"], &newest["action"], &newest["subject"]),
        (
            &serde_json::json!("energy_manager"),
            &serde_json::json!("file_changed"),
            &serde_json::json!("configuration")
        ),
        "{newest}"
    );
    let detail = newest["detail"].as_str().unwrap();
    let (new_sha, rest) = detail.split_at(64);
    assert!(
        new_sha != first_sha && new_sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "{detail}"
    );
    assert_eq!(rest, format!(" (before: {first_sha}): {reason}"));
    assert!(gateway.terminate(Duration::from_secs(20)).success());

    // The auditor's command passes on the record as it is ...
    let (ok, stdout, stderr) = verify(d, &[]);
    assert!(ok, "{stdout}\n{stderr}");

    // ... and on a report the gateway signed, against the gateway's public key; a figure
    // changed in the report fails it.
    let month = chrono::DateTime::parse_from_rfc3339(target["last_sample"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .format("%Y-%m")
        .to_string();
    let report_args = |format: &str, out: &str| {
        let mut args = vec!["report", "compliance", "--config", "gateway.toml"];
        args.extend(["--month", &month, "--enterprise", "works"]);
        args.extend(["--format", format, "--out", out]);
        gateway_cmd(d, &args);
    };
    report_args("json", "report.json");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
    let evidence = &report["evidence"];
    assert_eq!(evidence["gateway_key"], gateway_public.as_str());
    assert!(evidence["signature"]
        .as_str()
        .is_some_and(|s| s.len() == 128));
    assert!(
        evidence["meters"].as_array().is_some_and(|m| !m.is_empty()
            && m.iter()
                .all(|m| m["chain"]["verified_through"] == m["last_seq"])),
        "{evidence}"
    );
    // Each meter names the messages of the month the figures are drawn from.
    let target_meter = evidence["meters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["device"] == device.as_str())
        .expect("the target meter in the evidence");
    let month_held = &target_meter["periods"][0];
    assert!(
        month_held["messages"].as_i64() > Some(0)
            && month_held["first_seq"].as_i64() <= month_held["last_seq"].as_i64()
            && month_held["last_seq"] == target_meter["last_seq"],
        "{target_meter}"
    );
    let key_arg = [
        "--report",
        "report.json",
        "--gateway-key",
        gateway_public.as_str(),
    ];
    let (ok, stdout, stderr) = verify(d, &key_arg);
    assert!(ok, "{stdout}\n{stderr}");
    let mut altered = report.clone();
    let path = change_a_figure(&mut altered).expect("a figure in the report");
    std::fs::write(
        d.join("altered.json"),
        serde_json::to_vec_pretty(&altered).unwrap(),
    )
    .unwrap();
    let (ok, stdout, _) = verify(d, &["--report", "altered.json"]);
    assert!(!ok, "a changed figure must fail the report:\n{stdout}");
    assert!(
        stdout.contains("the gateway's signature does not verify"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{path}: the report says")),
        "{path}\n{stdout}"
    );
    // The same report as PDF: an evidence page to read, and the sealed JSON attached, which
    // verifies as the JSON report does.
    report_args("pdf", "report.pdf");
    let poppler = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .current_dir(d)
            .output()
            .unwrap_or_else(|e| panic!("{program} (tests/run.sh installs poppler-utils): {e}"));
        assert!(out.status.success(), "{program}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = poppler("pdftotext", &["report.pdf", "-"]);
    for expected in [
        "数据证据与签名",
        "签名验证至",
        &gateway_public[..32],
        &device,
    ] {
        assert!(
            text.contains(expected),
            "{expected} not in the PDF:\n{text}"
        );
    }
    std::fs::create_dir(d.join("attached")).unwrap();
    let listed = poppler("pdfdetach", &["-list", "report.pdf"]);
    assert!(listed.contains("report.json"), "{listed}");
    poppler("pdfdetach", &["-saveall", "-o", "attached", "report.pdf"]);
    let attached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("attached/report.json")).unwrap()).unwrap();
    assert_eq!(attached["evidence"]["gateway_key"], gateway_public.as_str());
    let (ok, stdout, stderr) = verify(
        d,
        &[
            "--report",
            "attached/report.json",
            "--gateway-key",
            &gateway_public,
        ],
    );
    assert!(ok, "{stdout}\n{stderr}");
    // Signed by another key than the one the verifier holds.
    let other = EdgeKey::from_seed([43; 32]).public_hex();
    let (ok, stdout, _) = verify(d, &["--report", "report.json", "--gateway-key", &other]);
    assert!(!ok && stdout.contains("not the gateway's"), "{stdout}");
    // A copy of the record handed to a verifier (`backup`) is checked read-only, report and
    // all, and left as it was.
    gateway_cmd(
        d,
        &["backup", "--config", "gateway.toml", "--to", "copy.db"],
    );
    let copy = std::fs::read(d.join("copy.db")).unwrap();
    // Named as an auditor would type it: `verify REPORT --db PATH`.
    let with_copy = |report: &str| {
        let mut args = vec![report, "--db", "copy.db"];
        args.extend(["--gateway-key", gateway_public.as_str()]);
        verify(d, &args)
    };
    let (ok, stdout, stderr) = with_copy("report.json");
    assert!(ok, "{stdout}\n{stderr}");
    let (ok, stdout, _) = with_copy("altered.json");
    assert!(
        !ok && stdout.contains(&format!("{path}: the report says")),
        "{stdout}"
    );
    assert_eq!(std::fs::read(d.join("copy.db")).unwrap(), copy);
    // ... and finds one reading edited in the database file.
    let conn = rusqlite::Connection::open(d.join("gw.db")).unwrap();
    let blob: Vec<u8> = conn
        .query_row(
            "SELECT points FROM messages WHERE device = ?1 AND seq = 3",
            [&device],
            |r| r.get(0),
        )
        .unwrap();
    // The first point with a value (packed entries of 14 bytes: series, quality kind with bit 7
    // set when there is no value, exception code, value bits).
    let at = (0..blob.len() / 14)
        .map(|i| i * 14)
        .find(|&i| blob[i + 4] == 0)
        .expect("a good reading in message 3");
    let mut edited = blob.clone();
    let value = f64::from_le_bytes(edited[at + 6..at + 14].try_into().unwrap());
    edited[at + 6..at + 14].copy_from_slice(&(value + 0.001).to_le_bytes());
    conn.execute(
        "UPDATE messages SET points = ?1 WHERE device = ?2 AND seq = 3",
        rusqlite::params![edited, device],
    )
    .unwrap();
    drop(conn);
    let (ok, stdout, stderr) = verify(d, &[]);
    assert!(!ok, "an edited reading must fail the audit:\n{stdout}");
    assert!(
        stdout.contains(&format!(
            "{device} #3: the stored readings are not the ones signed"
        )),
        "{stdout}"
    );
    assert!(stderr.contains("the record does not hold"), "{stderr}");
    // The copy taken before the edit still holds; the same edit in the copy is found there.
    let (ok, stdout, stderr) = with_copy("report.json");
    assert!(ok, "{stdout}\n{stderr}");
    std::fs::copy(d.join("gw.db"), d.join("copy.db")).unwrap();
    let (ok, stdout, _) = with_copy("report.json");
    assert!(
        !ok && stdout.contains("the stored readings are not the ones signed"),
        "{stdout}"
    );
    // A message of the report's month deleted from the copy: the month's messages no longer
    // are the ones the report was drawn from.
    let conn = rusqlite::Connection::open(d.join("copy.db")).unwrap();
    let deleted = conn
        .execute(
            "DELETE FROM messages WHERE device = ?1 AND seq = ?2",
            rusqlite::params![device, month_held["first_seq"].as_i64().unwrap() + 1],
        )
        .unwrap();
    assert_eq!(deleted, 1);
    drop(conn);
    let (ok, stdout, _) = with_copy("report.json");
    assert!(
        !ok && stdout.contains("/periods/0/messages: the report says"),
        "{stdout}"
    );
}
