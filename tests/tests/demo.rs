//! The README's first command: `ems-gateway demo` brings up the whole plant in one process,
//! serves the dashboard and live figures, and stops cleanly on SIGTERM.

use std::time::Duration;

use ems_tests::*;

#[test]
fn demo_serves_live_figures_and_stops_cleanly() {
    let dir = TempDir::new("demo");
    let data = dir.path().join("data");
    let mut demo = Proc::start(
        &bin("ems-gateway"),
        &[
            "demo",
            "--http",
            "127.0.0.1:0",
            "--speed",
            "1200",
            "--data",
            data.to_str().unwrap(),
        ],
        dir.path(),
    );
    let url = demo.wait_line("Dashboard: ", Duration::from_secs(30));
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    assert_eq!(
        get_json(&addr, "/healthz"),
        serde_json::json!({"status": "ok"})
    );
    let page = get_text(&addr, "/");
    assert!(
        page.contains("能源管理中心") && page.contains("/api/v1/events"),
        "the dashboard page"
    );

    eventually("all demo meters reporting", Duration::from_secs(30), || {
        let d = get_json(&addr, "/api/v1/devices");
        d.as_array().unwrap().len() == demo_meter_count()
            && d.as_array().unwrap().iter().all(|x| x["online"] == true)
    });
    // At 1 200x an hour passes every three seconds: full hours appear with their unit energy.
    eventually(
        "a full hour for every unit",
        Duration::from_secs(60),
        || {
            ["bf1", "bof1", "rhf1", "kiln1", "pot1"].iter().all(|u| {
                get_json(&addr, &format!("/api/v1/units/{u}/indicators?period=hour"))
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| {
                        h["completeness"].as_f64().unwrap() > 0.99 && h["kgce_per_t"].is_number()
                    })
            })
        },
    );
    let kiln = get_json(&addr, "/api/v1/units/kiln1/indicators?period=hour");
    let full: Vec<f64> = kiln
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["completeness"].as_f64().unwrap() > 0.99)
        .map(|h| h["kgce_per_t"].as_f64().unwrap())
        .collect();
    assert!(
        full.iter().all(|k| (95.0..120.0).contains(k)),
        "kiln kgce/t near 100-117: {full:?}"
    );

    assert!(
        demo.terminate(Duration::from_secs(30)).success(),
        "demo exit:\n{}",
        demo.stderr_tail()
    );
    let stderr = demo.stderr();
    assert!(
        stderr.contains("every message was acknowledged"),
        "{}",
        demo.stderr_tail()
    );
    assert!(
        std::fs::read_to_string(data.join("truth.jsonl"))
            .unwrap()
            .lines()
            .count()
            >= 4
    );
}
