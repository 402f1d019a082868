//! ems-sim as a commissioning engineer and the other tests rely on it: every register map reads
//! back through an independent Modbus client (mbpoll) over TCP and over RTU on a
//! pseudo-terminal, a simulated week stays in the documented ranges, and the process events a
//! scenario schedules really happen.

use std::process::Command;
use std::time::Duration;

use ems_core::{decode, DataType, WordOrder};
use ems_tests::*;
use serde_json::Value;

/// Registers read by mbpoll (`-0`: zero-based addresses, as on the wire).
fn mbpoll(link: &[&str], unit: u8, table: u8, addr: u16, count: u16) -> Result<Vec<u16>, String> {
    let mut args: Vec<String> = link.iter().map(|s| s.to_string()).collect();
    let target = args.pop().unwrap();
    args.extend(
        [
            "-a",
            &unit.to_string(),
            "-0",
            "-r",
            &addr.to_string(),
            "-c",
            &count.to_string(),
            "-t",
            &table.to_string(),
            "-1",
            "-o",
            "2",
        ]
        .map(String::from),
    );
    args.push(target);
    let out = Command::new("mbpoll")
        .args(&args)
        .output()
        .expect("mbpoll is installed (tests/run.sh installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let regs: Vec<u16> = text
        .lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| {
            l.split(':')
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<i64>()
                .ok()
        })
        .map(|v| v as u16)
        .collect();
    if regs.len() == usize::from(count) {
        Ok(regs)
    } else {
        Err(text)
    }
}

/// (device, table 3|4, counter address, type, order, scale) for one meter of each model.
const COUNTERS: &[(&str, u8, u16, DataType, WordOrder, f64)] = &[
    ("bf1-coke", 4, 0x0002, DataType::U32, WordOrder::ABCD, 0.01),
    ("bf1-power", 4, 0x401E, DataType::F32, WordOrder::ABCD, 1.0),
    (
        "bf1-bfg-stoves",
        4,
        0x0006,
        DataType::U32,
        WordOrder::CDAB,
        0.1,
    ),
    ("bf1-water", 4, 0x1010, DataType::U32, WordOrder::DCBA, 0.01),
    ("bof1-power", 3, 0x0048, DataType::F32, WordOrder::ABCD, 1.0),
];

/// (device, table, rate register, type, order, scale to the flow unit per hour).
const RATES: &[(&str, u8, u16, DataType, WordOrder, f64)] = &[
    ("bf1-coke", 4, 0x0000, DataType::U16, WordOrder::ABCD, 0.1),
    (
        "bf1-power",
        4,
        0x2012,
        DataType::F32,
        WordOrder::ABCD,
        0.0001,
    ), // Pt in 0.1 W -> kW
    (
        "bf1-bfg-stoves",
        4,
        0x0000,
        DataType::F32,
        WordOrder::CDAB,
        1.0,
    ),
    ("bf1-water", 4, 0x1000, DataType::F32, WordOrder::BADC, 1.0),
    (
        "bof1-power",
        3,
        0x0034,
        DataType::F32,
        WordOrder::ABCD,
        0.001,
    ), // W -> kW
];

