//! A message into the ledger: stored once by `(device, seq)`, its gaps and declared-lost ranges
//! kept, a sequence jump, a late or a conflicting copy refused into the quarantine.

use ems_core::wire::Telemetry;

use super::chain;
use super::counters::{account_sample, track_of, Reading};
use super::{Caches, DeviceUpdate, Gathered, KeptRefusal, LostRow, WriteTx};
use crate::clock::rfc3339;
use crate::storage::{hex, BatchOutcome, Raw, WriteRules};

/// The longest topic kept with a refused message (MQTT allows 64 KiB).
const MAX_TOPIC_KEPT: usize = 1_024;

/// Keeps a refused message in the quarantine: at most `cap` bytes of its payload (with the full
/// size and SHA-256), counted in the totals by reason, which retention never deletes.
pub(super) fn keep(
    tx: &impl WriteTx,
    (topic, reason, payload): (&str, &str, &[u8]),
    received_ms: i64,
    cap: usize,
) -> anyhow::Result<()> {
    use sha2::Digest as _;
    let digest = hex(&sha2::Sha256::digest(payload));
    tx.keep_refused(&KeptRefusal {
        received_ms,
        topic: cut_at_char(topic, MAX_TOPIC_KEPT),
        reason,
        kept: &payload[..payload.len().min(cap)],
        size: payload.len() as i64,
        sha256: &digest,
    })
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut_at_char(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub(super) fn write_telemetry<'a>(
    tx: &impl WriteTx,
    (caches, gathered): (&mut Caches, &mut Gathered<'a>),
    (t, raw): (&'a Telemetry, &Raw),
    rules: &WriteRules,
    received_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<()> {
    let seq = t.seq as i64;
    let ledger = ledger_row(tx, gathered, &t.device)?;
    // A repeated number, or a poll time as old as settled history: its day may be compacted.
    if let Some((last_seq, last_ts)) = ledger {
        if seq <= last_seq || t.ts_ms < last_ts.saturating_sub(rules.history_settle_ms) {
            let reopened = tx.reopen(&t.device, seq, t.ts_ms)?;
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
            let through = track_of(tx, &caches.last, (&t.device, &p.id))?.through_ms;
            if t.ts_ms < through.saturating_sub(rules.max_late_ms)
                && !tx.message_stored(&t.device, seq)?
            {
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
        crate::packed::push(
            &mut blob,
            caches.series.get(tx, &t.device, &p.id)?,
            p.v,
            p.q,
        );
    }
    // A signed message new to the record must continue its device's chain.
    let link = match &t.signed {
        Some(signed) => {
            let c = tx.chain(&t.device)?.unwrap_or_default();
            if chain::is_new(tx, t, &c)? {
                match chain::check(tx, t, signed, &c)? {
                    Ok(link) => Some((link, c)),
                    Err((code, detail)) => {
                        chain::refused(tx, &t.device, received_ms, code, &detail)?;
                        return refuse(tx, t, raw, code, &detail, rules, received_ms, out);
                    }
                }
            } else {
                None
            }
        }
        None => None,
    };
    if !tx.insert_message(t, received_ms, &blob)? {
        return duplicate(tx, t, raw, rules, received_ms, out);
    }
    if let Some((link, c)) = link {
        if chain::record(tx, t, &link, raw.verified, c)? {
            tx.insert_anomaly(
                &t.device,
                chain::ANOMALY_POINT,
                received_ms,
                "chain_restart",
                &format!(
                    "message {seq} starts a new chain (the edge lost its chain head: a crash or a reinstall); the link to the message before it cannot be checked"
                ),
            )?;
        }
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
        if account_sample(
            tx,
            (&mut caches.last, gathered),
            key,
            reading,
            rule,
            max_gap_ms,
            out,
        )? {
            out.late_samples += 1;
        }
    }
    Ok(())
}

/// The device's last sequence number and its poll time, as of this point in the batch.
fn ledger_row(
    tx: &impl WriteTx,
    gathered: &Gathered<'_>,
    device: &str,
) -> anyhow::Result<Option<(i64, i64)>> {
    if let Some(DeviceUpdate {
        newest: Some((seq, ts, ..)),
        ..
    }) = gathered.devices.get(device)
    {
        return Ok(Some((*seq, *ts)));
    }
    tx.ledger_row(device)
}

/// Keeps a message the store refuses in the quarantine, counted by its reason code.
#[allow(clippy::too_many_arguments)]
fn refuse(
    tx: &impl WriteTx,
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
    keep(
        tx,
        (&topic, &reason, payload),
        received_ms,
        rules.quarantine_payload_bytes,
    )?;
    tracing::warn!(device = %t.device, seq = t.seq, reason = %reason, "Message quarantined.");
    out.quarantined += 1;
    out.refused.push(code);
    Ok(())
}

/// A (device, seq) already stored came again: a plain duplicate (a redelivery) when its content
/// is the same, a conflict (a corrupted or tampered copy) when not, kept in the quarantine with
/// the digests of both versions.
fn duplicate(
    tx: &impl WriteTx,
    t: &Telemetry,
    raw: &Raw,
    rules: &WriteRules,
    received_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<()> {
    let stored = tx.stored_version(&t.device, t.seq as i64)?;
    let stored_points = match &stored.points {
        Some(blob) => {
            let mut named = Vec::new();
            for p in crate::packed::unpack(blob)? {
                named.push((tx.point_of_series(p.series)?, p.value, p.quality));
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
    let stored_digest = version_digest(stored.ts_ms, &stored.edge, stored_points);
    let received_digest = version_digest(t.ts_ms, &t.edge, received_points);
    if stored_digest == received_digest {
        out.duplicates += 1;
        return tx.count_copy(&t.device, false);
    }
    out.conflicts += 1;
    tx.count_copy(&t.device, true)?;
    let detail = format!(
        "sequence number {} of {} is stored with other content: stored version sha256 {stored_digest}, this copy {received_digest}",
        t.seq, t.device
    );
    refuse(tx, t, raw, "conflict", &detail, rules, received_ms, out)
}

/// SHA-256 of one version of a message, over its content in a canonical text: the poll time,
/// the edge and each point (sorted by id) with its value's IEEE 754 bits and its quality.
/// Two deliveries of the same reading give the same digest whatever their JSON spelling.
pub fn version_digest(
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
    tx: &impl WriteTx,
    gathered: &mut Gathered<'a>,
    t: &'a Telemetry,
    prev: Option<i64>,
    received_ms: i64,
) -> anyhow::Result<()> {
    let seq = t.seq as i64;
    let any_good = t.points.iter().any(|p| p.q.is_good() && p.v.is_some());
    let newest = match prev {
        None => {
            tx.insert_device(t, received_ms)?;
            if seq > 1 {
                // Numbering starts at 1: anything before the first message we saw is missing.
                tx.insert_gap(&t.device, 1, seq - 1, received_ms)?;
            }
            true
        }
        Some(last_seq) if seq > last_seq => {
            if seq > last_seq + 1 {
                tx.insert_gap(&t.device, last_seq + 1, seq - 1, received_ms)?;
            }
            true
        }
        Some(_) => {
            // A late message fills (part of) a gap.
            if let Some((from, to, detected)) = tx.gap_containing(&t.device, seq)? {
                tx.delete_gap(&t.device, from)?;
                for (a, b) in [(from, seq - 1), (seq + 1, to)] {
                    if a <= b {
                        tx.insert_gap(&t.device, a, b, detected)?;
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
        .or_insert(DeviceUpdate {
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
fn found_after_all(tx: &impl WriteTx, device: &str, seq: i64) -> anyhow::Result<()> {
    let Some(range) = tx.lost_containing(device, seq)? else {
        return Ok(());
    };
    tx.delete_lost(device, range.from_seq)?;
    for (a, b) in [(range.from_seq, seq - 1), (seq + 1, range.to_seq)] {
        if a <= b {
            tx.insert_lost(
                device,
                &LostRow {
                    from_seq: a,
                    to_seq: b,
                    ..range.clone()
                },
            )?;
        }
    }
    Ok(())
}
