//! The PostgreSQL backend against a real server (the machine's, on 127.0.0.1:5432 with trust
//! authentication, or `EMS_TEST_POSTGRES`): each test makes a database of its own and drops it.
//!
//! - The same batches written to SQLite and to PostgreSQL give the same outcomes (acks
//!   included) and the same record: ledger, gaps, lost ranges, rollups, counter checkpoints,
//!   anomalies, quarantine totals, edges.
//! - A slot's lease fences its writers: after a takeover the old writer's commit is refused and
//!   writes nothing.

use std::collections::{BTreeMap, HashMap};

use ems_core::wire::{PointValue, Status, Telemetry};
use ems_core::Quality;
use ems_energy::counter::{CounterRule, GapFill};
use ems_gateway::pg::{PgStore, ScratchDatabase};
use ems_gateway::storage::{AccountingRules, Fenced, Incoming, Origin, Rejected, WriteRules};
use ems_gateway::store::Store;

/// A database of the test's own on the machine's server (or `EMS_TEST_POSTGRES`).
fn scratch(tag: &str) -> ScratchDatabase {
    ScratchDatabase::new(
        &ScratchDatabase::default_server(),
        &format!("ems_test_{tag}_{}", std::process::id()),
    )
    .expect("PostgreSQL on 127.0.0.1:5432 (trust authentication) or EMS_TEST_POSTGRES")
}

fn rules() -> WriteRules {
    let rule = CounterRule {
        rollover: Some(10_000.0),
        max_rate_per_h: Some(2_400.0),
        frozen_after_ms: 3_600_000,
        fill: GapFill::Rate,
        level: false,
        gauge: false,
    };
    let mut tracked: HashMap<String, HashMap<String, CounterRule>> = HashMap::new();
    for d in DEVICES {
        tracked
            .entry(d.to_string())
            .or_default()
            .insert("total".into(), rule);
    }
    let mut r: WriteRules = AccountingRules {
        tracked,
        max_gap_ms: 900_000,
    }
    .into();
    r.max_seq_jump = 500;
    r.max_late_ms = 6 * 3_600_000;
    r
}

const DEVICES: [&str; 3] = ["m1", "m2", "m3"];

