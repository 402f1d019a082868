//! Golden test of the annual report: a clinker line's year of hourly meter readings (with one
//! meter out for a day) goes into a real SQLite store through the ingest path; every figure of
//! the report is then recomputed here from the raw samples read back, with this test's own
//! coefficients and limit levels, and compared.

use std::collections::HashMap;

use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_gateway::report;
use ems_gateway::storage::Incoming;
use ems_gateway::store::Store;
use ems_gateway::Config;

/// GB/T 2589 appendix A as this test knows it: raw coal 0.7143 kgce/kg, electricity
/// (equivalent value) 0.1229 kgce/kWh.
const RAW_COAL_KGCE_PER_T: f64 = 714.3;
const ELECTRICITY_KGCE_PER_KWH: f64 = 0.1229;
/// The equal value (等价值) as the data file gives it (GB 21341-2008's 0.404, secondary).
const ELECTRICITY_EQUAL_KGCE_PER_KWH: f64 = 0.404;
/// GB 16780-2021 table 2, clinker comprehensive energy, levels 1-3 (kgce/t).
const CLINKER_LEVELS: [f64; 3] = [100.0, 107.0, 117.0];

const H: i64 = 3_600_000;
/// 2025-01-01T00:00+08:00.
const YEAR_START: i64 = 1_735_660_800_000;
/// 2025-03-10T00:00+08:00: the power meter is silent for that local day.
const OUTAGE_START: i64 = 1_741_536_000_000;

fn config(db: &std::path::Path) -> String {
    format!(
        r#"
[mqtt]
host = "127.0.0.1"
port = 1883
client_id = "report-test"
[storage]
path = "{}"
[ingest]
sites = ["s"]
edges = ["e"]
[accounting]
max_sample_gap_s = 3600
[enterprise]
name = "测试水泥有限公司"
code = "91000000TEST00001X"

[[units]]
id = "kiln1"
name = "1# 熟料线"
kind = "kiln"
limits = ["clinker_comprehensive", "clinker_electricity"]
water_quota = "cement_clinker"
[[units.flows]]
device = "kiln1-clinker"
point = "total_t"
role = "product"
unit = "t"
[[units.flows]]
device = "kiln1-coal"
point = "total_t"
role = "consumed"
carrier = "raw_coal"
unit = "t"
[[units.flows]]
device = "kiln1-power"
point = "import_kwh"
role = "consumed"
carrier = "electricity"
unit = "kWh"
[[units.flows]]
device = "kiln1-whr"
point = "import_kwh"
role = "recovered"
carrier = "electricity"
unit = "kWh"
generation = "gross"
[[units.flows]]
device = "kiln1-water"
point = "total_m3"
role = "water"
unit = "m3"
"#,
        db.display()
    )
}

/// 2025-07-10T00:00+08:00: a burner fault wastes a third more coal for two local days.
const BAD_DAYS_START: i64 = 1_752_076_800_000;

/// Hourly increments of each meter: clinker varies by hour and season, the rest follow it.
fn increments(hour: i64) -> [(&'static str, &'static str, f64); 5] {
    let clinker = 200.0 + (hour % 7) as f64 * 3.0 + ((hour / 720) % 12) as f64 * 2.0;
    // The increment of hour h is what flowed in the hour ending at YEAR_START + h hours.
    let ended = YEAR_START + hour * H;
    let fault = (BAD_DAYS_START + H..=BAD_DAYS_START + 48 * H).contains(&ended);
    let coal = clinker * 0.138 * if fault { 4.0 / 3.0 } else { 1.0 };
    [
        ("kiln1-clinker", "total_t", clinker),
        ("kiln1-coal", "total_t", coal),
        (
            "kiln1-power",
            "import_kwh",
            clinker * 52.0 + (hour % 5) as f64,
        ),
        ("kiln1-whr", "import_kwh", clinker * 30.0),
        ("kiln1-water", "total_m3", clinker * 0.3),
    ]
}

