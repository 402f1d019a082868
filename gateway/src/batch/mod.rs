//! What one batch of ingest does to the record, whatever holds it: the ledger (sequence numbers
//! once, gaps, declared-lost ranges, jumps, late and conflicting copies refused), raw samples
//! packed per message, counter readings into the 15-minute slots, the quarantine, the edges'
//! status and the marks each edge is told (protocol v1.1). A backend gives its open transaction
//! as a [`WriteTx`]: the few reads and writes this logic needs, in its own SQL. SQLite
//! ([`crate::store`]) and PostgreSQL ([`crate::pg`]) both run this same logic, so the two keep
//! the same record of the same messages.

pub mod chain;
mod counters;
mod ledger;

use std::collections::HashMap;

use ems_core::wire::{DeviceAck, Status, Telemetry};
use ems_energy::counter::{CounterTrack, PointSlot};

use crate::storage::{BatchOutcome, Incoming, WriteRules};

pub use counters::Reading;
pub use ledger::version_digest;

pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Each counter point's state after its newest reading: device -> point -> state.
pub type CounterTracks = FastMap<String, FastMap<String, CounterTrack>>;

/// Encodes a stored message for the InfluxDB sink's queue.
pub type SinkEncoder = Box<dyn Fn(&Telemetry) -> String + Send>;

/// A stored message, as a backend reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVersion {
    pub ts_ms: i64,
    pub edge: String,
    /// The packed samples; `None` once retention deleted them.
    pub points: Option<Vec<u8>>,
}

/// A signed message's evidence as stored (protocol v1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceRow {
    pub device: String,
    pub seq: i64,
    pub site: String,
    pub edge: String,
    pub prev: [u8; 32],
    pub digest: [u8; 32],
    pub sig: [u8; 64],
    /// An enrolled key verified its signature at ingest.
    pub verified: bool,
}

/// A stored message's place in its chain: (prev, digest, verified with an enrolled key).
pub type Link = ([u8; 32], [u8; 32], bool);

/// A device's chain as stored: its head, how far it is verified without a break (every number
/// up to it stored, verified and linked to its predecessor or starting a chain), its restarts
/// and the messages refused for their evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChainRow {
    pub head_seq: i64,
    pub head_digest: [u8; 32],
    pub verified_through: i64,
    pub signed: i64,
    pub verified: i64,
    pub restarts: i64,
    pub refused: i64,
}

impl ChainRow {
    /// Whether `seq` comes right after the head, the highest number stored with evidence (which
    /// is never changed or deleted): in order, with nothing stored after it.
    pub fn next_is(&self, seq: i64) -> bool {
        self.signed > 0 && self.head_seq == seq - 1
    }
}

/// A range declared lost, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct LostRow {
    pub from_seq: i64,
    pub to_seq: i64,
    pub declared_ms: i64,
    pub declared_by: String,
    pub reason: String,
}

/// A device's ledger row changes within one batch, written once at its end.
#[derive(Debug)]
pub struct DeviceUpdate<'a> {
    /// Highest sequence number so far, with its poll time, site and edge.
    pub newest: Option<(i64, i64, &'a str, &'a str)>,
    pub messages: i64,
    pub last_good_ms: Option<i64>,
}

/// Where a device's ledger stands, for its edge's mark.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerMark {
    /// The last number stored (0 if none).
    pub last: i64,
    /// The newest open gaps, lowest first.
    pub newest_gaps: Vec<(i64, i64)>,
    /// Where the first open gap starts.
    pub first_gap: Option<i64>,
}

/// A refused message as the quarantine keeps it.
#[derive(Debug)]
pub struct KeptRefusal<'a> {
    pub received_ms: i64,
    pub topic: &'a str,
    pub reason: &'a str,
    /// The start of the payload that is kept.
    pub kept: &'a [u8],
    pub size: i64,
    pub sha256: &'a str,
}

