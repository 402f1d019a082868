//! A simulated day through the real binaries: ems-sim -> ems-edge -> Mosquitto -> ems-gateway.
//! The gateway's hourly unit energy must agree with the simulator's truth within 1 %, and every
//! sequence number the edge handed out must be stored exactly once.

use std::time::Duration;

use ems_tests::*;
use serde_json::Value;

#[test]
fn a_simulated_day_matches_the_truth_hour_by_hour() {
    let dir = TempDir::new("day");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let truth_path = d.join("truth.jsonl");

    // 1 440x: a simulated day in a real minute, starting at local midnight.
    let mut sim = Proc::start(
        &bin("ems-sim"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--speed",
            "1440",
            "--start",
            "2026-01-01T00:00:00+08:00",
            "--truth",
            truth_path.to_str().unwrap(),
        ],
        d,
    );
    let sim_addr = sim.wait_line("LISTEN ", Duration::from_secs(10));

    write_gateway_config(d, broker.port);
    let (mut gateway, http) = start_gateway(d);

    // 100 ms real = 144 simulated seconds between samples.
    write_edge_config(d, &sim_addr, broker.port, 100);
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);

    // Wait for the truth of the day and one hour more, so the day's last hour lies between
    // the edge's first and last samples.
    eventually("25 hours of truth", Duration::from_secs(150), || {
        std::fs::read_to_string(&truth_path)
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains("\"record\":\"interval\""))
                    .count()
                    >= 25 * demo_truth_units()
            })
            .unwrap_or(false)
    });

    // SIGTERM: the edge stops polling and delivers everything it read.
    assert!(
        edge.terminate(Duration::from_secs(20)).success(),
        "edge exit; stderr:\n{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    assert_eq!(seq.len(), demo_meter_count(), "every demo meter was polled");
    assert_stored_exactly_once(&http, &seq);
    // Its offline status follows the gateway's confirmation of the last results.
    eventually(
        "the edge said offline when it stopped",
        Duration::from_secs(10),
        || {
            get_json(&http, "/api/v1/devices")
                .as_array()
                .unwrap()
                .iter()
                .all(|dev| dev["online"] == false)
        },
    );

    // Hour by hour, unit energy against the truth.
    let truth = truth_intervals(&truth_path);
    // The day includes a counter wrapping at its display maximum (bf1-bfg-export).
    let raw_truth = std::fs::read_to_string(&truth_path).unwrap();
    assert!(
        raw_truth.contains("\"event\":\"rollover\""),
        "the demo day crosses a rollover"
    );
    let units = get_json(&http, "/api/v1/units");
    assert_eq!(units.as_array().unwrap().len(), 7);
    for unit in units.as_array().unwrap() {
        let id = unit["id"].as_str().unwrap();
        if unit["function"] == "conversion" {
            // The oxygen and power plants: no product; what they took and made is in the
            // works' balance, compared below.
            continue;
        }
        let hours = get_json(
            &http,
            &format!("/api/v1/units/{id}/indicators?period=hour&from=2026-01-01T00:00:00%2B08:00&to=2026-01-02T01:00:00%2B08:00"),
        );
        let hours = hours.as_array().unwrap();
        assert_eq!(hours.len(), 25, "{id}");
        // The hours between the edge's first and last, each with its truth. The first and the
        // last hour with data hold less than the truth by the part before the first poll or
        // after the last. A stall of the edge under load only lowers an hour's coverage (its
        // delta still counts, marked estimated), so inner hours need only be reportable.
        let with_data: Vec<usize> = (0..hours.len())
            .filter(|&i| hours[i]["completeness"].as_f64().unwrap() > 0.0)
            .collect();
        let (first, last) = (with_data[0], *with_data.last().unwrap());
        let full: Vec<(&Value, &Value)> = hours[first + 1..last]
            .iter()
            .filter(|h| h["reportable"] == true)
            .map(|h| {
                let start =
                    chrono::DateTime::parse_from_rfc3339(h["start"].as_str().unwrap()).unwrap();
                let rec = truth
                    .iter()
                    .find(|r| {
                        r["unit"] == id
                            && chrono::DateTime::parse_from_rfc3339(r["start"].as_str().unwrap())
                                .unwrap()
                                == start
                    })
                    .unwrap_or_else(|| panic!("no truth for {id} at {start}"));
                (h, rec)
            })
            .collect();
        assert!(
            full.len() >= 22,
            "{id}: only {} full hours to compare",
            full.len()
        );
        let close = |got: f64, want: f64| ((got - want) / want).abs() < 0.01;
        if unit["kind"] == "converter" {
            // A converter runs in 48-minute heats: gas and steam come only while blowing and
            // steel only at tapping, so an hour's share depends on where the boundary falls
            // within one poll interval. Its figure is compared over all the full hours together.
            let sum = |f: &dyn Fn(&(&Value, &Value)) -> f64| full.iter().map(f).sum::<f64>();
            let (e, p) = (
                sum(&|(h, _)| h["energy_kgce"].as_f64().unwrap()),
                sum(&|(h, _)| h["product_t"].as_f64().unwrap()),
            );
            let (te, tp) = (
                sum(&|(_, r)| truth_kgce(r)),
                sum(&|(_, r)| r["product_t"].as_f64().unwrap()),
            );
            assert!(
                close(e / p, te / tp),
                "{id}: gateway {:.3} kgce/t, truth {:.3}",
                e / p,
                te / tp
            );
            assert!(
                e / p < 0.0,
                "the converter recovers more than it uses: {}",
                e / p
            );
            assert!(close(p, tp), "{id}: product {p:.1} t, truth {tp:.1}");
            eprintln!(
                "{id}: {} full hours together, {:.3} kgce/t vs truth {:.3}",
                full.len(),
                e / p,
                te / tp
            );
            continue;
        }
        let mut worst = 0.0f64;
        for (h, rec) in &full {
            let start = h["start"].as_str().unwrap();
            let want = truth_kgce(rec) / rec["product_t"].as_f64().unwrap();
            let got = h["kgce_per_t"].as_f64().unwrap();
            worst = worst.max(((got - want) / want).abs());
            assert!(
                close(got, want),
                "{id} {start}: gateway {got:.3} kgce/t, truth {want:.3}"
            );
            let (pt, tt) = (
                h["product_t"].as_f64().unwrap(),
                rec["product_t"].as_f64().unwrap(),
            );
            assert!(
                close(pt, tt),
                "{id} {start}: product {pt:.3} t, truth {tt:.3}"
            );
            let (wt, tw) = (
                h["water_m3"].as_f64().unwrap(),
                rec["water_m3"].as_f64().unwrap(),
            );
            assert!(
                close(wt, tw),
                "{id} {start}: water {wt:.3} m3, truth {tw:.3}"
            );
            // The potline's DC energy, a submeter: reported per tonne, never added.
            if id == "pot1" {
                let dc: f64 = rec["flows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|f| f["carrier"] == "electricity_dc")
                    .map(|f| f["qty"].as_f64().unwrap())
                    .sum();
                let got = h["dc_kwh"].as_f64().unwrap();
                assert!(close(got, dc), "{start}: DC {got:.1} kWh, truth {dc:.1}");
                assert!(
                    h["dc_kwh_per_t"].as_f64().unwrap() < h["kwh_per_t"].as_f64().unwrap(),
                    "DC below AC per tonne: {h}"
                );
            }
        }
        eprintln!(
            "{id}: {} hours compared, worst kgce/t deviation {:.4} %",
            full.len(),
            worst * 100.0
        );
    }

    // Each of the group's enterprises from its own boundary, hour by hour against the truth's
    // purchases, stock change and sales; its balance shows the losses (and the works' flare)
    // the units' sum leaves out.
    for enterprise in ["works", "cement", "smelter"] {
        let hours = get_json(
            &http,
            &format!("/api/v1/enterprises/{enterprise}/balance?period=hour&from=2026-01-01T00:00:00%2B08:00&to=2026-01-02T01:00:00%2B08:00"),
        );
        let hours = hours.as_array().unwrap();
        assert_eq!(hours.len(), 25);
        let with_data: Vec<usize> = (0..hours.len())
            .filter(|&i| hours[i]["completeness"].as_f64().unwrap() > 0.0)
            .collect();
        let (first, last) = (with_data[0], *with_data.last().unwrap());
        let (mut got_sum, mut want_sum, mut compared) = (0.0, 0.0, 0);
        // The works' holder (gauge, truth, converter gas made) and power plant's supply
        // (metered, truth).
        let (mut works_gas, mut works_power) = ((0.0, 0.0, 0.0), (0.0, 0.0));
        for h in &hours[first + 1..last] {
            if h["completeness"].as_f64().unwrap() < 0.9 {
                continue;
            }
            let start = chrono::DateTime::parse_from_rfc3339(h["start"].as_str().unwrap()).unwrap();
            let rec = truth
                .iter()
                .find(|r| {
                    r["kind"] == "enterprise"
                        && r["unit"] == enterprise
                        && chrono::DateTime::parse_from_rfc3339(r["start"].as_str().unwrap())
                            .unwrap()
                            == start
                })
                .unwrap_or_else(|| panic!("no {enterprise} truth at {start}"));
            let got = h["enterprise"]["equivalent_kgce"].as_f64().unwrap();
            let want = truth_boundary_kgce(rec);
            assert!(
                ((got - want) / want).abs() < 0.01,
                "{start}: {enterprise} {got:.1} kgce, truth {want:.1}"
            );
            got_sum += got;
            want_sum += want;
            compared += 1;
            // More than the units' sum: the unmetered auxiliaries, the losses and the flare.
            assert!(
                h["enterprise"]["boundary_minus_units_kgce"]
                    .as_f64()
                    .unwrap()
                    > 0.0,
                "{enterprise}: {h}"
            );
            if enterprise == "works" {
                let truth_of = |unit: &str, flow: &str| -> f64 {
                    truth
                        .iter()
                        .find(|r| {
                            r["unit"] == unit
                                && chrono::DateTime::parse_from_rfc3339(
                                    r["start"].as_str().unwrap(),
                                )
                                .unwrap()
                                    == start
                        })
                        .unwrap()["flows"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|f| f["flow"] == flow)
                        .map(|f| f["qty"].as_f64().unwrap())
                        .sum()
                };
                let ldg = balance_carrier(h, "converter_gas");
                works_gas.0 += ldg["stock_change"].as_f64().unwrap();
                works_gas.1 += truth_of("works", "ldg_holder");
                works_gas.2 += truth_of("bof1", "ldg");
                // The power plant's supply to the works: generation less its own use.
                let cpp = &h["captive_power"][0];
                assert_eq!(cpp["unit"], "cpp1", "{h}");
                works_power.0 += cpp["supply"].as_f64().unwrap();
                works_power.1 += truth_of("cpp1", "generation") - truth_of("cpp1", "own_use");
                let bfg = balance_carrier(h, "bfg");
                let flaring = bfg["flaring_pct"].as_f64().unwrap();
                // 4 % of the surplus, the stoves' 700 of 1 600 m3/t not flared: 2.25 % of
                // generation.
                assert!(
                    (flaring - 2.25).abs() < 0.2,
                    "flaring rate {flaring} %: {bfg}"
                );
            }
        }
        assert!(compared >= 22, "only {compared} full hours of {enterprise}");
        if enterprise == "works" {
            // The holder's level gauge against the truth's holder, over the hours compared
            // (within 0.5 % of the converter gas made), and the power plant's generation.
            let (got, want, made) = works_gas;
            assert!(
                (got - want).abs() < 0.005 * made,
                "holder {got:.0} m3, truth {want:.0} (of {made:.0} made)"
            );
            let (got, want) = works_power;
            assert!(
                ((got - want) / want).abs() < 0.005,
                "power plant supplied {got:.0} kWh, truth {want:.0}"
            );
        }
        assert!(
            ((got_sum - want_sum) / want_sum).abs() < 0.005,
            "{enterprise} over {compared} hours: {got_sum:.1} kgce, truth {want_sum:.1}"
        );
        eprintln!(
            "{enterprise}: {compared} hours, {got_sum:.1} kgce vs truth {want_sum:.1} ({:+.4} %)",
            100.0 * (got_sum - want_sum) / want_sum
        );
    }

    // The converter-gas holder's level as its meter reads it at each hour's end, against the
    // truth's holder: its level when the run began and each hour's change since.
    let stocks = get_json(
        &http,
        "/api/v1/enterprises/works/stocks?period=hour&from=2026-01-01T00:00:00%2B08:00&to=2026-01-02T01:00:00%2B08:00",
    );
    let holder = stocks
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["device"] == "works-ldg-holder")
        .unwrap_or_else(|| panic!("the works' stock meters: {stocks}"));
    let closing = holder["closing"].as_array().unwrap();
    assert_eq!(closing.len(), 25);
    let day_start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00+08:00").unwrap();
    let mut level = ems_sim::model::HOLDER_START_M3;
    let (mut compared, mut worst) = (0, 0.0f64);
    for (h, shown) in closing.iter().enumerate() {
        let start = day_start + chrono::Duration::hours(h as i64);
        let Some(rec) = truth.iter().find(|r| {
            r["unit"] == "works"
                && chrono::DateTime::parse_from_rfc3339(r["start"].as_str().unwrap()).unwrap()
                    == start
        }) else {
            break;
        };
        level += rec["flows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["flow"] == "ldg_holder")
            .map(|f| f["qty"].as_f64().unwrap())
            .sum::<f64>();
        if shown.is_null() {
            continue;
        }
        let got = shown["value"].as_f64().unwrap();
        let end = start + chrono::Duration::hours(1);
        let read =
            chrono::DateTime::parse_from_rfc3339(shown["read_at"].as_str().unwrap()).unwrap();
        // Read up to one poll (144 simulated s) before the hour's end: off the truth by at most
        // what the holder can move in that time (50 000 m3/h: above the power plant's 30 000
        // m3/h draw with the converter's gas coming in), and a meter's rounding.
        let age_s = (end - read).num_milliseconds() as f64 / 1000.0;
        assert!((0.0..=300.0).contains(&age_s), "{shown}");
        let allowed = 100.0 + age_s * 50_000.0 / 3600.0;
        assert!(
            (got - level).abs() <= allowed,
            "holder at {end}: {got:.0} m3 read {age_s} s before, truth {level:.0}"
        );
        worst = worst.max((got - level).abs());
        compared += 1;
    }
    assert!(
        compared >= 20,
        "only {compared} hours of the holder's level"
    );
    eprintln!("holder level: {compared} hours, worst {worst:.0} m3 off the truth");

    // What the grid power cost, hour by hour against the truth's purchases: each hour (the
    // demo's bands are on whole hours) at its time-of-use band's price, the tariff as the
    // gateway's configuration gives it.
    let config = ems_gateway::Config::load(&d.join("gateway.toml")).unwrap();
    let tz = config.plant.utc_offset();
    for enterprise in ["works", "smelter"] {
        let tariff = config
            .plant
            .enterprise(enterprise)
            .and_then(|e| e.tariff.clone())
            .unwrap_or_else(|| panic!("the demo's {enterprise} has a tariff"));
        let range = "from=2026-01-01T00:00:00%2B08:00&to=2026-01-02T01:00:00%2B08:00";
        let costs = get_json(
            &http,
            &format!("/api/v1/enterprises/{enterprise}/cost?period=hour&{range}"),
        );
        let balances = get_json(
            &http,
            &format!("/api/v1/enterprises/{enterprise}/balance?period=hour&{range}"),
        );
        let (mut got_sum, mut want_sum, mut compared) = (0.0, 0.0, 0);
        for (c, b) in costs
            .as_array()
            .unwrap()
            .iter()
            .zip(balances.as_array().unwrap())
        {
            if b["completeness"].as_f64().unwrap() < 0.99 {
                continue;
            }
            let start = chrono::DateTime::parse_from_rfc3339(c["start"].as_str().unwrap()).unwrap();
            let Some(rec) = truth.iter().find(|r| {
                r["kind"] == "enterprise"
                    && r["unit"] == enterprise
                    && chrono::DateTime::parse_from_rfc3339(r["start"].as_str().unwrap()).unwrap()
                        == start
            }) else {
                continue;
            };
            let grid: f64 = rec["flows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["role"] == "purchase" && f["carrier"] == "electricity")
                .map(|f| f["qty"].as_f64().unwrap())
                .sum();
            let band = tariff.band_at(start.timestamp_millis(), tz).unwrap();
            let want = grid * band.price;
            let got = c["electricity"]["energy_cost"].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 0.01 * want.max(1.0),
                "{start}: {enterprise}'s grid power cost {got:.2}, truth {grid:.1} kWh at {} = {want:.2}",
                band.price
            );
            let bands = c["electricity"]["bands"].as_array().unwrap();
            assert_eq!(bands.len(), 1, "one band an hour: {c}");
            assert_eq!(bands[0]["kind"], serde_json::to_value(band.kind).unwrap());
            got_sum += got;
            want_sum += want;
            compared += 1;
        }
        assert!(
            compared >= 20,
            "only {compared} full hours of {enterprise}'s cost"
        );
        assert!(
            ((got_sum - want_sum) / want_sum).abs() < 0.005,
            "{enterprise} over {compared} hours: {got_sum:.2}, truth {want_sum:.2}"
        );
        eprintln!("{enterprise}'s grid power over {compared} hours: {got_sum:.2} CNY, truth {want_sum:.2}");
    }

    // The day judged against the standards (GB 21346 table 1, GB 16780 table 2, GB 21256 table 4).
    let day = |id: &str| {
        get_json(&http, &format!("/api/v1/units/{id}/indicators?period=day&from=2026-01-01T00:00:00%2B08:00&to=2026-01-02T00:00:00%2B08:00"))[0].clone()
    };
    let pot = day("pot1");
    assert_eq!(
        (pot["level"].as_u64(), pot["within_limit"].as_bool()),
        (Some(3), Some(true)),
        "13 119 kWh/t AC: {pot}"
    );
    // Its current efficiency by Faraday, from the line-current meter, against the truth's
    // aluminium and ampere-hours over the same day (the simulator's cells run at 92.5 %).
    let (mut al, mut kah) = (0.0, 0.0);
    for r in truth.iter().filter(|r| r["unit"] == "pot1") {
        let start = chrono::DateTime::parse_from_rfc3339(r["start"].as_str().unwrap()).unwrap();
        if start < chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00+08:00").unwrap()
            || start >= chrono::DateTime::parse_from_rfc3339("2026-01-02T00:00:00+08:00").unwrap()
        {
            continue;
        }
        al += r["product_t"].as_f64().unwrap();
        for f in r["flows"].as_array().unwrap() {
            if f["carrier"] == "line_current" {
                kah += f["qty"].as_f64().unwrap();
            }
        }
    }
    let want_ce = 100.0 * al * 1000.0 / (0.3356 * 300.0 * kah);
    let got_ce = pot["current_efficiency_pct"].as_f64().unwrap();
    assert!(
        (got_ce - want_ce).abs() < 0.3 && (want_ce - 92.5).abs() < 1e-6,
        "current efficiency {got_ce} % vs truth {want_ce} %"
    );
    let kiln = day("kiln1");
    assert_eq!(kiln["level"], 2, "105.6 kgce/t clinker: {kiln}");
    // GB 16780: the line's gross power, 55 kWh/t, the waste-heat power credited in energy
    // (netted out, 25 kWh/t, it was judged level 1).
    assert_eq!(
        kiln["limits"][1]["level"], 2,
        "55 kWh/t gross clinker electricity"
    );
    assert_eq!(
        kiln["water_quota"]["grade"], "general",
        "0.25 m3/t: above the advanced value 0.225, within the quota 0.510"
    );
    // Every period is a sum of the same 15-minute slots: quarters, hours, shifts and the day agree.
    let energy = |period: &str| -> (usize, f64) {
        let rows = get_json(&http, &format!("/api/v1/units/kiln1/indicators?period={period}&from=2026-01-01T00:00:00%2B08:00&to=2026-01-02T00:00:00%2B08:00"));
        let rows = rows.as_array().unwrap();
        (
            rows.len(),
            rows.iter()
                .map(|r| r["energy_kgce"].as_f64().unwrap())
                .sum(),
        )
    };
    let (n_q, e_q) = energy("15min");
    let (n_h, e_h) = energy("hour");
    let (n_s, e_s) = energy("shift");
    assert_eq!((n_q, n_h, n_s), (96, 24, 3));
    for e in [e_h, e_s, kiln["energy_kgce"].as_f64().unwrap()] {
        assert!((e - e_q).abs() < 1e-6 * e_q.abs(), "{e} vs {e_q}");
    }
    let bof = day("bof1");
    let scrap = bof["corrections"]["scrap_ratio_pct"].as_f64().unwrap();
    assert!(
        (scrap - 100.0 * 0.18 / 1.08).abs() < 0.5,
        "scrap ratio from the charging scales: {scrap}"
    );
    // About -15 kgce/t with its oxygen and nitrogen counted (near the average Chinese
    // converter's): within GB 21256-2025's level 3 (-8.17 after the scrap-ratio correction),
    // short of level 2 (-24.17). Without its working media it would have read level 1.
    assert_eq!(bof["level"], 3, "{bof}");

    assert!(
        gateway.terminate(Duration::from_secs(20)).success(),
        "gateway exit; stderr:\n{}",
        gateway.stderr_tail()
    );
    assert!(
        sim.terminate(Duration::from_secs(10)).success(),
        "sim exit; stderr:\n{}",
        sim.stderr_tail()
    );
}
