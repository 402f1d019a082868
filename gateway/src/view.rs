//! The record as the API, reports, alarms and sinks read it, whatever backend holds it: the rows
//! they are given, [`ReadRecord`] (implemented by SQLite's reader in [`crate::store`] and
//! PostgreSQL's in [`crate::pg`]) and [`Reader`], the handle they share. What both backends
//! compute the same way from what they read (the integrity check's recount, the export's rows)
//! is here too, so that a report reads the same figures from either.

use std::collections::{BTreeSet, HashMap};

use ems_energy::counter::{add_event, CounterRule, CounterTrack, PointSlot, SLOT_MS};
use serde::Serialize;

use crate::clock::rfc3339;
use crate::storage::AccountingRules;

/// What every backend answers.
pub trait ReadRecord: Send + Sync {
    fn devices(&self) -> anyhow::Result<Vec<DeviceRow>>;
    fn edges(&self) -> anyhow::Result<Vec<EdgeRow>>;
    /// Sequence numbers missing (open gaps) and declared lost, over all devices.
    fn sequence_totals(&self) -> anyhow::Result<(i64, i64)>;
    /// The messages of `device` polled in `[from_ms, to_ms)` that the record holds, rows and
    /// compacted blocks alike; `None` if there are none.
    fn seq_span(&self, device: &str, from_ms: i64, to_ms: i64) -> anyhow::Result<Option<SeqSpan>>;
    /// Each message of `device` polled in `[from_ms, to_ms)`, rows and compacted blocks alike,
    /// in poll-time order: its poll time and its samples' qualities (none for a message whose
    /// samples raw retention has pruned).
    fn message_qualities(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Vec<(i64, Vec<ems_core::Quality>)>>;
    /// The last good reading of one point among the messages of `device` polled in
    /// `[from_ms, to_ms)`, rows and compacted blocks alike: its poll time and value (a stock's
    /// level at a time). `None` if the record holds no good reading of it there.
    fn last_reading(
        &self,
        device: &str,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Option<(i64, f64)>>;
    /// The first 15-minute slot the point has data in.
    fn first_slot(&self, device: &str, point: &str) -> anyhow::Result<Option<i64>>;
    /// Rollup rows of one point with `from_ms <= slot < to_ms`, in slot order.
    fn point_slots(
        &self,
        device: &str,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Vec<(i64, PointSlot)>>;
    /// The newest `limit` quarantine entries, newest first.
    fn quarantine(&self, limit: i64) -> anyhow::Result<Vec<QuarantineRow>>;
    /// The kept part of one quarantined payload, as received.
    fn quarantine_payload(&self, id: i64) -> anyhow::Result<Option<Vec<u8>>>;
    fn quarantine_totals(&self) -> anyhow::Result<Vec<QuarantineTotal>>;
    /// The newest `limit` anomalies, newest first.
    fn anomalies(&self, limit: i64) -> anyhow::Result<Vec<AnomalyRow>>;
    /// Recomputes every tracked point's rollups from the raw samples and compares them with
    /// the stored ones: what an auditor asks for.
    fn verify_rollups(&self, rules: &AccountingRules) -> anyhow::Result<Integrity>;
    /// Checks every signed message's stored readings, signature and link against the edges'
    /// evidence (protocol v1.2) with the enrolled `keys`.
    fn verify_evidence(
        &self,
        keys: &crate::evidence::EdgeKeys,
    ) -> anyhow::Result<crate::evidence::EvidenceReport>;
    /// The newest `limit` entries of the operator audit log, newest first.
    fn audit(&self, limit: i64) -> anyhow::Result<Vec<crate::audit::AuditRow>>;
    /// The audit log's chain recomputed.
    fn verify_audit(&self) -> anyhow::Result<crate::audit::AuditReport>;
    /// Logs an act done outside the record (an edge's key enrolled) in the audit log.
    fn log_act(&self, entry: &crate::audit::Entry) -> anyhow::Result<()>;
    /// Logs each configuration or data file (name -> SHA-256) that changed since it was last
    /// logged, as an operator declared it or (`None`) as the gateway found it at its start;
    /// returns how many.
    fn note_files(
        &self,
        digests: &std::collections::BTreeMap<String, String>,
        declared: Option<&crate::audit::Declared>,
        now_ms: i64,
    ) -> anyhow::Result<usize>;
    /// Writes the raw samples with `from_ms <= ts < to_ms` (of one device, or all) as CSV:
    /// device, seq, point, time (RFC 3339 UTC), value, quality. Returns the rows written.
    fn export_csv(
        &self,
        device: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        out: &mut dyn std::io::Write,
    ) -> anyhow::Result<u64>;
    /// The operator's one write to the record: declares the open gap of `device` that starts
    /// at `from_seq` lost, with who and why; its numbers no longer count as missing.
    fn declare_lost(
        &self,
        device: &str,
        from_seq: i64,
        by: &str,
        reason: &str,
        now_ms: i64,
    ) -> anyhow::Result<DeclareOutcome>;
}

/// What an auditor asks for: every rollup recomputed from the raw samples, every signed message
/// checked against its evidence with the enrolled keys, and the audit log's chain.
pub fn audit(reader: &Reader, config: &crate::Config) -> anyhow::Result<Integrity> {
    let mut out = reader.verify_rollups(&config.accounting_rules())?;
    out.evidence = Some(reader.verify_evidence(&config.edge_keys)?);
    out.audit = Some(reader.verify_audit()?);
    Ok(out)
}

/// The record, read through whichever backend holds it.
pub struct Reader(Box<dyn ReadRecord>);

impl Reader {
    pub fn new(backend: impl ReadRecord + 'static) -> Reader {
        Reader(Box::new(backend))
    }
}

impl std::ops::Deref for Reader {
    type Target = dyn ReadRecord;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl ems_energy::figures::SlotSource for Reader {
    type Error = anyhow::Error;
    fn point_slots(
        &self,
        device: &str,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Vec<(i64, PointSlot)>> {
        self.0.point_slots(device, point, from_ms, to_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRow {
    pub id: String,
    pub site: String,
    pub edge: String,
    pub online: bool,
    pub last_seq: i64,
    /// Poll time of the newest message, RFC 3339.
    pub last_sample: String,
    /// When the gateway last heard from it (its own clock), RFC 3339.
    pub last_seen: String,
    pub messages: i64,
    pub duplicates: i64,
    /// Copies of a stored message with other content (kept in the quarantine).
    pub conflicts: i64,
    /// Sequence numbers still missing.
    pub missing: i64,
    pub gaps: Vec<[i64; 2]>,
    /// Sequence numbers declared lost, and the ranges with who declared them and why.
    pub lost: i64,
    pub lost_ranges: Vec<LostRange>,
    /// Its chain of signed messages (protocol v1.2); null for a device whose edge never signed.
    pub chain: Option<ChainView>,
}

/// A device's chain of signed messages, as `/api/v1/devices` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainView {
    /// The highest number signed, and that message's digest (hex).
    pub head_seq: i64,
    pub head_digest: String,
    /// Every number up to this one is stored, verified with the edge's enrolled key and linked
    /// to its predecessor (or starts a chain).
    pub verified_through: i64,
    /// Messages stored with a signature, and those verified with an enrolled key.
    pub signed: i64,
    pub verified: i64,
    /// Times a new chain started after an earlier one (the edge lost its chain head).
    pub restarts: i64,
    /// Messages refused for their evidence (a bad signature, unsigned from an enrolled edge, a
    /// broken chain), kept in the quarantine.
    pub refused: i64,
}

impl From<crate::batch::ChainRow> for ChainView {
    fn from(c: crate::batch::ChainRow) -> ChainView {
        ChainView {
            head_seq: c.head_seq,
            head_digest: ems_core::evidence::hex(&c.head_digest),
            verified_through: c.verified_through,
            signed: c.signed,
            verified: c.verified,
            restarts: c.restarts,
            refused: c.refused,
        }
    }
}

impl DeviceRow {
    /// Missing and lost counted from the ranges.
    pub fn with_ranges(mut self, gaps: Vec<[i64; 2]>, lost: Vec<LostRange>) -> DeviceRow {
        self.missing = gaps
            .iter()
            .fold(0i64, |n, [a, b]| n.saturating_add(b - a + 1));
        self.lost = lost
            .iter()
            .fold(0i64, |n, r| n.saturating_add(r.to_seq - r.from_seq + 1));
        self.gaps = gaps;
        self.lost_ranges = lost;
        self
    }
}

/// A device's messages of a period: the first and last sequence number and how many are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan {
    pub first_seq: i64,
    pub last_seq: i64,
    pub messages: i64,
}

impl SeqSpan {
    /// `other` taken into `span`.
    pub fn join(span: Option<SeqSpan>, other: SeqSpan) -> SeqSpan {
        match span {
            None => other,
            Some(s) => SeqSpan {
                first_seq: s.first_seq.min(other.first_seq),
                last_seq: s.last_seq.max(other.last_seq),
                messages: s.messages + other.messages,
            },
        }
    }
}

/// A sequence range declared lost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LostRange {
    pub from_seq: i64,
    pub to_seq: i64,
    pub declared: String,
    pub declared_by: String,
    pub reason: String,
}

impl LostRange {
    /// Declared at `now_ms` by `by` for `reason`.
    pub fn declared(from_seq: i64, to_seq: i64, now_ms: i64, by: &str, reason: &str) -> LostRange {
        LostRange {
            from_seq,
            to_seq,
            declared: rfc3339(now_ms),
            declared_by: by.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// What declaring a gap lost did.
#[derive(Debug)]
pub enum DeclareOutcome {
    Declared(LostRange),
    NoSuchGap,
}

/// An edge as its last status message described it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeRow {
    pub id: String,
    pub site: String,
    pub online: bool,
    pub devices: Vec<String>,
    /// When the gateway received its last status (its own clock), RFC 3339.
    pub changed: String,
    /// Results waiting in its spool, and dropped by it, at its last report (null before any).
    pub spool_depth: Option<i64>,
    pub spool_dropped: Option<i64>,
}

/// A counter anomaly found at ingest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyRow {
    pub device: String,
    pub point: String,
    pub at: String,
    /// spike, jump, restart, frozen.
    pub kind: String,
    pub detail: String,
    /// When a late reading showed it to be none (the counter replayed with it no longer
    /// finds it), RFC 3339 of that reading's poll time; null while it stands.
    pub withdrawn: Option<String>,
}

/// The outcome of recomputing the rollups from raw samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Integrity {
    pub samples_checked: u64,
    pub slots_checked: u64,
    /// Empty when every stored rollup equals its recomputation.
    pub mismatches: Vec<String>,
    /// The signed messages checked against their evidence (protocol v1.2), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<crate::evidence::EvidenceReport>,
    /// The operator audit log's chain, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuarantineRow {
    pub id: i64,
    pub received: String,
    pub topic: String,
    pub reason: String,
    /// The start of the payload as received (lossy UTF-8, at most [`PAYLOAD_PREVIEW`] bytes;
    /// the whole kept part at `/api/v1/quarantine/{id}/payload`).
    pub payload: String,
    /// The payload's full size and SHA-256 (null for entries from before they were kept).
    pub payload_bytes: Option<i64>,
    pub payload_sha256: Option<String>,
    /// Whether more was received than `payload` shows.
    pub truncated: bool,
}

impl QuarantineRow {
    /// `kept`: the bytes of the payload kept, `full`: its size as received.
    pub fn is_truncated(kept: i64, full: Option<i64>) -> bool {
        full.unwrap_or(kept) > (PAYLOAD_PREVIEW as i64).min(kept)
    }
}

/// How much of each payload a quarantine listing shows.
pub const PAYLOAD_PREVIEW: usize = 2_048;

/// Refusals by reason since the database was made, kept whatever quarantine retention deletes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuarantineTotal {
    pub reason: String,
    pub count: i64,
    pub bytes: i64,
}

type SlotKey = (String, String, i64);

/// The integrity check's recount, backend-independent: each device's stored messages replayed
/// in poll order through its tracked counters, then compared with the stored rollups.
#[derive(Default)]
pub struct Recount {
    expected: HashMap<SlotKey, PointSlot>,
    /// The first slot of each point that a replay from its first kept sample can check.
    checked_from: HashMap<(String, String), i64>,
    samples_checked: u64,
}

impl Recount {
    /// Replays one device: `tracks` maps its tracked points' series ids to their names and
    /// rules; `messages` calls its argument with each message's poll time and packed samples,
    /// in poll order (then sequence order).
    pub fn device(
        &mut self,
        device: &str,
        tracks: HashMap<i64, (String, &CounterRule)>,
        max_gap_ms: i64,
        messages: impl FnOnce(&mut dyn FnMut(i64, &[u8]) -> anyhow::Result<()>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut tracks: HashMap<i64, (String, &CounterRule, CounterTrack)> = tracks
            .into_iter()
            .map(|(id, (point, rule))| (id, (point, rule, CounterTrack::default())))
            .collect();
        messages(&mut |ts, blob| {
            for p in crate::packed::unpack(blob)? {
                let (Some((point, rule, track)), Some(v), true) =
                    (tracks.get_mut(&p.series), p.value, p.quality.is_good())
                else {
                    continue;
                };
                self.checked_from
                    .entry((device.to_owned(), point.clone()))
                    .or_insert(ts - ts.rem_euclid(SLOT_MS) + SLOT_MS);
                self.samples_checked += 1;
                for event in track.push(ts, v, rule) {
                    add_event(&event, max_gap_ms, |slot, r| {
                        let e = self
                            .expected
                            .entry((device.to_owned(), point.clone(), slot))
                            .or_default();
                        e.delta += r.delta;
                        e.covered_ms += r.covered_ms;
                        e.estimated += r.estimated;
                    });
                }
            }
            Ok(())
        })
    }

    /// Compares with the `stored` rollups. `pruned`: retention deleted older samples, so the
    /// first kept one starts each point's recount and the slots up to its own are not checked.
    pub fn compare(self, stored: HashMap<SlotKey, PointSlot>, pruned: bool) -> Integrity {
        let mut mismatches = Vec::new();
        let keys: BTreeSet<&SlotKey> = self.expected.keys().chain(stored.keys()).collect();
        for k in &keys {
            if pruned
                && self
                    .checked_from
                    .get(&(k.0.clone(), k.1.clone()))
                    .is_none_or(|&t| k.2 < t)
            {
                continue;
            }
            let (e, s) = (
                self.expected.get(*k).copied().unwrap_or_default(),
                stored.get(*k).copied().unwrap_or_default(),
            );
            let tol = 1e-6 * e.delta.abs().max(1.0);
            if (e.delta - s.delta).abs() > tol
                || e.covered_ms != s.covered_ms
                || (e.estimated - s.estimated).abs() > tol
            {
                mismatches.push(format!(
                    "{}/{} at {}: stored delta {} covered {} ms, raw samples give {} and {} ms",
                    k.0,
                    k.1,
                    rfc3339(k.2),
                    s.delta,
                    s.covered_ms,
                    e.delta,
                    e.covered_ms
                ));
            }
        }
        Integrity {
            samples_checked: self.samples_checked,
            slots_checked: keys.len() as u64,
            mismatches,
            evidence: None,
            audit: None,
        }
    }
}

/// The export's CSV rows of one stored message, its points in name order (`names`: series id
/// to point). Returns the rows written.
pub fn export_message<W: std::io::Write>(
    w: &mut csv::Writer<W>,
    names: &HashMap<i64, String>,
    device: &str,
    seq: i64,
    ts_ms: i64,
    blob: &[u8],
) -> anyhow::Result<u64> {
    let mut points = crate::packed::unpack(blob)?;
    let name = |p: &crate::packed::PackedPoint| names.get(&p.series).map_or("", String::as_str);
    points.sort_by(|a, b| name(a).cmp(name(b)));
    for p in &points {
        w.write_record([
            device,
            &seq.to_string(),
            name(p),
            &rfc3339(ts_ms),
            &p.value.map(|v| v.to_string()).unwrap_or_default(),
            &p.quality.to_string(),
        ])?;
    }
    Ok(points.len() as u64)
}

/// The good value of series `series` among a message's packed samples (none when pruned,
/// absent or not good).
pub fn good_value(series: i64, points: Option<&[u8]>) -> anyhow::Result<Option<f64>> {
    let Some(blob) = points else {
        return Ok(None);
    };
    Ok(crate::packed::unpack(blob)?
        .into_iter()
        .find(|p| p.series == series && p.quality.is_good())
        .and_then(|p| p.value))
}

/// A message's samples' qualities, from its packed samples (none when pruned).
pub fn qualities(points: Option<&[u8]>) -> anyhow::Result<Vec<ems_core::Quality>> {
    Ok(match points {
        Some(blob) => crate::packed::unpack(blob)?
            .into_iter()
            .map(|p| p.quality)
            .collect(),
        None => Vec::new(),
    })
}

/// The export's header row.
pub const EXPORT_HEADER: [&str; 6] = ["device", "seq", "point", "time", "value", "quality"];