#[test]
fn every_register_map_reads_back_over_tcp_and_rtu() {
    let dir = TempDir::new("sim-maps");
    // Nearly frozen time: what the model says and what the wire says can be compared exactly.
    let sim = Proc::start(
        &bin("ems-sim"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--rtu-pty",
            "--speed",
            "0.0001",
        ],
        dir.path(),
    );
    let tcp = sim.wait_line("LISTEN ", Duration::from_secs(10));
    let control = sim.wait_line("CONTROL ", Duration::from_secs(5));
    let pty = sim.wait_line("RTU ", Duration::from_secs(5));
    let port = tcp.rsplit(':').next().unwrap().to_owned();
    let links: [(&str, Vec<&str>); 2] = [
        ("tcp", vec!["-m", "tcp", "-p", &port, "127.0.0.1"]),
        ("rtu", vec!["-m", "rtu", "-b", "9600", "-P", "none", &pty]),
    ];
    let meters = get_json(&control, "/meters");
    for (device, table, addr, ty, order, scale) in COUNTERS {
        let m = meters
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["device"] == *device)
            .unwrap();
        let unit = m["unit_id"].as_u64().unwrap() as u8;
        let want = m["counter"].as_f64().unwrap();
        for (name, link) in &links {
            let regs = mbpoll(link, unit, *table, *addr, ty.registers())
                .unwrap_or_else(|e| panic!("{device} over {name}: {e}"));
            let got = decode(&regs, *ty, *order).unwrap() * scale;
            // f32 keeps 24 bits; the integer counters their last digit.
            let tolerance = if *ty == DataType::F32 {
                want.abs() * 1.2e-7
            } else {
                *scale
            };
            assert!(
                (got - want).abs() <= tolerance,
                "{device} over {name}: read {got}, model {want}"
            );
            let clock = mbpoll(link, unit, 4, 0xF000, 4)
                .unwrap_or_else(|e| panic!("{device} clock over {name}: {e}"));
            let clock_ms = decode(&clock, DataType::U64, WordOrder::ABCD).unwrap();
            assert!(
                (clock_ms - m["clock_ms"].as_f64().unwrap()).abs() < 1_000.0,
                "{device} clock over {name}"
            );
        }
    }
    for (device, table, addr, ty, order, scale) in RATES {
        let m = meters
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["device"] == *device)
            .unwrap();
        let want = m["rate_per_h"].as_f64().unwrap();
        let regs = mbpoll(
            &links[0].1,
            m["unit_id"].as_u64().unwrap() as u8,
            *table,
            *addr,
            ty.registers(),
        )
        .unwrap();
        let got = decode(&regs, *ty, *order).unwrap() * scale;
        // u16 in 0.1 t/h rounds; floats keep 24 bits.
        let tolerance = if *ty == DataType::U16 {
            0.05
        } else {
            want.abs() * 1e-6
        };
        assert!(
            (got - want).abs() <= tolerance,
            "{device} rate: read {got}, model {want}"
        );
    }
    // A register the map does not have is refused, as a real meter does.
    let err = mbpoll(&links[0].1, 12, 4, 0x0100, 2).unwrap_err();
    assert!(err.to_lowercase().contains("illegal data address"), "{err}");
}

fn truth_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (kgce, AC kWh, product t) summed over truth intervals.
fn totals<'a>(recs: impl Iterator<Item = &'a Value>) -> (f64, f64, f64) {
    let (mut e, mut kwh, mut t) = (0.0, 0.0, 0.0);
    for r in recs {
        t += r["product_t"].as_f64().unwrap();
        for f in r["flows"].as_array().unwrap() {
            let q = f["qty"].as_f64().unwrap();
            let sign = match f["role"].as_str().unwrap() {
                "consumed" => 1.0,
                "recovered" => -1.0,
                _ => continue,
            };
            e += sign
                * q
                * kgce_per_unit(f["carrier"].as_str().unwrap(), f["unit"].as_str().unwrap());
            if f["carrier"] == "electricity" {
                kwh += sign * q;
            }
        }
    }
    (e, kwh, t)
}

fn run_week(scenario: &str, dir: &std::path::Path) -> Vec<Value> {
    let truth = dir.join(format!("{scenario}.jsonl"));
    // A week in 12 real seconds.
    let mut sim = Proc::start(
        &bin("ems-sim"),
        &[
            "--scenario",
            scenario,
            "--listen",
            "127.0.0.1:0",
            "--speed",
            "50400",
            "--start",
            "2026-03-02T00:00:00+08:00",
            "--truth",
            truth.to_str().unwrap(),
        ],
        dir,
    );
    sim.wait_line("LISTEN ", Duration::from_secs(10));
    eventually("a simulated week", Duration::from_secs(120), || {
        std::fs::read_to_string(&truth)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"record\":\"interval\""))
            .count()
            >= 7 * 24 * units_in(scenario)
    });
    assert!(
        sim.terminate(Duration::from_secs(10)).success(),
        "{}",
        sim.stderr_tail()
    );
    truth_lines(&std::fs::read_to_string(&truth).unwrap())
}

