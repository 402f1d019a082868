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
        sim,
        mut gateway,
        http,
        mut edge,
    } = start_pipeline_with_sim(
        d,
        broker.port,
        "",
        |text| text,
        &["--control", "127.0.0.1:0"],
    );
    let control = sim.wait_line("CONTROL ", Duration::from_secs(5));
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
    // The flare's meter falls silent for six simulated minutes, now that the edge has read its
    // clock (the edge carries the meter's time on): a bad hour on the data-quality page, drawn
    // in its code's colour.
    let fault =
        serde_json::json!({"device": "works-ldg-flare", "kind": "no_response", "for_h": 0.1});
    let posted = ureq::post(&format!("http://{control}/faults")).send_json(&fault);
    assert!(posted.is_ok(), "injecting {fault}: {posted:?}");
    eventually("the flare's silent minutes stored", WAIT, || {
        get_json(&http, "/api/v1/quality?hours=24")
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["device"] == "works-ldg-flare")
            .flat_map(|s| s["hours"].as_array().unwrap().clone())
            .any(|h| h["code"] == "timeout")
    });
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
    no_blank_figures(&browser, "overview");
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
    no_blank_figures(&browser, "unit page");
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
    no_blank_figures(&browser, "quality");
    browser.screenshot(&shots.join("quality.png"));

    // The edge dies: its meters go offline and alarms appear, and the record stops moving, so
    // that what a page shows can be held against what the API says.
    edge.kill();
    settled(&http);
    // Back to Chinese, the default, on the switch, for the energy pages' screenshots (README
    // shows them).
    browser.js("document.getElementById('lang').click(); return true");
    browser.wait_for(
        "Chinese again",
        WAIT,
        "return document.documentElement.lang === 'zh-CN'",
    );
    energy_pages(&browser, &http, &shots);
    // Acknowledging with a token the gateway does not know is refused, and the alarm stays
    // unacknowledged.
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

    // On the alarms page, with the operator's token, the same alarm is acknowledged: the API
    // says by whom, and the page shows it.
    browser.goto(&format!("http://{http}/#/alarms"));
    browser.js(&format!(
        "localStorage.setItem('ems-operator-token', '{OPERATOR_TOKEN}'); return true"
    ));
    browser.wait_for(
        "the alarm on the alarms page",
        WAIT,
        &format!("return document.querySelector('[data-alarm=\"{id}\"] [data-ack]')"),
    );
    browser.js(&format!(
        "document.querySelector('[data-alarm=\"{id}\"] [data-ack]').click(); return true"
    ));
    let shown_by = browser.wait_for(
        "the acknowledgement on the page",
        WAIT,
        &format!(
            "const c = document.querySelector('[data-alarm=\"{id}\"] [data-acked-by]'); return c && c.dataset.ackedBy"
        ),
    );
    assert_eq!(shown_by, "shift_lead");
    let alarms = get_json(&http, "/api/v1/alarms?limit=1000");
    let alarm = alarms
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap();
    assert_eq!(alarm["acked_by"], "shift_lead", "{alarm}");
    assert!(alarm["acked"].is_string(), "{alarm}");
    // The filters: acknowledged ones only, then those of another kind than this one.
    browser.js("document.querySelector('[data-alarm-state=acked]').click(); return true");
    browser.wait_for(
        "the acknowledged alarms",
        WAIT,
        &format!(
            "const rows = [...document.querySelectorAll('[data-table=alarms] tbody tr[data-alarm]')];              return rows.length && rows.every(r => r.querySelector('[data-acked-by]').dataset.ackedBy)              && rows.some(r => r.dataset.alarm === '{id}')"
        ),
    );
    no_blank_figures(&browser, "alarms");
    browser.screenshot(&shots.join("alarms.png"));
    eprintln!("screenshots in {}", shots.display());
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}

/// Waits until the record stops moving: no message stored for two seconds.
fn settled(http: &str) {
    let stored = || -> u64 {
        get_json(http, "/api/v1/devices")
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["messages"].as_u64().unwrap())
            .sum()
    };
    let mut last = stored();
    eventually("the record to settle", WAIT, || {
        std::thread::sleep(Duration::from_secs(2));
        let now = stored();
        std::mem::replace(&mut last, now) == now
    });
}

/// Waits for the page's `chart` to be drawn, checks that no figure on the page is blank and
/// saves its screenshot at `shot`.
fn drawn_whole(browser: &Browser, chart: &str, shot: &std::path::Path) {
    browser.wait_for(
        &format!("the {chart} chart"),
        WAIT,
        &format!("return document.querySelector('[data-chart={chart}] canvas')"),
    );
    no_blank_figures(browser, chart);
    browser.screenshot(shot);
}