/// The reads and writes the batch logic needs of a backend's open transaction. Every call is
/// part of that one transaction; nothing is visible to others before the backend commits.
/// Methods take `&self` (a backend whose transaction needs `&mut` keeps it in a `RefCell`).
pub trait WriteTx {
    /// Sees the whole batch before it is written (to look up at once what it will ask).
    fn prepare(&self, _batch: &[Incoming]) -> anyhow::Result<()> {
        Ok(())
    }
    /// The device's last sequence number and its poll time.
    fn ledger_row(&self, device: &str) -> anyhow::Result<Option<(i64, i64)>>;
    /// Turns back into rows whatever compacted history holds `seq` or the day of `ts_ms`
    /// (a backend without compaction returns 0). Returns the messages put back.
    fn reopen(&self, device: &str, seq: i64, ts_ms: i64) -> anyhow::Result<usize>;
    fn message_stored(&self, device: &str, seq: i64) -> anyhow::Result<bool>;
    /// Stores a message once: `false` if `(device, seq)` is stored already.
    fn insert_message(
        &self,
        t: &Telemetry,
        received_ms: i64,
        points: &[u8],
    ) -> anyhow::Result<bool>;
    fn stored_version(&self, device: &str, seq: i64) -> anyhow::Result<StoredVersion>;
    fn point_of_series(&self, series: i64) -> anyhow::Result<String>;
    /// Counts a second copy of a stored message: a duplicate, or a conflict.
    fn count_copy(&self, device: &str, conflict: bool) -> anyhow::Result<()>;
    fn insert_device(&self, t: &Telemetry, received_ms: i64) -> anyhow::Result<()>;
    fn update_device(
        &self,
        device: &str,
        u: &DeviceUpdate<'_>,
        received_ms: i64,
    ) -> anyhow::Result<()>;
    fn insert_gap(&self, device: &str, from: i64, to: i64, detected_ms: i64) -> anyhow::Result<()>;
    /// The open gap holding `seq`: (from, to, detected_ms).
    fn gap_containing(&self, device: &str, seq: i64) -> anyhow::Result<Option<(i64, i64, i64)>>;
    fn delete_gap(&self, device: &str, from: i64) -> anyhow::Result<()>;
    fn lost_containing(&self, device: &str, seq: i64) -> anyhow::Result<Option<LostRow>>;
    fn delete_lost(&self, device: &str, from: i64) -> anyhow::Result<()>;
    fn insert_lost(&self, device: &str, row: &LostRow) -> anyhow::Result<()>;
    /// Each device's last number, its newest `max` gaps and its first gap's start, in the
    /// order of `devices`.
    fn ledger_marks(&self, devices: &[&str], max: usize) -> anyhow::Result<Vec<LedgerMark>>;
    /// The id of a device's point (made on first use).
    fn series_id(&self, device: &str, point: &str) -> anyhow::Result<i64>;
    /// Keeps a refused message and counts it in the totals by reason.
    fn keep_refused(&self, r: &KeptRefusal<'_>) -> anyhow::Result<()>;
    fn upsert_edge(&self, s: &Status, received_ms: i64) -> anyhow::Result<()>;
    fn queue_sink_lines(&self, lines: &str) -> anyhow::Result<()>;
    /// A counter point's newest checkpoint.
    fn latest_checkpoint(&self, device: &str, point: &str) -> anyhow::Result<Option<CounterTrack>>;
    /// The newest checkpoint at or before `slot_ms` whose state is from before `ts_ms`.
    fn checkpoint_before(
        &self,
        device: &str,
        point: &str,
        slot_ms: i64,
        ts_ms: i64,
    ) -> anyhow::Result<Option<CounterTrack>>;
    fn write_checkpoint(
        &self,
        device: &str,
        point: &str,
        slot_ms: i64,
        t: &CounterTrack,
    ) -> anyhow::Result<()>;
    /// Adds to a point's slot rollup.
    fn add_slot(
        &self,
        device: &str,
        point: &str,
        slot_ms: i64,
        r: &PointSlot,
    ) -> anyhow::Result<()>;
    /// The highest sequence number of the device's messages polled at `ts_ms`.
    fn highest_seq_at(&self, device: &str, ts_ms: i64) -> anyhow::Result<Option<i64>>;
    /// The good readings of one series in messages polled after `from_ms`, in time order
    /// (then by number).
    fn good_readings(
        &self,
        device: &str,
        series: i64,
        from_ms: i64,
    ) -> anyhow::Result<Vec<Reading>>;
    fn insert_anomaly(
        &self,
        device: &str,
        point: &str,
        ts_ms: i64,
        kind: &str,
        detail: &str,
    ) -> anyhow::Result<()>;
    /// The stored evidence of `(device, seq)`.
    fn evidence(&self, device: &str, seq: i64) -> anyhow::Result<Option<Link>>;
    fn insert_evidence(&self, e: &EvidenceRow) -> anyhow::Result<()>;
    fn chain(&self, device: &str) -> anyhow::Result<Option<ChainRow>>;
    fn put_chain(&self, device: &str, c: &ChainRow) -> anyhow::Result<()>;
    /// Withdraws the newest open anomaly of that time and kind.
    fn withdraw_anomaly(
        &self,
        device: &str,
        point: &str,
        ts_ms: i64,
        kind: &str,
        at_ms: i64,
    ) -> anyhow::Result<()>;
}

/// What a backend keeps between batches to spare reads: counter states and series ids. Cleared
/// when a commit fails (they may hold the rolled-back batch's).
#[derive(Debug, Default)]
pub struct Caches {
    pub(crate) last: CounterTracks,
    pub(crate) series: SeriesIds,
}

impl Caches {
    pub fn clear(&mut self) {
        *self = Caches::default();
    }
}

/// The `series` id of each device and point, as stored.
#[derive(Debug, Default)]
pub struct SeriesIds(FastMap<String, FastMap<String, i64>>);

impl SeriesIds {
    fn get(&mut self, tx: &impl WriteTx, device: &str, point: &str) -> anyhow::Result<i64> {
        if let Some(id) = self.0.get(device).and_then(|d| d.get(point)) {
            return Ok(*id);
        }
        let id = tx.series_id(device, point)?;
        self.0
            .entry(device.to_owned())
            .or_default()
            .insert(point.to_owned(), id);
        Ok(id)
    }
}

/// Writes one batch into the backend's open transaction `tx`; the backend commits it.
pub fn write_batch(
    tx: &impl WriteTx,
    caches: &mut Caches,
    sink: Option<&SinkEncoder>,
    batch: &[Incoming],
    rules: &WriteRules,
    received_ms: i64,
) -> anyhow::Result<BatchOutcome> {
    let mut out = BatchOutcome::default();
    let mut gathered = Gathered::default();
    let mut touched = Touched::default();
    tx.prepare(batch)?;
    for item in batch {
        match item {
            Incoming::Telemetry(t, raw) => {
                let (stored, quarantined) = (out.stored, out.quarantined);
                ledger::write_telemetry(
                    tx,
                    (caches, &mut gathered),
                    (t, raw),
                    rules,
                    received_ms,
                    &mut out,
                )?;
                // Kept aside, unless refused for its evidence (see the rejected below).
                let refused = (out.quarantined > quarantined)
                    .then(|| out.refused.last().copied().unwrap_or_default());
                touched.add(
                    (&t.site, &t.edge, &t.device),
                    refused
                        .filter(|code| !chain::REFUSALS.contains(code))
                        .map(|_| t.seq),
                );
                if let (Some(encode), true) = (sink, out.stored > stored) {
                    tx.queue_sink_lines(&encode(t))?;
                }
            }
            Incoming::Status(s) => tx.upsert_edge(s, received_ms)?,
            Incoming::Rejected(r) => {
                ledger::keep(
                    tx,
                    (&r.topic, &r.reason, &r.payload),
                    received_ms,
                    rules.quarantine_payload_bytes,
                )?;
                out.quarantined += 1;
                if let Some(o) = &r.origin {
                    let code = crate::storage::reason_code(&r.reason);
                    // A message refused for its signature is not shown to be the edge's: its
                    // number is not reported kept aside, or a forger could have the edge
                    // release its own result of that number unconfirmed.
                    let aside = if chain::REFUSALS.contains(&code) {
                        chain::refused(tx, &o.device, received_ms, code, &r.reason)?;
                        None
                    } else {
                        Some(o.seq)
                    };
                    touched.add((&o.site, &o.edge, &o.device), aside);
                }
            }
        }
    }
    gathered.write(tx, received_ms)?;
    out.acks = touched.marks(tx)?;
    Ok(out)
}

/// What a batch touches many times but stores once, at its end: additions to the rollup slots,
/// the counters' checkpoints and the devices' ledger rows (keyed by the batch's own strings).
#[derive(Debug, Default)]
pub(crate) struct Gathered<'a> {
    slots: FastMap<(&'a str, &'a str, i64), PointSlot>,
    /// Per counter point, its state after the last reading of each slot the batch reached.
    checkpoints: FastMap<(&'a str, &'a str), Vec<(i64, CounterTrack)>>,
    devices: FastMap<&'a str, DeviceUpdate<'a>>,
}

