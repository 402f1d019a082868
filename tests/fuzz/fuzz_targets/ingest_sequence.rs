//! A random sequence of messages into the store, as a broker may deliver them: repeats,
//! conflicting copies, late and far-too-late readings, sequence jumps, meters that restart or
//! spike, in batches of any size. After it: every sequence number is stored at most once, the
//! ledger counts what is stored, and every rollup equals its recomputation from the raw
//! samples in time order.
#![no_main]

use std::collections::{BTreeSet, HashMap};

use arbitrary::Arbitrary;
use ems_core::wire::{PointValue, Telemetry};
use ems_core::Quality;
use ems_energy::counter::{CounterRule, GapFill};
use ems_gateway::storage::{AccountingRules, Incoming, WriteRules};
use ems_gateway::store::Store;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Op {
    device: bool,
    seq: u8,
    /// Minutes after the start of the day.
    minute: u16,
    value: u16,
    good: bool,
    /// Commit the batch after this message.
    commit: bool,
}

const DAY0: i64 = 1_767_196_800_000;

fn message(device: &str, seq: u64, ts_ms: i64, value: Option<f64>) -> Incoming {
    Incoming::built(Telemetry {
        v: 1,
        site: "s".into(),
        edge: "e".into(),
        device: device.into(),
        seq,
        ts_ms,
        points: vec![PointValue {
            id: "total".into(),
            v: value,
            q: if value.is_some() {
                Quality::Good
            } else {
                Quality::Timeout
            },
        }],
        signed: None,
    })
}

fuzz_target!(|ops: Vec<Op>| {
    if ops.len() > 300 {
        return;
    }
    let rule = CounterRule {
        rollover: Some(1_000.0),
        max_rate_per_h: Some(600.0),
        frozen_after_ms: 3_600_000,
        fill: GapFill::Rate,
        level: false,
        gauge: false,
    };
    let mut tracked = HashMap::new();
    for d in ["a", "b"] {
        tracked.insert(d.to_string(), HashMap::from([("total".to_string(), rule)]));
    }
    let mut rules: WriteRules = AccountingRules {
        tracked,
        max_gap_ms: 900_000,
    }
    .into();
    rules.max_late_ms = 6 * 3_600_000;
    rules.max_seq_jump = 100;
    let dir =
        std::path::Path::new("/dev/shm").join(format!("ems-fuzz-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut store = Store::open(&dir.join("s.db")).unwrap();
    let mut batch = Vec::new();
    for op in &ops {
        let device = if op.device { "a" } else { "b" };
        let ts = DAY0 + i64::from(op.minute % 2_880) * 60_000;
        let value = op.good.then_some(f64::from(op.value % 1_200));
        batch.push(message(device, u64::from(op.seq) + 1, ts, value));
        if op.commit {
            store.write_batch(&batch, &rules, 0).unwrap();
            batch.clear();
        }
    }
    store.write_batch(&batch, &rules, 0).unwrap();
    let reader = store.reader().unwrap();
    let mut csv = Vec::new();
    reader.export_csv(None, 0, i64::MAX, &mut csv).unwrap();
    let text = String::from_utf8(csv).unwrap();
    let mut seen = BTreeSet::new();
    for line in text.lines().skip(1) {
        let mut f = line.split(',');
        let key = (f.next().unwrap().to_owned(), f.next().unwrap().to_owned());
        assert!(seen.insert(key.clone()), "{key:?} stored twice");
    }
    for d in reader.devices().unwrap() {
        let stored = seen.iter().filter(|(dev, _)| *dev == d.id).count() as i64;
        assert_eq!(
            d.messages, stored,
            "{}: the ledger counts what is stored",
            d.id
        );
        assert!(d.missing >= 0 && d.missing <= d.last_seq);
    }
    let check = reader.verify_rollups(&rules.accounting).unwrap();
    assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
    drop(reader);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
});
