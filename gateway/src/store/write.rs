//! Ingest's batches: the ledger (sequence numbers once, gaps, declared-lost ranges, jumps,
//! late and conflicting copies refused), raw samples packed per message, the quarantine and the
//! edges' status. Counter readings go on to [`super::counters`].

use std::path::Path;

use ems_core::wire::{DeviceAck, Telemetry};
use ems_energy::counter::{CounterTrack, PointSlot};
use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;

use super::counters::{account_sample, track_of, Reading, UPSERT_SLOT};
use super::{open_conn, rfc3339, CounterTracks, FastMap, Store};
use crate::storage::{hex, reason_code, BatchOutcome, Incoming, Raw, WriteRules};

impl crate::storage::Storage for Store {
    fn write_batch(
        &mut self,
        batch: &[Incoming],
        rules: &WriteRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome> {
        Store::write_batch(self, batch, rules, received_ms)
    }
}

impl Store {
    /// Commits one batch in one transaction.
    pub fn write_batch(
        &mut self,
        batch: &[Incoming],
        rules: &WriteRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome> {
        let mut out = BatchOutcome::default();
        let mut gathered = Gathered::default();
        let mut touched = Touched::default();
        let tx = self.conn.transaction()?;
        for item in batch {
            match item {
                Incoming::Telemetry(t, raw) => {
                    let (stored, quarantined) = (out.stored, out.quarantined);
                    let caches = (&mut self.last, &mut self.series, &mut gathered);
                    write_telemetry(&tx, caches, (t, raw), rules, received_ms, &mut out)?;
                    touched.add(
                        (&t.site, &t.edge, &t.device),
                        (out.quarantined > quarantined).then_some(t.seq),
                    );
                    if let (Some(encode), true) = (&self.sink, out.stored > stored) {
                        tx.prepare_cached("INSERT INTO sink_queue (lines) VALUES (?1)")?
                            .execute([encode(t)])?;
                    }
                }
                Incoming::Status(s) => {
                    // The last will says nothing of the spool: the last report stands.
                    tx.execute(
                        "INSERT INTO edges (edge, site, online, devices, changed_ms, spool_depth, spool_dropped) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (edge) DO UPDATE SET site = ?2, online = ?3,
                           devices = CASE WHEN ?3 THEN ?4 ELSE devices END, changed_ms = ?5,
                           spool_depth = COALESCE(?6, spool_depth), spool_dropped = COALESCE(?7, spool_dropped)",
                        params![s.edge, s.site, s.online, serde_json::to_string(&s.devices)?, received_ms, s.spool_depth.map(|d| d.min(i64::MAX as u64) as i64), s.spool_dropped.map(|d| d.min(i64::MAX as u64) as i64)],
                    )?;
                }
                Incoming::Rejected(r) => {
                    let refusal = Refusal {
                        topic: &r.topic,
                        reason: &r.reason,
                        payload: &r.payload,
                    };
                    refusal.keep(&tx, received_ms, rules.quarantine_payload_bytes)?;
                    out.quarantined += 1;
                    if let Some(o) = &r.origin {
                        touched.add((&o.site, &o.edge, &o.device), Some(o.seq));
                    }
                }
            }
        }
        gathered.write(&tx, received_ms)?;
        out.acks = touched.marks(&tx)?;
        match tx.commit() {
            Ok(()) => Ok(out),
            Err(e) => {
                // The caches may hold states and ids of the rolled-back batch.
                self.last.clear();
                self.series = SeriesIds::default();
                Err(e.into())
            }
        }
    }
}

/// The devices a batch touched, with the numbers it kept aside, in first-touched order.
#[derive(Default)]
struct Touched<'a> {
    devices: Vec<((&'a str, &'a str, &'a str), Vec<u64>)>,
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
    fn marks(self, tx: &Transaction<'_>) -> rusqlite::Result<Vec<(String, String, DeviceAck)>> {
        let mut last_seq = tx.prepare_cached("SELECT last_seq FROM devices WHERE device = ?1")?;
        let mut newest_gaps = tx.prepare_cached(
            "SELECT from_seq, to_seq FROM gaps WHERE device = ?1 ORDER BY from_seq DESC LIMIT ?2",
        )?;
        let mut first_gap = tx.prepare_cached("SELECT MIN(from_seq) FROM gaps WHERE device = ?1")?;
        let mut out = Vec::with_capacity(self.devices.len());
        for ((site, edge, device), aside) in self.devices {
            let last: i64 = last_seq
                .query_row([device], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let mut missing: Vec<[u64; 2]> = newest_gaps
                .query_map(params![device, MAX_MISSING as i64], |r| {
                    Ok([r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64])
                })?
                .collect::<rusqlite::Result<_>>()?;
            missing.reverse();
            if missing.len() == MAX_MISSING {
                let first: i64 = first_gap.query_row([device], |r| r.get(0))?;
                missing[0][0] = first as u64;
            }
            let last = last as u64;
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

/// A message kept aside, with why.
struct Refusal<'a> {
    topic: &'a str,
    reason: &'a str,
    payload: &'a [u8],
}

/// The longest topic kept with a refused message (MQTT allows 64 KiB).
const MAX_TOPIC_KEPT: usize = 1_024;

impl Refusal<'_> {
    /// Stores it in the quarantine, at most `cap` bytes of its payload (with the full size and
    /// SHA-256), and counts it in the totals by reason, which retention never deletes.
    fn keep(&self, tx: &Transaction<'_>, received_ms: i64, cap: usize) -> rusqlite::Result<()> {
        use sha2::Digest as _;
        let digest = hex(&sha2::Sha256::digest(self.payload));
        let topic = cut_at_char(self.topic, MAX_TOPIC_KEPT);
        tx.prepare_cached(
            "INSERT INTO quarantine (received_ms, topic, reason, payload, payload_bytes, payload_sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            received_ms,
            topic,
            self.reason,
            &self.payload[..self.payload.len().min(cap)],
            self.payload.len() as i64,
            digest
        ])?;
        tx.prepare_cached(
            "INSERT INTO quarantine_totals (reason, count, bytes) VALUES (?1, 1, ?2)
             ON CONFLICT (reason) DO UPDATE SET count = count + 1, bytes = bytes + ?2",
        )?
        .execute(params![reason_code(self.reason), self.payload.len() as i64])?;
        Ok(())
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut_at_char(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What a batch touches many times but stores once, at its end: additions to the rollup slots,
/// the counters' checkpoints and the devices' ledger rows (keyed by the batch's own strings).
#[derive(Debug, Default)]
pub(super) struct Gathered<'a> {
    pub(super) slots: FastMap<(&'a str, &'a str, i64), PointSlot>,
    /// Per counter point, its state after the last reading of each slot the batch reached.
    pub(super) checkpoints: FastMap<(&'a str, &'a str), Vec<(i64, CounterTrack)>>,
    devices: FastMap<&'a str, LedgerUpdate<'a>>,
}

/// A device's ledger row changes within one batch.
#[derive(Debug)]
pub(super) struct LedgerUpdate<'a> {
    /// Highest sequence number so far, with its poll time, site and edge.
    newest: Option<(i64, i64, &'a str, &'a str)>,
    messages: i64,
    last_good_ms: Option<i64>,
}

impl<'a> Gathered<'a> {
    pub(super) fn add_slot(
        &mut self,
        (device, point): (&'a str, &'a str),
        slot: i64,
        r: PointSlot,
    ) {
        let e = self.slots.entry((device, point, slot)).or_default();
        e.delta += r.delta;
        e.covered_ms += r.covered_ms;
        e.estimated += r.estimated;
    }

    /// Records a counter's state after a reading in order (slots only move forward).
    pub(super) fn checkpoint(&mut self, key: (&'a str, &'a str), slot: i64, track: CounterTrack) {
        let list = self.checkpoints.entry(key).or_default();
        match list.last_mut() {
            Some((s, t)) if *s == slot => *t = track,
            _ => list.push((slot, track)),
        }
    }

    fn write(self, tx: &Transaction<'_>, received_ms: i64) -> rusqlite::Result<()> {
        let mut stmt = tx.prepare_cached(UPSERT_SLOT)?;
        for ((device, point, slot), r) in &self.slots {
            stmt.execute(params![
                device,
                point,
                slot,
                r.delta,
                r.covered_ms,
                r.estimated
            ])?;
        }
        for ((device, point), list) in &self.checkpoints {
            write_checkpoints(tx, (device, point), list)?;
        }
        let mut stmt = tx.prepare_cached(
            "UPDATE devices SET last_seq = COALESCE(?2, last_seq), last_ts_ms = COALESCE(?3, last_ts_ms),
               site = COALESCE(?4, site), edge = COALESCE(?5, edge), last_seen_ms = ?6,
               messages = messages + ?7, last_good_ms = COALESCE(?8, last_good_ms)
             WHERE device = ?1",
        )?;
        for (device, u) in &self.devices {
            let (seq, ts, site, edge) = match &u.newest {
                Some((seq, ts, site, edge)) => (Some(seq), Some(ts), Some(site), Some(edge)),
                None => (None, None, None, None),
            };
            stmt.execute(params![
                device,
                seq,
                ts,
                site,
                edge,
                received_ms,
                u.messages,
                u.last_good_ms
            ])?;
        }
        Ok(())
    }
}

pub(super) fn write_checkpoints(
    tx: &Transaction<'_>,
    (device, point): (&str, &str),
    list: &[(i64, CounterTrack)],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO counter_checkpoints (device, point, slot_ms, through_ms, ts_ms, value, rejected, changed_ms, rate_per_h)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (device, point, slot_ms) DO UPDATE SET through_ms = ?4, ts_ms = ?5, value = ?6,
           rejected = ?7, changed_ms = ?8, rate_per_h = ?9",
    )?;
    for (slot, t) in list {
        let Some((ts, v)) = t.anchor else { continue };
        stmt.execute(params![
            device,
            point,
            slot,
            t.through_ms,
            ts,
            v,
            t.rejected,
            t.changed_ms,
            t.rate_per_h
        ])?;
    }
    Ok(())
}

/// A checkpoint row as a counter state.
pub(super) fn checkpoint_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CounterTrack> {
    Ok(CounterTrack {
        through_ms: r.get(0)?,
        anchor: Some((r.get(1)?, r.get(2)?)),
        rejected: r.get(3)?,
        changed_ms: r.get(4)?,
        rate_per_h: r.get(5)?,
    })
}

pub(super) const CHECKPOINT_COLUMNS: &str =
    "through_ms, ts_ms, value, rejected, changed_ms, rate_per_h";

/// The `series` id of each device and point, as stored.
#[derive(Debug, Default)]
pub(super) struct SeriesIds(FastMap<String, FastMap<String, i64>>);

impl SeriesIds {
    fn get(&mut self, tx: &Transaction<'_>, device: &str, point: &str) -> rusqlite::Result<i64> {
        if let Some(id) = self.0.get(device).and_then(|d| d.get(point)) {
            return Ok(*id);
        }
        tx.prepare_cached("INSERT OR IGNORE INTO series (device, point) VALUES (?1, ?2)")?
            .execute([device, point])?;
        let id = tx
            .prepare_cached("SELECT id FROM series WHERE device = ?1 AND point = ?2")?
            .query_row([device, point], |r| r.get(0))?;
        self.0
            .entry(device.to_owned())
            .or_default()
            .insert(point.to_owned(), id);
        Ok(id)
    }
}

fn write_telemetry<'a>(
    tx: &Transaction<'_>,
    (last, series, gathered): (&mut CounterTracks, &mut SeriesIds, &mut Gathered<'a>),
    (t, raw): (&'a Telemetry, &Raw),
    rules: &WriteRules,
    received_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<()> {
    let seq = t.seq as i64;
    let ledger = ledger_row(tx, gathered, &t.device)?;
    // A repeated number, or a poll time as old as settled history: its day may be a block.
    if let Some((last_seq, last_ts)) = ledger {
        if seq <= last_seq || t.ts_ms < last_ts.saturating_sub(rules.history_settle_ms) {
            let reopened = super::compact::reopen(tx, &t.device, seq, t.ts_ms)?;
            if reopened > 0 {
                tracing::info!(device = %t.device, seq, messages = reopened, "A compacted day reopened for a late or repeated message.");
            }
        }
    }
    let device_rules = rules.accounting.tracked.get(&t.device);
    let mut refused = match ledger {
        Some((last_seq, _)) if seq > last_seq && seq - last_seq > rules.max_seq_jump => Some((
            "seq_jump",
            format!(
                "sequence number {seq} is {} ahead of the device's last, {last_seq} (at most {})",
                seq - last_seq,
                rules.max_seq_jump
            ),
        )),
        _ => None,
    };
    // Late against what its counters have taken (a message without counter readings costs no
    // replay, and a poll whose device clock could not be read does not move the bound).
    if let (None, Some(device_rules)) = (&refused, device_rules) {
        for p in t.points.iter().filter(|p| p.v.is_some()) {
            if !device_rules.contains_key(&p.id) {
                continue;
            }
            let through = track_of(tx, last, (&t.device, &p.id))?.through_ms;
            if t.ts_ms < through.saturating_sub(rules.max_late_ms) && !stored(tx, t)? {
                refused = Some((
                    "late",
                    format!(
                        "poll time {} is {} s behind the last reading of `{}`, {} (at most {} s)",
                        rfc3339(t.ts_ms),
                        (through - t.ts_ms) / 1000,
                        p.id,
                        rfc3339(through),
                        rules.max_late_ms / 1000
                    ),
                ));
                break;
            }
        }
    }
    if let Some((code, detail)) = refused {
        refuse(tx, t, raw, code, &detail, rules, received_ms, out)?;
        return Ok(());
    }
    let mut blob = Vec::with_capacity(t.points.len() * 14);
    for p in &t.points {
        crate::packed::push(&mut blob, series.get(tx, &t.device, &p.id)?, p.v, p.q);
    }
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO messages (device, seq, ts_ms, edge, received_ms, points) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![t.device, seq, t.ts_ms, t.edge, received_ms, blob])?;
    if inserted == 0 {
        return duplicate(tx, t, raw, rules, received_ms, out);
    }
    out.stored += 1;
    update_ledger(tx, gathered, t, ledger.map(|l| l.0), received_ms)?;
    out.points += t.points.len() as u64;
    let Some(device_rules) = device_rules else {
        return Ok(());
    };
    for p in &t.points {
        let (Some(rule), Some(v)) = (device_rules.get(&p.id), p.v) else {
            continue;
        };
        let key = (t.device.as_str(), p.id.as_str());
        let reading = Reading {
            ts_ms: t.ts_ms,
            seq,
            value: v,
        };
        let max_gap_ms = rules.accounting.max_gap_ms;
        if account_sample(tx, (last, gathered), key, reading, rule, max_gap_ms, out)? {
            out.late_samples += 1;
        }
    }
    Ok(())
}

/// The device's last sequence number and its poll time, as of this point in the batch.
fn ledger_row(
    tx: &Transaction<'_>,
    gathered: &Gathered<'_>,
    device: &str,
) -> rusqlite::Result<Option<(i64, i64)>> {
    if let Some(LedgerUpdate {
        newest: Some((seq, ts, ..)),
        ..
    }) = gathered.devices.get(device)
    {
        return Ok(Some((*seq, *ts)));
    }
    tx.prepare_cached("SELECT last_seq, last_ts_ms FROM devices WHERE device = ?1")?
        .query_row([device], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

fn stored(tx: &Transaction<'_>, t: &Telemetry) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM messages WHERE device = ?1 AND seq = ?2")?
        .exists(params![t.device, t.seq as i64])
}

/// Keeps a message the store refuses in the quarantine, counted by its reason code.
#[allow(clippy::too_many_arguments)]
fn refuse(
    tx: &Transaction<'_>,
    t: &Telemetry,
    raw: &Raw,
    code: &'static str,
    detail: &str,
    rules: &WriteRules,
    received_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<()> {
    let built;
    let payload: &[u8] = if raw.payload.is_empty() {
        built = serde_json::to_vec(t)?;
        &built
    } else {
        &raw.payload
    };
    let topic = if raw.topic.is_empty() {
        format!("{}/data/{}", t.site, t.device)
    } else {
        raw.topic.clone()
    };
    let reason = format!("{code}: {detail}");
    let refusal = Refusal {
        topic: &topic,
        reason: &reason,
        payload,
    };
    refusal.keep(tx, received_ms, rules.quarantine_payload_bytes)?;
    tracing::warn!(device = %t.device, seq = t.seq, reason = %reason, "Message quarantined.");
    out.quarantined += 1;
    out.refused.push(code);
    Ok(())
}

/// A (device, seq) already stored came again: a plain duplicate (a redelivery) when its content
/// is the same, a conflict (a corrupted or tampered copy) when not, kept in the quarantine with
/// the digests of both versions.
fn duplicate(
    tx: &Transaction<'_>,
    t: &Telemetry,
    raw: &Raw,
    rules: &WriteRules,
    received_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<()> {
    let (ts, edge, points): (i64, String, Option<Vec<u8>>) = tx
        .prepare_cached("SELECT ts_ms, edge, points FROM messages WHERE device = ?1 AND seq = ?2")?
        .query_row(params![t.device, t.seq as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let stored_points = match &points {
        Some(blob) => {
            let mut named = Vec::new();
            let mut name = tx.prepare_cached("SELECT point FROM series WHERE id = ?1")?;
            for p in crate::packed::unpack(blob)? {
                let point: String = name.query_row([p.series], |r| r.get(0))?;
                named.push((point, p.value, p.quality));
            }
            Some(named)
        }
        // Retention deleted its samples: the poll time and edge are what can be compared.
        None => None,
    };
    let received_points = stored_points.as_ref().map(|_| {
        t.points
            .iter()
            .map(|p| (p.id.clone(), p.v, p.q))
            .collect::<Vec<_>>()
    });
    let stored_digest = version_digest(ts, &edge, stored_points);
    let received_digest = version_digest(t.ts_ms, &t.edge, received_points);
    if stored_digest == received_digest {
        out.duplicates += 1;
        tx.prepare_cached("UPDATE devices SET duplicates = duplicates + 1 WHERE device = ?1")?
            .execute([&t.device])?;
        return Ok(());
    }
    out.conflicts += 1;
    tx.prepare_cached("UPDATE devices SET conflicts = conflicts + 1 WHERE device = ?1")?
        .execute([&t.device])?;
    let detail = format!(
        "sequence number {} of {} is stored with other content: stored version sha256 {stored_digest}, this copy {received_digest}",
        t.seq, t.device
    );
    refuse(tx, t, raw, "conflict", &detail, rules, received_ms, out)
}

/// SHA-256 of one version of a message, over its content in a canonical text: the poll time,
/// the edge and each point (sorted by id) with its value's IEEE 754 bits and its quality.
/// Two deliveries of the same reading give the same digest whatever their JSON spelling.
fn version_digest(
    ts_ms: i64,
    edge: &str,
    points: Option<Vec<(String, Option<f64>, ems_core::Quality)>>,
) -> String {
    use sha2::Digest as _;
    let mut text = format!("{ts_ms}\n{edge}\n");
    if let Some(mut points) = points {
        points.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, v, q) in points {
            let bits = v
                .map(|v| format!("{:016x}", v.to_bits()))
                .unwrap_or_default();
            text.push_str(&format!("{id}\t{bits}\t{q}\n"));
        }
    }
    hex(&sha2::Sha256::digest(text.as_bytes()))
}

/// Sequence bookkeeping: last number, and the ranges still missing. The device's row is
/// written once per batch (see [`Gathered`]); gaps at once. `prev` is the device's last number
/// before this message.
fn update_ledger<'a>(
    tx: &Transaction<'_>,
    gathered: &mut Gathered<'a>,
    t: &'a Telemetry,
    prev: Option<i64>,
    received_ms: i64,
) -> anyhow::Result<()> {
    let seq = t.seq as i64;
    let any_good = t.points.iter().any(|p| p.q.is_good() && p.v.is_some());
    let newest = match prev {
        None => {
            tx.execute(
                "INSERT INTO devices (device, site, edge, last_seq, last_ts_ms, last_seen_ms, messages, last_good_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, NULL)",
                params![t.device, t.site, t.edge, seq, t.ts_ms, received_ms],
            )?;
            if seq > 1 {
                // Numbering starts at 1: anything before the first message we saw is missing.
                tx.execute("INSERT INTO gaps (device, from_seq, to_seq, detected_ms) VALUES (?1, 1, ?2, ?3)", params![t.device, seq - 1, received_ms])?;
            }
            true
        }
        Some(last_seq) if seq > last_seq => {
            if seq > last_seq + 1 {
                tx.execute(
                    "INSERT INTO gaps (device, from_seq, to_seq, detected_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![t.device, last_seq + 1, seq - 1, received_ms],
                )?;
            }
            true
        }
        Some(_) => {
            // A late message fills (part of) a gap.
            let gap: Option<(i64, i64, i64)> = tx
                .query_row(
                    "SELECT from_seq, to_seq, detected_ms FROM gaps WHERE device = ?1 AND from_seq <= ?2 AND to_seq >= ?2",
                    params![t.device, seq],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((from, to, detected)) = gap {
                tx.execute(
                    "DELETE FROM gaps WHERE device = ?1 AND from_seq = ?2",
                    params![t.device, from],
                )?;
                for (a, b) in [(from, seq - 1), (seq + 1, to)] {
                    if a <= b {
                        tx.execute(
                            "INSERT INTO gaps (device, from_seq, to_seq, detected_ms) VALUES (?1, ?2, ?3, ?4)",
                            params![t.device, a, b, detected],
                        )?;
                    }
                }
            } else {
                found_after_all(tx, &t.device, seq)?;
            }
            false
        }
    };
    let u = gathered
        .devices
        .entry(t.device.as_str())
        .or_insert(LedgerUpdate {
            newest: None,
            messages: 0,
            last_good_ms: None,
        });
    u.messages += 1;
    if newest {
        u.newest = Some((seq, t.ts_ms, &t.site, &t.edge));
        if any_good {
            u.last_good_ms = Some(t.ts_ms);
        }
    }
    Ok(())
}

/// A number declared lost arrived after all: it leaves its lost range (split in two).
fn found_after_all(tx: &Transaction<'_>, device: &str, seq: i64) -> rusqlite::Result<()> {
    type Row = (i64, i64, i64, String, String);
    let range: Option<Row> = tx
        .query_row(
            "SELECT from_seq, to_seq, declared_ms, declared_by, reason FROM lost
             WHERE device = ?1 AND from_seq <= ?2 AND to_seq >= ?2",
            params![device, seq],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    let Some((from, to, declared_ms, by, reason)) = range else {
        return Ok(());
    };
    tx.execute(
        "DELETE FROM lost WHERE device = ?1 AND from_seq = ?2",
        params![device, from],
    )?;
    for (a, b) in [(from, seq - 1), (seq + 1, to)] {
        if a <= b {
            tx.execute(
                "INSERT INTO lost (device, from_seq, to_seq, declared_ms, declared_by, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![device, a, b, declared_ms, by, reason],
            )?;
        }
    }
    Ok(())
}

/// What declaring a gap lost did.
#[derive(Debug)]
pub enum DeclareOutcome {
    Declared(LostRange),
    NoSuchGap,
}

/// A sequence range declared lost.
#[derive(Debug, Clone, Serialize)]
pub struct LostRange {
    pub from_seq: i64,
    pub to_seq: i64,
    pub declared: String,
    pub declared_by: String,
    pub reason: String,
}

/// Declares the open gap of `device` that starts at `from_seq` lost: its numbers no longer
/// count as missing. Opens its own connection to the database at `path` (a rare operator act).
pub fn declare_lost(
    path: &Path,
    device: &str,
    from_seq: i64,
    by: &str,
    reason: &str,
    now_ms: i64,
) -> anyhow::Result<DeclareOutcome> {
    let mut conn = open_conn(path)?;
    let tx = conn.transaction()?;
    let gap: Option<i64> = tx
        .query_row(
            "SELECT to_seq FROM gaps WHERE device = ?1 AND from_seq = ?2",
            params![device, from_seq],
            |r| r.get(0),
        )
        .optional()?;
    let Some(to_seq) = gap else {
        return Ok(DeclareOutcome::NoSuchGap);
    };
    tx.execute(
        "DELETE FROM gaps WHERE device = ?1 AND from_seq = ?2",
        params![device, from_seq],
    )?;
    tx.execute(
        "INSERT INTO lost (device, from_seq, to_seq, declared_ms, declared_by, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![device, from_seq, to_seq, now_ms, by, reason],
    )?;
    tx.commit()?;
    Ok(DeclareOutcome::Declared(LostRange {
        from_seq,
        to_seq,
        declared: rfc3339(now_ms),
        declared_by: by.to_owned(),
        reason: reason.to_owned(),
    }))
}