/// Asserts that no figure on the page is blank, NaN or undefined: every table cell of figures,
/// every total and figure the page marks, and the page's text as a whole. A dash is the page's
/// own "no value" (a rate of nothing, a meter never heard), never a blank.
fn no_blank_figures(browser: &Browser, page: &str) {
    let bad = browser.js(
        "const text = document.getElementById('view').innerText; \
         const words = ['NaN', 'undefined', 'null', 'Infinity', '[object'].filter(w => text.includes(w)); \
         const cells = [...document.querySelectorAll('#view td.pct, #view [data-total], #view [data-figure], #view [data-tce]')] \
           .filter(c => !c.textContent.trim()).map(c => c.outerHTML.slice(0, 120)); \
         return words.concat(cells)",
    );
    assert_eq!(bad, serde_json::json!([]), "{page}: blank or NaN figures");
}

/// The energy-flow, balance and reports pages against the API, with the record still.
fn energy_pages(browser: &Browser, http: &str, shots: &std::path::Path) {
    // Energy flow: every link of the Sankey chart is a figure of the month's balance, in tce.
    browser.goto(&format!("http://{http}/#/flow"));
    let drawn = browser.wait_for(
        "the Sankey chart",
        WAIT,
        "const el = document.querySelector('[data-chart=sankey]'); \
         const c = el && window.echarts && echarts.getInstanceByDom(el); \
         return c && c.getOption().series[0].links.map(l => [l.source, l.target, l.value])",
    );
    let range = browser.js(
        "return document.querySelector('[data-chart=sankey]').closest('.chart').querySelector('h3').textContent",
    );
    let plant = get_json(http, "/api/v1/plant");
    let works = &plant["enterprises"][0];
    assert_eq!(works["id"], "works");
    let flows = get_json(http, "/api/v1/enterprises/works/flow?period=month");
    let month = flows.as_array().unwrap().last().unwrap();
    let (start, end) = (
        month["start"].as_str().unwrap(),
        month["end"].as_str().unwrap(),
    );
    assert!(
        range.as_str().unwrap().contains(&start[..10]),
        "the page draws the current month: {range}"
    );
    let the_month = format!(
        "period=month&from={}&to={}",
        start.replace('+', "%2B"),
        end.replace('+', "%2B")
    );
    let balance = get_json(
        http,
        &format!("/api/v1/enterprises/works/balance?{the_month}"),
    );
    let balance = &balance.as_array().unwrap()[0];
    let basis = match get_json(http, "/api/v1/coefficients")["electricity_basis"].as_str() {
        Some("equal") => "equal_value",
        _ => "equivalent",
    };
    let expected = balance_links(balance, basis);
    // A unit taking what its own output helped to make is drawn to a second node of it.
    let drawn: Vec<(String, String, f64)> = drawn
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let target = l[1].as_str().unwrap();
            (
                l[0].as_str().unwrap().to_owned(),
                target.strip_suffix(":again").unwrap_or(target).to_owned(),
                l[2].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(expected.len() >= 10, "{expected:?}");
    let mut matched = 0;
    for (source, target, value) in &drawn {
        let figure = expected
            .iter()
            .find(|(s, t, _)| s == source && t == target)
            .unwrap_or_else(|| panic!("{source} -> {target} is no figure of the balance"));
        assert!(
            (value - figure.2).abs() <= 1e-9 * figure.2.abs().max(1.0),
            "{source} -> {target}: drawn {value} tce, the balance says {}",
            figure.2
        );
        matched += 1;
    }
    // Every figure above rounding's dust is drawn.
    let missing: Vec<_> = expected
        .iter()
        .filter(|(s, t, v)| *v > 1e-6 && !drawn.iter().any(|l| &l.0 == s && &l.1 == t))
        .collect();
    assert!(missing.is_empty(), "not drawn: {missing:?}");
    assert!(matched >= 10);
    // A row of the link table opens that link's figures.
    let opened = browser.js(
        "const r = document.querySelector('[data-link]'); r.click(); \
         return [r.querySelector('[data-tce]').textContent, document.querySelector('[data-figure=link] [data-tce]').textContent]",
    );
    assert_eq!(opened[0], opened[1], "{opened}");
    no_blank_figures(browser, "energy flow");
    browser.screenshot(&shots.join("flow.png"));

    // The balance table's remainder share (its closure) for each carrier, as the API has it.
    browser.goto(&format!("http://{http}/#/balance"));
    let closures = browser.wait_for(
        "the balance table",
        WAIT,
        "const rows = [...document.querySelectorAll('[data-table=balance] tr[data-carrier]')]; \
         return rows.length && rows.map(r => [r.dataset.carrier, r.querySelector('[data-closure]').dataset.closure])",
    );
    let closures = closures.as_array().unwrap();
    let carriers = balance["carriers"].as_array().unwrap();
    assert_eq!(closures.len(), carriers.len());
    for (shown, c) in closures.iter().zip(carriers) {
        assert_eq!(shown[0], c["carrier"]);
        match c["remainder_pct"].as_f64() {
            Some(pct) => {
                let page: f64 = shown[1].as_str().unwrap().parse().unwrap();
                assert!(
                    (page - pct).abs() <= 1e-9 * pct.abs().max(1.0),
                    "{shown} {c}"
                );
            }
            None => assert_eq!(shown[1], "", "{c}"),
        }
    }
    // The stock meters' opening and closing levels, as their meters read them (the API's).
    let shown = browser.js(
        "return [...document.querySelectorAll('[data-table=stocks] tr[data-stock]')].map(r => \
           [r.dataset.stock, ...['opening', 'closing'].map(k => r.querySelector(`[data-level=${k}]`).textContent)])",
    );
    let stocks = get_json(
        http,
        &format!("/api/v1/enterprises/works/stocks?{the_month}"),
    );
    let stocks = stocks.as_array().unwrap();
    let devices: Vec<&str> = stocks
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["works-coke-yard", "works-ldg-holder"]);
    assert_eq!(shown.as_array().unwrap().len(), stocks.len(), "{shown}");
    for (row, s) in shown.as_array().unwrap().iter().zip(stocks) {
        assert_eq!(row[0], s["device"]);
        let closing = s["closing"].as_array().unwrap().last().unwrap();
        // The month's closing is the latest reading: the meter was read until the edge stopped.
        let value = closing["value"].as_f64().unwrap_or_else(|| panic!("{s}"));
        let page: f64 = row[2].as_str().unwrap().replace(',', "").parse().unwrap();
        assert!((page - value).abs() <= 0.05, "{row} against {closing}");
        // The month began before the pipeline did: no reading then.
        assert!(s["opening"].is_null(), "{s}");
        assert_eq!(row[1], "–");
    }
    drawn_whole(browser, "gas", &shots.join("balance.png"));

    // Energy cost: the month's total and each unit's cost per tonne, as the API has them.
    browser.goto(&format!("http://{http}/#/cost"));
    let shown = browser.wait_for(
        "the cost page",
        WAIT,
        "const rows = [...document.querySelectorAll('[data-table=unit-costs] tr[data-unit-cost]')]; \
         return rows.length && [document.querySelector('[data-total=cost]').textContent, \
           rows.map(r => [r.dataset.unitCost, r.querySelector('[data-per-t]').dataset.perT])]",
    );
    let cost = get_json(http, &format!("/api/v1/enterprises/works/cost?{the_month}"));
    let cost = &cost.as_array().unwrap()[0];
    let total: f64 = shown[0]
        .as_str()
        .unwrap()
        .trim_end_matches(" CNY")
        .replace(',', "")
        .parse()
        .unwrap();
    assert!(
        (total - cost["total"].as_f64().unwrap()).abs() <= 0.5,
        "{shown} against {}",
        cost["total"]
    );
    assert!(cost["electricity"]["kwh"].as_f64().unwrap() > 0.0, "{cost}");
    // The works' product is its converter's crude steel.
    assert_eq!(cost["product_units"], serde_json::json!(["bof1"]));
    assert!(cost["cost_per_t"].as_f64().is_some(), "{cost}");
    let per_t: Vec<serde_json::Value> = cost["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let per_t = u["cost_per_t"]
                .as_f64()
                .map_or(String::new(), |v| format!("{v}"));
            serde_json::json!([u["unit"], per_t])
        })
        .collect();
    assert_eq!(shown[1], serde_json::Value::Array(per_t));
    drawn_whole(browser, "bands", &shots.join("cost.png"));

    // The data-quality page's strips: each device's hours as the API has them up to the
    // plant's clock (its newest sample), the worst of each hour, a bad one by its code.
    browser.goto(&format!("http://{http}/#/quality"));
    let strips = browser.wait_for(
        "the quality strips",
        WAIT,
        "const rows = [...document.querySelectorAll('[data-table=strips] tr[data-strip]')]; \
         return rows.length && rows.map(r => [r.dataset.strip, [...r.querySelectorAll('[data-state]')].map(c => [c.dataset.state, c.dataset.code || null])])",
    );
    let newest = get_json(http, "/api/v1/devices")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["last_sample"].as_str())
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_millis()
        })
        .max()
        .unwrap();
    let to = chrono::DateTime::from_timestamp_millis(newest + 1)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let api: Vec<serde_json::Value> = get_json(http, &format!("/api/v1/quality?hours=24&to={to}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            serde_json::json!([
                d["device"],
                d["hours"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| serde_json::json!([h["state"], h["code"]]))
                    .collect::<Vec<_>>()
            ])
        })
        .collect();
    assert_eq!(strips, serde_json::Value::Array(api));
    // The flare's silent minutes, drawn in their code.
    let flare = strips
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d[0] == "works-ldg-flare")
        .unwrap();
    assert!(
        flare[1]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == &serde_json::json!(["bad", "timeout"])),
        "{flare}"
    );
    // The pipeline ran for minutes of real time, hours of the plant's: its last hours came in,
    // but for the flare's, whose meter the edge waits longer to poll again after its silence
    // (the backoff) than a quick run lasts.
    assert!(
        strips
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d[0] != "works-ldg-flare")
            .all(|d| d[1][23][0] != "missing"),
        "{strips}"
    );

    // Reports: the pickers and a preview of the month's compliance figures.
    browser.goto(&format!("http://{http}/#/reports"));
    browser.wait_for(
        "the reports page",
        WAIT,
        "return document.querySelector('[data-preview=compliance]')",
    );
    let units = browser.js(
        "return [...document.getElementById('rep-unit').options].filter(o => !o.hidden).map(o => o.value)",
    );
    assert_eq!(units, serde_json::json!(["bf1", "bof1", "rhf1"]));
    browser.js("document.querySelector('[data-preview=compliance]').click(); return true");
    let previewed = browser.wait_for(
        "the compliance preview",
        WAIT,
        "const rows = [...document.querySelectorAll('[data-table=preview] tbody tr')]; \
         return rows.length && rows.map(r => [...r.children].map(c => c.textContent))",
    );
    let energy = previewed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == "enterprise_month" && r[3] == "comprehensive_energy")
        .unwrap_or_else(|| panic!("{previewed}"));
    let shown: f64 = energy[4]
        .as_str()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap();
    let kgce = balance["enterprise"]["energy_kgce"].as_f64().unwrap();
    assert!(
        (shown - kgce / 1000.0).abs() < 0.001,
        "{energy} against {kgce} kgce"
    );
    no_blank_figures(browser, "reports");
    browser.screenshot(&shots.join("reports.png"));
}

