//! The store's tests, against real SQLite files.

use super::*;
use crate::storage::{hex, AccountingRules, Incoming, Rejected, Tracked, WriteRules};
use crate::view::{DeclareOutcome, LostRange, QuarantineRow, ReadRecord, PAYLOAD_PREVIEW};
use ems_core::wire::PointValue;
use ems_core::wire::Telemetry;
use ems_core::Quality;
use ems_energy::counter::{GapFill, PointSlot};
use rusqlite::Connection;
use schema::MIGRATIONS;
use std::collections::HashMap;
use write::declare_lost;

const H: i64 = 3_600_000;

fn temp_db(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ems-store-{tag}-{}.db", std::process::id()));
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
    }
    p
}

fn msg(seq: u64, ts_ms: i64, total: f64) -> Incoming {
    Incoming::built(Telemetry {
        v: 1,
        site: "s".into(),
        edge: "e".into(),
        device: "m".into(),
        seq,
        ts_ms,
        points: vec![PointValue {
            id: "total".into(),
            v: Some(total),
            q: Quality::Good,
        }],
        signed: None,
    })
}

fn rules() -> WriteRules {
    let mut tracked: HashMap<String, HashMap<String, Tracked>> = HashMap::new();
    tracked.entry("m".to_string()).or_default().insert(
        "total".to_string(),
        Tracked {
            rollover: Some(1_000.0),
            max_rate_per_h: Some(200.0),
            frozen_after_ms: 2 * H,
            fill: GapFill::None,
            level: false,
            gauge: false,
        },
    );
    AccountingRules {
        tracked,
        max_gap_ms: 900_000,
    }
    .into()
}

fn hours(store: &Store) -> Vec<(i64, PointSlot)> {
    store
        .reader()
        .unwrap()
        .point_slots("m", "total", 0, 100 * H)
        .unwrap()
}

#[test]
fn samples_stored_before_the_packed_schema_are_kept_by_the_migrations() {
    let path = temp_db("migrate");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            .unwrap();
        for (i, sql) in MIGRATIONS[..3].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.execute("INSERT INTO schema_version VALUES (?1)", [i as i64 + 1])
                .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO samples VALUES ('m', 1, 'total', 0, 10.0, 'good');
                 INSERT INTO samples VALUES ('m', 1, 'flow', 0, NULL, 'timeout');",
        )
        .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    store
        .write_batch(&[msg(2, 600_000, 20.0)], &rules(), 0)
        .unwrap();
    let mut csv = Vec::new();
    let rows = store
        .reader()
        .unwrap()
        .export_csv(Some("m"), 0, H, &mut csv)
        .unwrap();
    assert_eq!(rows, 3);
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        "device,seq,point,time,value,quality\n\
             m,1,flow,1970-01-01T00:00:00.000Z,,timeout\n\
             m,1,total,1970-01-01T00:00:00.000Z,10,good\n\
             m,2,total,1970-01-01T00:10:00.000Z,20,good\n"
    );
}

#[test]
fn duplicates_are_dropped_and_gaps_recorded_until_filled() {
    let mut store = Store::open(&temp_db("ledger")).unwrap();
    let r = rules();
    let out = store
        .write_batch(
            &[
                msg(1, 0, 10.0),
                msg(2, 600_000, 20.0),
                msg(2, 600_000, 20.0),
                msg(5, 2_400_000, 50.0),
            ],
            &r,
            0,
        )
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (3, 1));
    let devices = store.reader().unwrap().devices().unwrap();
    assert_eq!(
        (
            devices[0].last_seq,
            devices[0].missing,
            devices[0].gaps.clone()
        ),
        (5, 2, vec![[3, 4]])
    );
    store
        .write_batch(&[msg(4, 1_800_000, 40.0)], &r, 0)
        .unwrap();
    let devices = store.reader().unwrap().devices().unwrap();
    assert_eq!(
        (devices[0].missing, devices[0].gaps.clone()),
        (1, vec![[3, 3]])
    );
    assert_eq!(devices[0].duplicates, 1);
}

