//! Protocol v1.2's evidence through the gateway's own path (classification against the enrolled
//! keys, then the batch writer) into a real SQLite file and a real PostgreSQL database:
//!
//! - a signed stream is stored with each device's chain verified through its last number, out
//!   of order and redelivered copies included;
//! - a message with a valid format and a wrong signature, an unsigned one in an enrolled edge's
//!   name and one that breaks the chain are quarantined with their reasons and raise `evidence`
//!   alarms, while the real stream goes on; a forged number is not reported kept aside;
//! - an edge that is not enrolled is stored signed but unverified, and a chain that restarts is
//!   counted and alarmed;
//! - the integrity check finds a reading edited in either database afterwards;
//! - the operator audit log chains a gap declared lost, an alarm acknowledged and the files
//!   that changed, and shows an entry changed afterwards.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use ems_core::evidence::{EdgeKey, PublicKey, CHAIN_START};
use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_energy::counter::{CounterRule, GapFill};
use ems_gateway::alarm_book::{AckOutcome, AlarmBook, Kind, Observation};
use ems_gateway::audit::{AuditRow, Declared};
use ems_gateway::evidence::EdgeKeys;
use ems_gateway::ingest::{classify, classify_unverified, verify_signatures, Validation};
use ems_gateway::pg::{PgAlarms, PgReader, PgStore, ScratchDatabase};
use ems_gateway::storage::{AccountingRules, BatchOutcome, Incoming, Storage, WriteRules};
use ems_gateway::store::Store;
use ems_gateway::view::{DeclareOutcome, Reader, SeqSpan};

const T0: i64 = 1_767_225_600_000; // 2026-01-01

fn key() -> EdgeKey {
    EdgeKey::from_seed([21; 32])
}

fn validation() -> Validation {
    Validation {
        topic_prefix: "ems/v1".into(),
        sites: HashSet::from(["s".to_string()]),
        edges: vec!["e".into(), "old".into()],
        accounted: HashSet::from(["m1".to_string(), "m2".to_string(), "m3".to_string()]),
        other_devices: Vec::new(),
        earliest_ms: T0 - 86_400_000,
        max_future_ms: 600_000,
        now: Arc::new(|| T0 + 86_400_000),
        edge_keys: Arc::new(EdgeKeys::from([(
            "e".to_string(),
            PublicKey::from_hex(&key().public_hex()).unwrap(),
        )])),
    }
}

fn rules() -> WriteRules {
    let rule = CounterRule {
        rollover: None,
        max_rate_per_h: None,
        frozen_after_ms: 3_600_000,
        fill: GapFill::Rate,
        level: false,
        gauge: false,
    };
    let tracked = ["m1", "m2", "m3"]
        .into_iter()
        .map(|d| (d.to_string(), [("kwh".to_string(), rule)].into()))
        .collect();
    AccountingRules {
        tracked,
        max_gap_ms: 900_000,
    }
    .into()
}

fn reading(edge: &str, device: &str, seq: u64) -> Telemetry {
    Telemetry {
        v: 1,
        site: "s".into(),
        edge: edge.into(),
        device: device.into(),
        seq,
        ts_ms: T0 + seq as i64 * 60_000,
        points: vec![
            PointValue {
                id: "kwh".into(),
                v: Some(1_000.0 + seq as f64 * 2.5),
                q: Quality::Good,
            },
            PointValue {
                id: "kw".into(),
                v: None,
                q: Quality::Exception(2),
            },
        ],
        signed: None,
    }
}

/// A device's edge signing its results in one chain, as `ems-edge` does.
struct Chain {
    key: EdgeKey,
    prev: [u8; 32],
}

impl Chain {
    fn new(key: EdgeKey) -> Chain {
        Chain {
            key,
            prev: CHAIN_START,
        }
    }
    fn sign(&mut self, mut t: Telemetry) -> Telemetry {
        self.prev = self.key.sign(&mut t, self.prev);
        t
    }
}

fn payload(t: &Telemetry) -> (String, bytes::Bytes) {
    (
        format!("ems/v1/{}/data/{}", t.site, t.device),
        serde_json::to_vec(t).unwrap().into(),
    )
}

