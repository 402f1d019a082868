//! Telemetry and status classification of whatever arrives on the broker: never a panic, and
//! what is accepted keeps every promise the store relies on.
#![no_main]

use std::collections::HashSet;
use std::sync::Arc;

use ems_gateway::ingest::{classify, Validation};
use ems_gateway::storage::Incoming;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_767_200_000_000;

fn validation() -> Validation {
    Validation {
        topic_prefix: "ems/v1".into(),
        sites: HashSet::from(["demo".to_string()]),
        edges: vec!["edge-1".into(), "line-*".into()],
        accounted: HashSet::from(["m1".to_string(), "bf1-coke".to_string()]),
        other_devices: vec!["info-*".into()],
        earliest_ms: 1_577_836_800_000,
        max_future_ms: 600_000,
        now: Arc::new(|| NOW),
        // One enrolled edge, so that signatures are checked too.
        edge_keys: Arc::new(ems_gateway::evidence::EdgeKeys::from([(
            "line-signed".to_string(),
            ems_core::evidence::PublicKey::from_hex(
                &ems_core::evidence::EdgeKey::from_seed([1; 32]).public_hex(),
            )
            .unwrap(),
        )])),
    }
}

// The input's first byte picks the topic (one of ours, or what follows up to a newline), the
// rest is the payload: seeds are a byte and a message.
fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let v = validation();
    let (topic, payload) = match pick % 4 {
        0 => ("ems/v1/demo/data/m1".to_string(), rest),
        1 => ("ems/v1/demo/status/edge-1".to_string(), rest),
        2 => ("ems/v1/demo/data/info-3".to_string(), rest),
        _ => {
            let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            (
                String::from_utf8_lossy(&rest[..cut]).into_owned(),
                rest.get(cut + 1..).unwrap_or(&[]),
            )
        }
    };
    match classify(&topic, &bytes::Bytes::copy_from_slice(payload), &v) {
        Incoming::Telemetry(m, raw) => {
            assert!(m.seq >= 1 && m.seq <= i64::MAX as u64);
            assert!(m.ts_ms >= v.earliest_ms && m.ts_ms <= NOW + v.max_future_ms);
            assert!(v.accounted.contains(&m.device) || m.device.starts_with("info-"));
            assert!(v.sites.contains(&m.site));
            let mut ids = HashSet::new();
            for p in &m.points {
                assert!(ids.insert(p.id.clone()), "point twice");
                assert_eq!(p.q.is_good(), p.v.is_some());
                assert!(p.v.is_none_or(f64::is_finite));
                assert!(ems_gateway::config::valid_name(&p.id));
            }
            assert_eq!(&raw.payload[..], payload);
        }
        Incoming::Status(s) => {
            assert!(s.edge == "edge-1" || s.edge.starts_with("line-"));
        }
        Incoming::Rejected(r) => {
            assert!(r.reason.contains(": "), "{}", r.reason);
            assert!(r.reason.len() < 2_000, "a reason stays short");
        }
    }
});
