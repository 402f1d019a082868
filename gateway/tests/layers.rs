//! The gateway's floors, checked: the energy domain (ems-energy) depends on nothing with I/O and
//! does none itself, and the gateway's modules import each other without a circle. ARCHITECTURE.md
//! points here: `cargo test -p ems-gateway --test layers` is the command that checks both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates that would bring I/O, a runtime, a database or a server into the domain.
const NOT_IN_THE_DOMAIN: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "rusqlite",
    "libsqlite3-sys",
    "axum",
    "hyper",
    "reqwest",
    "rumqttc",
    "rumqttd",
    "tokio-modbus",
    "influxdb2",
    "krilla",
    "ems-gateway",
    "ems-edge",
    "ems-sim",
];

/// The crates `package` depends on for its own build (normal edges), named once each.
fn dependency_tree(package: &str, extra: &[&str]) -> (String, BTreeSet<String>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            package,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    (tree, crates)
}

#[test]
fn the_energy_domain_depends_on_nothing_with_io() {
    let (tree, crates) = dependency_tree("ems-energy", &[]);
    assert!(
        crates.contains("ems-energy") && crates.contains("serde"),
        "{tree}"
    );
    let found: Vec<&&str> = NOT_IN_THE_DOMAIN
        .iter()
        .filter(|c| crates.contains(**c))
        .collect();
    assert!(found.is_empty(), "ems-energy pulls in {found:?}:\n{tree}");
}

/// A plant's production build: the gateway without its default `demo` feature carries neither
/// the edge (GPIO, serial, Modbus stacks) nor the simulator nor the embedded broker.
#[test]
fn the_production_gateway_links_neither_the_edge_nor_the_simulator() {
    let (tree, crates) = dependency_tree("ems-gateway", &["--no-default-features"]);
    assert!(
        crates.contains("ems-energy") && crates.contains("rusqlite"),
        "{tree}"
    );
    let found: Vec<&str> = [
        "ems-edge",
        "ems-sim",
        "rumqttd",
        "tokio-modbus",
        "linux-embedded-hal",
    ]
    .into_iter()
    .filter(|c| crates.contains(*c))
    .collect();
    assert!(
        found.is_empty(),
        "the production gateway pulls in {found:?}:\n{tree}"
    );
    // And the demo build does carry them: the check above can see them.
    let (_, with_demo) = dependency_tree("ems-gateway", &[]);
    assert!(with_demo.contains("ems-edge") && with_demo.contains("ems-sim"));
}

#[test]
fn the_energy_domain_does_no_io_itself() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("energy/src");
    for file in rust_files(&dir) {
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        for io in [
            "std::fs",
            "std::net",
            "std::io",
            "std::process",
            "std::env",
            "SystemTime",
            "Instant",
            "Utc::now",
            "Local::now",
            "include_bytes",
        ] {
            assert!(!code.contains(io), "{} uses {io}", file.display());
        }
    }
}

#[test]
fn the_gateways_modules_import_each_other_without_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let uses = graph.entry(module.clone()).or_default();
        for name in crate_references(&code) {
            if name != module && name != "self" {
                uses.insert(name);
            }
        }
    }
    assert!(graph.len() > 10, "{graph:?}");
    if let Some(circle) = find_circle(&graph) {
        panic!(
            "modules import each other in a circle: {}",
            circle.join(" -> ")
        );
    }
}

#[test]
fn a_circle_is_found_where_there_is_one() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
        }
        g
    };
    let circle = find_circle(&graph(&[
        ("api", "store"),
        ("store", "config"),
        ("config", "store"),
    ]));
    assert_eq!(
        circle,
        Some(vec!["store".into(), "config".into(), "store".into()])
    );
    assert_eq!(
        find_circle(&graph(&[
            ("api", "store"),
            ("api", "config"),
            ("config", "store")
        ])),
        None
    );
    assert_eq!(
        crate_references("use crate::{alarms, api::AppState};\nlet x = crate::store::rfc3339(1); crate::Config::load"),
        ["alarms", "api", "store"].map(String::from).into_iter().collect()
    );
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The source without its comments (doc links name modules without importing them) and
/// without its tests.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a source names through `crate::`, including `crate::{a, b::c}`.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            // `crate::Config` and the like are the root's re-exports of a module's item.
            if name.chars().next().is_some_and(|c| c.is_lowercase()) {
                out.insert(name);
            }
        }
    }
    out
}

fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut circle = path[i..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}
