//! Protocol v1.1 against a real Mosquitto: a broker that loses its queue (restarted without
//! persistence while the gateway is away) loses nothing the edge read, because the edge keeps
//! each result until the gateway says it is committed. The same run with the edge on v1
//! (release on PUBACK) shows the loss this closes.

use std::time::Duration;

use ems_tests::*;

/// What one run left at the gateway.
struct Outcome {
    /// Sequence numbers missing at the gateway, over all devices.
    missing: u64,
    /// Every number stored exactly once (checked when nothing is missing).
    checked: bool,
    resent_log: bool,
}

/// The demo pipeline over a broker without persistence; the gateway stops (its session stays
/// in the broker's memory, queueing), the edge goes on, the broker is killed and restarted
/// (queue, session and retained marks gone), the gateway comes back.
fn broker_loses_its_queue(commit_acks: bool) -> Outcome {
    let dir = TempDir::new(if commit_acks { "v1_1" } else { "v1" });
    let d = dir.path();
    let mut broker = Mosquitto::start(d);
    let Pipeline {
        sim: _sim,
        mut gateway,
        http,
        mut edge,
    } = start_pipeline(d, broker.port);
    if !commit_acks {
        // Restarted on v1: results leave the spool on the broker's PUBACK.
        edge.terminate(Duration::from_secs(20));
        let config = d.join("edge.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let from = "topic_prefix = \"ems/v1\"\n";
        assert!(text.contains(from));
        std::fs::write(
            &config,
            text.replacen(from, &format!("{from}commit_acks = false\n"), 1),
        )
        .unwrap();
        edge = Proc::start(&bin("ems-edge"), &["run", "--config", "edge.toml"], d);
    }
    eventually("every meter's data stored", Duration::from_secs(30), || {
        get_json(&http, "/api/v1/devices")
            .as_array()
            .is_some_and(|d| {
                d.len() == demo_meter_count() && d.iter().all(|d| d["messages"].as_i64() > Some(3))
            })
    });
    let marker = d.join("ems-edge-data/spool/gateway-confirms-commits");
    if commit_acks {
        eventually(
            "the edge hears the gateway confirm its commits",
            Duration::from_secs(10),
            || marker.exists(),
        );
    }

    assert!(gateway.terminate(Duration::from_secs(20)).success());
    // The broker takes (and acknowledges) three seconds of polls for the absent gateway.
    std::thread::sleep(Duration::from_secs(3));
    broker.kill();
    broker.restart();
    let (mut gateway, http) = start_gateway(d);
    // The gateway comes back to a broker that forgot its session: what was queued is gone.
    eventually("the gateway subscribed", Duration::from_secs(10), || {
        get_text(&http, "/metrics").contains("ems_gateway_mqtt_subscribed 1")
    });
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        edge.terminate(Duration::from_secs(30)).success(),
        "{}",
        edge.stderr_tail()
    );
    let seq = edge_sequence_numbers(d);
    eventually(
        "the gateway has every device's last number",
        Duration::from_secs(30),
        || {
            get_json(&http, "/api/v1/devices")
                .as_array()
                .unwrap()
                .iter()
                .all(|dev| {
                    dev["last_seq"].as_u64() == seq.get(dev["id"].as_str().unwrap()).copied()
                })
        },
    );
    let missing: u64 = get_json(&http, "/api/v1/devices")
        .as_array()
        .unwrap()
        .iter()
        .map(|dev| dev["missing"].as_u64().unwrap())
        .sum();
    let checked = missing == 0 && {
        assert_stored_exactly_once(&http, &seq);
        true
    };
    let resent_log = edge
        .stderr()
        .contains("Sending again what the gateway has not confirmed committed.");
    assert_eq!(marker.exists(), commit_acks);
    assert!(gateway.terminate(Duration::from_secs(20)).success());
    Outcome {
        missing,
        checked,
        resent_log,
    }
}

#[test]
fn a_broker_that_loses_its_queue_loses_nothing_the_edge_read() {
    let o = broker_loses_its_queue(true);
    assert_eq!(o.missing, 0, "no sequence gaps under protocol v1.1");
    assert!(o.checked, "every number stored exactly once");
    assert!(o.resent_log, "the edge sent again what was not confirmed");
}

#[test]
fn on_v1_the_same_loss_leaves_gaps_that_the_ledger_reports() {
    let o = broker_loses_its_queue(false);
    assert!(
        o.missing > 0,
        "the broker's lost queue shows as gaps when the edge releases on PUBACK"
    );
    assert!(!o.resent_log);
}
