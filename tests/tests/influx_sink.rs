//! The InfluxDB 2 sink against a real server that accepts the v2 write API (VictoriaMetrics):
//! the server stopped for two minutes mid-run loses nothing; afterwards it holds every stored
//! sample exactly once and the same 15-minute unit rollups the gateway serves.

use std::collections::HashMap;
use std::time::Duration;

use ems_tests::*;

#[test]
fn the_time_series_server_down_for_a_while_ends_with_every_sample_and_rollup() {
    let dir = TempDir::new("influx");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    let mut vm = VictoriaMetrics::start(d);
    let influx = format!(
        "[influx]\nurl = \"{}\"\norg = \"plant\"\nbucket = \"ems\"\ntoken = \"t\"\nmax_backoff_s = 2\nrollup_settle_s = 2\n",
        vm.url()
    );
    let Pipeline {
        sim: _sim,
        mut gateway,
        http,
        mut edge,
    } = start_pipeline_with(d, broker.port, &influx);
    eventually("lines accepted", Duration::from_secs(20), || {
        metric(&http, "ems_gateway_sink_lines_written_total") > 100.0
    });

    // Down for two minutes (two simulated hours): the queue grows on disk.
    vm.stop();
    std::thread::sleep(Duration::from_secs(120));
    assert!(metric(&http, "ems_gateway_sink_write_errors_total") > 0.0);
    assert!(metric(&http, "ems_gateway_sink_queue_depth") > 100.0);
    vm.restart();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        edge.terminate(Duration::from_secs(20)).success(),
        "{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    assert_stored_exactly_once(&http, &seq);
    let integrity = get_json(&http, "/api/v1/integrity");
    assert!(
        integrity["mismatches"].as_array().unwrap().is_empty(),
        "rollups equal their recomputation from raw samples: {integrity}"
    );
    eventually("the queue drained", Duration::from_secs(30), || {
        metric(&http, "ems_gateway_sink_queue_depth") == 0.0
    });

    // Every stored value is in the server, once (one value per series and time).
    let csv = get_text(
        &http,
        "/api/v1/samples.csv?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
    );
    let stored = values_per_point(&csv);
    assert!(stored.values().sum::<usize>() > 10_000);
    // Accepted data becomes searchable within seconds.
    let in_server = || vm.samples_per_point();
    eventually(
        "every stored sample in the server",
        Duration::from_secs(30),
        || in_server() == stored,
    );
    assert_eq!(in_server(), stored, "every stored sample, once");

    // The 15-minute rollups are the ones the gateway serves.
    let day = |offset: i64| {
        (chrono::Utc::now() + chrono::Duration::days(offset))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let served = get_json(
        &http,
        &format!(
            "/api/v1/units/bf1/indicators?period=15min&from={}&to={}",
            day(-1),
            day(1)
        ),
    );
    let served: HashMap<i64, f64> = served
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["completeness"].as_f64().unwrap() > 0.0)
        .map(|i| {
            let t = chrono::DateTime::parse_from_rfc3339(i["start"].as_str().unwrap()).unwrap();
            (t.timestamp_millis(), i["energy_kgce"].as_f64().unwrap())
        })
        .collect();
    assert!(!served.is_empty(), "{served:?}");
    eventually("rollups in the server", Duration::from_secs(30), || {
        let series = vm.export("ems_unit_energy_kgce");
        let Some(bf1) = series.iter().find(|s| s["metric"]["unit"] == "bf1") else {
            return false;
        };
        let got: HashMap<i64, f64> = bf1["timestamps"]
            .as_array()
            .unwrap()
            .iter()
            .zip(bf1["values"].as_array().unwrap())
            .map(|(t, v)| (t.as_i64().unwrap(), v.as_f64().unwrap()))
            .collect();
        served.iter().all(|(t, e)| {
            got.get(t)
                .is_some_and(|g| (g - e).abs() <= 1e-9 * e.abs().max(1.0))
        })
    });
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}
