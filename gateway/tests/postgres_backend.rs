//! The PostgreSQL backend against a real server (the machine's, on 127.0.0.1:5432 with trust
//! authentication, or `EMS_TEST_POSTGRES`): each test makes a database of its own and drops it.
//!
//! - The same batches written to SQLite and to PostgreSQL give the same outcomes (acks
//!   included) and the same record: ledger, gaps, lost ranges, rollups, counter checkpoints,
//!   anomalies, quarantine totals, edges.
//! - What the API reads (devices, edges, rollups, quarantine, anomalies, the integrity check,
//!   the export, a gap declared lost) is the same from both.
//! - Retention drops PostgreSQL's raw days whole and keeps the ledger.
//! - The alarm book, the InfluxDB sink's queue and the upload's outbox are kept alike; one
//!   gateway of the database evaluates the alarms, one sends the queue, one makes the upload's
//!   records and one sends to each endpoint, at a time.
//! - A slot's lease fences its writers: after a takeover the old writer's commit is refused and
//!   writes nothing.

use std::collections::{BTreeMap, HashMap};

use ems_core::wire::{PointValue, Status, Telemetry};
use ems_core::Quality;
use ems_energy::counter::{CounterRule, GapFill};
use ems_gateway::alarm_book::{AckOutcome, AlarmBook, Kind, Observation};
use ems_gateway::pg::upkeep::{drop_raw_before, Dropped};
use ems_gateway::pg::{PgAlarms, PgOutbox, PgReader, PgSinkQueue, PgStore, ScratchDatabase};
use ems_gateway::storage::{
    AccountingRules, Fenced, Incoming, Origin, Rejected, SinkStore, UploadStore, WriteRules,
};
use ems_gateway::store::sink_queue::SinkTable;
use ems_gateway::store::upload_outbox::Outbox;
use ems_gateway::store::Store;
use ems_gateway::view::{DeclareOutcome, Reader};

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
        signed: None,
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

