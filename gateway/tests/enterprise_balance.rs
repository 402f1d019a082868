//! The enterprise from its boundary through the real store: a cement works whose coal arrives
//! by train once a day into a yard (a stock level read by a gauge), with a kiln, its waste-heat
//! power, an office block (non-production) and a grid meter that sees the works' losses. Two
//! days of quarter-hour readings go in through the ingest path; the day's comprehensive energy,
//! its balance rows and the annual report's totals are checked against figures computed here
//! from the readings' own increments and this test's coefficients.

use std::collections::HashMap;

use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_gateway::report;
use ems_gateway::storage::Incoming;
use ems_gateway::store::Store;
use ems_gateway::Config;

/// GB/T 2589 appendix A as this test knows it: raw coal 0.7143 kgce/kg, electricity 0.1229
/// kgce/kWh (equivalent) and 0.404 (equal value, the data file's secondary figure).
const RAW_COAL_KGCE_PER_T: f64 = 714.3;
const ELECTRICITY: [f64; 2] = [0.1229, 0.404];

const H: i64 = 3_600_000;
const Q: i64 = 900_000;
/// 2025-01-01T00:00+08:00.
const DAY1: i64 = 1_735_660_800_000;

fn config(db: &std::path::Path) -> String {
    format!(
        r#"
[mqtt]
host = "127.0.0.1"
port = 1883
client_id = "balance-test"
[storage]
path = "{}"
[ingest]
sites = ["s"]
edges = ["e"]
[enterprise]
id = "works"
name = "测试水泥有限公司"
code = "91000000TEST00002X"

[[units]]
id = "kiln1"
name = "1# 熟料线"
kind = "kiln"
[[units.flows]]
device = "clinker"
point = "total"
role = "product"
unit = "t"
[[units.flows]]
device = "kiln-coal"
point = "total"
role = "consumed"
carrier = "raw_coal"
unit = "t"
[[units.flows]]
device = "kiln-power"
point = "total"
role = "consumed"
carrier = "electricity"
unit = "kWh"
[[units.flows]]
device = "whr"
point = "total"
role = "recovered"
carrier = "electricity"
unit = "kWh"
generation = "gross"

[[units]]
id = "office"
name = "办公楼"
kind = "office"
function = "non_production"
[[units.flows]]
device = "office-power"
point = "total"
role = "consumed"
carrier = "electricity"
unit = "kWh"

[[boundary]]
device = "grid"
point = "total"
role = "purchase"
carrier = "electricity"
unit = "kWh"
[[boundary]]
device = "coal-in"
point = "total"
role = "purchase"
carrier = "raw_coal"
unit = "t"
[[boundary]]
device = "coal-yard"
point = "level"
role = "stock"
carrier = "raw_coal"
unit = "t"
max_rate_per_h = 5000.0  # a train unloads 700 t in a quarter of an hour
"#,
        db.display()
    )
}

/// What flowed in quarter `k` (from DAY1): the train unloads 700 t of coal in the quarter
/// after 06:00 each day; the kiln burns 7.25 t a quarter; 1 % of the grid's supply is lost.
fn quarter(k: i64) -> HashMap<&'static str, f64> {
    let clinker = 52.0 + (k % 4) as f64;
    let coal = 7.25;
    let kiln_power = clinker * 55.0;
    let whr = clinker * 30.0;
    let office = 40.0 + (k % 3) as f64;
    let grid = (kiln_power - whr + office) / 0.99;
    let delivery = if k % 96 == 24 { 700.0 } else { 0.0 };
    HashMap::from([
        ("clinker", clinker),
        ("kiln-coal", coal),
        ("kiln-power", kiln_power),
        ("whr", whr),
        ("office-power", office),
        ("grid", grid),
        ("coal-in", delivery),
        // The yard's level moves by what came in less what the kiln took.
        ("coal-yard", delivery - coal),
    ])
}

