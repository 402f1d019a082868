//! Each device's chain of signed messages (protocol v1.2) as the ledger stores them: a message
//! whose `prev` contradicts its stored neighbours is refused, a stored one's evidence is kept
//! beside it, and the device's chain row moves on (head, verified-through, restarts).
//!
//! The signature itself is checked before the writer, against the edge's enrolled key
//! (`ingest::verify_signatures`); here the chain is checked, which needs the record.

use ems_core::evidence::{hex, parse, Content, CHAIN_START};
use ems_core::wire::{Signed, Telemetry};

use super::{ChainRow, EvidenceRow, WriteTx};

/// A signed message's place in its chain, before it is stored.
pub(super) struct NewLink {
    prev: [u8; 32],
    digest: [u8; 32],
    sig: [u8; 64],
}

/// The point of the anomalies that report a device's evidence troubles (raised as alarms).
pub const ANOMALY_POINT: &str = "evidence";

/// Whether `t`, signed, is new to the record of its device, whose chain is `c`.
pub(super) fn is_new(tx: &impl WriteTx, t: &Telemetry, c: &ChainRow) -> anyhow::Result<bool> {
    // The head is the highest number stored with evidence: past it, nothing is.
    Ok(t.seq as i64 > c.head_seq || tx.evidence(&t.device, t.seq as i64)?.is_none())
}

/// Checks `t` against its stored neighbours (its device's chain `c`): `Err` with the reason when
/// its `prev` is not the digest of the stored message before it, or the stored message after it
/// names another digest as its predecessor. A `prev` of zeros starts a chain and links to
/// nothing.
pub(super) fn check(
    tx: &impl WriteTx,
    t: &Telemetry,
    signed: &Signed,
    c: &ChainRow,
) -> anyhow::Result<Result<NewLink, (&'static str, String)>> {
    let Some((prev, sig)) = parse(signed) else {
        return Ok(Err((
            "signature",
            "`prev` or `sig` is not hexadecimal of the right length".into(),
        )));
    };
    let digest = Content::of(t).digest(&prev);
    let seq = t.seq as i64;
    // In order, the message before is the head (no lookup); after the head, nothing is stored.
    let before = if c.next_is(seq) {
        Some(c.head_digest)
    } else if prev == CHAIN_START {
        None
    } else {
        tx.evidence(&t.device, seq - 1)?.map(|e| e.1)
    };
    let after = if seq > c.head_seq {
        None
    } else {
        tx.evidence(&t.device, seq + 1)?
    };
    if prev != CHAIN_START {
        if let Some(before) = before {
            if before != prev {
                return Ok(Err(("chain", format!(
                    "message {seq} names {} as its predecessor; the stored message {} has digest {}",
                    hex(&prev),
                    seq - 1,
                    hex(&before)
                ))));
            }
        }
    }
    if let Some((named, _, _)) = after {
        if named != CHAIN_START && named != digest {
            return Ok(Err((
                "chain",
                format!(
                "the stored message {} names {} as its predecessor; message {seq} has digest {}",
                seq + 1,
                hex(&named),
                hex(&digest)
            ),
            )));
        }
    }
    Ok(Ok(NewLink {
        prev,
        digest,
        sig: sig.to_bytes(),
    }))
}

/// Keeps a stored message's evidence and moves its device's chain (`c`, as [`check`] saw it)
/// on. Returns whether the message starts a new chain after earlier signed ones (a restart,
/// reported as an anomaly).
pub(super) fn record(
    tx: &impl WriteTx,
    t: &Telemetry,
    link: &NewLink,
    verified: bool,
    mut c: ChainRow,
) -> anyhow::Result<bool> {
    let seq = t.seq as i64;
    tx.insert_evidence(&EvidenceRow {
        device: t.device.clone(),
        seq,
        site: t.site.clone(),
        edge: t.edge.clone(),
        prev: link.prev,
        digest: link.digest,
        sig: link.sig,
        verified,
    })?;
    // In order: the message after the head, which [`check`] found linked to it (or starting a
    // chain there).
    let next_to_head = c.next_is(seq);
    let restart = link.prev == CHAIN_START && c.signed > 0;
    c.signed += 1;
    c.verified += i64::from(verified);
    c.restarts += i64::from(restart);
    if seq > c.head_seq {
        c.head_seq = seq;
        c.head_digest = link.digest;
    }
    // A chain starting here is verified from here; what came before is the older chain's.
    if link.prev == CHAIN_START && c.verified_through < seq - 1 {
        c.verified_through = seq - 1;
    }
    if verified && next_to_head && c.verified_through == seq - 1 {
        // The verified run ends just before it and nothing is stored after it: one step on.
        c.verified_through = seq;
    } else {
        advance(tx, &t.device, &mut c)?;
    }
    tx.put_chain(&t.device, &c)?;
    Ok(restart)
}

/// Moves `verified_through` over every next number stored, verified and linked.
fn advance(tx: &impl WriteTx, device: &str, c: &mut ChainRow) -> anyhow::Result<()> {
    let mut last = match c.verified_through {
        0 => None,
        n => tx.evidence(device, n)?.map(|e| e.1),
    };
    while let Some((prev, digest, true)) = tx.evidence(device, c.verified_through + 1)? {
        if prev != CHAIN_START && Some(prev) != last {
            break;
        }
        c.verified_through += 1;
        last = Some(digest);
    }
    Ok(())
}

/// Counts a message of `device` refused for its evidence (a bad signature, an unsigned message
/// from an enrolled edge, a broken chain) and keeps it as an anomaly, which raises an alarm.
pub(super) fn refused(
    tx: &impl WriteTx,
    device: &str,
    at_ms: i64,
    code: &str,
    detail: &str,
) -> anyhow::Result<()> {
    let mut c = tx.chain(device)?.unwrap_or_default();
    c.refused += 1;
    tx.put_chain(device, &c)?;
    tx.insert_anomaly(device, ANOMALY_POINT, at_ms, code, detail)
}

/// The refusal codes that concern a message's evidence.
pub const REFUSALS: [&str; 3] = ["signature", "unsigned", "chain"];
