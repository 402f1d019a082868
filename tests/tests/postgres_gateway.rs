//! One gateway on PostgreSQL (a fresh database on the machine's server) runs what one on SQLite
//! runs, against real servers: the simulator and an edge through a private Mosquitto, the
//! InfluxDB sink into VictoriaMetrics, the upload to the reference receiver. At the end every
//! number is stored once, the time-series server holds every stored sample once, and the
//! receiver every record once, in order, with the API's uploads page agreeing; the command
//! line's export reads the same record.

use std::time::Duration;

use ems_gateway::pg::ScratchDatabase;
use ems_tests::*;

#[test]
fn a_postgres_gateway_feeds_the_time_series_server_and_the_platform_exactly_once() {
    let dir = TempDir::new("pg-gateway");
    let d = dir.path();
    let db = ScratchDatabase::new(
        &ScratchDatabase::default_server(),
        &format!("ems_e2e_gateway_{}", std::process::id()),
    )
    .expect("PostgreSQL on 127.0.0.1:5432 (trust authentication) or EMS_TEST_POSTGRES");
    let broker = Mosquitto::start(d);
    let vm = VictoriaMetrics::start(d);
    let receiver = Proc::start(
        &bin("ems-gateway"),
        &[
            "receive",
            "--listen",
            "127.0.0.1:0",
            "--out",
            "platform.jsonl",
        ],
        d,
    );
    let platform = receiver.wait_line("RECEIVER ", Duration::from_secs(10));
    let from = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    let extra = format!(
        "[influx]\nurl = \"{}\"\norg = \"plant\"\nbucket = \"ems\"\ntoken = \"t\"\nmax_backoff_s = 2\nrollup_settle_s = 2\n\
         [upload]\nfrom = \"{from}\"\nsettle_s = 1\n[[upload.endpoints]]\nid = \"platform\"\nurl = \"http://{platform}/\"\n",
        vm.url()
    );
    let url = db.url();
    let Pipeline {
        sim: _sim,
        mut gateway,
        http,
        mut edge,
    } = start_pipeline_edited(d, broker.port, &extra, |text| {
        let from = "path = \"gw.db\"";
        assert!(text.contains(from));
        text.replacen(
            from,
            &format!("{from}\nbackend = \"postgres\"\nurl = \"{url}\""),
            1,
        )
    });
    assert!(!d.join("gw.db").exists(), "nothing in SQLite");
    eventually("lines accepted", Duration::from_secs(30), || {
        metric(&http, "ems_gateway_sink_lines_written_total") > 100.0
    });
    let confirmed = || {
        get_json(&http, "/api/v1/uploads")
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == "platform")
            .cloned()
            .unwrap()
    };
    eventually(
        "the platform confirms two hours of records",
        Duration::from_secs(60),
        || {
            let p = confirmed();
            p["records"].as_i64() >= Some(24) && p["pending"] == 0
        },
    );
    assert!(
        edge.terminate(Duration::from_secs(20)).success(),
        "{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    assert_stored_exactly_once(&http, &seq);
    eventually("the queue drained", Duration::from_secs(30), || {
        metric(&http, "ems_gateway_sink_queue_depth") == 0.0
    });

    // Every stored value is in the time-series server, once.
    let csv = get_text(
        &http,
        "/api/v1/samples.csv?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
    );
    let stored = values_per_point(&csv);
    assert!(stored.values().sum::<usize>() > 1_000, "{stored:?}");
    let in_server = || vm.samples_per_point();
    eventually(
        "every stored sample in the server",
        Duration::from_secs(30),
        || in_server() == stored,
    );
    assert_eq!(in_server(), stored, "every stored sample, once");
    eventually("the units' rollups too", Duration::from_secs(30), || {
        !vm.export("ems_unit_energy_kgce").is_empty()
    });

    // The platform holds every record once, each enterprise's in period order, and the API's
    // uploads page counts them.
    let ids: Vec<String> = std::fs::read_to_string(d.join("platform.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["record_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a record stored twice: {ids:?}");
    let p = confirmed();
    assert_eq!(p["confirmed"].as_u64(), Some(ids.len() as u64), "{p}");
    let realtime: Vec<&String> = ids
        .iter()
        .filter(|i| i.starts_with("91000000MA00DEMO0X/realtime/"))
        .collect();
    assert!(realtime.len() >= 8, "{realtime:?}");
    assert!(realtime.windows(2).all(|w| w[0] < w[1]), "{realtime:?}");
    // The command line reads the same record: the export equals the API's.
    let run = |args: &[&str]| {
        std::process::Command::new(bin("ems-gateway"))
            .args(args)
            .current_dir(d)
            .output()
            .unwrap()
    };
    let export = run(&[
        "export",
        "--config",
        "gateway.toml",
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01T00:00:00Z",
    ]);
    assert!(export.status.success(), "{export:?}");
    assert_eq!(String::from_utf8(export.stdout).unwrap(), csv);
    // A command of SQLite's file says so, instead of making an empty one and acting on it.
    let stats = run(&["stats", "--config", "gateway.toml"]);
    let err = String::from_utf8_lossy(&stats.stderr);
    assert!(
        !stats.status.success() && err.contains("SQLite backend"),
        "{err}"
    );
    assert!(!d.join("gw.db").exists(), "nothing in SQLite");
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}
