//! Wire protocol v1 between ems-edge and ems-gateway (documented in docs/protocol.md).

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::Quality;

/// Protocol version carried in every message; the gateway rejects others.
pub const PROTOCOL_VERSION: u32 = 1;

/// One poll of one device: published QoS 1 on `{prefix}/{site}/data/{device}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    pub v: u32,
    pub site: String,
    pub edge: String,
    pub device: String,
    /// Per-device sequence number; it only grows, across restarts of the edge.
    pub seq: u64,
    /// Poll time, milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    pub points: Vec<PointValue>,
    /// Protocol v1.2: the edge's signature and the device's chain (absent from v1 edges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<Signed>,
}

/// A message's evidence (protocol v1.2): `prev` is the SHA-256 of the device's previous
/// message's canonical bytes (zeros where the chain starts), `sig` the edge's Ed25519 signature
/// over this message's canonical bytes; both hexadecimal. See `evidence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub prev: String,
    pub sig: String,
}

/// One point's value; `v` is absent (`null`) unless the quality is good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointValue {
    pub id: String,
    pub v: Option<f64>,
    pub q: Quality,
}

/// Edge status, retained on `{prefix}/{site}/status/{edge}`; the offline form is the last will.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub v: u32,
    pub site: String,
    pub edge: String,
    pub online: bool,
    /// Devices this edge polls (empty in the last will, which is fixed at connect time).
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub ts_ms: Option<i64>,
    /// Results in the edge's spool not yet acknowledged by the broker, and results its spool
    /// has dropped (full) since the edge started; absent in the last will.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_depth: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_dropped: Option<u64>,
}

/// What the gateway has committed of one edge's devices (protocol v1.1), retained on
/// `{prefix}/{site}/ack/{edge}` after each commit that touched them; only the devices a commit
/// touched are in it, so an edge keeps the newest mark it has seen of each device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub v: u32,
    pub site: String,
    pub edge: String,
    pub devices: Vec<DeviceAck>,
}

/// One device's committed sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceAck {
    pub device: String,
    /// Every number up to this one is committed (or declared lost by an operator): the
    /// watermark without gaps.
    pub through: u64,
    /// The highest number this mark speaks for: above `through`, every number up to `last` is
    /// committed except those in `missing`.
    pub last: u64,
    /// The ranges (inclusive) still missing between `through` and `last`, lowest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<[u64; 2]>,
    /// Numbers of this commit that the gateway kept aside in its quarantine (refused, with
    /// their reason): held by the gateway, so the edge need not send them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aside: Vec<u64>,
}

impl DeviceAck {
    /// Whether the gateway holds number `seq`: committed, declared lost or kept aside.
    pub fn covers(&self, seq: u64) -> bool {
        seq <= self.through
            || (seq <= self.last && !self.missing.iter().any(|[a, b]| *a <= seq && seq <= *b))
            || self.aside.contains(&seq)
    }

    /// Takes in a later mark of the same device: the newer watermark, its missing ranges, and
    /// the numbers kept aside by either.
    pub fn merge(&mut self, newer: DeviceAck) {
        let mut aside = core::mem::take(&mut self.aside);
        if newer.last >= self.last {
            *self = DeviceAck {
                aside: newer.aside.clone(),
                ..newer.clone()
            };
        }
        aside.extend(newer.aside);
        aside.retain(|s| *s > self.through);
        aside.sort_unstable();
        aside.dedup();
        self.aside = aside;
    }
}

/// Topic names of protocol v1.
pub mod topic {
    use alloc::format;
    use alloc::string::String;

    pub fn data(prefix: &str, site: &str, device: &str) -> String {
        format!("{prefix}/{site}/data/{device}")
    }
    pub fn status(prefix: &str, site: &str, edge: &str) -> String {
        format!("{prefix}/{site}/status/{edge}")
    }
    /// Where the gateway tells an edge what it has committed (protocol v1.1).
    pub fn ack(prefix: &str, site: &str, edge: &str) -> String {
        format!("{prefix}/{site}/ack/{edge}")
    }
    /// Subscription filters that cover every site.
    pub fn data_filter(prefix: &str) -> String {
        format!("{prefix}/+/data/+")
    }
    pub fn status_filter(prefix: &str) -> String {
        format!("{prefix}/+/status/+")
    }