/// What the edges send, in arrival order, and the numbers each device really has.
fn arrivals() -> Vec<(String, bytes::Bytes)> {
    let mut out = Vec::new();
    // m1 (edge `e`, enrolled): 1..=20 signed, with forgeries among them.
    let mut m1 = Chain::new(key());
    let mut real: Vec<Telemetry> = (1..=20).map(|s| m1.sign(reading("e", "m1", s))).collect();
    for t in &real[..5] {
        out.push(payload(t));
    }
    // A valid format, the wrong key: for a number the edge has not sent yet.
    let mut forged = reading("e", "m1", 8);
    forged.points[0].v = Some(99_999.0);
    EdgeKey::from_seed([22; 32]).sign(&mut forged, CHAIN_START);
    out.push(payload(&forged));
    // Unsigned, in the enrolled edge's name.
    out.push(payload(&reading("e", "m1", 9)));
    for t in &real[5..10] {
        out.push(payload(t));
    }
    // Signed with the edge's own key but not following message 10 (an edge's state gone
    // wrong, or its key stolen): it breaks the chain.
    let mut astray = reading("e", "m1", 11);
    astray.points[0].v = Some(1_030.0);
    key().sign(&mut astray, [7; 32]);
    out.push(payload(&astray));
    // 11..=20 with 14 after 15, and 3 again.
    real.swap(13, 14);
    for t in &real[10..] {
        out.push(payload(t));
    }
    out.push(payload(&real[2]));
    // m2: 1 and 2 from the enrolled edge `e`; then the device moves to edge `old`, not
    // enrolled, whose 3..=5 continue the chain signed, unverifiable: the verified run stops at 2.
    let mut m2 = Chain::new(key());
    for s in 1..=2 {
        out.push(payload(&m2.sign(reading("e", "m2", s))));
    }
    m2.key = EdgeKey::from_seed([23; 32]);
    for s in 3..=5 {
        out.push(payload(&m2.sign(reading("old", "m2", s))));
    }
    // m3 (edge `e`): a chain that restarts at 6 (the edge lost its chain head).
    let mut m3 = Chain::new(key());
    for s in 1..=5 {
        out.push(payload(&m3.sign(reading("e", "m3", s))));
    }
    let mut m3 = Chain::new(key());
    for s in 6..=8 {
        out.push(payload(&m3.sign(reading("e", "m3", s))));
    }
    out
}

/// Classifies and writes every arrival, four to a batch, their signatures verified a batch at a
/// time as ingest's verifier does (a forgery among good messages, and batches of good ones).
fn ingest(store: &mut impl Storage) -> BatchOutcome {
    let v = validation();
    let mut incoming: Vec<Incoming> = arrivals()
        .iter()
        .map(|(topic, p)| classify_unverified(topic, p, &v))
        .collect();
    for batch in incoming.chunks_mut(4) {
        verify_signatures(batch, &v.edge_keys);
    }
    let mut total = BatchOutcome::default();
    for (i, batch) in incoming.chunks(4).enumerate() {
        let out = store
            .write_batch(batch, &rules(), T0 + 86_000_000 + i as i64)
            .unwrap();
        total.stored += out.stored;
        total.duplicates += out.duplicates;
        total.quarantined += out.quarantined;
        total.acks.extend(out.acks);
    }
    total
}

