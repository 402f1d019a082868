//! Reports end to end: the demo plant runs through edge, broker and gateway; then the annual
//! report downloaded from the dashboard's API and the one `ems-gateway report` writes are the
//! same document, the PDF carries the plant's Chinese names, the compliance report covers every
//! day of the month, and bad requests get clear errors.

use std::process::Command;
use std::time::Duration;

use ems_tests::*;

/// `ems-gateway report annual --config gateway.toml --year YEAR --enterprise cement` (the
/// demo group's cement plant) with `extra` arguments, in `dir`.
fn annual_report(dir: &std::path::Path, year: &str, extra: &[&str]) -> std::process::Output {
    Command::new(bin("ems-gateway"))
        .args([
            "report",
            "annual",
            "--config",
            "gateway.toml",
            "--year",
            year,
            "--enterprise",
            "cement",
        ])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// GET returning status, content type and body bytes.
fn get_bytes(http: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut resp = ureq::get(&format!("http://{http}{path}"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    (resp.status().as_u16(), ctype, body)
}

/// A report without what depends on the moment it was made: its time, and the completeness of
/// the month in progress (covered time over the time elapsed so far).
fn without_the_moment(mut v: serde_json::Value, month: &str) -> serde_json::Value {
    v.as_object_mut().unwrap().remove("generated_at");
    // Its evidence names the moment too.
    let evidence = v["evidence"].as_object_mut().expect("an evidence section");
    evidence.remove("made");
    evidence.remove("made_ms");
    for m in v["data_quality"]["meters"].as_array_mut().unwrap() {
        for mm in m["months"].as_array_mut().unwrap() {
            if mm["start"].as_str().unwrap().starts_with(month) {
                mm["completeness"] = serde_json::Value::Null;
            }
        }
    }
    v
}

#[test]
fn reports_come_alike_from_the_api_and_the_command_line() {
    let dir = TempDir::new("reports");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let Pipeline {
        mut sim,
        mut gateway,
        http,
        mut edge,
    } = start_pipeline(d, broker.port);
    eventually("the kiln's output today", Duration::from_secs(60), || {
        get_json(&http, "/api/v1/units/kiln1/indicators?period=day")
            .as_array()
            .and_then(|d| d.last())
            .is_some_and(|d| d["product_t"].as_f64() > Some(0.0))
    });
    // The edge stops once the broker has everything; the gateway has then committed it all,
    // so the figures stand still for the comparison.
    assert!(edge.terminate(Duration::from_secs(30)).success());
    std::thread::sleep(Duration::from_secs(2));
    let today = get_json(&http, "/api/v1/units/kiln1/indicators?period=day");
    let start = today.as_array().unwrap().last().unwrap()["start"]
        .as_str()
        .unwrap()
        .to_owned();
    let (year, month) = (&start[..4], &start[..7]);

    // The same annual report from the API and from the command line: the cement plant's, one
    // of the demo group's three enterprises, whose reports together hold every unit once.
    let mut every_unit = Vec::new();
    for enterprise in ["works", "cement", "smelter"] {
        let r = get_json(
            &http,
            &format!("/api/v1/reports/annual?year={year}&enterprise={enterprise}"),
        );
        for u in r["units"].as_array().unwrap() {
            every_unit.push(u["id"].as_str().unwrap().to_owned());
        }
    }
    every_unit.sort_unstable();
    assert_eq!(
        every_unit,
        ["bf1", "bof1", "cpp1", "kiln1", "o2p1", "pot1", "rhf1"]
    );
    let api = get_json(
        &http,
        &format!("/api/v1/reports/annual?year={year}&enterprise=cement"),
    );
    assert_eq!(api["report"], "annual");
    assert_eq!(api["enterprise_code"], "91000000MA00DEMO1X");
    assert_eq!(api["totals"]["drawn_from"], "boundary");
    let units = api["units"].as_array().unwrap();
    assert_eq!(units.len(), 1, "the cement plant's kiln line");
    let kiln = units.iter().find(|u| u["id"] == "kiln1").unwrap();
    assert!(kiln["year"]["product_t"].as_f64().unwrap() > 0.0);
    let out = annual_report(d, year, &["--out", "annual.json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("annual.json")).unwrap()).unwrap();
    assert_eq!(
        without_the_moment(cli, month),
        without_the_moment(api.clone(), month)
    );
    // The screen and the report agree: each unit's figures for this month on the dashboard's
    // API are the annual report's month row, both read through ems-energy's unit_figures.
    let month_start = format!("{}-01{}", &start[..7], &start[10..]);
    for u in units {
        let id = u["id"].as_str().unwrap();
        let screen = get_json(
            &http,
            &format!(
                "/api/v1/units/{id}/indicators?period=month&from={}&to={}",
                month_start.replace('+', "%2B"),
                month_start
                    .replace('+', "%2B")
                    .replace("T00:00:00", "T00:00:01")
            ),
        );
        let screen = &screen.as_array().unwrap()[0];
        let row = u["months"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["start"] == screen["start"])
            .unwrap_or_else(|| panic!("{id}: no month {} in the report", screen["start"]));
        for figure in [
            "energy_kgce",
            "product_t",
            "kgce_per_t",
            "electricity_kwh",
            "water_m3",
            "completeness",
            "estimated_share",
        ] {
            assert_eq!(
                screen[figure], row[figure],
                "{id} {figure}: screen {} report {}",
                screen[figure], row[figure]
            );
        }
        assert!(
            screen["completeness"].as_f64().unwrap() > 0.0,
            "{id}: {screen}"
        );
    }
    // A report already written is never overwritten.
    let again = annual_report(d, year, &["--out", "annual.json"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("cannot create"));

    // The PDF download, in Chinese with the plant's own names.
    let (code, ctype, pdf) = get_bytes(
        &http,
        &format!("/api/v1/reports/annual?year={year}&enterprise=cement&format=pdf"),
    );
    assert_eq!(
        (code, ctype.as_str()),
        (200, "application/pdf"),
        "{}",
        String::from_utf8_lossy(&pdf)
    );
    assert!(pdf.starts_with(b"%PDF"));
    std::fs::write(d.join("annual.pdf"), &pdf).unwrap();
    let text = Command::new("pdftotext")
        .args(["annual.pdf", "-"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        text.status.success(),
        "pdftotext (tests/run.sh installs poppler-utils)"
    );
    let text = String::from_utf8(text.stdout).unwrap();
    let kiln_name = kiln["name"].as_str().unwrap();
    for expected in [
        format!("{year}年度能源利用状况报告"),
        kiln_name.to_owned(),
        "五、数据质量".into(),
    ] {
        assert!(
            text.contains(&expected),
            "`{expected}` missing from:\n{text}"
        );
    }

    // CSV: one row per figure.
    let (code, ctype, csv) = get_bytes(
        &http,
        &format!("/api/v1/reports/annual?year={year}&enterprise=cement&format=csv"),
    );
    assert_eq!((code, ctype.as_str()), (200, "text/csv; charset=utf-8"));
    let csv = String::from_utf8(csv).unwrap();
    assert!(
        csv.starts_with("section,subject,period,figure,value,unit\n"),
        "{csv}"
    );
    assert!(csv
        .lines()
        .any(|l| l.starts_with("unit_year,kiln1,") && l.contains(",unit_energy,")));

    // The works' captive power plant: its generation, own use and supply, in the CSV and the
    // PDF.
    let (_, _, csv) = get_bytes(
        &http,
        &format!("/api/v1/reports/annual?year={year}&enterprise=works&format=csv"),
    );
    let csv = String::from_utf8(csv).unwrap();
    for figure in ["generation", "own_use", "supply", "own_use_rate"] {
        assert!(
            csv.lines()
                .any(|l| l.starts_with("captive_power,cpp1,") && l.contains(&format!(",{figure},"))),
            "no captive power {figure} in:\n{csv}"
        );
    }
    let (_, _, pdf) = get_bytes(
        &http,
        &format!("/api/v1/reports/annual?year={year}&enterprise=works&format=pdf"),
    );
    std::fs::write(d.join("works.pdf"), &pdf).unwrap();
    let text = Command::new("pdftotext")
        .args(["works.pdf", "-"])
        .current_dir(d)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("自备电厂") && text.contains("厂用电率"),
        "no captive power in:\n{text}"
    );

    // The month's compliance report has every day of every unit.
    let comp = get_json(
        &http,
        &format!("/api/v1/reports/compliance?month={month}&enterprise=cement"),
    );
    assert_eq!(comp["month"], month);
    let days_in_month = comp["units"][0]["days"].as_array().unwrap().len();
    assert!((28..=31).contains(&days_in_month));
    for u in comp["units"].as_array().unwrap() {
        assert_eq!(
            u["days"].as_array().unwrap().len(),
            days_in_month,
            "{}",
            u["id"]
        );
    }

    let (code, ctype, pdf) = get_bytes(
        &http,
        &format!("/api/v1/reports/compliance?month={month}&enterprise=cement&format=pdf"),
    );
    assert_eq!((code, ctype.as_str()), (200, "application/pdf"));
    std::fs::write(d.join("compliance.pdf"), &pdf).unwrap();
    let text = Command::new("pdftotext")
        .args(["compliance.pdf", "-"])
        .current_dir(d)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("月度能耗限额符合性报告") && text.contains(kiln_name),
        "{text}"
    );

    // Clear errors.
    for (path, code, says) in [
        (
            format!("/api/v1/reports/annual?year={year}&format=xml"),
            400,
            "unknown format",
        ),
        (
            "/api/v1/reports/annual".to_owned(),
            400,
            "`year` is required",
        ),
        // A group's gateway must be told whose report.
        (
            format!("/api/v1/reports/annual?year={year}"),
            400,
            "several enterprises (works, cement, smelter)",
        ),
        (
            format!("/api/v1/reports/annual?year={year}&enterprise=mine"),
            400,
            "no enterprise `mine`",
        ),
        (
            "/api/v1/reports/weekly?year=2025".to_owned(),
            404,
            "no report",
        ),
        // A month of a few hours is no baseline: the fit says why.
        (
            format!("/api/v1/reports/savings?unit=kiln1&baseline={month}..{month}&reporting={month}..{month}"),
            400,
            "periods",
        ),
        ("/api/v1/reports/savings?baseline=2025-01..2025-06".to_owned(), 400, "`unit` is required"),
        (
            "/api/v1/reports/compliance?month=2025-13".to_owned(),
            400,
            "month must be 01 to 12",
        ),
    ] {
        let (got, _, body) = get_bytes(&http, &path);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(got, code, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    let bad_font = annual_report(d, year, &["--format", "pdf", "--font", "/nonexistent.ttf"]);
    assert!(!bad_font.status.success());
    assert!(String::from_utf8_lossy(&bad_font.stderr).contains("font /nonexistent.ttf"));

    assert!(gateway.terminate(Duration::from_secs(20)).success());
    sim.kill();
}