/// Each link of the month's energy flow as the balance gives it: (source, target, tce).
fn balance_links(balance: &serde_json::Value, basis: &str) -> Vec<(String, String, f64)> {
    let tce = |v: &serde_json::Value| v[basis].as_f64().unwrap() / 1000.0;
    let mut out: Vec<(String, String, f64)> = Vec::new();
    let mut add = |s: String, t: String, v: f64| match out.iter_mut().find(|l| l.0 == s && l.1 == t)
    {
        Some(l) => l.2 += v,
        None => out.push((s, t, v)),
    };
    for c in balance["carriers"].as_array().unwrap() {
        let code = c["carrier"].as_str().unwrap();
        let carrier = format!("carrier:{code}");
        let k = &c["kgce"];
        add(
            format!("purchase:{code}"),
            carrier.clone(),
            tce(&k["purchase"]),
        );
        let stock = tce(&k["stock_change"]);
        if stock < 0.0 {
            add(format!("stock:{code}"), carrier.clone(), -stock);
        } else {
            add(carrier.clone(), format!("stock:{code}"), stock);
        }
        add(carrier.clone(), format!("export:{code}"), tce(&k["export"]));
        add(carrier.clone(), format!("flare:{code}"), tce(&k["flared"]));
        let remainder = tce(&k["remainder"]);
        if remainder < 0.0 {
            add("imbalance".into(), carrier.clone(), -remainder);
        } else {
            add(carrier.clone(), "remainder".into(), remainder);
        }
        for n in c["generated"].as_array().unwrap() {
            if n["own_use"] == true {
                continue;
            }
            let unit = n["unit"].as_str().unwrap();
            let from = if n["function"] == "conversion" {
                format!("unit:{unit}")
            } else {
                format!("recovered:{unit}")
            };
            add(from, carrier.clone(), tce(&n["kgce"]));
        }
        for n in c["consumed"].as_array().unwrap() {
            if n["own_use"] == true {
                continue;
            }
            let unit = n["unit"].as_str().unwrap();
            add(carrier.clone(), format!("unit:{unit}"), tce(&n["kgce"]));
        }
    }
    out
}