    /// What a topic names, if it is one of ours.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Parsed<'a> {
        Data { site: &'a str, device: &'a str },
        Status { site: &'a str, edge: &'a str },
    }

    pub fn parse<'a>(prefix: &str, topic: &'a str) -> Option<Parsed<'a>> {
        let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (site, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || site.is_empty() || name.is_empty() {
            return None;
        }
        match kind {
            "data" => Some(Parsed::Data { site, device: name }),
            "status" => Some(Parsed::Status { site, edge: name }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_json_matches_the_documented_example() {
        let msg = Telemetry {
            v: 1,
            site: "demo".into(),
            edge: "edge-1".into(),
            device: "bf1-power".into(),
            seq: 1042,
            ts_ms: 1_767_196_800_000,
            points: alloc::vec![
                PointValue {
                    id: "import_kwh".into(),
                    v: Some(1234.5),
                    q: Quality::Good
                },
                PointValue {
                    id: "power_kw".into(),
                    v: None,
                    q: Quality::Exception(2)
                },
            ],
            signed: None,
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            json,
            r#"{"v":1,"site":"demo","edge":"edge-1","device":"bf1-power","seq":1042,"ts_ms":1767196800000,"points":[{"id":"import_kwh","v":1234.5,"q":"good"},{"id":"power_kw","v":null,"q":"exception:02"}]}"#
        );
        assert_eq!(serde_json::from_str::<Telemetry>(&json).unwrap(), msg);
    }

    #[test]
    fn an_ack_covers_the_watermark_the_committed_numbers_above_it_and_what_was_kept_aside() {
        let a = DeviceAck {
            device: "d".into(),
            through: 10,
            last: 20,
            missing: alloc::vec![[11, 12], [15, 15]],
            aside: alloc::vec![13, 30],
        };
        let covered: Vec<u64> = (1..=31).filter(|s| a.covers(*s)).collect();
        let expected: Vec<u64> = (1..=10)
            .chain([13, 14])
            .chain(16..=20)
            .chain([30])
            .collect();
        assert_eq!(covered, expected);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"device":"d","through":10,"last":20,"missing":[[11,12],[15,15]],"aside":[13,30]}"#
        );
        assert_eq!(serde_json::from_str::<DeviceAck>(&json).unwrap(), a);
    }

    #[test]
    fn merging_keeps_the_newest_mark_and_every_number_kept_aside() {
        let mark = |through, last, aside: &[u64]| DeviceAck {
            device: "d".into(),
            through,
            last,
            missing: alloc::vec![],
            aside: aside.to_vec(),
        };
        let mut a = mark(5, 5, &[9]);
        a.merge(mark(7, 7, &[12]));
        assert_eq!(a, mark(7, 7, &[9, 12]));
        // An older mark arriving late (a retained copy) moves nothing back.
        a.merge(mark(3, 3, &[]));
        assert_eq!(a, mark(7, 7, &[9, 12]));
        // Numbers below the watermark need no mention.
        a.merge(mark(10, 10, &[]));
        assert_eq!(a, mark(10, 10, &[12]));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json =
            r#"{"v":1,"site":"s","edge":"e","device":"d","seq":1,"ts_ms":0,"points":[],"x":1}"#;
        assert!(serde_json::from_str::<Telemetry>(json).is_err());
    }

    #[test]
    fn topics_parse_back() {
        let t = topic::data("ems/v1", "demo", "bf1-power");
        assert_eq!(t, "ems/v1/demo/data/bf1-power");
        assert_eq!(
            topic::parse("ems/v1", &t),
            Some(topic::Parsed::Data {
                site: "demo",
                device: "bf1-power"
            })
        );
        assert_eq!(
            topic::ack("ems/v1", "demo", "edge-1"),
            "ems/v1/demo/ack/edge-1"
        );
        let s = topic::status("ems/v1", "demo", "edge-1");
        assert_eq!(
            topic::parse("ems/v1", &s),
            Some(topic::Parsed::Status {
                site: "demo",
                edge: "edge-1"
            })
        );
        assert_eq!(topic::parse("ems/v1", "ems/v1/demo/data/a/b"), None);
        assert_eq!(topic::parse("ems/v1", "other/demo/data/a"), None);
        assert_eq!(topic::parse("ems/v1", "ems/v1/demo/data/"), None);
    }
}