/// Two days of quarter-hour readings of every device `quarter` names (from DAY1), through the
/// store's ingest path; a stock gauge (`coal-yard`) starts at 900 t, every counter at zero.
fn write_two_days(
    store: &mut Store,
    config: &Config,
    quarter: impl Fn(i64) -> HashMap<&'static str, f64>,
) {
    let rules = config.write_rules();
    let mut totals: HashMap<&str, f64> = HashMap::new();
    let mut batch = Vec::new();
    for k in 0..=2 * 96 {
        let ts = DAY1 + k * Q;
        for (device, inc) in quarter(k - 1) {
            let total =
                totals
                    .entry(device)
                    .or_insert(if device == "coal-yard" { 900.0 } else { 0.0 });
            if k > 0 {
                *total += inc;
            }
            let point = if device == "coal-yard" {
                "level"
            } else {
                "total"
            };
            batch.push(Incoming::built(Telemetry {
                v: 1,
                site: "s".into(),
                edge: "e".into(),
                device: device.into(),
                seq: k as u64 + 1,
                ts_ms: ts,
                points: vec![PointValue {
                    id: point.into(),
                    v: Some(*total),
                    q: Quality::Good,
                }],
                signed: None,
            }));
        }
    }
    store.write_batch(&batch, &rules, DAY1).unwrap();
}

/// The report inputs over the store, a year and more after the readings.
fn inputs<'a>(config: &'a Config, reader: &'a ems_gateway::view::Reader) -> report::Inputs<'a> {
    report::Inputs {
        plant: &config.plant,
        reader,
        now_ms: DAY1 + 400 * 24 * H,
        earliest_ms: config.earliest_ms,
    }
}

/// The annual report of 2025 as JSON.
fn annual_2025(inputs: &report::Inputs) -> serde_json::Value {
    serde_json::to_value(report::annual::build(inputs, 2025, |_, _| {}).unwrap()).unwrap()
}