#[test]
fn a_lost_range_splits_around_a_number_that_arrives_after_all() {
    let path = temp_db("lost");
    let mut store = Store::open(&path).unwrap();
    let r = rules();
    store
        .write_batch(&[msg(1, 0, 10.0), msg(9, 600_000, 20.0)], &r, 0)
        .unwrap();
    assert!(matches!(
        declare_lost(&path, "m", 3, "op", "why", 5).unwrap(),
        DeclareOutcome::NoSuchGap
    ));
    assert!(matches!(
        declare_lost(&path, "m", 2, "op", "spool overflow", 5).unwrap(),
        DeclareOutcome::Declared(LostRange {
            from_seq: 2,
            to_seq: 8,
            ..
        })
    ));
    store.write_batch(&[msg(5, 300_000, 15.0)], &r, 0).unwrap();
    let d = &store.reader().unwrap().devices().unwrap()[0];
    let ranges: Vec<_> = d
        .lost_ranges
        .iter()
        .map(|l| (l.from_seq, l.to_seq))
        .collect();
    assert_eq!(ranges, vec![(2, 4), (6, 8)]);
    assert_eq!((d.missing, d.lost), (0, 6));
    assert!(d.lost_ranges.iter().all(|l| l.reason == "spool overflow"));
}

#[test]
fn a_late_sample_gives_the_rollups_of_in_order_arrival() {
    let samples = [
        (1, 0, 10.0),
        (2, 1_800_000, 40.0),
        (3, 3_000_000, 55.0),
        (4, 4_200_000, 70.0),
        (5, 6_000_000, 100.0),
    ];
    let mut in_order = Store::open(&temp_db("order")).unwrap();
    let batch: Vec<_> = samples.iter().map(|&(s, t, v)| msg(s, t, v)).collect();
    in_order.write_batch(&batch, &rules(), 0).unwrap();
    let mut late = Store::open(&temp_db("late")).unwrap();
    let mut shuffled = batch.clone();
    shuffled.swap(1, 3); // 1, 4, 3, 2, 5: seq 3 and seq 2 arrive after seq 4
    let out = late.write_batch(&shuffled, &rules(), 0).unwrap();
    assert_eq!(out.late_samples, 2);
    let (a, b) = (hours(&in_order), hours(&late));
    assert_eq!(a.len(), b.len());
    for ((ha, ra), (hb, rb)) in a.iter().zip(&b) {
        assert_eq!(ha, hb);
        assert!(
            (ra.delta - rb.delta).abs() < 1e-9 && ra.covered_ms == rb.covered_ms,
            "{ra:?} vs {rb:?}"
        );
    }
    assert!(late
        .reader()
        .unwrap()
        .verify_rollups(&rules().accounting)
        .unwrap()
        .mismatches
        .is_empty());
}

#[test]
fn retention_deletes_old_raw_samples_and_keeps_rollups_and_the_ledger() {
    let path = temp_db("retention");
    let mut store = Store::open(&path).unwrap();
    // Every 10 minutes for 6 hours, 10 units a reading.
    let batch: Vec<_> = (0..36)
        .map(|i| msg(i + 1, i as i64 * 600_000, 100.0 + 10.0 * i as f64))
        .collect();
    store.write_batch(&batch, &rules(), 0).unwrap();
    let before = hours(&store);
    let deleted = Pruner::open(&path).unwrap().prune_raw(3 * H).unwrap();
    assert_eq!(deleted, 18, "the readings polled before 3 h");
    let reader = store.reader().unwrap();
    let mut csv = Vec::new();
    assert_eq!(reader.export_csv(None, 0, 10 * H, &mut csv).unwrap(), 18);
    assert_eq!(hours(&store), before, "rollups are kept");
    assert_eq!(
        reader.devices().unwrap()[0].last_seq,
        36,
        "the ledger is kept"
    );
    let check = reader.verify_rollups(&rules().accounting).unwrap();
    assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
    assert!(check.slots_checked > 0);
    // A message that comes again after pruning is still known: dropped as a duplicate.
    let out = store
        .write_batch(&[msg(2, 600_000, 110.0)], &rules(), 0)
        .unwrap();
    assert_eq!((out.stored, out.duplicates), (0, 1));
}

