//! A simulated week of the demo plant with faults, through the real binaries and a real
//! Mosquitto: counter rollovers, a meter replaced, a meter offline for an hour, and the broker
//! stopped for about three simulated hours. Every unit's daily kgce/t, kWh/t and m3/t must match
//! the simulator's truth within 0.5 % on days with full data; the days that lost data must say
//! so (estimated or not reportable). The faults must also raise the right alarms, on the API and
//! on the MQTT alarm topic, and acknowledging one needs an operator.

use std::collections::BTreeMap;
use std::time::Duration;

use ems_tests::*;
use serde_json::Value;

/// Simulated start: an hour before the first day compared, so the edge is polling by then.
const START: &str = "2026-01-04T23:00:00+08:00";
const DAYS: [&str; 7] = [
    "2026-01-05",
    "2026-01-06",
    "2026-01-07",
    "2026-01-08",
    "2026-01-09",
    "2026-01-10",
    "2026-01-11",
];
/// Hours after START at which day `i` (0-based) begins.
fn day_h(i: usize) -> f64 {
    1.0 + 24.0 * i as f64
}

/// Waits until the truth holds `hours` whole hours of every unit of the demo plant.
fn wait_for_truth(path: &std::path::Path, hours: f64, timeout: Duration) {
    let needed = (hours as usize) * demo_truth_units();
    eventually(&format!("{hours} simulated hours"), timeout, || {
        std::fs::read_to_string(path)
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains("\"record\":\"interval\""))
                    .count()
                    >= needed
            })
            .unwrap_or(false)
    });
}

#[derive(Default, Debug)]
struct Day {
    kgce: f64,
    kwh: f64,
    product_t: f64,
    water_m3: f64,
}

/// An enterprise's boundary over a local day, from the truth: comprehensive energy on the
/// equivalent basis, net grid import, the units' electricity, blast-furnace gas made and flared.
#[derive(Default, Debug)]
struct BoundaryDay {
    kgce: f64,
    grid_kwh: f64,
    /// Electricity the units drew and made: with the grid, the balance's unmetered remainder
    /// (line losses and the auxiliaries no meter sees).
    power_used_kwh: f64,
    power_made_kwh: f64,
    bfg_made: f64,
    bfg_flared: f64,
    /// The enterprise's fresh-water intake (its site's).
    water_in_m3: f64,
}

