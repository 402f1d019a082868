//! Settled raw history compacted into blocks, through the real store and the real binary: the
//! export and the integrity recompute read the blocks as they read the rows, a late message
//! for a compacted day is taken as if nothing were compacted, a repeated one stays a
//! duplicate, and a compaction killed half-way loses and doubles nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_gateway::storage::Incoming;
use ems_gateway::store::{history_stats, Compactor, Pruner, Store};
use ems_gateway::Config;

const H: i64 = 3_600_000;
/// 2026-03-01T00:00Z: a UTC day starts here.
const T0: i64 = 1_772_323_200_000;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("ems-history-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gateway whose `devices` each meter a counter (`total`, accounted) beside a power reading
/// and a status that sometimes fails; late messages are taken up to five days back.
fn config(dir: &Path, devices: usize) -> (PathBuf, Config) {
    let mut text = format!(
        "[mqtt]\nhost = \"127.0.0.1\"\n[storage]\npath = \"{}\"\n[ingest]\nsites = [\"s\"]\nedges = [\"e1\", \"e2\"]\nmax_late_s = 432000\n\
         [[units]]\nid = \"k\"\nname = \"K\"\nkind = \"kiln\"\nfunction = \"auxiliary\"\n",
        dir.join("gateway.db").display()
    );
    for d in 0..devices {
        text += &format!(
            "[[units.flows]]\ndevice = \"m{d}\"\npoint = \"total\"\nrole = \"consumed\"\ncarrier = \"electricity\"\nunit = \"kWh\"\nrollover = 100000000.0\n"
        );
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, &text).unwrap();
    (path, Config::load(&dir.join("gateway.toml")).unwrap())
}

/// Message `k` (polls every `step_ms` from T0) of device `d`: its counter of hundredths, its
/// power, and its status, an exception now and then. Sequence numbers start at 1.
fn message(d: usize, k: i64, step_ms: i64) -> Telemetry {
    let raw = 1_000_000 + k * (170 + d as i64) + (k * k) % 7;
    Telemetry {
        v: 1,
        site: "s".into(),
        edge: if k % 500 < 250 { "e1" } else { "e2" }.into(),
        device: format!("m{d}"),
        seq: k as u64 + 1,
        ts_ms: T0 + k * step_ms + (k * 37) % 900,
        points: vec![
            PointValue {
                id: "total".into(),
                v: Some(raw as f64 * 0.01),
                q: Quality::Good,
            },
            PointValue {
                id: "power".into(),
                v: Some(40.0 + (k % 13) as f64 * 0.37),
                q: Quality::Good,
            },
            if k % 97 == 3 {
                PointValue {
                    id: "status".into(),
                    v: None,
                    q: Quality::Exception(2),
                }
            } else {
                PointValue {
                    id: "status".into(),
                    v: Some(1.0),
                    q: Quality::Good,
                }
            },
        ],
        signed: None,
    }
}

/// Writes `count` polls of each device through the store's own write path, leaving out the
/// messages `skip` names (device, k).
fn write(config: &Config, devices: usize, count: i64, step_ms: i64, skip: &[(usize, i64)]) {
    let mut store = Store::open(&config.storage.path).unwrap();
    let rules = config.write_rules();
    for chunk in (0..count).collect::<Vec<_>>().chunks(2_000) {
        let batch: Vec<Incoming> = chunk
            .iter()
            .flat_map(|&k| (0..devices).map(move |d| (d, k)))
            .filter(|dk| !skip.contains(dk))
            .map(|(d, k)| Incoming::built(message(d, k, step_ms)))
            .collect();
        let received = T0 + chunk[chunk.len() - 1] * step_ms + 500;
        store.write_batch(&batch, &rules, received).unwrap();
    }
}

fn export(config: &Config) -> String {
    let store = Store::open(&config.storage.path).unwrap();
    let mut out = Vec::new();
    store
        .reader()
        .unwrap()
        .export_csv(None, i64::MIN, i64::MAX, &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

fn slots(config: &Config) -> Vec<(String, i64, i64, i64, i64)> {
    let conn = rusqlite::Connection::open(&config.storage.path).unwrap();
    let mut stmt = conn
        .prepare("SELECT device || '/' || point, slot_ms, CAST(delta * 1e6 AS INTEGER), covered_ms, CAST(estimated * 1e6 AS INTEGER) FROM point_slots ORDER BY 1, 2")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

/// The integrity recompute over rows and blocks: every stored rollup as the raw samples give
/// it. Returns the samples it checked.
fn recomputed(config: &Config) -> u64 {
    let integrity = Store::open(&config.storage.path)
        .unwrap()
        .reader()
        .unwrap()
        .verify_rollups(&config.accounting_rules())
        .unwrap();
    assert!(
        integrity.mismatches.is_empty(),
        "{:?}",
        integrity.mismatches
    );
    integrity.samples_checked
}

#[test]
fn compaction_told_to_stop_stops_between_transactions_and_the_next_run_finishes() {
    // Twenty-one days of one device's polls, the last day and the one before unsettled at 24 h:
    // nineteen settled days, more than one transaction's worth (eight days).
    let dir = Dir::new("stop");
    let (_, config) = config(&dir.0, 1);
    write(&config, 1, 21 * 1440, 60_000, &[]);
    let asked = std::cell::Cell::new(0);
    let first = Compactor::open(&config.storage.path)
        .unwrap()
        .compact(24 * H, &|| {
            asked.set(asked.get() + 1);
            asked.get() > 1
        })
        .unwrap();
    assert_eq!(
        first.blocks, 8,
        "one transaction, then it stopped: {first:?}"
    );
    let rest = Compactor::open(&config.storage.path)
        .unwrap()
        .compact(24 * H, &|| false)
        .unwrap();
    assert_eq!(first.blocks + rest.blocks, 19, "{rest:?}");
}

#[test]
fn compacted_days_export_and_recompute_as_before_and_take_late_and_repeated_messages() {
    let dir = Dir::new("days");
    let (_, config) = config(&dir.0, 2);
    // Four days and an hour of one-minute polls; device m0's poll 700 (day 1) arrives only
    // later.
    const POLLS: i64 = 4 * 1440 + 60;
    write(&config, 2, POLLS, 60_000, &[(0, 700)]);
    let before = export(&config);
    let checked_before = recomputed(&config);
    let rows_before = history_stats(&config.storage.path).unwrap();

    // 48 h behind the newest poll: the first two UTC days of each device are settled.
    let done = Compactor::open(&config.storage.path)
        .unwrap()
        .compact(48 * H, &|| false)
        .unwrap();
    assert_eq!(done.blocks, 4, "{done:?}");
    assert_eq!(done.messages, 2 * 2 * 1440 - 1);
    let stats = history_stats(&config.storage.path).unwrap();
    assert_eq!(stats.blocks, 4);
    assert_eq!(
        stats.block_points + stats.row_points,
        rows_before.row_points
    );
    let per_point = stats.block_bytes_per_point.unwrap();
    assert!(
        per_point < 4.0,
        "{per_point:.2} bytes a point in blocks, packed rows took {:.1}: {stats:?}",
        done.sample_bytes_before as f64 / done.points as f64
    );
    // The export is the same, byte for byte; the recompute finds every rollup as stored.
    assert_eq!(export(&config), before);
    assert_eq!(recomputed(&config), checked_before);
    // Compacting again finds nothing more to do.
    let again = Compactor::open(&config.storage.path)
        .unwrap()
        .compact(48 * H, &|| false)
        .unwrap();
    assert_eq!(again.blocks, 0);

    // The missing poll of day 1 arrives: stored, and the rollups change exactly as in a store
    // that never compacted anything.
    let late = Incoming::built(message(0, 700, 60_000));
    let rules = config.write_rules();
    let mut store = Store::open(&config.storage.path).unwrap();
    let out = store
        .write_batch(std::slice::from_ref(&late), &rules, T0 + 4 * 24 * H)
        .unwrap();
    assert_eq!((out.stored, out.late_samples), (1, 1), "{out:?}");
    let plain = Dir::new("plain");
    let (_, plain_config) = self::config(&plain.0, 2);
    write(&plain_config, 2, POLLS, 60_000, &[(0, 700)]);
    Store::open(&plain_config.storage.path)
        .unwrap()
        .write_batch(&[late], &plain_config.write_rules(), T0 + 4 * 24 * H)
        .unwrap();
    assert_eq!(slots(&config), slots(&plain_config));
    assert_eq!(export(&config), export(&plain_config));
    // A repeated message of a compacted day is a duplicate, not a second copy.
    Compactor::open(&config.storage.path)
        .unwrap()
        .compact(48 * H, &|| false)
        .unwrap();
    let out = store
        .write_batch(
            &[Incoming::built(message(1, 30, 60_000))],
            &rules,
            T0 + 4 * 24 * H,
        )
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (0, 1), "{out:?}");
    assert_eq!(export(&config), export(&plain_config));
    recomputed(&config);

    // The backup counts every message, in rows and blocks.
    let stats = history_stats(&config.storage.path).unwrap();
    assert!(stats.blocks > 0 && stats.rows > 0, "{stats:?}");
    let copy = dir.0.join("copy.db");
    assert_eq!(
        Store::backup(&config.storage.path, &copy).unwrap(),
        stats.rows + stats.block_messages
    );
    // Retention deletes the first day's samples (m0's day a block, m1's reopened into rows by
    // the repeated message), keeps its ledger, and the rest still recomputes.
    let deleted = Pruner::open(&config.storage.path)
        .unwrap()
        .prune_raw(T0 + 24 * H)
        .unwrap();
    assert_eq!(deleted, 2 * 1440 * 3);
    let after = history_stats(&config.storage.path).unwrap();
    assert_eq!(
        after.rows + after.block_messages,
        stats.rows + stats.block_messages
    );
    let kept = export(&config);
    let first = kept.lines().nth(1).unwrap();
    assert!(first.contains("2026-03-02T"), "{first}");
    recomputed(&config);
}

#[test]
fn a_compaction_killed_half_way_loses_and_doubles_nothing() {
    let dir = Dir::new("kill");
    // Forty meters polled every five minutes for twelve days and an hour: 400 settled
    // device-days.
    let (path, config) = config(&dir.0, 40);
    write(&config, 40, 12 * 288 + 12, 300_000, &[]);
    let before = export(&config);
    let messages = |c: &Config| {
        let s = history_stats(&c.storage.path).unwrap();
        s.rows + s.block_messages
    };
    let total = messages(&config);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ems-gateway"))
        .args(["compact", "--config"])
        .arg(&path)
        .spawn()
        .unwrap();
    // Killed once some days are blocks and before all are.
    let started = Instant::now();
    loop {
        let s = history_stats(&config.storage.path).unwrap();
        if s.blocks > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no block yet: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGKILL: the process gets no chance to finish anything.
    let killed = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    let s = history_stats(&config.storage.path).unwrap();
    assert!(
        s.blocks > 0 && s.blocks < 400,
        "killed half-way: {s:?} blocks"
    );
    assert_eq!(messages(&config), total, "{s:?}");
    assert_eq!(export(&config), before);
    recomputed(&config);
    // Run again, it finishes what was left.
    let status = Command::new(env!("CARGO_BIN_EXE_ems-gateway"))
        .args(["compact", "--config"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let s = history_stats(&config.storage.path).unwrap();
    assert_eq!((s.blocks, messages(&config)), (400, total), "{s:?}");
    assert_eq!(export(&config), before);
}