#[test]
fn spikes_are_rejected_restarts_bridged_and_both_recorded() {
    let path = temp_db("anomaly");
    let mut store = Store::open(&path).unwrap();
    let r = rules();
    // Max 200 an hour. 100 -> 150 (50 in 15 min is fine) -> 990 (spike) -> 175 -> 20 (restart).
    let out = store
        .write_batch(
            &[
                msg(1, 0, 100.0),
                msg(2, 900_000, 150.0),
                msg(3, 1_800_000, 990.0),
                msg(4, 2_700_000, 175.0),
            ],
            &r,
            0,
        )
        .unwrap();
    assert_eq!(out.anomalies, vec!["spike"]);
    let total: f64 = hours(&store).iter().map(|(_, p)| p.delta).sum();
    assert!(
        (total - 75.0).abs() < 1e-9,
        "the spike is not counted: {total}"
    );
    let mut r2 = r.clone();
    r2.accounting
        .tracked
        .values_mut()
        .flat_map(|d| d.values_mut())
        .for_each(|t| t.rollover = None);
    let out = store
        .write_batch(&[msg(5, 3_600_000, 20.0)], &r2, 0)
        .unwrap();
    assert_eq!(out.anomalies, vec!["restart"]);
    let rows = hours(&store);
    let last = rows.last().unwrap().1;
    assert_eq!(
        (last.delta, last.covered_ms, last.estimated),
        (20.0, 0, 20.0),
        "bridged from zero, estimated"
    );
    let listed = store.reader().unwrap().anomalies(10).unwrap();
    assert_eq!(
        listed.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(),
        vec!["restart", "spike"]
    );
    assert!(
        store
            .reader()
            .unwrap()
            .verify_rollups(&r2.accounting)
            .unwrap()
            .mismatches
            .is_empty(),
        "recomputation agrees"
    );
}

#[test]
fn backup_copies_everything_and_export_writes_csv() {
    let path = temp_db("backup-src");
    let mut store = Store::open(&path).unwrap();
    store
        .write_batch(&[msg(1, 0, 10.0), msg(2, 600_000, 20.5)], &rules(), 0)
        .unwrap();
    let copy = temp_db("backup-dst");
    assert_eq!(Store::backup(&path, &copy).unwrap(), 2);
    assert!(Store::backup(&path, &copy).is_err(), "never overwrites");
    let restored = Store::open(&copy).unwrap();
    let mut csv = Vec::new();
    assert_eq!(
        restored
            .reader()
            .unwrap()
            .export_csv(Some("m"), 0, H, &mut csv)
            .unwrap(),
        2
    );
    let text = String::from_utf8(csv).unwrap();
    assert_eq!(
            text,
            "device,seq,point,time,value,quality\nm,1,total,1970-01-01T00:00:00.000Z,10,good\nm,2,total,1970-01-01T00:10:00.000Z,20.5,good\n"
        );
}

#[test]
fn rollover_counts_and_a_tampered_rollup_is_caught() {
    let path = temp_db("verify");
    let mut store = Store::open(&path).unwrap();
    store
        .write_batch(&[msg(1, 0, 990.0), msg(2, 600_000, 5.0)], &rules(), 0)
        .unwrap();
    assert!(
        (hours(&store)[0].1.delta - 15.0).abs() < 1e-9,
        "990 -> 5 across the rollover at 1000 is 15"
    );
    let integrity = store
        .reader()
        .unwrap()
        .verify_rollups(&rules().accounting)
        .unwrap();
    assert!(integrity.mismatches.is_empty() && integrity.samples_checked == 2);
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE point_slots SET delta = delta + 1", [])
        .unwrap();
    let integrity = store
        .reader()
        .unwrap()
        .verify_rollups(&rules().accounting)
        .unwrap();
    assert_eq!(integrity.mismatches.len(), 1, "{:?}", integrity.mismatches);
}

fn quarantined(store: &Store) -> Vec<QuarantineRow> {
    store.reader().unwrap().quarantine(100).unwrap()
}