#[test]
fn the_works_is_drawn_from_its_boundary_with_its_stock_change_and_losses() {
    let dir = std::env::temp_dir().join(format!("ems-balance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    let config =
        Config::from_source(&ems_config::Source::embedded("<test>", &config(&db))).unwrap();
    let mut store = Store::open(&db).unwrap();
    write_two_days(&mut store, &config, quarter);
    let reader = store.reader().unwrap();

    // Day 2, from this test's own increments.
    let day2: Vec<HashMap<&str, f64>> = (96..192).map(quarter).collect();
    let sum = |d: &str| day2.iter().map(|q| q[d]).sum::<f64>();
    let grid = sum("grid");
    let coal_used = sum("coal-in") - sum("coal-yard");
    assert!((coal_used - 96.0 * 7.25).abs() < 1e-9);
    let want = [0, 1]
        .map(|b| coal_used * RAW_COAL_KGCE_PER_T + (grid - sum("office-power")) * ELECTRICITY[b]);
    let units_sum =
        sum("kiln-coal") * RAW_COAL_KGCE_PER_T + (sum("kiln-power") - sum("whr")) * ELECTRICITY[0];

    let b = ems_energy::balance::enterprise_balance(
        &config.plant,
        &reader,
        &[(DAY1 + 24 * H, DAY1 + 48 * H)],
    )
    .unwrap()
    .remove(0);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
    let e = &b.enterprise;
    assert!(close(e.equivalent_kgce, want[0]), "{e:?} vs {want:?}");
    assert!(close(e.equal_value_kgce, want[1]), "{e:?} vs {want:?}");
    assert!(close(e.units_sum_kgce, units_sum), "{e:?}");
    // The boundary exceeds the units by the grid's losses: 1 % of what it supplied.
    assert!(
        close(e.boundary_minus_units_kgce, 0.01 * grid * ELECTRICITY[0]),
        "{e:?}"
    );
    let coal = b.carriers.iter().find(|c| c.carrier == "raw_coal").unwrap();
    assert!(close(coal.purchase, 700.0));
    assert!(close(coal.stock_change, 700.0 - 96.0 * 7.25), "{coal:?}");
    assert!(close(coal.remainder, 0.0), "{coal:?}");
    let power = b
        .carriers
        .iter()
        .find(|c| c.carrier == "electricity")
        .unwrap();
    assert!(close(power.remainder, 0.01 * grid), "{power:?}");
    assert_eq!(b.completeness, 1.0);

    // The annual report's totals come from the boundary, its balance table with them.
    let inputs = inputs(&config, &reader);
    let json = annual_2025(&inputs);
    assert_eq!(json["totals"]["drawn_from"], "boundary");
    let both_days: Vec<HashMap<&str, f64>> = (0..192).map(quarter).collect();
    let all = |d: &str| both_days.iter().map(|q| q[d]).sum::<f64>();
    // Readings run from DAY1 to the end of day 2: the year's figure is those two days.
    let year = ((all("coal-in") - all("coal-yard")) * RAW_COAL_KGCE_PER_T
        + (all("grid") - all("office-power")) * ELECTRICITY[0])
        / 1000.0;
    let got = json["totals"]["comprehensive_tce"].as_f64().unwrap();
    assert!(close(got, year), "{got} vs {year}");
    assert!(json["balance"]["carriers"].as_array().unwrap().len() == 2);
    assert!(
        json["totals"]["units_sum_tce"].as_f64().unwrap() < got,
        "the units leave the losses out"
    );
    // January's compliance report carries the enterprise's month from its boundary: both days.
    let month = report::compliance::build(&inputs, (2025, 1)).unwrap();
    let e = month.enterprise_energy.as_ref().unwrap();
    assert!(
        close(e.energy.energy_kgce / 1000.0, year),
        "{e:?} vs {year}"
    );
    assert!(
        !e.reportable,
        "two days of a month's boundary readings: {e:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cement works above and an aluminium smelter as a group's two enterprises on one
/// gateway: each unit and boundary meter names its enterprise.
fn group_config(db: &std::path::Path) -> String {
    let works = config(db)
        .replace("[enterprise]", "[[enterprises]]")
        .replace("[[units]]\n", "[[units]]\nenterprise = \"works\"\n")
        .replace("[[boundary]]\n", "[[boundary]]\nenterprise = \"works\"\n");
    works
        + r#"
[[enterprises]]
id = "smelter"
name = "测试铝业有限公司"
code = "91000000TEST00003X"

[[units]]
id = "pot1"
name = "1# 电解系列"
kind = "electrolysis"
enterprise = "91000000TEST00003X"  # the credit code names it as well
[[units.flows]]
device = "pot-al"
point = "total"
role = "product"
unit = "t"
[[units.flows]]
device = "pot-power"
point = "total"
role = "consumed"
carrier = "electricity"
unit = "kWh"

[[boundary]]
enterprise = "smelter"
device = "smelter-grid"
point = "total"
role = "purchase"
carrier = "electricity"
unit = "kWh"
"#
}

/// The works' quarter and the smelter's: 2 t of aluminium at 13 500 kWh/t, 2 % lost between
/// its grid meter and the potline.
fn group_quarter(k: i64) -> HashMap<&'static str, f64> {
    let mut q = quarter(k);
    q.insert("pot-al", 2.0);
    q.insert("pot-power", 2.0 * 13_500.0);
    q.insert("smelter-grid", 2.0 * 13_500.0 / 0.98);
    q
}

#[test]
fn a_group_of_two_enterprises_on_one_gateway_is_drawn_enterprise_by_enterprise() {
    let dir = std::env::temp_dir().join(format!("ems-group-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    let config =
        Config::from_source(&ems_config::Source::embedded("<test>", &group_config(&db))).unwrap();
    let mut store = Store::open(&db).unwrap();
    write_two_days(&mut store, &config, group_quarter);
    let reader = store.reader().unwrap();
    let day2 = [(DAY1 + 24 * H, DAY1 + 48 * H)];
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
    let quarters: Vec<HashMap<&str, f64>> = (96..192).map(group_quarter).collect();
    let sum = |d: &str| quarters.iter().map(|q| q[d]).sum::<f64>();

    // Each enterprise from its own boundary: the works' coal and grid, the smelter's grid.
    let balance = |name: &str| {
        let plant = config.plant.of_enterprise(name).unwrap();
        ems_energy::balance::enterprise_balance(&plant, &reader, &day2)
            .unwrap()
            .remove(0)
            .enterprise
    };
    let works = balance("works");
    let coal_used = sum("coal-in") - sum("coal-yard");
    let want =
        coal_used * RAW_COAL_KGCE_PER_T + (sum("grid") - sum("office-power")) * ELECTRICITY[0];
    assert!(close(works.equivalent_kgce, want), "{works:?} vs {want}");
    let smelter = balance("91000000TEST00003X");
    assert!(
        close(
            smelter.equivalent_kgce,
            sum("smelter-grid") * ELECTRICITY[0]
        ),
        "{smelter:?}"
    );
    assert!(
        close(smelter.units_sum_kgce, sum("pot-power") * ELECTRICITY[0]),
        "{smelter:?}"
    );
    assert!(
        close(
            smelter.boundary_minus_units_kgce,
            0.02 * sum("smelter-grid") * ELECTRICITY[0]
        ),
        "the smelter's own losses, not the works': {smelter:?}"
    );

    // Each enterprise's annual report holds its own units and devices, under its own name.
    let inputs = inputs(&config, &reader);
    let annual = |enterprise: Option<&str>| {
        let request = report::Request::Annual {
            year: 2025,
            enterprise: enterprise.map(str::to_owned),
        };
        let no_font = || anyhow::bail!("no PDF here");
        report::make(
            &inputs,
            &request,
            report::Format::Json,
            &no_font,
            |_, _| {},
            None,
        )
        .map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).unwrap())
    };
    let r = annual(Some("smelter")).unwrap();
    assert_eq!(r["enterprise"], "测试铝业有限公司");
    assert_eq!(r["enterprise_code"], "91000000TEST00003X");
    let units: Vec<&str> = r["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(units, ["pot1"]);
    let mut devices: Vec<&str> = r["data_quality"]["sequence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    devices.sort_unstable();
    assert_eq!(devices, ["pot-al", "pot-power", "smelter-grid"]);
    let both: Vec<HashMap<&str, f64>> = (0..192).map(group_quarter).collect();
    let year = both.iter().map(|q| q["smelter-grid"]).sum::<f64>() * ELECTRICITY[0] / 1000.0;
    let got = r["totals"]["comprehensive_tce"].as_f64().unwrap();
    assert!(close(got, year), "{got} vs {year}");
    assert_eq!(
        annual(Some("works")).unwrap()["units"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A group's report must say whose it is.
    let refused = annual(None).unwrap_err().to_string();
    assert!(
        refused.contains("several enterprises (works, smelter)"),
        "{refused}"
    );
    let unknown = annual(Some("mine")).unwrap_err().to_string();
    assert!(unknown.contains("no enterprise `mine`"), "{unknown}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_group_config_names_whose_each_unit_and_boundary_meter_is() {
    let db = std::path::Path::new("/nonexistent/gateway.db");
    let err = |text: String| {
        Config::from_source(&ems_config::Source::embedded("group.toml", &text))
            .unwrap_err()
            .to_string()
    };
    // A unit of no enterprise, in a group.
    let e = err(group_config(db).replace("enterprise = \"91000000TEST00003X\"", ""));
    assert!(
        e.contains("key `units[2].enterprise`") && e.contains("several enterprises"),
        "{e}"
    );
    let e = err(group_config(db).replace(
        "enterprise = \"smelter\"\ndevice",
        "enterprise = \"mine\"\ndevice",
    ));
    assert!(
        e.contains("key `boundary[3].enterprise`") && e.contains("unknown enterprise `mine`"),
        "{e}"
    );
    let e = err(group_config(db)
        .replace("id = \"smelter\"\n", "")
        .replace("code = \"91000000TEST00003X\"\n", ""));
    assert!(e.contains("key `enterprises[1].id`"), "{e}");
    let e = err(group_config(db).replace(
        "[[enterprises]]\nid = \"smelter\"",
        "[enterprise]\nid = \"smelter\"",
    ));
    assert!(e.contains("not both"), "{e}");
}

/// The works with its output value and value added month by month from a CSV file, and a
/// target of 3 % less energy per 10 000 yuan than the year before.
fn config_with_values(db: &std::path::Path, csv: &std::path::Path) -> String {
    config(db).replace(
        "code = \"91000000TEST00002X\"\n",
        &format!(
            "code = \"91000000TEST00002X\"\nmonthly_values_csv = \"{}\"\nintensity_target_pct = 3.0\n",
            csv.display()
        ),
    )
}

#[test]
fn the_annual_report_draws_energy_per_10_000_yuan_and_does_not_judge_a_year_without_record() {
    let dir = std::env::temp_dir().join(format!("ems-intensity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    let csv = dir.join("values.csv");
    // 2024 and 2025: 2 000 (10 000 yuan) of output value and 500 of value added a month;
    // 2025-03 has no value added reported.
    let mut text = String::from("month,output_value,value_added\n");
    for year in [2024, 2025] {
        for m in 1..=12 {
            let added = if (year, m) == (2025, 3) { "" } else { "500" };
            text.push_str(&format!("{year}-{m:02},2000,{added}\n"));
        }
    }
    std::fs::write(&csv, &text).unwrap();
    let config = Config::from_source(&ems_config::Source::embedded(
        "<test>",
        &config_with_values(&db, &csv),
    ))
    .unwrap();
    let mut store = Store::open(&db).unwrap();
    write_two_days(&mut store, &config, quarter);
    let reader = store.reader().unwrap();
    let inputs = inputs(&config, &reader);
    let r = report::annual::build(&inputs, 2025, |_, _| {}).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    let y = r
        .intensity
        .as_ref()
        .expect("values and a target are configured");
    let tce = r.totals.comprehensive_tce;
    assert!(close(y.this_year.output_value.unwrap(), 24_000.0));
    assert!(close(
        y.this_year.tce_per_10k_yuan_output.unwrap(),
        tce / 24_000.0
    ));
    // One month without value added: that figure is not drawn.
    assert_eq!(y.this_year.value_added, None);
    assert_eq!(y.this_year.tce_per_10k_yuan_value_added, None);
    // January holds the two recorded days.
    let jan = &r.months[0];
    assert!(close(
        jan.tce_per_10k_yuan_output.unwrap(),
        jan.comprehensive_tce / 2000.0
    ));
    assert!(close(
        jan.tce_per_10k_yuan_value_added.unwrap(),
        jan.comprehensive_tce / 500.0
    ));
    assert_eq!(r.months[2].tce_per_10k_yuan_value_added, None);
    // Nothing was recorded in 2024: the change is not judged, and the report says why.
    assert_eq!(y.target_met, None);
    assert_eq!(y.target_reduction_pct, Some(3.0));
    assert!(
        y.not_judged
            .as_deref()
            .unwrap()
            .contains("not completely recorded"),
        "{y:?}"
    );
    // In the CSV as well.
    let rows = report::tables::annual_figures(&r);
    let row = |figure: &str| {
        rows.iter()
            .find(|f| f.figure == figure)
            .unwrap()
            .value
            .clone()
    };
    assert_eq!(row("output_value"), "24000");
    assert_eq!(row("intensity_target_met"), "");

    // A bad row is refused with the CSV file and its line.
    std::fs::write(&csv, text.replace("2024-05,2000,500", "2024-05,-2000,500")).unwrap();
    let err = Config::from_source(&ems_config::Source::embedded(
        "<test>",
        &config_with_values(&db, &csv),
    ))
    .unwrap_err();
    assert_eq!(
        (err.file.as_path(), err.line),
        (csv.as_path(), Some(6)),
        "{err}"
    );
    assert!(err.to_string().contains("output_value"), "{err}");
    std::fs::write(&csv, text.replace("2024-06,", "2024-05,")).unwrap();
    let err = Config::from_source(&ems_config::Source::embedded(
        "<test>",
        &config_with_values(&db, &csv),
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("2024-05 is given twice") && err.line == Some(7),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The works above with its coal's heating value from the laboratory's CSV file, on every flow
/// of that coal (the yard's deliveries, its level and the kiln's feed are one coal).
fn config_with_lab(db: &std::path::Path, csv: &std::path::Path) -> String {
    let lab = format!("lhv_csv = \"{}\"\n", csv.display());
    // The kiln's coal, the deliveries and the yard's level all read `carrier = "raw_coal"`
    // then `unit = "t"`.
    config(db).replace(
        "carrier = \"raw_coal\"\nunit = \"t\"\n",
        &format!("carrier = \"raw_coal\"\nunit = \"t\"\n{lab}"),
    )
}

#[test]
fn the_coal_is_counted_at_the_heating_value_the_laboratory_measured_from_its_time_on() {
    let dir = std::env::temp_dir().join(format!("ems-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    let csv = dir.join("coal-lab.csv");
    // From the second day's midnight the coal delivered is richer: 25 000 kJ/kg, 25 000 000
    // kJ per metered tonne (the table's raw coal is 20 908 kJ/kg, 714.3 kgce/t).
    std::fs::write(&csv, "from,lhv_kj\n2025-01-02 00:00,25000000\n").unwrap();
    let text = config_with_lab(&db, &csv);
    assert_eq!(text.matches("lhv_csv").count(), 3, "{text}");
    let config = Config::from_source(&ems_config::Source::embedded("<test>", &text)).unwrap();
    let mut store = Store::open(&db).unwrap();
    write_two_days(&mut store, &config, quarter);
    let reader = store.reader().unwrap();
    let rich = 25_000_000.0 / 29_307.0;
    let days: Vec<Vec<HashMap<&str, f64>>> =
        [0..96, 96..192].map(|r| r.map(quarter).collect()).to_vec();
    let sum = |d: usize, k: &str| days[d].iter().map(|q| q[k]).sum::<f64>();
    let b = ems_energy::balance::enterprise_balance(
        &config.plant,
        &reader,
        &[(DAY1, DAY1 + 24 * H), (DAY1 + 24 * H, DAY1 + 48 * H)],
    )
    .unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
    for (d, per_t) in [(0, RAW_COAL_KGCE_PER_T), (1, rich)] {
        let coal = (sum(d, "coal-in") - sum(d, "coal-yard")) * per_t;
        let power = (sum(d, "grid") - sum(d, "office-power")) * ELECTRICITY[0];
        let e = &b[d].enterprise;
        assert!(close(e.equivalent_kgce, coal + power), "day {d}: {e:?}");
        let kiln =
            sum(d, "kiln-coal") * per_t + (sum(d, "kiln-power") - sum(d, "whr")) * ELECTRICITY[0];
        assert!(close(e.units_sum_kgce, kiln), "day {d}: {e:?}");
    }
    // The kiln's figures say which share of its coal was counted at a measured value.
    let figures = ems_energy::figures::unit_figures(
        &config.plant,
        &reader,
        &config.plant.units[0],
        &[(DAY1, DAY1 + 24 * H), (DAY1 + 12 * H, DAY1 + 36 * H)],
    )
    .unwrap();
    let coal = |i: usize| {
        figures[i]
            .carriers
            .iter()
            .find(|c| c.device == "kiln-coal")
            .unwrap()
            .clone()
    };
    assert_eq!(coal(0).measured_lhv_share, Some(0.0));
    assert!((coal(1).measured_lhv_share.unwrap() - 0.5).abs() < 1e-12);
    assert!(close(
        coal(1).kgce_per_unit.unwrap(),
        (RAW_COAL_KGCE_PER_T + rich) / 2.0
    ));

    // A bad row names the file and its line.
    std::fs::write(
        &csv,
        "from,lhv_kj\n2025-01-02 00:00,25000000\n2025-01-03,24000000\n",
    )
    .unwrap();
    let e = Config::from_source(&ems_config::Source::embedded("<test>", &text))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{}:3", csv.display())) && e.contains("key `from`"),
        "{e}"
    );
    std::fs::write(
        &csv,
        "from,lhv_kj\n2025-01-02 00:00,25000000\n2025-01-01T16:00:00Z,1\n",
    )
    .unwrap();
    let e = Config::from_source(&ems_config::Source::embedded("<test>", &text))
        .unwrap_err()
        .to_string();
    assert!(e.contains(":3") && e.contains("given twice"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The works above with an on-line coal analyser (在线煤质分析仪) on the kiln's coal feed,
/// read as a point: the kiln's coal is counted slot by slot at the analyser's reading.
fn config_with_analyser(db: &std::path::Path) -> String {
    let kiln_coal = "device = \"kiln-coal\"\npoint = \"total\"\nrole = \"consumed\"\ncarrier = \"raw_coal\"\nunit = \"t\"\n";
    config(db).replace(
        kiln_coal,
        &format!("{kiln_coal}lhv_point = {{ device = \"coal-analyser\", point = \"lhv\" }}\n"),
    )
}

/// The analyser's reading at quarter `k` from DAY1, kJ per tonne; none from 06:00 to 08:00 of
/// the second day (k 120..128: the analyser was being calibrated).
fn analyser(k: i64) -> Option<f64> {
    (!(120..128).contains(&k)).then_some(21_000_000.0 + 150_000.0 * (k % 7) as f64)
}

#[test]
fn the_kilns_coal_is_counted_slot_by_slot_at_the_analysers_reading() {
    let dir = std::env::temp_dir().join(format!("ems-analyser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    let text = config_with_analyser(&db);
    let config = Config::from_source(&ems_config::Source::embedded("<test>", &text)).unwrap();
    assert!(
        config.known_device("coal-analyser"),
        "ingest takes the analyser"
    );
    let mut store = Store::open(&db).unwrap();
    write_two_days(&mut store, &config, quarter);
    let readings: Vec<Incoming> = (0..=2 * 96)
        .filter_map(|k| {
            Some(Incoming::built(Telemetry {
                v: 1,
                site: "s".into(),
                edge: "e".into(),
                device: "coal-analyser".into(),
                seq: k as u64 + 1,
                ts_ms: DAY1 + k * Q,
                points: vec![PointValue {
                    id: "lhv".into(),
                    v: Some(analyser(k)?),
                    q: Quality::Good,
                }],
                signed: None,
            }))
        })
        .collect();
    store
        .write_batch(&readings, &config.write_rules(), DAY1)
        .unwrap();
    let reader = store.reader().unwrap();

    // By hand: the kiln burns 7.25 t a quarter; a quarter between two readings is counted at
    // their mean (the analyser's readings over the quarter), one without both at the table's
    // raw coal, 714.3 kgce/t. Its electricity as before.
    let per_t = |q: i64| match (analyser(q), analyser(q + 1)) {
        (Some(a), Some(b)) => (a + b) / 2.0 / 29_307.0,
        _ => RAW_COAL_KGCE_PER_T,
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
    let days = [(DAY1, DAY1 + 24 * H), (DAY1 + 24 * H, DAY1 + 48 * H)];
    let figures =
        ems_energy::figures::unit_figures(&config.plant, &reader, &config.plant.units[0], &days)
            .unwrap();
    let balance = ems_energy::balance::enterprise_balance(&config.plant, &reader, &days).unwrap();
    for (d, day) in figures.iter().enumerate() {
        let quarters = (d as i64 * 96)..(d as i64 + 1) * 96;
        let coal_kgce: f64 = quarters
            .clone()
            .map(|q| quarter(q)["kiln-coal"] * per_t(q))
            .sum();
        let power: f64 = quarters
            .clone()
            .map(|q| (quarter(q)["kiln-power"] - quarter(q)["whr"]) * ELECTRICITY[0])
            .sum();
        assert!(
            close(day.energy_kgce, coal_kgce + power),
            "day {d}: {} vs {}",
            day.energy_kgce,
            coal_kgce + power
        );
        // The balance's sum of units takes the same path.
        assert!(close(
            balance[d].enterprise.units_sum_kgce,
            coal_kgce + power
        ));
        // Day 2: nine quarters (the one before the gap's readings resume and the eight
        // without readings) at the table's value.
        let coal = day
            .carriers
            .iter()
            .find(|c| c.device == "kiln-coal")
            .unwrap();
        let measured = [1.0, 87.0 / 96.0][d];
        assert!(
            (coal.measured_lhv_share.unwrap() - measured).abs() < 1e-9,
            "day {d}: {:?}",
            coal.measured_lhv_share
        );
    }

    // The annual report's data quality lists the analyser beside the meters.
    let meters = annual_2025(&inputs(&config, &reader))["data_quality"]["meters"].clone();
    assert!(
        meters
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["device"] == "coal-analyser" && m["point"] == "lhv"),
        "{meters}"
    );

    // The analyser's point cannot be a counter some flow accounts for.
    let clash = text.replace(
        "{ device = \"coal-analyser\", point = \"lhv\" }",
        "{ device = \"grid\", point = \"total\" }",
    );
    let e = Config::from_source(&ems_config::Source::embedded("<test>", &clash)).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("units[0].flows[1].lhv_point"), "{e}");
    // Nor can a product have a heating value.
    let on_product = text.replace(
        "role = \"product\"\nunit = \"t\"\n",
        "role = \"product\"\nunit = \"t\"\nlhv_point = { device = \"a\", point = \"b\" }\n",
    );
    let e = Config::from_source(&ems_config::Source::embedded("<test>", &on_product)).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("units[0].flows[0].lhv_point"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cement works above with its site's water intake meter and the clinker quota of GB/T
/// 18916.62 judged on it.
fn config_with_site_water(db: &std::path::Path) -> String {
    config(db).replace(
        "code = \"91000000TEST00002X\"\n",
        "code = \"91000000TEST00002X\"\n[[enterprise.sites]]\nid = \"plant\"\nname = \"厂区\"\nwater_quota = \"cement_clinker\"\nwater_product_units = [\"kiln1\"]\n[[enterprise.sites.water_intake]]\ndevice = \"water-in\"\npoint = \"total\"\nrole = \"water\"\nunit = \"m3\"\n",
    )
}

/// The works' quarters with the site's intake: 0.3 m3 a tonne of clinker for the line and 4 m3
/// a quarter for the offices and the yard's dust spraying, which no unit meters.
fn quarter_with_water(k: i64) -> HashMap<&'static str, f64> {
    let mut q = quarter(k);
    q.insert("water-in", q["clinker"] * 0.3 + 4.0);
    q
}

#[test]
fn the_sites_intake_is_judged_on_its_water_quota_in_the_annual_report() {
    let dir = std::env::temp_dir().join(format!("ems-site-water-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    let config = Config::from_source(&ems_config::Source::embedded(
        "<test>",
        &config_with_site_water(&db),
    ))
    .unwrap();
    let mut store = Store::open(&db).unwrap();
    write_two_days(&mut store, &config, quarter_with_water);
    let reader = store.reader().unwrap();
    let inputs = inputs(&config, &reader);
    let r = report::annual::build(&inputs, 2025, |_, _| {}).unwrap();
    let quarters: Vec<HashMap<&str, f64>> = (0..192).map(quarter_with_water).collect();
    let all = |d: &str| quarters.iter().map(|q| q[d]).sum::<f64>();
    let w = &r.sites_water[0];
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(close(w.intake_m3, all("water-in")), "{w:?}");
    assert!(close(w.product_t, all("clinker")), "{w:?}");
    let per_t = all("water-in") / all("clinker");
    assert!(close(w.m3_per_t.unwrap(), per_t), "{w:?}");
    // About 0.37 m3/t: above the advanced 0.225, within the general 0.510.
    assert_eq!(w.quota.as_ref().unwrap().grade, "general", "{w:?}");
    let csv = report::tables::annual_figures(&r)
        .into_iter()
        .filter(|f| f.section == "site_water")
        .map(|f| (f.figure, f.value))
        .collect::<HashMap<_, _>>();
    assert_eq!(csv["quota_grade"], "general");
    assert!(close(csv["water_per_product"].parse().unwrap(), per_t));
    // January's compliance report judges the same site over its month (both days were in it).
    let month = report::compliance::build(&inputs, (2025, 1)).unwrap();
    let m = &month.sites_water[0];
    assert!(
        close(m.intake_m3, w.intake_m3) && close(m.product_t, w.product_t),
        "{m:?}"
    );
    assert_eq!(m.quota.as_ref().unwrap().grade, "general");
    let monthly = report::tables::compliance_figures(&month);
    assert!(monthly
        .iter()
        .any(|f| f.section == "site_water" && f.figure == "quota_grade" && f.value == "general"));
    assert!(
        month.enterprise_energy.is_some(),
        "the works still has its energy boundary"
    );
    // The PDF's table of the site (tests/run.sh installs the CJK font and poppler).
    let (_, font) = report::pdf::load_font(None).expect("a CJK font");
    let pdf = report::pdf::annual(&r, &config.plant, &font, None).unwrap();
    let file = dir.join("annual.pdf");
    std::fs::write(&file, pdf).unwrap();
    let text = std::process::Command::new("pdftotext")
        .args(["-layout", file.to_str().unwrap(), "-"])
        .output()
        .expect("pdftotext (poppler-utils)");
    let text = String::from_utf8_lossy(&text.stdout);
    let row = text
        .lines()
        .find(|l| l.contains("厂区") && l.contains("0.510/0.225"))
        .unwrap_or_else(|| panic!("no site row:\n{text}"));
    assert!(
        row.contains("通用") && row.contains(&format!("{per_t:.3}")),
        "{row}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