impl<'a> Gathered<'a> {
    fn add_slot(&mut self, (device, point): (&'a str, &'a str), slot: i64, r: PointSlot) {
        let e = self.slots.entry((device, point, slot)).or_default();
        e.delta += r.delta;
        e.covered_ms += r.covered_ms;
        e.estimated += r.estimated;
    }

    /// Records a counter's state after a reading in order (slots only move forward).
    fn checkpoint(&mut self, key: (&'a str, &'a str), slot: i64, track: CounterTrack) {
        let list = self.checkpoints.entry(key).or_default();
        match list.last_mut() {
            Some((s, t)) if *s == slot => *t = track,
            _ => list.push((slot, track)),
        }
    }

    fn write(self, tx: &impl WriteTx, received_ms: i64) -> anyhow::Result<()> {
        for ((device, point, slot), r) in &self.slots {
            tx.add_slot(device, point, *slot, r)?;
        }
        for ((device, point), list) in &self.checkpoints {
            write_checkpoints(tx, (device, point), list)?;
        }
        for (device, u) in &self.devices {
            tx.update_device(device, u, received_ms)?;
        }
        Ok(())
    }
}

fn write_checkpoints(
    tx: &impl WriteTx,
    (device, point): (&str, &str),
    list: &[(i64, CounterTrack)],
) -> anyhow::Result<()> {
    for (slot, t) in list {
        if t.anchor.is_some() {
            tx.write_checkpoint(device, point, *slot, t)?;
        }
    }
    Ok(())
}

