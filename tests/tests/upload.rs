//! Upload to the provincial platform to two reference receivers (`ems-gateway receive`), one
//! over plain HTTP, one over HTTPS with the test's own CA: the HTTPS endpoint is down for a while, the gateway is killed with records
//! still pending for it, and both receivers answer some records with a stale (duplicate)
//! acknowledgement. In the end every record has reached every endpoint exactly once, in order.

use std::time::Duration;

use ems_tests::*;

fn start_receiver(dir: &std::path::Path, listen: &str, out: &str, tls: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "receive",
        "--listen",
        listen,
        "--out",
        out,
        "--stale-ack-every",
        "3",
    ];
    args.extend(tls);
    let p = Proc::start(&bin("ems-gateway"), &args, dir);
    let addr = p.wait_line("RECEIVER ", Duration::from_secs(10));
    (p, addr)
}

fn record_ids(dir: &std::path::Path, out: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(out))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["record_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn endpoint(http: &str, id: &str) -> serde_json::Value {
    get_json(http, "/api/v1/uploads")
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("endpoint {id}"))
}

#[test]
fn every_record_reaches_every_endpoint_once_and_in_order() {
    let dir = TempDir::new("upload");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    write_gateway_config(d, broker.port);
    let (_a, a_addr) = start_receiver(d, "127.0.0.1:0", "a.jsonl", &[]);
    // The gateway signs what it uploads; endpoint b takes only records signed with its key.
    let keygen = std::process::Command::new(bin("ems-gateway"))
        .args(["keygen", "--out", "gateway.key"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let gateway_key = String::from_utf8(keygen.stdout).unwrap().trim().to_owned();
    make_ca(d);
    sign_certificate(d, "leaf", "subjectAltName=IP:127.0.0.1");
    // Endpoint b's address, with nobody listening yet: the platform is down.
    let b_port = free_port();
    let from = (chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339();
    let cfg = d.join("gateway.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[upload]\nfrom = \"{from}\"\nsettle_s = 1\n\
             [[upload.endpoints]]\nid = \"a\"\nurl = \"http://{a_addr}/\"\n\
             [[upload.endpoints]]\nid = \"b\"\nurl = \"https://127.0.0.1:{b_port}/\"\nca_file = \"ca.pem\"\ntimeout_s = 2\n\
             [evidence]\nreport_key_file = \"gateway.key\"\n"
        ),
    )
    .unwrap();
    let (mut gateway, http) = start_gateway(d);

    // Three hours of 15-minute records of each of the three enterprises (and the day's or
    // month's if one closed) reach a.
    eventually(
        "endpoint a confirms every record",
        Duration::from_secs(60),
        || {
            let a = endpoint(&http, "a");
            a["records"].as_i64() >= Some(36) && a["pending"] == 0
        },
    );
    let b = endpoint(&http, "b");
    assert_eq!(b["confirmed"], 0, "{b}");
    assert!(b["last_error"].is_string(), "b's failure is shown: {b}");

    // The gateway dies with b's records pending, and comes back; then so does b.
    gateway.kill();
    let (mut gateway, http) = start_gateway(d);
    let tls = [
        "--tls-cert",
        "leaf.pem",
        "--tls-key",
        "leaf.key",
        "--gateway-key",
        &gateway_key,
    ];
    let (_b, _) = start_receiver(d, &format!("127.0.0.1:{b_port}"), "b.jsonl", &tls);
    eventually(
        "both endpoints confirm every record",
        Duration::from_secs(90),
        || {
            let (a, b) = (endpoint(&http, "a"), endpoint(&http, "b"));
            a["pending"] == 0 && b["pending"] == 0
        },
    );
    let b = endpoint(&http, "b");
    assert!(b["last_error"].is_null(), "{b}");

    let (a_ids, b_ids) = (record_ids(d, "a.jsonl"), record_ids(d, "b.jsonl"));
    // A 15-minute period may end between the two reads: compare the common part.
    let n = a_ids.len().min(b_ids.len());
    assert!(n >= 12, "{a_ids:?}");
    assert!(a_ids.len().abs_diff(b_ids.len()) <= 1);
    assert_eq!(a_ids[..n], b_ids[..n], "same records in the same order");
    for ids in [&a_ids, &b_ids] {
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "a record stored twice: {ids:?}");
        // Each enterprise's real-time records in period order (their ids are its code, the
        // kind and the period start).
        for code in [
            "91000000MA00DEMO0X",
            "91000000MA00DEMO1X",
            "91000000MA00DEMO2X",
        ] {
            let prefix = format!("{code}/realtime/");
            let realtime: Vec<&String> = ids.iter().filter(|i| i.starts_with(&prefix)).collect();
            assert!(realtime.len() >= 12, "{code}: {realtime:?}");
            assert!(realtime.windows(2).all(|w| w[0] < w[1]), "{realtime:?}");
        }
    }
    // Every record is the documented format (the receiver checked it; so does this).
    let records: Vec<serde_json::Value> = std::fs::read_to_string(d.join("b.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = &records[0];
    assert_eq!(
        (first["format"].as_str(), first["version"].as_i64()),
        (Some("ems-upload"), Some(1))
    );
    // The demo group's three enterprises each upload their own records, under their own
    // credit codes, with their own units: together every unit once.
    let mut units = Vec::new();
    let mut codes = std::collections::BTreeSet::new();
    for r in records
        .iter()
        .filter(|r| r["kind"] == first["kind"] && r["period_start"] == first["period_start"])
    {
        codes.insert(r["enterprise_code"].as_str().unwrap().to_owned());
        for u in r["units"].as_array().unwrap() {
            units.push(u["unit"].as_str().unwrap().to_owned());
        }
        assert_eq!(r["comprehensive_drawn_from"], "boundary", "{r}");
    }
    assert_eq!(
        codes.into_iter().collect::<Vec<_>>(),
        [
            "91000000MA00DEMO0X",
            "91000000MA00DEMO1X",
            "91000000MA00DEMO2X"
        ]
    );
    // Each record is sealed with the gateway's key (b took only records whose signature
    // verifies with it); no meter has reported here, so their ledgers are empty.
    for r in &records {
        assert_eq!(r["evidence"]["gateway_key"], gateway_key.as_str());
        assert!(r["evidence"]["meters"].is_array(), "{}", r["evidence"]);
    }
    units.sort_unstable();
    // The works' oxygen and power plants among them (their energy, no product).
    assert_eq!(
        units,
        ["bf1", "bof1", "cpp1", "kiln1", "o2p1", "pot1", "rhf1"]
    );

    // The receiver refuses a record that is not the format, saying why.
    let resp = ureq::post(&format!("http://{a_addr}/"))
        .config()
        .http_status_as_error(false)
        .build()
        .header("Content-Type", "application/json")
        .send(r#"{"format":"ems-upload","version":1,"record_id":"x","kind":"weekly"}"#)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    // A receiver holding the gateway's key takes its records and refuses one whose figure was
    // changed after the gateway signed it.
    let mut forged = records.last().unwrap().clone();
    forged["comprehensive_tce"] = serde_json::json!(0.001);
    let (_c, c_addr) = start_receiver(
        d,
        "127.0.0.1:0",
        "c.jsonl",
        &["--gateway-key", &gateway_key],
    );
    let post = |record: &serde_json::Value| {
        let mut resp = ureq::post(&format!("http://{c_addr}/"))
            .config()
            .http_status_as_error(false)
            .build()
            .header("Content-Type", "application/json")
            .send(record.to_string())
            .unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    };
    assert_eq!(post(records.last().unwrap()).0, 200, "the genuine record");
    let (status, why) = post(&forged);
    assert_eq!(status, 422);
    assert!(
        why.contains("evidence") && why.contains("does not verify"),
        "{why}"
    );
    let stored: Vec<serde_json::Value> = std::fs::read_to_string(d.join("c.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(stored, [records.last().unwrap().clone()]);
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}
