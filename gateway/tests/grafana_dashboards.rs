//! The Grafana dashboards in `dashboards/grafana` parse, use the provisioned datasource, and
//! query only measurements, fields and tags the InfluxDB sink writes: a renamed field breaks
//! this test, not a plant's wall screen.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use ems_gateway::influx::WRITTEN;

/// Tags the sink writes, over all measurements.
const TAGS: &[&str] = &[
    "site", "device", "point", "quality", "unit", "kind", "workshop", "carrier", "role",
];

fn dashboards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// Every string after `needle` up to the next `"`.
fn quoted_after<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.match_indices(needle)
        .map(|(i, _)| {
            let rest = &text[i + needle.len()..];
            &rest[..rest.find('"').expect("closing quote")]
        })
        .collect()
}

/// Every `r.name` a Flux query reads (row fields after a pivot, or tags).
fn row_names(query: &str) -> BTreeSet<&str> {
    query
        .match_indices("r.")
        .filter(|(i, _)| {
            *i == 0
                || !query.as_bytes()[i - 1].is_ascii_alphanumeric()
                    && query.as_bytes()[i - 1] != b'_'
        })
        .map(|(i, _)| {
            let rest = &query[i + 2..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| !n.is_empty() && !n.starts_with('_'))
        .collect()
}

fn queries(panel: &serde_json::Value) -> Vec<(String, String)> {
    panel["targets"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    (
                        t["datasource"]["uid"].as_str().unwrap_or("").to_owned(),
                        t["query"]
                            .as_str()
                            .expect("every target has a Flux query")
                            .to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_dashboard_queries_only_what_the_sink_writes() {
    let written: HashMap<&str, BTreeSet<&str>> = WRITTEN
        .iter()
        .map(|(m, fields)| (*m, fields.iter().copied().collect()))
        .collect();
    let provisioned = std::fs::read_to_string(
        dashboards_dir().join("provisioning/datasources/ems-influxdb.yaml"),
    )
    .unwrap();
    let uids: Vec<&str> = provisioned
        .lines()
        .filter_map(|l| l.trim().strip_prefix("uid: "))
        .collect();
    assert_eq!(uids, ["ems-influxdb"], "one provisioned datasource");

    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir().join("grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "overview and unit dashboards: {files:?}");
    let mut fields_used: BTreeSet<String> = BTreeSet::new();
    for file in &files {
        let name = file.display();
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        assert!(d["uid"].is_string() && d["title"].is_string(), "{name}");
        let panels = d["panels"].as_array().expect("panels");
        let ids: BTreeSet<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
        assert_eq!(ids.len(), panels.len(), "{name}: panel ids are unique");
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?");
            let qs = queries(panel);
            assert!(!qs.is_empty(), "{name} / {title}: no query");
            for (uid, q) in qs {
                assert_eq!(uid, "ems-influxdb", "{name} / {title}: datasource");
                let measurements = quoted_after(&q, "r._measurement == \"");
                assert_eq!(
                    measurements.len(),
                    1,
                    "{name} / {title}: one measurement\n{q}"
                );
                let m = measurements[0];
                let fields = written
                    .get(m)
                    .unwrap_or_else(|| panic!("{name} / {title}: the sink writes no `{m}`"));
                for f in quoted_after(&q, "r._field == \"") {
                    assert!(
                        fields.contains(f),
                        "{name} / {title}: `{m}` has no field `{f}`"
                    );
                    fields_used.insert(f.to_owned());
                }
                for n in row_names(&q) {
                    assert!(
                        fields.contains(n) || TAGS.contains(&n),
                        "{name} / {title}: `r.{n}` is neither a field of `{m}` nor a tag"
                    );
                }
            }
        }
    }
    // The unit page draws the limit lines and the quota the sink writes for it.
    for f in [
        "level1_threshold",
        "level3_threshold",
        "water_quota_m3_per_t",
        "kgce",
    ] {
        assert!(fields_used.contains(f), "no dashboard uses `{f}`");
    }
}