fn fill_year(store: &mut Store, config: &Config) {
    let rules = config.write_rules();
    let hours = 365 * 24;
    let mut totals: HashMap<&str, f64> = HashMap::new();
    let mut batch = Vec::new();
    for hour in 0..=hours {
        let ts = YEAR_START + hour * H;
        for (device, point, inc) in increments(hour) {
            let total = totals.entry(device).or_insert(1_000.0);
            if hour > 0 {
                *total += inc;
            }
            // The power meter's edge never delivered that day (its numbers stay missing).
            if device == "kiln1-power" && (OUTAGE_START..OUTAGE_START + 24 * H).contains(&ts) {
                continue;
            }
            batch.push(Incoming::built(Telemetry {
                v: 1,
                site: "s".into(),
                edge: "e".into(),
                device: device.into(),
                seq: hour as u64 + 1,
                ts_ms: ts,
                points: vec![PointValue {
                    id: point.into(),
                    v: Some(*total),
                    q: Quality::Good,
                }],
                signed: None,
            }));
        }
        if batch.len() >= 5_000 {
            store.write_batch(&batch, &rules, ts).unwrap();
            batch.clear();
        }
    }
    store.write_batch(&batch, &rules, YEAR_START).unwrap();
}

/// A fresh store in its own directory, holding the year, and the plant it belongs to.
fn year_in_store(tag: &str) -> (std::path::PathBuf, Config, Store) {
    let dir = std::env::temp_dir().join(format!("ems-report-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    let config =
        Config::from_source(&ems_config::Source::embedded("<test>", &config(&db))).unwrap();
    let mut store = Store::open(&db).unwrap();
    fill_year(&mut store, &config);
    (dir, config, store)
}

/// What a report is made from, at a "now" long after the golden year.
fn inputs<'a>(config: &'a Config, reader: &'a ems_gateway::view::Reader) -> report::Inputs<'a> {
    report::Inputs {
        plant: &config.plant,
        reader,
        now_ms: YEAR_START + 400 * 24 * H,
        earliest_ms: config.earliest_ms,
    }
}

/// Raw samples read back from the store: device -> (time, value), in time order.
fn raw_samples(store: &Store) -> HashMap<String, Vec<(i64, f64)>> {
    let mut csv = Vec::new();
    store
        .reader()
        .unwrap()
        .export_csv(None, YEAR_START, YEAR_START + 366 * 24 * H, &mut csv)
        .unwrap();
    let mut out: HashMap<String, Vec<(i64, f64)>> = HashMap::new();
    for rec in csv::Reader::from_reader(csv.as_slice()).records() {
        let rec = rec.unwrap();
        let ts = chrono::DateTime::parse_from_rfc3339(&rec[3])
            .unwrap()
            .timestamp_millis();
        out.entry(rec[0].to_owned())
            .or_default()
            .push((ts, rec[4].parse().unwrap()));
    }
    out
}

/// A counter's increase over `[from, to)`, from the samples at or nearest inside the bounds.
fn increase(samples: &[(i64, f64)], from: i64, to: i64) -> f64 {
    let at = |t: i64| {
        samples
            .iter()
            .find(|(ts, _)| *ts == t)
            .map(|s| s.1)
            .unwrap()
    };
    at(to) - at(from)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn every_figure_of_the_annual_report_is_recomputed_from_raw_samples() {
    let (dir, config, store) = year_in_store("annual");

    let mut steps = Vec::new();
    let reader = store.reader().unwrap();
    let r =
        report::annual::build(&inputs(&config, &reader), 2025, |d, t| steps.push((d, t))).unwrap();
    assert_eq!(steps.last(), Some(&(2, 2)), "progress ends at its total");
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["report"], "annual");
    assert_eq!(json["version"], 1);
    assert_eq!(json["enterprise"], "测试水泥有限公司");

    let raw = raw_samples(&store);
    let month_bounds: Vec<i64> = (1..=13)
        .map(|m| {
            let (y, m) = if m == 13 { (2026, 1) } else { (2025, m) };
            report::local_midnight(&config.plant, y, m, 1).unwrap()
        })
        .collect();
    let unit = &r.units[0];
    assert_eq!(unit.months.len(), 12);
    let (mut year_energy, mut year_output, mut year_coal) = (0.0, 0.0, 0.0);
    let (mut year_power, mut year_whr, mut year_water) = (0.0, 0.0, 0.0);
    for (m, fig) in unit.months.iter().enumerate() {
        let (from, to) = (month_bounds[m], month_bounds[m + 1]);
        let inc = |d: &str| increase(&raw[d], from, to);
        let output = inc("kiln1-clinker");
        let (coal, power, whr, water) = (
            inc("kiln1-coal"),
            inc("kiln1-power"),
            inc("kiln1-whr"),
            inc("kiln1-water"),
        );
        let energy = coal * RAW_COAL_KGCE_PER_T + (power - whr) * ELECTRICITY_KGCE_PER_KWH;
        assert!(
            close(fig.product_t, output),
            "month {m}: {} vs {output}",
            fig.product_t
        );
        assert!(
            close(fig.energy_kgce, energy),
            "month {m}: {} vs {energy}",
            fig.energy_kgce
        );
        assert!(close(fig.kgce_per_t.unwrap(), energy / output));
        // Gross: the waste-heat power is credited in energy, not netted out (GB 16780).
        assert!(close(fig.electricity_kwh, power));
        assert!(close(fig.electricity_generated_kwh, whr));
        assert!(close(fig.water_m3, water));
        assert!(close(r.months[m].comprehensive_tce, energy / 1000.0));
        year_energy += energy;
        year_output += output;
        year_coal += coal;
        year_power += power;
        year_whr += whr;
        year_water += water;
    }
    let year = &unit.year;
    assert!(close(year.energy_kgce, year_energy) && close(year.product_t, year_output));
    assert!(close(r.totals.comprehensive_tce, year_energy / 1000.0));
    // Both electricity bases side by side.
    assert!(close(
        r.totals.comprehensive_equivalent_tce,
        year_energy / 1000.0
    ));
    let equal =
        year_coal * RAW_COAL_KGCE_PER_T + (year_power - year_whr) * ELECTRICITY_EQUAL_KGCE_PER_KWH;
    assert!(close(
        r.totals.comprehensive_equal_value_tce,
        equal / 1000.0
    ));
    assert!(close(
        r.totals.recovered_tce,
        year_whr * ELECTRICITY_KGCE_PER_KWH / 1000.0
    ));
    assert!(close(r.totals.water_m3, year_water));
    let carrier = |code: &str, role: &str| {
        r.totals
            .by_carrier
            .iter()
            .find(|c| c.carrier == code && format!("{:?}", c.role).to_lowercase() == role)
            .unwrap_or_else(|| panic!("{code}/{role} in {:?}", r.totals.by_carrier))
            .quantity
    };
    assert!(close(carrier("raw_coal", "consumed"), year_coal));
    assert!(close(carrier("electricity", "consumed"), year_power));
    assert!(close(carrier("electricity", "recovered"), year_whr));

    // The level reached, judged here against the standard's levels.
    let kgce_per_t = year_energy / year_output;
    let level = CLINKER_LEVELS
        .iter()
        .position(|&l| kgce_per_t <= l)
        .map(|i| i as u8 + 1);
    assert_eq!(year.level, level, "{kgce_per_t} kgce/t");
    assert!(level.is_some(), "the example reaches a level: {kgce_per_t}");
    let water = year.water_quota.as_ref().expect("water judged");
    assert!(close(water.value, year_water / year_output));

    // Data quality: the power meter's silent day leaves 25 hours of March uncovered (from the
    // last sample before it to the first after), every other month and meter whole.
    let power = r
        .data_quality
        .meters
        .iter()
        .find(|m| m.device == "kiln1-power")
        .unwrap();
    let march_hours = 31.0 * 24.0;
    let march = power.months[2].completeness.unwrap();
    assert!(close(march, (march_hours - 25.0) / march_hours), "{march}");
    assert!(power.months[2].reportable);
    for m in &r.data_quality.meters {
        for (i, month) in m.months.iter().enumerate() {
            if !(m.device == "kiln1-power" && i == 2) {
                assert!(close(month.completeness.unwrap(), 1.0), "{} {i}", m.device);
            }
        }
    }
    assert!(close(unit.months[2].completeness, march));
    assert!(
        unit.months[2].estimated_share > 0.0,
        "the bridged day is estimated"
    );
    let ledger: HashMap<_, _> = r
        .data_quality
        .sequence
        .iter()
        .map(|s| (s.device.as_str(), (s.messages, s.missing)))
        .collect();
    assert_eq!(ledger["kiln1-power"], (365 * 24 + 1 - 24, 24));
    assert_eq!(ledger["kiln1-coal"], (365 * 24 + 1, 0));
    for d in &r.data_quality.daily_vs_monthly {
        assert!(d.within_limit && d.deviation_pct.unwrap() < 1e-9, "{d:?}");
    }

    // The CSV carries the same figures as the JSON.
    let mut csv = Vec::new();
    report::tables::write_csv(&report::tables::annual_figures(&r), &mut csv).unwrap();
    let mut found = 0;
    for rec in csv::Reader::from_reader(csv.as_slice()).records() {
        let rec = rec.unwrap();
        if &rec[0] == "unit_months" && &rec[3] == "comprehensive_energy" {
            let m = unit.months.iter().position(|f| f.start == rec[2]).unwrap();
            assert_eq!(rec[4].parse::<f64>().unwrap(), unit.months[m].energy_kgce);
            found += 1;
        }
        if &rec[0] == "totals" && &rec[3] == "comprehensive_energy" {
            assert_eq!(rec[4].parse::<f64>().unwrap(), r.totals.comprehensive_tce);
            assert_eq!(&rec[5], "tce");
            found += 1;
        }
    }
    assert_eq!(found, 13);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn savings_are_verified_against_a_baseline_of_the_first_half_year() {
    let (dir, config, store) = year_in_store("savings");
    let reader = store.reader().unwrap();
    let r = report::savings::build(
        &inputs(&config, &reader),
        "kiln1",
        ((2025, 1), (2025, 6)),
        ((2025, 7), (2025, 12)),
        &[],
    )
    .unwrap();
    assert!(r.excluded.is_empty(), "{:?}", r.excluded);
    assert_eq!((r.baseline_months.len(), r.reporting_months.len()), (6, 6));
    assert_eq!(r.baseline_months[2].label, "2025-03");
    // Figures from the same months of the annual report.
    let annual = report::annual::build(&inputs(&config, &reader), 2025, |_, _| {}).unwrap();
    let months = &annual.units[0].months;
    let sum = |range: std::ops::Range<usize>,
               f: &dyn Fn(&ems_energy::indicators::Indicator) -> f64| {
        range.map(|i| f(&months[i])).sum::<f64>()
    };
    let (be, bo) = (sum(0..6, &|m| m.energy_kgce), sum(0..6, &|m| m.product_t));
    let (re, ro) = (sum(6..12, &|m| m.energy_kgce), sum(6..12, &|m| m.product_t));
    let v = &r.verification;
    assert!(close(v.baseline_kgce_per_t.unwrap(), be / bo));
    assert!(close(v.reporting_kgce_per_t.unwrap(), re / ro));
    assert!(close(
        v.product_method_savings_tce.unwrap(),
        (be / bo - re / ro) * ro / 1000.0
    ));
    // Energy follows output closely here: the model is accepted and explains nearly all of it.
    assert!(v.model.accepted && v.model.r2 > 0.99, "{:?}", v.model);
    let last = v.periods.last().unwrap();
    assert!(close(last.cusum_kgce, -v.avoided_tce * 1000.0));
    // Data quality over both periods: the unit's five meter points, the power meter's March.
    assert_eq!(r.data_quality.meters.len(), 5);
    let power = r
        .data_quality
        .meters
        .iter()
        .find(|m| m.device == "kiln1-power")
        .unwrap();
    assert_eq!(power.months.len(), 12);
    assert!(power.months[2].completeness.unwrap() < 1.0 && power.months[2].reportable);
    assert_eq!(
        r.data_quality
            .sequence
            .iter()
            .find(|s| s.device == "kiln1-power")
            .unwrap()
            .missing,
        24
    );
    // A configured relevant variable enters the regression beside output.
    let power = ("kiln1-power".to_owned(), "import_kwh".to_owned());
    let with_power = report::savings::build(
        &inputs(&config, &reader),
        "kiln1",
        ((2025, 1), (2025, 6)),
        ((2025, 7), (2025, 12)),
        &[power],
    )
    .unwrap();
    let m = &with_power.verification.model;
    assert_eq!(m.variables, ["output_t", "kiln1-power/import_kwh"]);
    assert_eq!(m.coefficients.len(), 3);
    // March: the power meter's silent day still leaves it above 90 %, so no month is left out.
    assert!(with_power.excluded.is_empty(), "{:?}", with_power.excluded);
    let march = &with_power.baseline_months[2];
    let (from, to) = (
        report::local_midnight(&config.plant, 2025, 3, 1).unwrap(),
        report::local_midnight(&config.plant, 2025, 4, 1).unwrap(),
    );
    assert!(close(
        march.variables[1],
        increase(&raw_samples(&store)["kiln1-power"], from, to)
    ));
    // The PDF: model judgement, both savings figures and the CUSUM chart's title.
    let text = pdf_text(
        &dir,
        "savings",
        &report::pdf::savings(&r, &font(), None).unwrap(),
    );
    for expected in [
        "节能量审核报告".to_owned(),
        "CUSUM".to_owned(),
        format!("{:.4}", v.model.r2),
        format!("{:.3}", v.product_method_savings_tce.unwrap()),
        format!("{:.3}", v.avoided_tce),
    ] {
        assert!(text.contains(&expected), "`{expected}` missing:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn font() -> krilla::text::Font {
    report::pdf::load_font(None)
        .expect("a CJK font (tests/run.sh installs fonts-wqy-microhei)")
        .1
}

/// The text of a PDF, as pdftotext reads it.
fn pdf_text(dir: &std::path::Path, name: &str, pdf: &[u8]) -> String {
    let file = dir.join(format!("{name}.pdf"));
    std::fs::write(&file, pdf).unwrap();
    // Kept for a person to look at: target/tmp/<name>-report.pdf.
    let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-report.pdf"));
    std::fs::write(keep, pdf).unwrap();
    String::from_utf8(poppler(
        "pdftotext",
        &["-layout", file.to_str().unwrap(), "-"],
    ))
    .unwrap()
}

/// Runs a poppler tool (tests/run.sh installs poppler-utils).
fn poppler(tool: &str, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (tests/run.sh installs poppler-utils)"));
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn the_pdf_has_its_pages_chinese_text_figures_and_charts() {
    let (dir, config, store) = year_in_store("pdf");
    let reader = store.reader().unwrap();
    let r = report::annual::build(&inputs(&config, &reader), 2025, |_, _| {}).unwrap();
    let (font_file, font) = report::pdf::load_font(None)
        .expect("a CJK font (tests/run.sh installs fonts-wqy-microhei)");
    let pdf = report::pdf::annual(&r, &config.plant, &font, None).unwrap();
    // The font is embedded as a subset: far smaller than the font file.
    let font_len = std::fs::metadata(&font_file).unwrap().len() as usize;
    assert!(
        pdf.len() < font_len / 4,
        "{} bytes of PDF, font {font_len}",
        pdf.len()
    );
    let file = dir.join("annual.pdf");
    std::fs::write(&file, &pdf).unwrap();
    // Kept for a person to look at: target/tmp/annual-report.pdf.
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("annual-report.pdf"),
        &pdf,
    )
    .unwrap();
    let path = file.to_str().unwrap();

    let text = String::from_utf8(poppler("pdftotext", &["-layout", path, "-"])).unwrap();
    for expected in [
        "2025年度能源利用状况报告",
        "测试水泥有限公司",
        "91000000TEST00001X",
        "一、能源消费总量",
        "二、分品种能源消费",
        "原煤",
        "四、主要产品单位产品能耗与取水",
        "五、数据质量",
        "kiln1-power/import_kwh",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from the PDF text:\n{text}"
        );
    }
    // Figures as the JSON has them, rounded as printed.
    assert!(
        text.contains(&format!("{:.3}", r.totals.comprehensive_tce)),
        "{text}"
    );
    assert!(
        text.contains(&format!("{:.2}", r.units[0].year.kgce_per_t.unwrap())),
        "{text}"
    );
    // The power meter's March (97 %) is reportable; the sequence table shows its 24 missing.
    assert!(text.contains("97"), "{text}");
    let pages = text.matches('\u{c}').count();
    assert!(pages >= 3, "{pages} pages");

    // Every page renders, and the pages with charts carry ink: the bars are drawn.
    poppler(
        "pdftoppm",
        &[
            "-r",
            "40",
            "-gray",
            path,
            dir.join("page").to_str().unwrap(),
        ],
    );
    let mut rendered: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pgm"))
        .collect();
    rendered.sort();
    assert_eq!(rendered.len(), pages, "{rendered:?}");
    for p in &rendered {
        let img = std::fs::read(p).unwrap();
        // Binary PGM: "P5", width, height, maxval, then one byte per pixel.
        let header: Vec<&[u8]> = img.splitn(5, |b| b.is_ascii_whitespace()).collect();
        let pixels = header[4];
        let dark = pixels.iter().filter(|&&v| v < 128).count();
        assert!(
            dark > 200,
            "{} is nearly blank ({dark} dark pixels)",
            p.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_compliance_report_lists_each_day_and_every_exceedance() {
    let (dir, config, store) = year_in_store("compliance");
    let reader = store.reader().unwrap();
    let r = report::compliance::build(&inputs(&config, &reader), (2025, 7)).unwrap();
    assert_eq!(r.month, "2025-07");
    let u = &r.units[0];
    assert_eq!(u.days.len(), 31);
    assert_eq!((u.days_judged, u.days_within_limits), (31, 29));
    // The two fault days, recomputed here: a third more coal puts them above level 3.
    let raw = raw_samples(&store);
    let days: Vec<&str> = u.exceedances.iter().map(|e| e.day.as_str()).collect();
    assert_eq!(days, ["2025-07-10", "2025-07-11"], "{:?}", u.exceedances);
    for (i, e) in u.exceedances.iter().enumerate() {
        let (from, to) = (
            BAD_DAYS_START + i as i64 * 24 * H,
            BAD_DAYS_START + (i as i64 + 1) * 24 * H,
        );
        let inc = |d: &str| increase(&raw[d], from, to);
        let energy = inc("kiln1-coal") * RAW_COAL_KGCE_PER_T
            + (inc("kiln1-power") - inc("kiln1-whr")) * ELECTRICITY_KGCE_PER_KWH;
        let per_t = energy / inc("kiln1-clinker");
        assert_eq!(e.code, "clinker_comprehensive");
        assert!(
            close(e.value, per_t) && per_t > CLINKER_LEVELS[2],
            "{e:?} vs {per_t}"
        );
        assert_eq!(e.threshold, CLINKER_LEVELS[2]);
        assert!(e.indicative, "a day is not a reporting period");
        assert_eq!(u.days[9 + i].level, None);
        assert_eq!(u.days[9 + i].within_limit, Some(false));
    }
    assert!(u
        .days
        .iter()
        .enumerate()
        .all(|(i, d)| (9..11).contains(&i) || d.within_limit == Some(true)));
    assert!(r
        .data_quality
        .daily_vs_monthly
        .iter()
        .all(|d| d.deviation_pct.unwrap() < 1e-9));
    // The month's data quality, and the PDF listing both exceedances.
    let power = r
        .data_quality
        .meters
        .iter()
        .find(|m| m.device == "kiln1-power")
        .unwrap();
    assert_eq!(power.months[0].completeness, Some(1.0));
    let text = pdf_text(
        &dir,
        "compliance",
        &report::pdf::compliance(&r, &font(), None).unwrap(),
    );
    for expected in [
        "2025-07 月度能耗限额符合性报告",
        "超限记录",
        "2025-07-10",
        "2025-07-11",
        "数据质量",
    ] {
        assert!(text.contains(expected), "`{expected}` missing:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