fn check_record(reader: &Reader, book: &mut AlarmBook, outcome: &BatchOutcome) {
    assert_eq!(outcome.stored, 20 + 5 + 8);
    assert_eq!(outcome.duplicates, 1);
    assert_eq!(outcome.quarantined, 3);
    // The forged number 8 was never reported to the edge as kept aside.
    assert!(outcome.acks.iter().all(|(_, _, a)| a.aside.is_empty()));

    let devices = reader.devices().unwrap();
    let chain = |d: &str| {
        devices
            .iter()
            .find(|r| r.id == d)
            .and_then(|r| r.chain.clone())
            .unwrap()
    };
    let m1 = chain("m1");
    assert_eq!(
        (
            m1.head_seq,
            m1.verified_through,
            m1.signed,
            m1.verified,
            m1.refused,
            m1.restarts
        ),
        (20, 20, 20, 20, 3, 0),
        "{m1:?}"
    );
    let m2 = chain("m2");
    assert_eq!(
        (m2.signed, m2.verified, m2.verified_through),
        (5, 2, 2),
        "an edge not enrolled is stored unverified: {m2:?}"
    );
    let m3 = chain("m3");
    assert_eq!(
        (m3.verified_through, m3.restarts, m3.refused),
        (8, 1, 0),
        "{m3:?}"
    );
    let devices_missing: i64 = devices.iter().map(|d| d.missing).sum();
    assert_eq!(devices_missing, 0, "the real stream is whole");

    let mut reasons: Vec<String> = reader
        .quarantine(10)
        .unwrap()
        .into_iter()
        .map(|q| q.reason.split(':').next().unwrap().to_owned())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["chain", "signature", "unsigned"]);

    let alarms = book.report_anomalies(T0 + 86_400_000).unwrap();
    let evidence: Vec<_> = alarms.iter().filter(|a| a.kind == Kind::Evidence).collect();
    assert_eq!(evidence.len(), 4, "{alarms:?}");
    assert!(evidence
        .iter()
        .any(|a| a.subject == "m3/evidence" && a.message.contains("chain_restart")));
    assert_eq!(
        evidence
            .iter()
            .filter(|a| a.subject == "m1/evidence")
            .count(),
        3
    );
    let report = reader.verify_evidence(&validation().edge_keys).unwrap();
    assert_eq!((report.checked, report.signatures_verified), (33, 30));
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    // The messages a period's figures are drawn from, as a sealed report names them.
    let minute = 60_000;
    assert_eq!(
        reader
            .seq_span("m1", T0 + 5 * minute, T0 + 10 * minute)
            .unwrap(),
        Some(SeqSpan {
            first_seq: 5,
            last_seq: 9,
            messages: 5
        })
    );
    assert_eq!(reader.seq_span("m1", 0, T0).unwrap(), None);
    // The same messages' samples as the quality strip reads them: a good counter reading and
    // a refused register each.
    let read = reader
        .message_qualities("m1", T0 + 5 * minute, T0 + 10 * minute)
        .unwrap();
    let times: Vec<i64> = read.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, (5..10).map(|k| T0 + k * minute).collect::<Vec<_>>());
    for (_, q) in &read {
        let mut q: Vec<String> = q.iter().map(ToString::to_string).collect();
        q.sort();
        assert_eq!(q, ["exception:02", "good"]);
    }
    // A level at a time as the stock tables read it: the last good reading in the window,
    // never the forged number 8's (quarantined), never a refused register's.
    let last = |point: &str, from: i64, to: i64| {
        reader
            .last_reading("m1", point, T0 + from * minute, T0 + to * minute)
            .unwrap()
    };
    assert_eq!(
        last("kwh", 5, 10),
        Some((T0 + 9 * minute, 1_000.0 + 9.0 * 2.5))
    );
    assert_eq!(
        last("kwh", 5, 9),
        Some((T0 + 8 * minute, 1_020.0)),
        "ends before 9"
    );
    assert_eq!(last("kw", 5, 10), None, "refused every time: no level");
    assert_eq!(
        last("kw", -60, 60),
        None,
        "every message of the hour looked at, none taken"
    );
    assert_eq!(last("kwh", -60, 1), None, "before the first message");
    assert_eq!(last("nothing", 0, 30), None);
}

/// The packed samples of m1 #7 with its meter reading changed by one part in a million.
fn edited(blob: &[u8]) -> Vec<u8> {
    let mut blob = blob.to_vec();
    let value = f64::from_le_bytes(blob[6..14].try_into().unwrap());
    blob[6..14].copy_from_slice(&(value * 1.000_001).to_le_bytes());
    blob
}

fn assert_edit_found(reader: &Reader) {
    let report = reader.verify_evidence(&validation().edge_keys).unwrap();
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert!(
        report.findings[0].starts_with("m1 #7: the stored readings are not the ones signed"),
        "{:?}",
        report.findings
    );
}