fn integrity_holds(store: &Store) {
    let check = store
        .reader()
        .unwrap()
        .verify_rollups(&rules().accounting)
        .unwrap();
    assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
}

#[test]
fn a_late_reading_slightly_below_the_one_before_is_decided_as_in_order_not_as_a_wrap() {
    // The case: 2000.0, 2000.5, 2001.0 at 0, 60 s and 120 s (seq 1, 2, 4), then
    // seq 3 at 90 s with 2000.4. In time order 2000.4 after 2000.5 is a spike (as a wrap
    // of the 42 949 672.96 t counter it would be millions of tonnes in 30 s), so the
    // slot holds 1.0 t, a spike is on record, and ingest and the integrity check agree.
    let mut store = Store::open(&temp_db("late-wrap")).unwrap();
    let mut r = rules();
    r.accounting.tracked.get_mut("m").unwrap().insert(
        "total".into(),
        Tracked {
            rollover: Some(42_949_672.96),
            max_rate_per_h: Some(864.0),
            frozen_after_ms: 2 * H,
            fill: GapFill::Rate,
            level: false,
            gauge: false,
        },
    );
    let t = 10 * H;
    let out = store
        .write_batch(
            &[
                msg(1, t, 2000.0),
                msg(2, t + 60_000, 2000.5),
                msg(4, t + 120_000, 2001.0),
            ],
            &r,
            0,
        )
        .unwrap();
    assert!(out.anomalies.is_empty());
    let out = store
        .write_batch(&[msg(3, t + 90_000, 2000.4)], &r, 0)
        .unwrap();
    assert_eq!(
        (out.late_samples, out.anomalies.clone()),
        (1, vec!["spike"])
    );
    let slots = store
        .reader()
        .unwrap()
        .point_slots("m", "total", 0, 100 * H)
        .unwrap();
    let total: f64 = slots.iter().map(|(_, p)| p.delta).sum();
    assert!((total - 1.0).abs() < 1e-9, "{slots:?}");
    assert!(slots.iter().all(|(_, p)| p.estimated.abs() < 1e-12));
    let check = store
        .reader()
        .unwrap()
        .verify_rollups(&r.accounting)
        .unwrap();
    assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
}

#[test]
fn a_late_reading_that_moves_a_finding_withdraws_the_old_one_and_records_the_new() {
    // At most 200 an hour. 100 at 0 h, then 700, 705, 710 at 1, 2 and 3 h: each implies
    // more than 200 an hour from 100, so two spikes and, at the third, a jump (the counter
    // moved for good). A late reading of 708 at 2.5 h is the third rejected one in time
    // order: the jump is there, and 710 at 3 h follows it at 4 an hour.
    let mut store = Store::open(&temp_db("withdraw")).unwrap();
    let mut r = rules();
    r.accounting
        .tracked
        .values_mut()
        .flat_map(|d| d.values_mut())
        .for_each(|t| t.rollover = None);
    let batch = [
        msg(1, 0, 100.0),
        msg(2, H, 700.0),
        msg(3, 2 * H, 705.0),
        msg(5, 3 * H, 710.0),
    ];
    let out = store.write_batch(&batch, &r, 0).unwrap();
    assert_eq!(out.anomalies, vec!["spike", "spike", "jump"]);
    let out = store
        .write_batch(&[msg(4, 5 * H / 2, 708.0)], &r, 0)
        .unwrap();
    assert_eq!((out.late_samples, out.anomalies.clone()), (1, vec!["jump"]));
    let listed = store.reader().unwrap().anomalies(10).unwrap();
    let jumps: Vec<_> = listed
        .iter()
        .filter(|a| a.kind == "jump")
        .map(|a| (a.at.as_str(), a.withdrawn.is_some()))
        .collect();
    assert_eq!(
        jumps,
        vec![
            ("1970-01-01T02:30:00.000Z", false),
            ("1970-01-01T03:00:00.000Z", true)
        ]
    );
    let check = store
        .reader()
        .unwrap()
        .verify_rollups(&r.accounting)
        .unwrap();
    assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
}