/// (site, edge, device).
type DeviceOfEdge<'a> = (&'a str, &'a str, &'a str);

/// The devices a batch touched, with the numbers it kept aside, in first-touched order.
#[derive(Default)]
struct Touched<'a> {
    devices: Vec<(DeviceOfEdge<'a>, Vec<u64>)>,
    index: FastMap<&'a str, usize>,
}

/// Most missing ranges a mark lists: the newest ones; older gaps are listed as one range over
/// them all (what it spans that is committed stays held by the edge, never released unheld).
const MAX_MISSING: usize = 32;

impl<'a> Touched<'a> {
    fn add(&mut self, (site, edge, device): (&'a str, &'a str, &'a str), aside: Option<u64>) {
        let i = *self.index.entry(device).or_insert_with(|| {
            self.devices.push(((site, edge, device), Vec::new()));
            self.devices.len() - 1
        });
        // A device's edge is the one its last message names (a device moved between edges is
        // acknowledged to its new one).
        self.devices[i].0 = (site, edge, device);
        self.devices[i].1.extend(aside);
    }

    /// Each device's mark as the transaction leaves the ledger: the watermark below the first
    /// open gap, the last number, and the gaps in between (declared-lost ranges are no gaps).
    fn marks(self, tx: &impl WriteTx) -> anyhow::Result<Vec<(String, String, DeviceAck)>> {
        let names: Vec<&str> = self.devices.iter().map(|((_, _, d), _)| *d).collect();
        let marks = tx.ledger_marks(&names, MAX_MISSING)?;
        let mut out = Vec::with_capacity(self.devices.len());
        for (((site, edge, device), aside), m) in self.devices.into_iter().zip(marks) {
            let mut missing: Vec<[u64; 2]> = m
                .newest_gaps
                .iter()
                .map(|(a, b)| [*a as u64, *b as u64])
                .collect();
            if missing.len() == MAX_MISSING {
                if let Some(first) = m.first_gap {
                    missing[0][0] = first as u64;
                }
            }
            let last = m.last as u64;
            let through = missing.first().map_or(last, |g| g[0] - 1);
            let mark = DeviceAck {
                device: device.to_owned(),
                through,
                last,
                missing,
                aside,
            };
            out.push((site.to_owned(), edge.to_owned(), mark));
        }
        Ok(out)
    }
}
