//! The edge's disk spool against a real Mosquitto: what the edge has read survives a broker
//! outage and a SIGKILL of the edge itself, and is delivered exactly once after its restart.

use std::time::Duration;

use ems_tests::*;

/// Bytes in the edge's spool segments.
fn spooled_bytes(dir: &std::path::Path) -> u64 {
    spool_files(dir).1
}

/// The edge's spool segments: how many, and their bytes.
fn spool_files(dir: &std::path::Path) -> (usize, u64) {
    let sizes: Vec<u64> = std::fs::read_dir(dir.join("ems-edge-data/spool"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    (sizes.len(), sizes.iter().sum())
}

/// The spool's segment size after the killed edge's restart, bytes.
const SEGMENT: u64 = 64 * 1024;

/// A broker that keeps sessions, and the demo pipeline through it once every meter's data is
/// being stored.
fn pipeline_storing(d: &std::path::Path) -> (Mosquitto, Pipeline) {
    let broker = Mosquitto::start_persistent(d);
    let pipeline = start_pipeline(d, broker.port);
    eventually("data stored", Duration::from_secs(20), || {
        get_json(&pipeline.http, "/api/v1/devices")
            .as_array()
            .is_some_and(|d| {
                d.len() == demo_meter_count() && d.iter().all(|d| d["messages"].as_i64() > Some(3))
            })
    });
    (broker, pipeline)
}

#[test]
fn an_edge_killed_during_a_broker_outage_delivers_everything_after_its_restart() {
    let dir = TempDir::new("spool");
    let d = dir.path();
    let (mut broker, pipeline) = pipeline_storing(d);
    let Pipeline {
        sim: _sim,
        mut gateway,
        http,
        mut edge,
    } = pipeline;

    // The broker goes away; the edge goes on polling into its spool, then dies without warning.
    broker.stop();
    let at_stop = edge_sequence_numbers(d);
    std::thread::sleep(Duration::from_secs(3));
    let before_kill = edge_sequence_numbers(d);
    edge.kill();
    assert!(
        spooled_bytes(d) > 0,
        "what the edge read during the outage is on disk"
    );

    broker.restart();
    // Restarted with its metrics served, to watch the replay, and with small spool segments:
    // the one holding the outage is closed at the first new record and must go once replayed.
    let config = d.join("edge.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("poll_interval_ms = 100\n"));
    assert!(text.contains("segment_bytes = 4194304"));
    std::fs::write(
        &config,
        text.replace(
            "poll_interval_ms = 100\n",
            "poll_interval_ms = 100\nmetrics_listen = \"127.0.0.1:0\"\n",
        )
        .replace(
            "segment_bytes = 4194304",
            &format!("segment_bytes = {SEGMENT}"),
        ),
    )
    .unwrap();
    let mut edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    let metrics_addr = edge.wait_line("METRICS ", Duration::from_secs(10));
    // Back online, the edge reports the backlog it starts to replay.
    eventually(
        "the edge reports its spool backlog",
        Duration::from_secs(15),
        || get_json(&http, "/api/v1/edges")[0]["spool_depth"].as_i64() > Some(0),
    );
    let metric = |name: &str| -> u64 {
        get_text(&metrics_addr, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    eventually("the backlog replayed", Duration::from_secs(15), || {
        metric("ems_edge_spool_depth") == 0
    });
    let read_in_outage: u64 = before_kill.values().sum::<u64>() - at_stop.values().sum::<u64>();
    let (replayed, delivered) = (
        metric("ems_edge_replayed_total"),
        metric("ems_edge_delivered_total"),
    );
    eprintln!("{replayed} replayed of {delivered} delivered; {read_in_outage} read in the outage");
    // A kill between numbering a cycle's readings and spooling them loses that cycle (one
    // reading a meter): a gap at the gateway, not a replay.
    assert!(
        replayed + demo_meter_count() as u64 >= read_in_outage && replayed <= delivered,
        "the replay is counted: {replayed} replayed of {delivered} delivered, {read_in_outage} read in the outage"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        edge.terminate(Duration::from_secs(30)).success(),
        "{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    for (device, n) in &before_kill {
        assert!(seq[device] > *n, "{device}: polled again after the restart");
    }
    let redelivered = assert_stored_exactly_once(&http, &seq);
    // The offline status comes after the last results are committed (the edge waits for the
    // gateway's confirmation before it stops).
    eventually("the edge's offline status", Duration::from_secs(10), || {
        get_json(&http, "/api/v1/edges")[0]["online"] == false
    });
    let e = get_json(&http, "/api/v1/edges")[0].clone();
    assert_eq!(
        (&e["online"], &e["spool_depth"], &e["spool_dropped"]),
        (&false.into(), &0.into(), &0.into()),
        "stopped cleanly with everything delivered: {e}"
    );
    eprintln!("{redelivered} copies delivered twice and dropped by the gateway");
    // Only the segment being written stays: every delivered one, the outage's among them, is
    // gone (one record may take it past its size).
    let (files, bytes) = spool_files(d);
    assert!(
        files == 1 && bytes <= SEGMENT + 64 * 1024,
        "delivered segments are deleted: {files} segments, {bytes} bytes"
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}

#[test]
fn after_minutes_without_the_broker_the_backlog_arrives_whole_with_its_own_times() {
    let dir = TempDir::new("outage");
    let d = dir.path();
    let (mut broker, pipeline) = pipeline_storing(d);
    let Pipeline {
        sim: _sim,
        mut gateway,
        http,
        mut edge,
    } = pipeline;

    // Three minutes without the broker: some 1 800 polls of each meter wait in the spool.
    broker.stop();
    let at_stop = edge_sequence_numbers(d);
    std::thread::sleep(Duration::from_secs(180));
    let at_return = edge_sequence_numbers(d);
    broker.restart();
    let back = std::time::Instant::now();
    // The backlog replays and what the edge reads now follows it: every meter's newest stored
    // number passes the one it had reached when the broker came back, with nothing missing.
    eventually(
        "backlog and live data stored",
        Duration::from_secs(90),
        || {
            get_json(&http, "/api/v1/devices")
                .as_array()
                .is_some_and(|devs| {
                    devs.iter().all(|v| {
                        let id = v["id"].as_str().unwrap_or_default();
                        v["last_seq"].as_u64() > at_return.get(id).copied()
                            && v["missing"].as_u64() == Some(0)
                    })
                })
        },
    );
    eprintln!(
        "backlog of {} messages delivered and live data flowing {:.1} s after the broker's return",
        at_return.values().sum::<u64>() - at_stop.values().sum::<u64>(),
        back.elapsed().as_secs_f64()
    );
    stop_edge_all_delivered(&mut edge, Duration::from_secs(30));
    let seq = edge_sequence_numbers(d);
    assert_stored_exactly_once(&http, &seq);

    // Replayed readings keep the times they were read at (the meter's clock, 60x), not the
    // time of their delivery: over the outage they step evenly through its three minutes.
    let device = "bf1-power";
    let csv = get_text(
        &http,
        &format!(
            "/api/v1/samples.csv?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&device={device}"
        ),
    );
    let mut times: Vec<(u64, i64)> = csv
        .lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            let seq: u64 = c[1].parse().ok()?;
            let t = chrono::DateTime::parse_from_rfc3339(c[3]).ok()?;
            (seq > at_stop[device] && seq <= at_return[device])
                .then_some((seq, t.timestamp_millis()))
        })
        .collect();
    times.sort_unstable();
    times.dedup_by_key(|(s, _)| *s);
    let n = (at_return[device] - at_stop[device]) as usize;
    assert_eq!(times.len(), n, "every reading of the outage stored");
    let span_s = (times[n - 1].1 - times[0].1) as f64 / 1000.0;
    assert!(
        span_s > 0.8 * 180.0 * 60.0,
        "the outage's readings span its simulated time: {span_s:.0} s"
    );
    let widest = times.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap();
    assert!(
        widest > 0 && widest < 60_000,
        "times rise with the numbers and step at the poll interval: widest step {widest} ms"
    );
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}