fn units_in(scenario: &str) -> usize {
    match scenario {
        "demo" => demo_truth_units(),
        "steelworks" | "cement" => 3 - usize::from(scenario == "cement"),
        _ => 1,
    }
}

#[test]
fn a_simulated_week_stays_in_the_documented_ranges() {
    let dir = TempDir::new("sim-week");
    let lines = run_week("demo", dir.path());
    let intervals: Vec<&Value> = lines.iter().filter(|l| l["record"] == "interval").collect();
    for day in 0..7 {
        let date = format!("2026-03-{:02}", 1 + day); // local days start at 16:00 UTC the day before
        for (unit, lo, hi) in [
            ("bf1", 370.0, 410.0),
            ("bof1", -30.0, -10.0),
            ("rhf1", 35.0, 55.0),
            ("kiln1", 100.0, 117.0),
        ] {
            let day_recs = intervals.iter().copied().filter(|r| {
                r["unit"] == unit
                    && r["start"].as_str().unwrap().starts_with(&date)
                    && r["start"].as_str().unwrap()[11..13] >= *"16"
            });
            let next = format!("2026-03-{:02}", 2 + day);
            let next_recs = intervals.iter().copied().filter(|r| {
                r["unit"] == unit
                    && r["start"].as_str().unwrap().starts_with(&next)
                    && r["start"].as_str().unwrap()[11..13] < *"16"
            });
            let (e, _, t) = totals(day_recs.chain(next_recs));
            assert!(t > 0.0, "{unit} produced on day {day}");
            let k = e / t;
            assert!(
                (lo..=hi).contains(&k),
                "{unit} day {day}: {k:.2} kgce/t outside {lo}..{hi}"
            );
        }
        let pot: Vec<&Value> = intervals
            .iter()
            .copied()
            .filter(|r| r["unit"] == "pot1")
            .skip(day * 24)
            .take(24)
            .collect();
        let (_, kwh, t) = totals(pot.into_iter());
        assert!(
            (13_000.0..=13_500.0).contains(&(kwh / t)),
            "potline day {day}: {:.0} kWh/t AC",
            kwh / t
        );
    }
    let effects = lines
        .iter()
        .filter(|l| l["event"] == "anode_effect")
        .count();
    assert!(
        (50..=150).contains(&effects),
        "about 0.6 anode effects an hour: {effects}"
    );
}

#[test]
fn the_steelworks_week_has_its_scheduled_events_and_the_converter_goes_above_zero() {
    let dir = TempDir::new("sim-steel");
    let lines = run_week("steelworks", dir.path());
    let intervals: Vec<&Value> = lines.iter().filter(|l| l["record"] == "interval").collect();
    let hour = |unit: &str, h: usize| {
        intervals
            .iter()
            .copied()
            .filter(move |r| r["unit"] == unit)
            .nth(h)
            .unwrap()
    };
    // Hours 60..63: converter gas recovery out of service.
    let (e, _, t) = totals((60..63).map(|h| hour("bof1", h)));
    assert!(
        e / t > 0.0,
        "without recovery the converter consumes net energy: {:.2} kgce/t",
        e / t
    );
    let (e, _, t) = totals((64..72).map(|h| hour("bof1", h)));
    assert!(e / t < 0.0, "recovery back: {:.2} kgce/t", e / t);
    // Hours 30..38: the reheating furnace is down; it restarts with a higher unit energy.
    assert_eq!(hour("rhf1", 32)["product_t"].as_f64().unwrap(), 0.0);
    let (e_restart, _, t_restart) = totals((38..41).map(|h| hour("rhf1", h)));
    let (e_normal, _, t_normal) = totals((10..13).map(|h| hour("rhf1", h)));
    assert!(
        e_restart / t_restart > 1.05 * e_normal / t_normal,
        "warm-up costs energy per tonne"
    );
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    for kind in ["state", "fault_start", "fault_end", "rollover"] {
        assert!(events.contains(&kind), "{kind} logged: {events:?}");
    }
    assert_eq!(
        events.iter().filter(|e| **e == "fault_start").count(),
        6,
        "every scenario fault logged"
    );
}
