//! The dashboard in real headless Chromium against a running plant (simulator, edge, broker,
//! gateway): the overview shows every unit with numbers, a unit page draws its charts, values
//! change without a reload, the language switch works, and acknowledging an alarm without a
//! valid operator token is refused. Screenshots go to `target/test-artifacts/dashboard/`.

use std::time::Duration;

use ems_tests::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn the_dashboard_in_chromium_shows_the_plant_live_and_refuses_an_anonymous_ack() {
    let dir = TempDir::new("browser");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let Pipeline {
        sim: _sim,
        mut gateway,
        http,
        mut edge,
    } = start_pipeline(d, broker.port);
    let listed = get_json(&http, "/api/v1/units");
    let ids = |conversion: bool| -> Vec<String> {
        listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|u| (u["function"] == "conversion") == conversion)
            .map(|u| u["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // The process units; the works' oxygen and power plants make no product.
    let (process, conversion) = (ids(false), ids(true));
    assert_eq!(conversion, ["o2p1", "cpp1"]);
    let units: Vec<String> = process.iter().chain(&conversion).cloned().collect();
    // The converter makes steel only at tapping, every 48 simulated minutes (48 s here).
    eventually(
        "today's figure for every unit",
        Duration::from_secs(150),
        || {
            process.iter().all(|u| {
                let days = get_json(&http, &format!("/api/v1/units/{u}/indicators?period=day"));
                days.as_array()
                    .and_then(|d| d.last())
                    .is_some_and(|d| d["product_t"].as_f64() > Some(0.0))
            })
        },
    );
    let shots = artifacts_dir("dashboard");
    let browser = Browser::start(d, 1400, 1000);

    // Overview: every unit, each with a number for today, in Chinese first.
    browser.goto(&format!("http://{http}/"));
    browser.wait_for(
        "the overview loaded",
        WAIT,
        "return document.body.dataset.loaded && document.querySelectorAll('[data-unit]').length",
    );
    assert_eq!(browser.js("return document.documentElement.lang"), "zh-CN");
    let cards = browser.js(
        "return [...document.querySelectorAll('[data-unit]')].map(c => [c.dataset.unit, c.querySelector('[data-figure=today]').textContent])",
    );
    let cards = cards.as_array().unwrap();
    assert_eq!(cards.len(), units.len(), "{cards:?}");
    for c in cards {
        let text = c[1].as_str().unwrap();
        assert!(
            text.chars()
                .next()
                .is_some_and(|ch| ch.is_ascii_digit() || ch == '-'),
            "{} shows a number today: {text:?}",
            c[0]
        );
    }
    browser.screenshot(&shots.join("overview-zh.png"));

    // Live: the page updates itself (no reload: a marker set now survives) with new figures.
    browser.js("window.__sameDocument = true; return true");
    let before = browser.js(
        "return [document.body.dataset.loaded, document.querySelector('[data-total=energy]').textContent]",
    );
    browser.wait_for(
        "new figures without a reload",
        WAIT,
        &format!(
            "return window.__sameDocument === true && document.body.dataset.loaded !== {} \
             && document.querySelector('[data-total=energy]').textContent !== {}",
            before[0], before[1]
        ),
    );

    // The language switch.
    browser.js("document.getElementById('lang').click(); return true");
    browser.wait_for(
        "English",
        WAIT,
        "return document.documentElement.lang === 'en' && document.querySelector('h1').textContent.startsWith('Energy management centre')",
    );
    browser.screenshot(&shots.join("overview-en.png"));

    // A unit page draws its three charts: unit energy with the limit lines, carriers, water.
    browser.goto(&format!("http://{http}/#/unit/bf1"));
    browser.wait_for(
        "bf1's charts",
        WAIT,
        "return document.querySelectorAll('[data-chart] canvas').length >= 3",
    );
    let legends = browser.js(
        "return [...document.querySelectorAll('[data-chart=figure] .u-legend .u-label')].map(l => l.textContent)",
    );
    assert!(
        legends.as_array().unwrap().len() >= 4,
        "unit figure and three level lines: {legends}"
    );
    browser.screenshot(&shots.join("unit-bf1.png"));
    browser.goto(&format!("http://{http}/#/quality"));
    browser.wait_for(
        "the data-quality page",
        WAIT,
        "return document.querySelectorAll('[data-table=devices] tbody tr').length",
    );
    // Each meter's signed chain as the API has it: this demo's edge signs nothing.
    let chains = browser.js(
        "return [...document.querySelectorAll('[data-table=devices] tbody tr')].map(r => r.querySelector('[data-chain]')?.dataset.chain)",
    );
    let api_chains: Vec<serde_json::Value> = get_json(&http, "/api/v1/devices")
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["chain"].clone())
        .collect();
    assert!(api_chains.iter().all(serde_json::Value::is_null));
    assert!(
        chains
            .as_array()
            .is_some_and(|c| !c.is_empty() && c.iter().all(|c| c == "unsigned")),
        "{chains}"
    );
    // The operator audit log as the API has it: the gateway's own entries for the files its
    // figures are drawn with, logged at its start.
    let shown = browser.js(
        "return [...document.querySelectorAll('[data-table=audit] tbody tr[data-audit]')].map(r => [Number(r.dataset.audit), r.children[1].textContent, r.children[3].textContent])",
    );
    let logged: Vec<serde_json::Value> = get_json(&http, "/api/v1/audit?limit=50")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::json!([e["id"], e["who"], e["subject"]]))
        .collect();
    assert!(logged.len() >= 3, "{logged:?}");
    assert_eq!(shown, serde_json::Value::Array(logged));
    browser.screenshot(&shots.join("quality.png"));

    // The edge dies: its meters go offline and alarms appear. Acknowledging with a token the
    // gateway does not know is refused, and the alarm stays unacknowledged.
    edge.kill();
    browser.goto(&format!("http://{http}/"));
    browser.wait_for(
        "an alarm to acknowledge",
        WAIT,
        "return document.querySelector('[data-ack]')",
    );
    let id = browser.js(
        "window.prompt = () => 'not-an-operator'; const b = document.querySelector('[data-ack]'); b.click(); return b.dataset.ack",
    );
    let banner = browser.wait_for(
        "the refusal",
        WAIT,
        "const e = document.getElementById('error'); return e.style.display === 'block' && e.textContent",
    );
    assert!(
        banner.as_str().unwrap().contains("token"),
        "the page says why: {banner}"
    );
    let id: i64 = id.as_str().unwrap().parse().unwrap();
    let alarms = get_json(&http, "/api/v1/alarms?limit=1000");
    let alarm = alarms
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap();
    assert!(alarm["acked"].is_null(), "still unacknowledged: {alarm}");
    browser.screenshot(&shots.join("ack-refused.png"));
    eprintln!("screenshots in {}", shots.display());
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}