fn telemetry(device: &str, seq: u64, ts_ms: i64, total: f64, power: Option<f64>) -> Telemetry {
    Telemetry {
        v: 1,
        site: "s".into(),
        edge: "e".into(),
        device: device.into(),
        seq,
        ts_ms,
        points: vec![
            PointValue {
                id: "total".into(),
                v: Some(total),
                q: Quality::Good,
            },
            PointValue {
                id: "power".into(),
                v: power,
                q: if power.is_some() {
                    Quality::Good
                } else {
                    Quality::Timeout
                },
            },
        ],
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a plant's edges send over a day with what goes wrong: counters that step, wrap,
/// spike, restart; messages lost on the way (gaps), delivered twice, late, out of order, a
/// tampered copy, a sequence jump, refusals before the store, and edge status.
fn workload(seed: u64) -> Vec<Vec<Incoming>> {
    let mut rng = Rng(seed);
    let mut stream: Vec<Incoming> = Vec::new();
    let mut held_back: Vec<Incoming> = Vec::new();
    let t0 = 1_767_225_600_000; // 2026-01-01
    for (d, device) in DEVICES.iter().enumerate() {
        let mut v = 9_000.0 + d as f64 * 100.0;
        let mut ts = t0;
        for seq in 1..=300u64 {
            ts += 60_000 + rng.below(3) as i64 * 30_000;
            let shown = match rng.below(40) {
                0 => (v + 5_000.0) % 10_000.0, // a spike: one bad read
                1 => {
                    v = rng.below(20) as f64; // the meter replaced
                    v
                }
                _ => {
                    v = (v + rng.below(40) as f64 + 0.25) % 10_000.0;
                    v
                }
            };
            let power = (rng.below(10) > 0).then(|| rng.below(500) as f64 * 0.5);
            let m = Incoming::built(telemetry(device, seq, ts, shown, power));
            match rng.below(30) {
                0 => continue,              // lost on the way: a gap for good
                1 | 2 => held_back.push(m), // delivered late
                3 => {
                    stream.push(m.clone());
                    stream.push(m); // delivered twice
                }
                _ => stream.push(m),
            }
            if !held_back.is_empty() && rng.below(25) == 0 {
                let late = held_back.remove(rng.below(held_back.len() as u64) as usize);
                stream.push(late);
            }
        }
    }
    stream.append(&mut held_back);
    // A tampered copy of a stored number, a jump too far, and refusals before the store.
    stream.push(Incoming::built(telemetry(
        "m1",
        10,
        t0 + 600_000,
        1.0,
        None,
    )));
    stream.push(Incoming::built(telemetry(
        "m2",
        5_000,
        t0 + 86_000_000,
        1.0,
        None,
    )));
    stream.push(Incoming::Rejected(Rejected {
        topic: "ems/v1/s/data/m9".into(),
        reason: "unknown_device: m9".into(),
        payload: b"{\"v\":1}".to_vec(),
        origin: Some(Origin {
            site: "s".into(),
            edge: "e".into(),
            device: "m9".into(),
            seq: 4,
        }),
    }));
    stream.push(Incoming::Status(Status {
        v: 1,
        site: "s".into(),
        edge: "e".into(),
        online: true,
        devices: DEVICES.iter().map(|d| d.to_string()).collect(),
        ts_ms: Some(t0),
        spool_depth: Some(12),
        spool_dropped: Some(0),
    }));
    // Interleave the devices' streams a little and cut them into batches of any size.
    for i in (1..stream.len()).rev() {
        if rng.below(4) == 0 {
            let j = i - 1 - rng.below(i.min(8) as u64) as usize;
            stream.swap(i, j);
        }
    }
    let mut batches = Vec::new();
    while !stream.is_empty() {
        let n = (1 + rng.below(40) as usize).min(stream.len());
        batches.push(stream.drain(..n).collect());
    }
    batches
}

type Rows = Vec<Vec<String>>;

/// A query's rows as text, the same for both databases.
fn sqlite_rows(path: &std::path::Path, sql: &str) -> Rows {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                    rusqlite::types::ValueRef::Integer(x) => x.to_string(),
                    rusqlite::types::ValueRef::Real(x) => format!("{:016x}", x.to_bits()),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    rusqlite::types::ValueRef::Blob(b) => format!("{b:02x?}"),
                })
            })
            .collect()
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn pg_rows(client: &mut postgres::Client, sql: &str) -> Rows {
    use postgres::types::Type;
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    let t = r.columns()[i].type_().clone();
                    let text = if t == Type::INT8 || t == Type::INT4 {
                        r.get::<_, Option<i64>>(i).map(|x| x.to_string())
                    } else if t == Type::FLOAT8 {
                        r.get::<_, Option<f64>>(i)
                            .map(|x| format!("{:016x}", x.to_bits()))
                    } else if t == Type::BOOL {
                        r.get::<_, Option<bool>>(i)
                            .map(|x| i64::from(x).to_string())
                    } else if t == Type::BYTEA {
                        r.get::<_, Option<Vec<u8>>>(i).map(|b| format!("{b:02x?}"))
                    } else {
                        r.get::<_, Option<String>>(i)
                    };
                    text.unwrap_or_else(|| "NULL".to_owned())
                })
                .collect()
        })
        .collect()
}