#[test]
fn a_copy_with_other_content_is_a_conflict_kept_with_both_digests() {
    let mut store = Store::open(&temp_db("conflict")).unwrap();
    let r = rules();
    store
        .write_batch(&[msg(1, 0, 10.0), msg(2, 600_000, 20.0)], &r, 0)
        .unwrap();
    let out = store
        .write_batch(&[msg(2, 600_000, 20.0), msg(2, 600_000, 25.0)], &r, 0)
        .unwrap();
    assert_eq!(
        (out.duplicates, out.conflicts, out.refused.clone()),
        (1, 1, vec!["conflict"])
    );
    let q = quarantined(&store);
    assert_eq!(q.len(), 1);
    let digests =
        q[0].reason.matches("sha256 ").count() + q[0].reason.matches(", this copy ").count();
    assert!(
        q[0].reason.starts_with("conflict:") && digests == 2,
        "{}",
        q[0].reason
    );
    let d = &store.reader().unwrap().devices().unwrap()[0];
    assert_eq!((d.messages, d.duplicates, d.conflicts), (2, 1, 1));
    // The stored version is untouched.
    let mut csv = Vec::new();
    store
        .reader()
        .unwrap()
        .export_csv(None, 0, H, &mut csv)
        .unwrap();
    assert!(String::from_utf8(csv)
        .unwrap()
        .contains("m,2,total,1970-01-01T00:10:00.000Z,20,good"));
}

#[test]
fn a_sequence_jump_and_a_reading_too_late_are_quarantined_not_stored() {
    let mut store = Store::open(&temp_db("bounds")).unwrap();
    let mut r = rules();
    r.max_seq_jump = 1_000;
    r.max_late_ms = 2 * H;
    let day = 24 * H;
    store
        .write_batch(&[msg(1, day, 10.0), msg(2, day + 600_000, 20.0)], &r, 0)
        .unwrap();
    let out = store
        .write_batch(
            &[
                msg(i64::MAX as u64, day + 700_000, 21.0),
                msg(3, day - 3 * H, 5.0),
                // An old copy of a stored number is still a duplicate, not a refusal.
                msg(1, day, 10.0),
                msg(1_002, day + 800_000, 22.0),
            ],
            &r,
            0,
        )
        .unwrap();
    assert_eq!(out.refused, vec!["seq_jump", "late"]);
    assert_eq!((out.stored, out.duplicates), (1, 1));
    let d = &store.reader().unwrap().devices().unwrap()[0];
    assert_eq!((d.last_seq, d.missing), (1_002, 999));
    assert_eq!(store.reader().unwrap().sequence_totals().unwrap().0, 999);
    integrity_holds(&store);
}

#[test]
fn the_quarantine_keeps_the_start_of_a_payload_its_size_and_digest_and_counts_outlive_it() {
    let path = temp_db("quarantine");
    let mut store = Store::open(&path).unwrap();
    let mut r = rules();
    r.quarantine_payload_bytes = 1_024;
    let big = vec![b'x'; 300_000];
    let bad = Incoming::Rejected(Rejected {
        topic: "ems/v1/s/data/m".into(),
        reason: "oversized: 300000 bytes".into(),
        payload: big.clone(),
        origin: None,
    });
    store.write_batch(&[bad.clone(), bad], &r, 5).unwrap();
    let q = quarantined(&store);
    use sha2::Digest as _;
    assert_eq!(q[0].payload_bytes, Some(300_000));
    assert_eq!(
        q[0].payload_sha256.as_deref(),
        Some(hex(&sha2::Sha256::digest(&big)).as_str())
    );
    assert!(q[0].truncated && q[0].payload.len() <= PAYLOAD_PREVIEW);
    let kept = store
        .reader()
        .unwrap()
        .quarantine_payload(q[0].id)
        .unwrap()
        .unwrap();
    assert_eq!(kept.len(), 1_024);
    assert_eq!(Pruner::open(&path).unwrap().prune_quarantine(6).unwrap(), 2);
    assert!(quarantined(&store).is_empty());
    let totals = store.reader().unwrap().quarantine_totals().unwrap();
    assert_eq!(
        (totals[0].reason.as_str(), totals[0].count, totals[0].bytes),
        ("oversized", 2, 600_000)
    );
}