#[test]
fn signed_chains_hold_and_forgeries_breaks_and_edits_are_found_in_sqlite() {
    let dir = std::env::temp_dir().join(format!("ems-evidence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.db");
    let mut store = Store::open(&path).unwrap();
    let outcome = ingest(&mut store);
    let reader = store.reader().unwrap();
    let mut book = ems_gateway::store::alarm_book::SqliteAlarms::book(&path).unwrap();
    check_record(&reader, &mut book, &outcome);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let blob: Vec<u8> = conn
        .query_row(
            "SELECT points FROM messages WHERE device = 'm1' AND seq = 7",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE messages SET points = ?1 WHERE device = 'm1' AND seq = 7",
        [edited(&blob)],
    )
    .unwrap();
    assert_edit_found(&reader);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn signed_chains_hold_and_forgeries_breaks_and_edits_are_found_in_postgres() {
    let db = ScratchDatabase::new(
        &ScratchDatabase::default_server(),
        &format!("ems_test_evidence_{}", std::process::id()),
    )
    .expect("PostgreSQL on 127.0.0.1:5432 (trust authentication) or EMS_TEST_POSTGRES");
    let mut store = PgStore::connect(&db.url()).unwrap();
    let outcome = ingest(&mut store);
    let reader = Reader::new(PgReader::connect(&db.url()).unwrap());
    let mut book = AlarmBook::new(PgAlarms::connect(&db.url()).unwrap());
    check_record(&reader, &mut book, &outcome);

    let mut c = postgres::Client::connect(&db.url(), postgres::NoTls).unwrap();
    let blob: Vec<u8> = c
        .query_one(
            "SELECT points FROM messages WHERE device = 'm1' AND seq = 7",
            &[],
        )
        .unwrap()
        .get(0);
    c.execute(
        "UPDATE messages SET points = $1 WHERE device = 'm1' AND seq = 7",
        &[&edited(&blob)],
    )
    .unwrap();
    assert_edit_found(&reader);
    drop((store, reader, book, c));
}

/// Declares m9's gap lost, acknowledges an alarm and notes the files twice (the second time
/// with the configuration changed); returns the log as listed.
fn operate(reader: &Reader, book: &mut AlarmBook, store: &mut impl Storage) -> Vec<AuditRow> {
    let gap = [1, 3].map(|seq| {
        let mut t = reading("old", "m2", seq);
        t.device = "m9".into();
        Incoming::built(t)
    });
    store.write_batch(&gap, &rules(), T0).unwrap();
    let declared = reader
        .declare_lost(
            "m9",
            2,
            "shift_lead",
            "meter replaced, reading 2 never taken",
            T0 + 1,
        )
        .unwrap();
    assert!(matches!(declared, DeclareOutcome::Declared(_)));
    book.apply(
        T0 + 2,
        &[Observation {
            kind: Kind::DeviceOffline,
            subject: "m9".into(),
            raise: true,
            clear: false,
            value: None,
            threshold: None,
            message: "m9: no good reading".into(),
        }],
    )
    .unwrap();
    let id = book.list(true, 10).unwrap()[0].id;
    assert!(matches!(
        book.ack(id, "shift_lead", T0 + 3).unwrap(),
        AckOutcome::Acked(_)
    ));
    let mut files = BTreeMap::from([
        ("configuration".to_string(), "aa".repeat(32)),
        ("limits".to_string(), "bb".repeat(32)),
    ]);
    assert_eq!(reader.note_files(&files, None, T0 + 4).unwrap(), 2);
    assert_eq!(
        reader.note_files(&files, None, T0 + 5).unwrap(),
        0,
        "unchanged: nothing logged"
    );
    files.insert("configuration".into(), "cc".repeat(32));
    assert_eq!(reader.note_files(&files, None, T0 + 6).unwrap(), 1);
    // The energy manager declares the new limit file before the restart, which then finds
    // nothing new to log.
    files.insert("limits".into(), "ff".repeat(32));
    let declared = Declared {
        by: "energy_manager".into(),
        reason: "the limit standard's new edition".into(),
    };
    assert_eq!(
        reader.note_files(&files, Some(&declared), T0 + 6).unwrap(),
        1
    );
    assert_eq!(reader.note_files(&files, None, T0 + 6).unwrap(), 0);
    let enrolled = ems_gateway::audit::Entry::enrol_edge(
        "e",
        &"dd".repeat(32),
        Some(&"ee".repeat(32)),
        "installer",
        "board repaired",
        T0 + 7,
    );
    reader.log_act(&enrolled).unwrap();
    reader.audit(100).unwrap()
}

fn check_log(log: &[AuditRow], reader: &Reader) {
    let acts: Vec<(&str, &str, &str)> = log
        .iter()
        .rev()
        .map(|r| (r.who.as_str(), r.action.as_str(), r.subject.as_str()))
        .collect();
    assert_eq!(
        acts,
        [
            ("shift_lead", "declare_lost", "m9 #2..2"),
            ("shift_lead", "ack_alarm", "alarm 1"),
            ("gateway", "file_changed", "configuration"),
            ("gateway", "file_changed", "limits"),
            ("gateway", "file_changed", "configuration"),
            ("energy_manager", "file_changed", "limits"),
            ("installer", "enrol_edge", "edge e"),
        ]
    );
    let details: Vec<&str> = log[1..5].iter().rev().map(|r| r.detail.as_str()).collect();
    let (aa, bb, cc, ff) = ["aa", "bb", "cc", "ff"].map(|h| h.repeat(32)).into();
    assert_eq!(
        details,
        [
            format!("{aa}: first logged at the gateway's start"),
            format!("{bb}: first logged at the gateway's start"),
            format!("{cc} (before: {aa}): found changed at the gateway's start; no one declared it (ems-gateway declare-change)"),
            format!("{ff} (before: {bb}): the limit standard's new edition"),
        ]
    );
    assert_eq!(
        log[0].detail,
        format!(
            "key {} replacing {}: board repaired",
            "dd".repeat(32),
            "ee".repeat(32)
        )
    );
    assert_eq!(
        log.last().unwrap().detail,
        "meter replaced, reading 2 never taken"
    );
    let report = reader.verify_audit().unwrap();
    assert_eq!(
        (report.entries, report.findings.len()),
        (7, 0),
        "{report:?}"
    );
}

fn assert_tampering_found(reader: &Reader) {
    let report = reader.verify_audit().unwrap();
    assert_eq!(report.findings.len(), 1, "{report:?}");
    assert!(report.findings[0].starts_with("audit entry 1 (declare_lost by someone else)"));
}

#[test]
fn the_audit_log_chains_every_act_and_shows_an_entry_changed_in_sqlite() {
    let dir = std::env::temp_dir().join(format!("ems-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.db");
    let mut store = Store::open(&path).unwrap();
    let reader = store.reader().unwrap();
    let mut book = ems_gateway::store::alarm_book::SqliteAlarms::book(&path).unwrap();
    let log = operate(&reader, &mut book, &mut store);
    check_log(&log, &reader);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE audit_log SET who = 'someone else' WHERE id = 1", [])
        .unwrap();
    assert_tampering_found(&reader);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_audit_log_chains_every_act_and_shows_an_entry_changed_in_postgres() {
    let db = ScratchDatabase::new(
        &ScratchDatabase::default_server(),
        &format!("ems_test_audit_{}", std::process::id()),
    )
    .expect("PostgreSQL on 127.0.0.1:5432 (trust authentication) or EMS_TEST_POSTGRES");
    let mut store = PgStore::connect(&db.url()).unwrap();
    let reader = Reader::new(PgReader::connect(&db.url()).unwrap());
    let mut book = AlarmBook::new(PgAlarms::connect(&db.url()).unwrap());
    let log = operate(&reader, &mut book, &mut store);
    check_log(&log, &reader);
    let mut c = postgres::Client::connect(&db.url(), postgres::NoTls).unwrap();
    c.execute(
        "UPDATE audit_log SET who = 'someone else' WHERE id = 1",
        &[],
    )
    .unwrap();
    assert_tampering_found(&reader);
    drop((store, reader, book, c));
}

#[test]
fn signed_history_compacted_into_blocks_still_verifies_and_an_edit_still_shows() {
    let dir = std::env::temp_dir().join(format!("ems-evidence-blocks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.db");
    let mut store = Store::open(&path).unwrap();
    // Three days of hourly signed readings of m1.
    let mut chain = Chain::new(key());
    let v = Validation {
        now: Arc::new(|| T0 + 10 * 86_400_000),
        ..validation()
    };
    let incoming: Vec<Incoming> = (1..=72)
        .map(|seq| {
            let mut t = reading("e", "m1", seq);
            t.ts_ms = T0 + (seq as i64 - 1) * 3_600_000;
            let (topic, p) = payload(&chain.sign(t));
            classify(&topic, &p, &v)
        })
        .collect();
    let out = store
        .write_batch(&incoming, &rules(), T0 + 3 * 86_400_000)
        .unwrap();
    assert_eq!(out.stored, 72);
    let compacted = ems_gateway::store::Compactor::open(&path)
        .unwrap()
        .compact(3_600_000, &|| false)
        .unwrap();
    assert_eq!(compacted.blocks, 2, "the two settled days: {compacted:?}");
    let reader = store.reader().unwrap();
    // A period's messages counted across a block crossing its start, a whole block and the
    // rows of the third day: hours 12 to 60 are numbers 13 to 60.
    let hour = 3_600_000;
    let span = |from: i64, to: i64| reader.seq_span("m1", T0 + from * hour, T0 + to * hour);
    let held = |first_seq, last_seq, messages| {
        Some(SeqSpan {
            first_seq,
            last_seq,
            messages,
        })
    };
    assert_eq!(span(12, 60).unwrap(), held(13, 60, 48));
    assert_eq!(span(0, 72).unwrap(), held(1, 72, 72));
    assert_eq!(span(24, 48).unwrap(), held(25, 48, 24), "one whole block");
    assert_eq!(span(30, 31).unwrap(), held(31, 31, 1), "inside a block");
    assert_eq!(span(72, 96).unwrap(), None);
    // The strip's reading of the same messages, across the block and the rows alike.
    let read = reader
        .message_qualities("m1", T0 + 12 * hour, T0 + 60 * hour)
        .unwrap();
    assert_eq!(read.len(), 48);
    assert!(read.windows(2).all(|w| w[1].0 - w[0].0 == hour));
    assert!(read.iter().all(|(_, q)| q.len() == 2));
    // A level's last reading inside a block, and across a block into the third day's rows.
    let last = |from: i64, to: i64| {
        reader
            .last_reading("m1", "kwh", T0 + from * hour, T0 + to * hour)
            .unwrap()
    };
    let value = |seq: u64| 1_000.0 + seq as f64 * 2.5;
    assert_eq!(last(20, 31), Some((T0 + 30 * hour, value(31))));
    assert_eq!(
        last(30, 31),
        Some((T0 + 30 * hour, value(31))),
        "one message"
    );
    assert_eq!(last(47, 50), Some((T0 + 49 * hour, value(50))));
    assert_eq!(
        last(40, 48),
        Some((T0 + 47 * hour, value(48))),
        "a block's last"
    );
    let report = reader.verify_evidence(&validation().edge_keys).unwrap();
    assert_eq!((report.checked, report.signatures_verified), (72, 72));
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    // The third day is still rows: an edit there shows beside the blocks' clean messages.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let blob: Vec<u8> = conn
        .query_row(
            "SELECT points FROM messages WHERE device = 'm1' AND seq = 70",
            [],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE messages SET points = ?1 WHERE device = 'm1' AND seq = 70",
        [edited(&blob)],
    )
    .unwrap();
    let report = reader.verify_evidence(&validation().edge_keys).unwrap();
    assert_eq!(report.checked, 72);
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    assert!(report.findings[0].starts_with("m1 #70:"));
    let _ = std::fs::remove_dir_all(&dir);
}