#[test]
fn a_week_with_faults_matches_the_truth_day_by_day_and_raises_the_alarms() {
    let dir = TempDir::new("week");
    let d = dir.path();
    // Persistent: the gateway's session, and what it holds, survive the broker's restart.
    let mut broker = Mosquitto::start_persistent(d);
    let truth_path = d.join("truth.jsonl");

    let faults = [
        // Day 2, 10:00: the blast furnace's coke scale is replaced; the new one starts at zero.
        format!(
            r#"{{ device = "bf1-coke", kind = "replace", at_h = {} }}"#,
            day_h(1) + 10.0
        ),
        // Day 3, 06:00: the kiln's coal meter is offline for an hour.
        format!(
            r#"{{ device = "kiln1-coal", kind = "offline", delay_ms = 20, at_h = {}, for_h = 1.0 }}"#,
            day_h(2) + 6.0
        ),
        // Day 4, 12:00: the potline's AC meter wraps (the blast furnace's gas export meter
        // wraps by itself every few hours).
        format!(
            r#"{{ device = "pot1-ac-power", kind = "rollover", at_h = {} }}"#,
            day_h(3) + 12.0
        ),
    ];
    let mut args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--speed".into(),
        "1440".into(),
        "--start".into(),
        START.into(),
        "--truth".into(),
        truth_path.to_str().unwrap().into(),
    ];
    for f in &faults {
        args.push("--fault".into());
        args.push(f.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sim = Proc::start(&bin("ems-sim"), &args, d);
    let sim_addr = sim.wait_line("LISTEN ", Duration::from_secs(10));

    write_gateway_config(d, broker.port);
    // At 1 440x a poll every 100 ms is 144 simulated seconds; allow a stall of the edge under
    // CI load up to 30 simulated minutes (1.25 real seconds) before an interval counts as a gap.
    let cfg = d.join("gateway.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("max_sample_gap_s = 900"));
    std::fs::write(
        &cfg,
        text.replace("max_sample_gap_s = 900", "max_sample_gap_s = 1800"),
    )
    .unwrap();
    let (mut gateway, http) = start_gateway(d);
    write_edge_config(d, &sim_addr, broker.port, 100);
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);

    // Day 5, 08:00: the broker goes away for four real seconds (about 1.6 simulated hours).
    // The edge keeps polling and delivers the backlog when the broker is back.
    wait_for_truth(&truth_path, day_h(4) + 8.0, Duration::from_secs(600));
    broker.stop();
    std::thread::sleep(Duration::from_secs(4));
    broker.restart();

    // The week and one hour more.
    wait_for_truth(&truth_path, day_h(7) + 1.0, Duration::from_secs(600));
    assert!(
        edge.terminate(Duration::from_secs(30)).success(),
        "edge exit; stderr:\n{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    assert_eq!(seq.len(), demo_meter_count(), "every demo meter was polled");
    assert_stored_exactly_once(&http, &seq);

    let raw_truth = std::fs::read_to_string(&truth_path).unwrap();
    for needed in [
        "\"event\":\"rollover\"",
        "meter replaced",
        "offline (exception 0b",
    ] {
        assert!(raw_truth.contains(needed), "truth lacks {needed}");
    }

    // The truth, summed per unit and local day, and the enterprise's boundary per local day.
    let mut truth: BTreeMap<(String, String), Day> = BTreeMap::new();
    let mut boundary_truth: BTreeMap<(String, String), BoundaryDay> = BTreeMap::new();
    for rec in truth_intervals(&truth_path) {
        // The truth is in UTC; the plant's days start at local (+08:00) midnight.
        let start = chrono::DateTime::parse_from_rfc3339(rec["start"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap());
        let day = start.format("%Y-%m-%d").to_string();
        // Each record counts in the boundary of the enterprise it is inside.
        let enterprise = rec["enterprise"].as_str().unwrap().to_owned();
        let b = boundary_truth.entry((enterprise, day.clone())).or_default();
        for f in rec["flows"].as_array().unwrap() {
            let q = f["qty"].as_f64().unwrap();
            match (f["carrier"].as_str().unwrap(), f["role"].as_str().unwrap()) {
                ("electricity", "purchase") => b.grid_kwh += q,
                ("electricity", "export") => b.grid_kwh -= q,
                ("electricity", "consumed") => b.power_used_kwh += q,
                ("electricity", "recovered") => b.power_made_kwh += q,
                ("bfg", "recovered") => b.bfg_made += q,
                ("bfg", "flare") => b.bfg_flared += q,
                _ => {}
            }
        }
        if rec["kind"] == "enterprise" {
            b.kgce += truth_boundary_kgce(&rec);
            b.water_in_m3 += rec["water_m3"].as_f64().unwrap();
        }
        let t = truth
            .entry((rec["unit"].as_str().unwrap().to_owned(), day))
            .or_default();
        t.kgce += truth_kgce(&rec);
        t.kwh += truth_kwh(&rec);
        t.product_t += rec["product_t"].as_f64().unwrap();
        t.water_m3 += rec["water_m3"].as_f64().unwrap();
    }

    let mut compared = Vec::new();
    let mut marked = Vec::new();
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    let mut wrong = Vec::new();
    for unit in get_json(&http, "/api/v1/units").as_array().unwrap() {
        let id = unit["id"].as_str().unwrap();
        let days = get_json(
            &http,
            &format!("/api/v1/units/{id}/indicators?period=day&from=2026-01-05T00:00:00%2B08:00&to=2026-01-12T00:00:00%2B08:00"),
        );
        let days = days.as_array().unwrap();
        assert_eq!(days.len(), 7, "{id}");
        for (day, got) in DAYS.iter().zip(days) {
            assert!(got["start"].as_str().unwrap().starts_with(day), "{got}");
            let want = &truth[&(id.to_owned(), day.to_string())];
            let estimated = got["estimated_share"].as_f64().unwrap();
            if got["reportable"] != true || estimated > 0.0 {
                eprintln!(
                    "{id} {day} marked: completeness {} estimated share {estimated}",
                    got["completeness"]
                );
                marked.push((id.to_owned(), day.to_string()));
                continue;
            }
            if unit["function"] == "conversion" {
                // The oxygen and power plants make no product: their day's energy (what they
                // took less what they made) against the truth's.
                let got_v = got["energy_kgce"].as_f64().unwrap();
                let dev = ((got_v - want.kgce) / want.kgce).abs();
                let w = worst.entry(format!("{id} kgce")).or_default();
                *w = w.max(dev);
                if dev >= 0.005 {
                    wrong.push(format!(
                        "{id} {day}: {got_v:.1} kgce vs truth {:.1}, not marked estimated",
                        want.kgce
                    ));
                }
                compared.push((id.to_owned(), day.to_string()));
                continue;
            }
            let figures = [
                (
                    "kgce/t",
                    got["kgce_per_t"].as_f64(),
                    want.kgce / want.product_t,
                ),
                (
                    "kWh/t",
                    got["kwh_per_t"].as_f64(),
                    want.kwh / want.product_t,
                ),
                (
                    "m3/t",
                    got["water_m3_per_t"].as_f64(),
                    want.water_m3 / want.product_t,
                ),
            ];
            for (name, got_v, want_v) in figures {
                let got_v = got_v.unwrap_or_else(|| panic!("{id} {day}: no {name}"));
                let dev = ((got_v - want_v) / want_v).abs();
                let w = worst.entry(format!("{id} {name}")).or_default();
                *w = w.max(dev);
                if dev >= 0.005 {
                    wrong.push(format!(
                        "{id} {day}: {name} {got_v:.4} vs truth {want_v:.4} ({:.3} % off), not marked estimated: {got}",
                        dev * 100.0
                    ));
                }
            }
            compared.push((id.to_owned(), day.to_string()));
        }
    }
    eprintln!("compared {} unit-days; marked {marked:?}", compared.len());
    for (k, v) in &worst {
        eprintln!("worst daily deviation {k}: {:.4} %", v * 100.0);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The faults that lost data are marked; the broker outage lost nothing (the edge kept what
    // it read) so that day is complete for every unit.
    for lost in [("bf1", DAYS[1]), ("kiln1", DAYS[2])] {
        assert!(
            marked.contains(&(lost.0.to_owned(), lost.1.to_owned())),
            "{lost:?} lost data and must be marked estimated or not reportable"
        );
    }
    for unit in ["bf1", "bof1", "rhf1", "o2p1", "cpp1", "kiln1", "pot1"] {
        assert!(
            compared.contains(&(unit.to_owned(), DAYS[4].to_owned())),
            "{unit}: the broker outage day must be complete"
        );
    }
    assert!(
        compared.len() >= 42,
        "only {} of 49 unit-days had full data",
        compared.len()
    );

    // Each enterprise from its own boundary, day by day against the truth's purchases, stock
    // change and sales: the units' meter faults do not touch it.
    // The equal value of electricity in the built-in data file (GB 21341-2008's 0.404).
    const EQUAL_VALUE: f64 = 0.404;
    for enterprise in ["works", "cement", "smelter"] {
        let balances = get_json(
            &http,
            &format!("/api/v1/enterprises/{enterprise}/balance?period=day&from=2026-01-05T00:00:00%2B08:00&to=2026-01-12T00:00:00%2B08:00"),
        );
        let balances = balances.as_array().unwrap();
        assert_eq!(balances.len(), 7);
        // The month's days so far, asked from a time inside the month (as the balance page
        // asks for them beside the month itself): from the 1st, the same days.
        let month_days = get_json(
            &http,
            &format!("/api/v1/enterprises/{enterprise}/balance?period=day&within=month&from=2026-01-11T12:00:00%2B08:00&to=2026-01-12T00:00:00%2B08:00"),
        );
        let month_days = month_days.as_array().unwrap();
        assert_eq!(month_days.len(), 11);
        assert_eq!(month_days[0]["start"], "2026-01-01T00:00:00+08:00");
        assert_eq!(&month_days[4..], balances.as_slice());
        let mut enterprise_days = 0;
        for (day, got) in DAYS.iter().zip(balances) {
            if got["completeness"].as_f64().unwrap() < 0.999
                || got["estimated_share"].as_f64().unwrap() > 0.0
            {
                eprintln!("{enterprise} {day} marked: {}", got["completeness"]);
                continue;
            }
            let want = &boundary_truth[&(enterprise.to_owned(), day.to_string())];
            let mut checks = vec![
                (
                    "equivalent kgce",
                    got["enterprise"]["equivalent_kgce"].as_f64().unwrap(),
                    want.kgce,
                ),
                (
                    "equal-value kgce",
                    got["enterprise"]["equal_value_kgce"].as_f64().unwrap(),
                    want.kgce + want.grid_kwh * (EQUAL_VALUE - 0.1229),
                ),
                // The balance's closure: what the grid and the units' generation supplied less
                // what the units drew is the remainder no meter saw.
                (
                    "electricity remainder kWh",
                    balance_carrier(got, "electricity")["remainder"]
                        .as_f64()
                        .unwrap(),
                    want.grid_kwh + want.power_made_kwh - want.power_used_kwh,
                ),
            ];
            // The site's water intake per tonne of its product (the works' crude steel, the
            // cement plant's clinker), judged on its quota.
            let product_unit = match enterprise {
                "works" => Some("bof1"),
                "cement" => Some("kiln1"),
                _ => None,
            };
            if let Some(product_unit) = product_unit {
                let site = &got["sites"][0];
                let product = &truth[&(product_unit.to_owned(), day.to_string())];
                checks.push((
                    "site water m3/t",
                    site["m3_per_t"].as_f64().unwrap(),
                    want.water_in_m3 / product.product_t,
                ));
                eprintln!("{enterprise} {day} site water: {}", site["quota"]);
            }
            if enterprise == "works" {
                checks.push((
                    "BF gas flaring %",
                    balance_carrier(got, "bfg")["flaring_pct"].as_f64().unwrap(),
                    100.0 * want.bfg_flared / want.bfg_made,
                ));
            }
            for (name, got_v, want_v) in checks {
                let dev = (got_v - want_v) / want_v;
                eprintln!(
                    "{enterprise} {day} {name}: {got_v:.3} vs truth {want_v:.3} ({:.4} %)",
                    dev * 100.0
                );
                assert!(
                    dev.abs() < 0.005,
                    "{enterprise} {day} {name}: {got_v:.3} vs truth {want_v:.3}"
                );
            }
            // Every other carrier's closure: the simulated works loses none of its coke, coal,
            // gas or steam (the truth's purchases, stock change, generation, use, sales and
            // flaring add up), so what the meters leave unexplained is measurement alone.
            for c in got["carriers"].as_array().unwrap() {
                if c["carrier"] == "electricity" {
                    continue;
                }
                let supply = c["supply"].as_f64().unwrap();
                let remainder = c["remainder"].as_f64().unwrap();
                eprintln!(
                    "{enterprise} {day} {} remainder: {remainder:.3} of supply {supply:.3} {}",
                    c["carrier"], c["unit"]
                );
                assert!(
                    supply > 0.0 && remainder.abs() <= 0.005 * supply,
                    "{enterprise} {day} {}: remainder {remainder} of supply {supply}",
                    c["carrier"]
                );
            }
            enterprise_days += 1;
        }
        assert!(
            enterprise_days >= 6,
            "only {enterprise_days} of 7 days of {enterprise} were complete"
        );
    }

    // Alarms: the kiln's coal meter went offline and came back; the coke scale restarted.
    let alarms = get_json(&http, "/api/v1/alarms?limit=1000");
    let alarms = alarms.as_array().unwrap();
    // Oldest first: the edge's stop at the end raises a fresh offline alarm for every meter.
    let find = |kind: &str, subject: &str| {
        alarms
            .iter()
            .rev()
            .find(|a| a["kind"] == kind && a["subject"] == subject)
            .unwrap_or_else(|| panic!("no {kind} alarm for {subject} in {alarms:#?}"))
            .clone()
    };
    let offline = find("device_offline", "kiln1-coal");
    assert!(offline["cleared"].is_string(), "it came back: {offline}");
    let restart = find("counter_anomaly", "bf1-coke/total_t");
    assert!(
        restart["message"].as_str().unwrap().contains("restart"),
        "{restart}"
    );
    // No sequence gap stays open: the broker outage lost nothing.
    assert!(
        !alarms
            .iter()
            .any(|a| a["kind"] == "sequence_gap" && a["active"] == true),
        "{alarms:#?}"
    );

    // The alarm topic holds the current state of each alarm, retained. (The edge's stop raises
    // new offline alarms meanwhile: compare the topic with the alarm list read after it.)
    let retained = || {
        let out = std::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-t", "ems/v1/alarms/#", "-v", "--retained-only", "-W", "2"])
            .output()
            .expect("mosquitto_sub runs");
        let published = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = published
            .lines()
            .find(|l| l.starts_with("ems/v1/alarms/device_offline/kiln1-coal "))
            .unwrap_or_else(|| panic!("no retained alarm for kiln1-coal in:\n{published}"))
            .to_owned();
        let payload: Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        payload
    };
    let newest = || {
        get_json(&http, "/api/v1/alarms?limit=1000")
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "device_offline" && a["subject"] == "kiln1-coal")
            .unwrap()
            .clone()
    };
    let mut last = (Value::Null, Value::Null);
    eventually(
        "the topic holds the alarm's current state",
        Duration::from_secs(30),
        || {
            let payload = retained();
            let newest = newest();
            let same = (&payload["id"], &payload["active"]) == (&newest["id"], &newest["active"]);
            last = (payload, newest);
            same
        },
    );
    eprintln!("retained: {}; newest: {}", last.0, last.1);

    // Acknowledging needs an operator.
    let path = format!("/api/v1/alarms/{}/ack", offline["id"]);
    let (status, body) = post(&http, &path, None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&http, &path, Some("not-a-token"));
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&http, &path, Some(OPERATOR_TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["acked_by"], "shift_lead");
    let (status, body) = post(&http, &path, Some(OPERATOR_TOKEN));
    assert_eq!(status, 409, "the first acknowledgement stands: {body}");
    let pending = get_json(&http, "/api/v1/alarms?pending=true&limit=1000");
    assert!(
        !pending
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == offline["id"]),
        "acknowledged and cleared: no longer pending"
    );
    let metrics = get_text(&http, "/metrics");
    assert!(
        metrics.contains("ems_gateway_alarms_raised_total{kind=\"device_offline\"}"),
        "{metrics}"
    );

    assert!(
        gateway.terminate(Duration::from_secs(20)).success(),
        "gateway exit; stderr:\n{}",
        gateway.stderr_tail()
    );
    assert!(sim.terminate(Duration::from_secs(10)).success());
}