#[test]
fn checkpoints_out_of_reach_of_late_readings_are_pruned_and_late_ones_still_add_up() {
    let path = temp_db("checkpoints");
    let mut store = Store::open(&path).unwrap();
    let r = rules();
    // A reading every 10 minutes for 20 hours, 5 units each.
    let all: Vec<_> = (0..120)
        .map(|i| msg(i + 1, i as i64 * 600_000, 5.0 * i as f64))
        .collect();
    let (early, rest): (Vec<_>, Vec<_>) = all
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 7 != 3);
    store
        .write_batch(
            &early.into_iter().map(|(_, m)| m).collect::<Vec<_>>(),
            &r,
            0,
        )
        .unwrap();
    let count = |p: &Path| -> i64 {
        Connection::open(p)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM counter_checkpoints", [], |r| r.get(0))
            .unwrap()
    };
    let before = count(&path);
    let deleted = Pruner::open(&path)
        .unwrap()
        .prune_checkpoints(12 * H)
        .unwrap();
    assert!(deleted > 0 && count(&path) == before - deleted as i64);
    // The held-back readings of the last 12 hours arrive: accounted as in order.
    let late: Vec<_> = rest
        .into_iter()
        .filter(|(i, _)| *i as i64 * 600_000 > 8 * H)
        .map(|(_, m)| m)
        .collect();
    let out = store.write_batch(&late, &r, 0).unwrap();
    assert_eq!(out.late_samples, late.len() as u64);
    integrity_holds(&store);
}

#[test]
fn a_meter_clock_standing_still_is_taken_in_order_not_replayed_every_poll() {
    let mut store = Store::open(&temp_db("still-clock")).unwrap();
    let r = rules();
    store.write_batch(&[msg(1, 0, 10.0)], &r, 0).unwrap();
    let stuck: Vec<_> = (2..50)
        .map(|seq| msg(seq, 600_000, 20.0 + seq as f64))
        .collect();
    let out = store.write_batch(&stuck, &r, 0).unwrap();
    assert_eq!(out.late_samples, 0, "each comes last in (time, seq) order");
    // The first at that time counts; the rest add nothing, as in a recomputation.
    let total: f64 = hours(&store).iter().map(|(_, p)| p.delta).sum();
    assert!((total - 12.0).abs() < 1e-9, "{total}");
    integrity_holds(&store);
}

#[test]
fn each_commit_tells_the_edge_its_devices_watermark_gaps_and_what_it_kept_aside() {
    let path = temp_db("marks");
    let mut store = Store::open(&path).unwrap();
    let mut r = rules();
    r.max_seq_jump = 1_000;
    let mark = |out: &crate::storage::BatchOutcome| {
        assert_eq!(out.acks.len(), 1, "{out:?}");
        let (site, edge, m) = &out.acks[0];
        assert_eq!(
            (site.as_str(), edge.as_str(), m.device.as_str()),
            ("s", "e", "m")
        );
        (m.through, m.last, m.missing.clone(), m.aside.clone())
    };
    let out = store
        .write_batch(
            &[msg(1, 0, 1.0), msg(2, 60_000, 2.0), msg(5, 120_000, 3.0)],
            &r,
            0,
        )
        .unwrap();
    assert_eq!(mark(&out), (2, 5, vec![[3, 4]], vec![]));
    // A jump too far is kept aside; the edge is told the gateway holds it.
    let out = store
        .write_batch(&[msg(6, 180_000, 4.0), msg(5_000, 190_000, 4.1)], &r, 0)
        .unwrap();
    assert_eq!(mark(&out), (2, 6, vec![[3, 4]], vec![5_000]));
    // A range declared lost is no gap: the watermark passes it.
    declare_lost(&path, "m", 3, "op", "broker lost them", 5).unwrap();
    let out = store.write_batch(&[msg(7, 240_000, 5.0)], &r, 0).unwrap();
    assert_eq!(mark(&out), (7, 7, vec![], vec![]));
    // A duplicate is acknowledged again (its first acknowledgement may have been lost).
    let out = store.write_batch(&[msg(7, 240_000, 5.0)], &r, 0).unwrap();
    assert_eq!(out.duplicates, 1);
    assert_eq!(mark(&out), (7, 7, vec![], vec![]));
    // Forty gaps: the newest 31 are listed, the older nine as one range over them.
    let batch: Vec<_> = (0..40u64)
        .map(|i| msg(9 + 2 * i, 300_000 + i as i64 * 60_000, 6.0 + i as f64))
        .collect();
    let (through, last, missing, _) = mark(&store.write_batch(&batch, &r, 0).unwrap());
    assert_eq!((through, last, missing.len()), (7, 87, 32));
    assert_eq!(missing[0], [8, 24]);
    assert_eq!(missing[1], [26, 26]);
    assert_eq!(missing[31], [86, 86]);
    // A message refused before the store (an unknown device), from an edge: kept aside too.
    let refused = Incoming::Rejected(Rejected {
        topic: "ems/v1/s/data/new-meter".into(),
        reason: "unknown_device: not configured".into(),
        payload: b"{}".to_vec(),
        origin: Some(crate::storage::Origin {
            site: "s".into(),
            edge: "e".into(),
            device: "new-meter".into(),
            seq: 3,
        }),
    });
    let out = store.write_batch(&[refused], &r, 0).unwrap();
    let m = &out.acks[0].2;
    assert_eq!((m.device.as_str(), m.through, m.last), ("new-meter", 0, 0));
    assert!(m.covers(3) && !m.covers(1) && !m.covers(4));
}