#[test]
fn postgres_keeps_the_record_sqlite_keeps_of_the_same_batches() {
    let db = scratch("same");
    let mut pg = PgStore::connect(&db.url()).unwrap();
    let path = std::env::temp_dir().join(format!("ems-pg-same-{}.db", std::process::id()));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    let mut lite = Store::open(&path).unwrap();
    let r = rules();
    let batches = workload(0x9E37_79B9_7F4A_7C15);
    let mut totals = (0, 0, 0, 0);
    for (i, batch) in batches.iter().enumerate() {
        let received = 1_767_300_000_000 + i as i64;
        let a = lite.write_batch(batch, &r, received).unwrap();
        let b = pg.write_batch(batch, &r, received).unwrap();
        assert_eq!(
            a, b,
            "batch {i}: the same outcome, the marks told to the edge included"
        );
        totals.0 += a.stored;
        totals.1 += a.duplicates;
        totals.2 += a.late_samples;
        totals.3 += a.anomalies.len();
    }
    // The workload reaches what it is for.
    let (stored, duplicates, late, anomalies) = totals;
    assert!(
        stored > 800 && duplicates > 10 && late > 10 && anomalies > 5,
        "{totals:?}"
    );

    let same = |what: &str, sql_lite: &str, sql_pg: &str, pg: &mut PgStore| {
        let (a, b) = (sqlite_rows(&path, sql_lite), pg_rows(pg.client(), sql_pg));
        assert!(!a.is_empty(), "{what}: rows to compare");
        assert_eq!(a, b, "{what}");
        a.len()
    };
    let q = |sql: &str| sql.to_owned();
    let tables = [
        ("ledger", q("SELECT device, site, edge, last_seq, last_ts_ms, last_seen_ms, messages, duplicates, conflicts, last_good_ms FROM devices ORDER BY device")),
        ("gaps", q("SELECT device, from_seq, to_seq, detected_ms FROM gaps ORDER BY device, from_seq")),
        ("rollups", q("SELECT device, point, slot_ms, delta, covered_ms, estimated FROM point_slots ORDER BY device, point, slot_ms")),
        ("checkpoints", q("SELECT device, point, slot_ms, through_ms, ts_ms, value, rejected, changed_ms, rate_per_h FROM counter_checkpoints ORDER BY device, point, slot_ms")),
        ("anomalies", q("SELECT device, point, ts_ms, kind, detail, withdrawn_ms FROM anomalies ORDER BY id")),
        ("quarantine", q("SELECT received_ms, topic, reason, payload_bytes, payload_sha256 FROM quarantine ORDER BY id")),
        ("quarantine totals", q("SELECT reason, count, bytes FROM quarantine_totals ORDER BY reason")),
        ("edges", q("SELECT edge, site, online, devices, changed_ms, spool_depth, spool_dropped FROM edges ORDER BY edge")),
        ("series", q("SELECT id, device, point FROM series ORDER BY id")),
    ];
    let mut compared = BTreeMap::new();
    for (what, sql) in &tables {
        compared.insert(*what, same(what, sql, sql, &mut pg));
    }
    // Raw messages: each (device, seq) once, with the same packed samples.
    let n = same(
        "messages",
        "SELECT device, seq, ts_ms, edge, received_ms, points FROM messages ORDER BY device, seq",
        "SELECT device, seq, ts_ms, edge, received_ms, points FROM messages ORDER BY device, seq",
        &mut pg,
    );
    assert_eq!(n as u64, stored);
    let numbers = pg_rows(pg.client(), "SELECT count(*) FROM message_numbers");
    assert_eq!(numbers[0][0], stored.to_string());
    // Raw messages sit in day partitions.
    let partitions = pg_rows(
        pg.client(),
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass",
    );
    assert!(partitions[0][0].parse::<i64>().unwrap() >= 1);
    eprintln!("compared {compared:?} and {n} messages");
    drop(lite);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

#[test]
fn after_a_takeover_the_old_writer_commits_nothing() {
    let db = scratch("lease");
    let mut old = PgStore::connect(&db.url()).unwrap();
    let mut standby = PgStore::connect(&db.url()).unwrap();
    let r = rules();
    let msg = |seq: u64| {
        vec![Incoming::built(telemetry(
            "m1",
            seq,
            1_767_225_600_000 + seq as i64 * 60_000,
            seq as f64,
            None,
        ))]
    };

    let lease = old
        .acquire("works", "gw-a", 60_000)
        .unwrap()
        .expect("a free slot");
    assert_eq!(lease.epoch, 1);
    // While the lease runs, the standby cannot take the slot.
    assert_eq!(standby.acquire("works", "gw-b", 60_000).unwrap(), None);
    old.write_batch(&msg(1), &r, 0).unwrap();

    // The active one stops renewing (paused, cut off): its lease lapses and the standby takes
    // the slot over with the next epoch.
    assert!(old.renew(1).unwrap());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let taken = standby
        .acquire("works", "gw-b", 60_000)
        .unwrap()
        .expect("a lapsed lease");
    assert_eq!(taken.epoch, 2);
    standby.write_batch(&msg(2), &r, 0).unwrap();

    // The old writer comes back and tries to commit: refused, nothing of it written.
    let err = old.write_batch(&msg(3), &r, 0).unwrap_err();
    assert!(err.downcast_ref::<Fenced>().is_some(), "{err:#}");
    assert!(!old.renew(60_000).unwrap(), "its lease is gone");
    let rows = pg_rows(
        standby.client(),
        "SELECT seq FROM message_numbers ORDER BY seq",
    );
    assert_eq!(rows, vec![vec!["1".to_owned()], vec!["2".to_owned()]]);
    let ledger = pg_rows(standby.client(), "SELECT last_seq, messages FROM devices");
    assert_eq!(ledger, vec![vec!["2".to_owned(), "2".to_owned()]]);
}
