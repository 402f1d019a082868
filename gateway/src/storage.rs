//! The storage seam: what ingest needs of a backend. SQLite ([`crate::store::Store`]) is the
//! embedded default; a relational or time-series backend implements [`Storage`] and plugs into
//! [`crate::ingest::run`] with ingest and the accounting arithmetic ([`crate::accounting`])
//! unchanged.

use std::collections::HashMap;

use ems_core::wire::{DeviceAck, Status, Telemetry};
use ems_energy::counter::CounterRule;

pub trait Storage: Send + 'static {
    /// Commits one batch atomically: the messages with their ledger entries, the raw samples,
    /// the counter deltas and rollups, quarantine and edge status. After `Ok` every message of
    /// the batch is durable and ingest acknowledges it to the broker; after `Err` none is, and
    /// ingest retries the batch.
    fn write_batch(
        &mut self,
        batch: &[Incoming],
        rules: &WriteRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome>;
}

/// A commit refused because this writer no longer holds its slot (another gateway took it
/// over): ingest stops instead of retrying, acknowledging nothing more.
#[derive(Debug, thiserror::Error)]
#[error("slot `{slot}`: this writer's epoch {mine} is no longer the slot's ({current:?}); another gateway took it over")]
pub struct Fenced {
    pub slot: String,
    pub mine: i64,
    pub current: Option<i64>,
}

/// A counter point the accounting follows, with what it needs to take deltas.
pub type Tracked = CounterRule;

/// What the writer needs to know about accounting.
#[derive(Debug, Clone)]
pub struct AccountingRules {
    /// Device -> point -> how to follow it.
    pub tracked: HashMap<String, HashMap<String, Tracked>>,
    pub max_gap_ms: i64,
}

/// What the writer checks against its own records before storing a message, and how much of a
/// refused one it keeps (from `[ingest]` and `[quarantine]`).
#[derive(Debug, Clone)]
pub struct WriteRules {
    pub accounting: AccountingRules,
    /// A message whose poll time lies further behind its device's newest is refused as late.
    pub max_late_ms: i64,
    /// A sequence number further ahead of its device's last is refused as a jump.
    pub max_seq_jump: i64,
    /// At most this much of a refused payload is kept (its size and SHA-256 always are).
    pub quarantine_payload_bytes: usize,
    /// Raw history this far behind a device's newest poll may be compacted into blocks: a
    /// message that old (or repeating a number) reopens its day's block first.
    pub history_settle_ms: i64,
}

impl From<AccountingRules> for WriteRules {
    /// The configuration's defaults (`[ingest]`, `[quarantine]`).
    fn from(accounting: AccountingRules) -> WriteRules {
        WriteRules {
            accounting,
            max_late_ms: 86_400_000,
            max_seq_jump: 10_000_000,
            quarantine_payload_bytes: 65_536,
            history_settle_ms: 48 * 3_600_000,
        }
    }
}

/// A message that failed validation, kept with its reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub topic: String,
    pub reason: String,
    pub payload: Vec<u8>,
    /// The edge's message it was, when it parsed as one (site, edge, device, seq): the edge is
    /// told that the gateway keeps it (protocol v1.1), so that it does not send it for ever.
    pub origin: Option<Origin>,
}

/// Whose numbered message something was.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub site: String,
    pub edge: String,
    pub device: String,
    pub seq: u64,
}

/// A valid message as it came: kept in the quarantine if the store refuses it (late, a
/// sequence jump, a conflicting copy).
#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub topic: String,
    /// Empty for a message built in-process (tests, benchmarks): the quarantine then keeps it
    /// serialised.
    pub payload: bytes::Bytes,
    /// Its signature was verified with its edge's enrolled key (protocol v1.2).
    pub verified: bool,
    /// Its signature is still to be verified with its edge's enrolled key: ingest verifies a
    /// batch of messages at a time ([`crate::ingest::verify_signatures`]) before the writer
    /// stores them.
    pub unverified: bool,
}

/// One unit of ingest work, in arrival order.
#[derive(Debug, Clone)]
pub enum Incoming {
    Telemetry(Telemetry, Raw),
    Status(Status),
    Rejected(Rejected),
}

impl Incoming {
    /// Telemetry built in-process, with no payload as received.
    pub fn built(t: Telemetry) -> Incoming {
        Incoming::Telemetry(t, Raw::default())
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub stored: u64,
    pub duplicates: u64,
    /// Copies of a stored (device, seq) with other content: quarantined.
    pub conflicts: u64,
    pub points: u64,
    pub quarantined: u64,
    /// Reason codes of the messages the store itself refused (late, seq_jump, conflict).
    pub refused: Vec<&'static str>,
    pub late_samples: u64,
    /// Counter anomalies found (spikes, jumps, restarts, frozen counters), by kind.
    pub anomalies: Vec<&'static str>,
    /// What is now committed of each device the batch touched, as its edge is told (protocol
    /// v1.1): (site, edge, mark).
    pub acks: Vec<(String, String, DeviceAck)>,
}

/// The code of a refusal reason: what comes before its first `:`.
pub fn reason_code(reason: &str) -> &str {
    reason.split(':').next().unwrap_or(reason)
}

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The time-series sink's queue, whichever backend keeps it: line protocol of stored messages
/// (queued in the storing transaction) and the 15-minute slots whose rollups changed.
pub trait SinkStore: Send {
    /// Queued messages not yet accepted by the server.
    fn depth(&mut self) -> anyhow::Result<i64>;
    /// The oldest queued messages' lines, with their queue ids.
    fn oldest(&mut self, max: usize) -> anyhow::Result<Vec<(i64, String)>>;
    /// Slots whose rollups changed, oldest first, with the version of their last change.
    fn dirty_slots(&mut self, max: usize) -> anyhow::Result<Vec<(i64, i64)>>;
    /// Takes what the server accepted off the queue: the messages `ids` (those [`Self::oldest`]
    /// gave), and each slot at the version sent (one dirtied again meanwhile stays dirty).
    fn remove(&mut self, ids: &[i64], slots: &[(i64, i64)]) -> anyhow::Result<()>;
}

/// The provincial upload's outbox, whichever backend keeps it: records as made, each kind's
/// cursor, and each endpoint's confirmations.
pub trait UploadStore: Send {
    /// Whether this gateway makes the records (`endpoint` `None`) or sends to `endpoint`:
    /// always with SQLite; with PostgreSQL, one gateway of the database for each.
    fn leads(&mut self, _endpoint: Option<&str>) -> anyhow::Result<bool> {
        Ok(true)
    }
    /// The start of the next period of `kind` to make, set to `default` the first time.
    fn next_start(&mut self, kind: &str, default: i64) -> anyhow::Result<i64>;
    /// Queues a record and moves the kind's cursor past its period, in one transaction.
    fn push(
        &mut self,
        kind: &str,
        period: (i64, i64),
        record: &serde_json::Value,
        record_id: &str,
        now_ms: i64,
    ) -> anyhow::Result<()>;
    /// The first record `endpoint` has not confirmed: (outbox id, record id, body).
    fn next_for(&mut self, endpoint: &str) -> anyhow::Result<Option<(i64, String, String)>>;
    fn confirm(&mut self, endpoint: &str, outbox_id: i64, now_ms: i64) -> anyhow::Result<()>;
    /// Records, confirmations and the last confirmed record of an endpoint.
    fn status(&mut self, endpoint: &str) -> anyhow::Result<(i64, i64, Option<String>)>;
}