#[test]
fn a_batch_waits_for_another_writer_instead_of_failing() {
    // Found by the ingest bench: the alarm book wrote while a batch had read and not yet
    // written; the batch failed with "database is locked" and was retried a second later.
    let path = temp_db("busy");
    let mut store = Store::open(&path).unwrap();
    let r = rules();
    store.write_batch(&[msg(1, 0, 1.0)], &r, 0).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let conn = open_conn(&path).unwrap();
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                conn.execute(
                    "INSERT INTO quarantine_totals (reason, count, bytes) VALUES ('other', 1, 0)
                     ON CONFLICT (reason) DO UPDATE SET count = count + 1",
                    [],
                )
                .unwrap();
                writes += 1;
                // Now and then, as the alarm book and upkeep write.
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
            writes
        })
    };
    let mut failed = 0;
    for seq in 2..1_000u64 {
        if store
            .write_batch(&[msg(seq, seq as i64 * 60_000, seq as f64 * 0.1)], &r, 0)
            .is_err()
        {
            failed += 1;
        }
        // Batches come apart in time, as messages do.
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = other.join().unwrap();
    assert_eq!(
        failed, 0,
        "batches failed while another connection wrote ({writes} writes)"
    );
    assert!(writes > 10, "the other writer wrote meanwhile: {writes}");
}

#[test]
fn a_long_read_does_not_hold_up_the_apis_other_reads() {
    let path = temp_db("readers");
    let mut store = Store::open(&path).unwrap();
    store
        .write_batch(&[msg(1, 1_000, 10.0)], &rules(), 0)
        .unwrap();
    let reader = std::sync::Arc::new(read::SqliteReader::open(&path, false).unwrap());
    // One request holds a connection (a year's balance being read) until told, or 10 s.
    let (tell, told) = std::sync::mpsc::channel::<()>();
    let (held, holding) = std::sync::mpsc::channel::<()>();
    let long = {
        let reader = reader.clone();
        std::thread::spawn(move || {
            reader
                .with(|_| {
                    held.send(()).unwrap();
                    Ok(told
                        .recv_timeout(std::time::Duration::from_secs(10))
                        .is_ok())
                })
                .unwrap()
        })
    };
    holding.recv().unwrap();
    // Another request is answered meanwhile, and only then lets the long one go.
    assert_eq!(reader.devices().unwrap().len(), 1);
    tell.send(()).unwrap();
    assert!(
        long.join().unwrap(),
        "the second read waited for the long one to give up its connection"
    );
}