/// The workload written batch by batch to both stores, each batch's outcomes compared. Returns
/// the messages stored, duplicates, late samples and anomalies.
fn write_both(lite: &mut Store, pg: &mut PgStore) -> (u64, u64, u64, usize) {
    let r = rules();
    let mut totals = (0, 0, 0, 0);
    for (i, batch) in workload(0x9E37_79B9_7F4A_7C15).iter().enumerate() {
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
    totals
}

fn temp_sqlite(tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ems-pg-{tag}-{}.db", std::process::id()));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
    path
}

/// Waits (at most 10 s) until `done`: another session takes over a lock when the first one's
/// session has ended on the server.
fn taken_over(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never taken over");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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
    let path = temp_sqlite("same");
    let mut lite = Store::open(&path).unwrap();
    let totals = write_both(&mut lite, &mut pg);
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

/// What the API, reports and alarms read: the same from PostgreSQL as from SQLite after the
/// same batches, the operator's declaration of a lost gap included.
#[test]
fn the_api_reads_the_same_record_from_either_backend() {
    let db = scratch("view");
    let mut pg = PgStore::connect(&db.url()).unwrap();
    let path = temp_sqlite("view");
    let mut lite = Store::open(&path).unwrap();
    write_both(&mut lite, &mut pg);
    let a = lite.reader().unwrap();
    let b = Reader::new(PgReader::connect(&db.url()).unwrap());

    let devices = a.devices().unwrap();
    assert_eq!(devices.len(), DEVICES.len());
    assert!(devices.iter().any(|d| !d.gaps.is_empty()), "{devices:#?}");
    assert_eq!(devices, b.devices().unwrap());
    assert_eq!(a.edges().unwrap(), b.edges().unwrap());
    let totals = a.sequence_totals().unwrap();
    assert!(totals.0 > 0, "{totals:?}");
    assert_eq!(totals, b.sequence_totals().unwrap());
    for device in DEVICES {
        for point in ["total", "power"] {
            assert_eq!(
                a.first_slot(device, point).unwrap(),
                b.first_slot(device, point).unwrap()
            );
            let slots = a.point_slots(device, point, 0, i64::MAX).unwrap();
            assert_eq!(slots, b.point_slots(device, point, 0, i64::MAX).unwrap());
            assert_eq!(slots.is_empty(), point == "power", "{device}/{point}");
        }
    }
    let quarantine = a.quarantine(1_000).unwrap();
    assert!(quarantine.len() >= 2, "{quarantine:#?}");
    assert_eq!(quarantine, b.quarantine(1_000).unwrap());
    assert_eq!(quarantine[..1], b.quarantine(1).unwrap()[..]);
    let id = quarantine[0].id;
    assert_eq!(
        a.quarantine_payload(id).unwrap(),
        b.quarantine_payload(id).unwrap()
    );
    assert_eq!(
        a.quarantine_totals().unwrap(),
        b.quarantine_totals().unwrap()
    );
    let anomalies = a.anomalies(1_000).unwrap();
    assert!(!anomalies.is_empty());
    assert_eq!(anomalies, b.anomalies(1_000).unwrap());

    // The integrity check: every rollup recomputed from the raw samples, on either backend.
    let accounting = rules().accounting;
    let check = a.verify_rollups(&accounting).unwrap();
    assert!(
        check.mismatches.is_empty() && check.samples_checked > 800,
        "{check:#?}"
    );
    assert_eq!(check, b.verify_rollups(&accounting).unwrap());
    // The auditor's export: byte for byte, all devices and one over an hour.
    let export = |r: &Reader, device: Option<&str>, from: i64, to: i64| {
        let mut out = Vec::new();
        let n = r.export_csv(device, from, to, &mut out).unwrap();
        (n, String::from_utf8(out).unwrap())
    };
    let all = export(&a, None, 0, i64::MAX);
    assert!(all.0 > 800, "{}", all.0);
    assert_eq!(all, export(&b, None, 0, i64::MAX));
    let hour = (1_767_229_200_000, 1_767_232_800_000);
    assert_eq!(
        export(&a, Some("m2"), hour.0, hour.1),
        export(&b, Some("m2"), hour.0, hour.1)
    );

    // An operator declares the same gap lost on both: the same record after.
    let gap = devices.iter().find(|d| !d.gaps.is_empty()).unwrap();
    let (device, from) = (gap.id.clone(), gap.gaps[0][0]);
    for r in [&a, &b] {
        let DeclareOutcome::Declared(range) = r
            .declare_lost(&device, from, "op", "broker queue lost", 5)
            .unwrap()
        else {
            panic!("no gap at {device}/{from}");
        };
        assert_eq!((range.from_seq, range.to_seq), (from, gap.gaps[0][1]));
        assert!(matches!(
            r.declare_lost(&device, from, "op", "again", 6).unwrap(),
            DeclareOutcome::NoSuchGap
        ));
    }
    let after = a.devices().unwrap();
    assert_ne!(after, devices);
    assert_eq!(after, b.devices().unwrap());
    assert_eq!(a.sequence_totals().unwrap(), b.sequence_totals().unwrap());
    drop((lite, a));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// Retention drops whole raw days: their messages go, the ledger of numbers, the rollups and
/// the checkable rest stay, and a copy of a dropped message is still known as a duplicate.
#[test]
fn retention_drops_raw_days_and_keeps_the_ledger() {
    let db = scratch("retention");
    let mut pg = PgStore::connect(&db.url()).unwrap();
    let r = rules();
    let day = 86_400_000;
    let t0 = 1_767_225_600_000; // 2026-01-01 00:00 UTC
    let message = |seq: u64| {
        Incoming::built(telemetry(
            "m1",
            seq,
            t0 + seq as i64 * 3_600_000,
            seq as f64,
            None,
        ))
    };
    // Three days of hourly readings: seq 1..=71.
    let batch: Vec<Incoming> = (1..72).map(message).collect();
    assert_eq!(pg.write_batch(&batch, &r, t0 + 3 * day).unwrap().stored, 71);
    let reader = Reader::new(PgReader::connect(&db.url()).unwrap());
    let slots_before = reader.point_slots("m1", "total", 0, i64::MAX).unwrap();

    // Up to the start of the third day: the first two days' partitions go.
    let dropped = drop_raw_before(pg.client(), t0 + 2 * day + 1_000).unwrap();
    assert_eq!(
        dropped,
        Dropped {
            partitions: 2,
            messages: 47
        }
    );
    let count = |pg: &mut PgStore, sql: &str| pg_rows(pg.client(), sql)[0][0].clone();
    assert_eq!(count(&mut pg, "SELECT count(*) FROM messages"), "24");
    assert_eq!(count(&mut pg, "SELECT count(*) FROM message_numbers"), "71");
    assert_eq!(
        reader.point_slots("m1", "total", 0, i64::MAX).unwrap(),
        slots_before,
        "rollups stay"
    );
    // Dropping again drops nothing; the check starts at the first kept sample and agrees.
    assert_eq!(
        drop_raw_before(pg.client(), t0 + 2 * day).unwrap(),
        Dropped::default()
    );
    let check = reader.verify_rollups(&r.accounting).unwrap();
    assert!(check.mismatches.is_empty(), "{check:#?}");
    assert_eq!(check.samples_checked, 24);
    let mut csv = Vec::new();
    // Two points a message (power timed out): the kept day's rows only.
    assert_eq!(reader.export_csv(None, 0, i64::MAX, &mut csv).unwrap(), 48);
    // A copy of a dropped day's message: known by its number, never stored again.
    let again = pg.write_batch(&[message(5)], &r, t0 + 4 * day).unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 1));
    assert_eq!(count(&mut pg, "SELECT count(*) FROM messages"), "24");
}

/// The alarm book on PostgreSQL keeps what SQLite's keeps of the same evaluations, and one
/// gateway of the database evaluates at a time, another taking over when its session ends.
#[test]
fn the_alarm_book_is_kept_alike_and_evaluated_by_one_gateway_at_a_time() {
    let db = scratch("alarms");
    let mut pg = PgStore::connect(&db.url()).unwrap();
    let path = temp_sqlite("alarms");
    let mut lite = Store::open(&path).unwrap();
    write_both(&mut lite, &mut pg);
    let mut a = ems_gateway::store::alarm_book::SqliteAlarms::book(&path).unwrap();
    let mut b = AlarmBook::new(PgAlarms::connect(&db.url()).unwrap());

    assert_eq!(a.newest_poll_ms().unwrap(), b.newest_poll_ms().unwrap());
    let devices = a.devices().unwrap();
    assert_eq!(devices.len(), DEVICES.len());
    assert!(devices.iter().any(|d| d.missing > 0), "{devices:?}");
    assert_eq!(devices, b.devices().unwrap());
    let reported = a.report_anomalies(10).unwrap();
    assert!(!reported.is_empty());
    assert_eq!(reported, b.report_anomalies(10).unwrap());
    assert!(
        b.report_anomalies(11).unwrap().is_empty(),
        "each reported once"
    );

    let above = |v: f64| Observation {
        kind: Kind::AboveLimit,
        subject: "bf1/kgce_per_t".into(),
        raise: v > 415.0,
        clear: v < 407.0,
        value: Some(v),
        threshold: Some(415.0),
        message: format!("{v} kgce/t"),
    };
    for (at, v) in [
        (20, 420.0),
        (30, 425.0),
        (40, 410.0),
        (50, 400.0),
        (60, 430.0),
    ] {
        let (x, y) = (
            a.apply(at, &[above(v)]).unwrap(),
            b.apply(at, &[above(v)]).unwrap(),
        );
        assert_eq!(x, y, "at {at}");
    }
    let listed = a.list(false, 100).unwrap();
    assert_eq!(
        listed.len(),
        reported.len() + 2,
        "raised, cleared, raised again"
    );
    assert_eq!(listed, b.list(false, 100).unwrap());
    let id = listed[1].id;
    for book in [&mut a, &mut b] {
        assert!(
            matches!(book.ack(id, "wang", 70).unwrap(), AckOutcome::Acked(r) if r.acked_by.as_deref() == Some("wang"))
        );
        assert!(
            matches!(book.ack(id, "li", 80).unwrap(), AckOutcome::AlreadyAcked(r) if r.acked_by.as_deref() == Some("wang"))
        );
        assert!(matches!(
            book.ack(id + 1_000, "li", 80).unwrap(),
            AckOutcome::NotFound
        ));
    }
    assert_eq!(a.list(true, 100).unwrap(), b.list(true, 100).unwrap());
    assert_eq!(a.open_counts().unwrap(), b.open_counts().unwrap());

    // One evaluator for the database: the first book holds it; another gateway's waits, and
    // takes it over when the first one's session ends.
    assert!(b.evaluates().unwrap());
    let mut other = AlarmBook::new(PgAlarms::connect(&db.url()).unwrap());
    assert!(!other.evaluates().unwrap());
    assert!(b.evaluates().unwrap(), "kept");
    drop(b);
    taken_over(|| other.evaluates().unwrap());
    drop((lite, a));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// The InfluxDB sink's queue on PostgreSQL: what SQLite queues of the same batches (each stored
/// message's lines once, the slots whose rollups changed), sent by one gateway at a time and
/// taken off by the ids sent.
#[test]
fn the_sink_queue_is_kept_alike_and_sent_by_one_gateway_at_a_time() {
    let db = scratch("sink");
    let mut pg = PgStore::connect(&db.url()).unwrap();
    let path = temp_sqlite("sink");
    let mut lite = Store::open(&path).unwrap();
    lite.enable_sink(Box::new(ems_gateway::influx::sample_lines))
        .unwrap();
    pg.enable_sink(Box::new(ems_gateway::influx::sample_lines));
    let (stored, ..) = write_both(&mut lite, &mut pg);
    let mut a = SinkTable::open(&path).unwrap();
    let mut b = PgSinkQueue::connect(&db.url()).unwrap();

    assert_eq!(
        a.depth().unwrap(),
        stored as i64,
        "each stored message once"
    );
    assert_eq!(a.depth().unwrap(), b.depth().unwrap());
    let (qa, qb) = (a.oldest(100_000).unwrap(), b.oldest(100_000).unwrap());
    let lines = |q: &[(i64, String)]| q.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>();
    assert_eq!(lines(&qa), lines(&qb));
    assert!(qa[0].1.starts_with("ems_sample"), "{}", qa[0].1);
    let slots = |d: Vec<(i64, i64)>| d.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    let dirty = slots(a.dirty_slots(100_000).unwrap());
    assert!(dirty.len() > 10, "{dirty:?}");
    assert_eq!(dirty, slots(b.dirty_slots(100_000).unwrap()));

    // One sender for the database: another gateway's queue gives nothing meanwhile.
    let mut other = PgSinkQueue::connect(&db.url()).unwrap();
    assert!(other.oldest(10).unwrap().is_empty() && other.dirty_slots(10).unwrap().is_empty());
    // Sent and accepted: exactly those ids and slot versions go.
    let sent: Vec<i64> = qb.iter().step_by(2).map(|(id, _)| *id).collect();
    let versions = b.dirty_slots(3).unwrap();
    b.remove(&sent, &versions).unwrap();
    assert_eq!(b.depth().unwrap(), (qb.len() - sent.len()) as i64);
    let left: Vec<i64> = b
        .oldest(100_000)
        .unwrap()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    assert!(left.iter().all(|id| !sent.contains(id)));
    assert_eq!(b.dirty_slots(100_000).unwrap().len(), dirty.len() - 3);
    drop(b);
    taken_over(|| !other.oldest(1).unwrap().is_empty());
    drop((lite, a));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

/// The upload's outbox on PostgreSQL: what SQLite keeps of the same records, cursors and
/// confirmations; one maker for the database, one sender for each endpoint.
#[test]
fn the_upload_outbox_is_kept_alike_with_one_maker_and_one_sender_an_endpoint() {
    let db = scratch("upload");
    drop(PgStore::connect(&db.url()).unwrap());
    let path = temp_sqlite("upload");
    drop(Store::open(&path).unwrap());
    let mut a: Box<dyn UploadStore> = Box::new(Outbox::open(&path).unwrap());
    let mut b: Box<dyn UploadStore> = Box::new(PgOutbox::connect(&db.url()).unwrap());
    let record = |n: i64| serde_json::json!({ "record_id": format!("r{n}"), "value": n });
    for o in [&mut a, &mut b] {
        assert!(o.leads(None).unwrap());
        assert_eq!(o.next_start("works/realtime", 1_000).unwrap(), 1_000);
        assert_eq!(
            o.next_start("works/realtime", 5_000).unwrap(),
            1_000,
            "kept"
        );
        o.push("works/realtime", (1_000, 2_000), &record(1), "r1", 10)
            .unwrap();
        o.push("works/realtime", (2_000, 3_000), &record(2), "r2", 11)
            .unwrap();
        // Made again (a restart between the record and the cursor): stored once.
        o.push("works/realtime", (2_000, 3_000), &record(2), "r2", 12)
            .unwrap();
        assert_eq!(o.next_start("works/realtime", 0).unwrap(), 3_000);
        let (id, rid, body) = o.next_for("province").unwrap().unwrap();
        assert_eq!((rid.as_str(), body), ("r1", record(1).to_string()));
        o.confirm("province", id, 20).unwrap();
        o.confirm("province", id, 21).unwrap();
        assert_eq!(o.next_for("province").unwrap().unwrap().1, "r2");
        assert_eq!(
            o.next_for("city").unwrap().unwrap().1,
            "r1",
            "its own cursor"
        );
    }
    for endpoint in ["province", "city"] {
        assert_eq!(a.status(endpoint).unwrap(), b.status(endpoint).unwrap());
    }
    assert_eq!(a.status("province").unwrap(), (2, 1, Some("r1".to_owned())));

    // One maker, and one sender an endpoint, for the database.
    let mut other = PgOutbox::connect(&db.url()).unwrap();
    assert!(!other.leads(None).unwrap(), "the maker is taken");
    let mut sender = PgOutbox::connect(&db.url()).unwrap();
    assert!(sender.leads(Some("province")).unwrap());
    let mut city = PgOutbox::connect(&db.url()).unwrap();
    assert!(
        city.leads(Some("city")).unwrap(),
        "another endpoint, another sender"
    );
    let mut second = PgOutbox::connect(&db.url()).unwrap();
    assert!(!second.leads(Some("province")).unwrap());
    drop(b);
    taken_over(|| other.leads(None).unwrap());
    let _ = std::fs::remove_file(&path);
}

/// Two slots' writers share the sink's slot rows: storing at once, each batch touching many
/// slots (one writer's messages newest first), neither waits for the other in a circle and
/// every batch commits the first time.
#[test]
fn two_writers_with_the_sink_on_never_deadlock() {
    let db = scratch("sinklock");
    drop(PgStore::connect(&db.url()).unwrap());
    let t0 = 1_767_225_600_000;
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let url = db.url();
            std::thread::spawn(move || {
                let mut pg = PgStore::connect(&url).unwrap();
                pg.enable_sink(Box::new(ems_gateway::influx::sample_lines));
                let r = rules();
                let device = DEVICES[w];
                for b in 0..40u64 {
                    // Forty 15-minute slots a batch; the second writer's in reverse order.
                    let mut batch: Vec<Incoming> = (0..40u64)
                        .map(|i| {
                            let seq = b * 40 + i + 1;
                            let ts = t0 + (b * 40 + i) as i64 * 900_000;
                            Incoming::built(telemetry(device, seq, ts, seq as f64, None))
                        })
                        .collect();
                    if w == 1 {
                        batch.reverse();
                    }
                    pg.write_batch(&batch, &r, t0)
                        .unwrap_or_else(|e| panic!("writer {w} batch {b}: {e:#}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
}
