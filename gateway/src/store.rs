//! SQLite storage: the ledger, raw samples, quarantine, edge status and the point-hour rollups.
//!
//! One writer connection commits each ingest batch in one transaction (WAL, synchronous=FULL:
//! a commit survives a power cut, and only committed messages are acknowledged to the broker).
//! Readers use their own connections.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use ems_core::wire::{Status, Telemetry};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use crate::accounting::{
    add_event, replay, slot_of, CounterEvent, CounterRule, CounterTrack, GapFill, PointSlot,
    SLOT_MS,
};

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE messages (
    device TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
    edge TEXT NOT NULL, received_ms INTEGER NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE TABLE samples (
    device TEXT NOT NULL, seq INTEGER NOT NULL, point TEXT NOT NULL,
    ts_ms INTEGER NOT NULL, value REAL, quality TEXT NOT NULL,
    PRIMARY KEY (device, seq, point)
) WITHOUT ROWID;
CREATE INDEX samples_by_point_time ON samples (device, point, ts_ms);
CREATE TABLE devices (
    device TEXT PRIMARY KEY, site TEXT NOT NULL, edge TEXT NOT NULL,
    last_seq INTEGER NOT NULL, last_ts_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    messages INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE gaps (
    device TEXT NOT NULL, from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL,
    detected_ms INTEGER NOT NULL,
    PRIMARY KEY (device, from_seq)
) WITHOUT ROWID;
CREATE TABLE edges (
    edge TEXT PRIMARY KEY, site TEXT NOT NULL, online INTEGER NOT NULL,
    devices TEXT NOT NULL, changed_ms INTEGER NOT NULL
);
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, payload BLOB NOT NULL
);
CREATE TABLE counter_state (
    device TEXT NOT NULL, point TEXT NOT NULL, ts_ms INTEGER NOT NULL, value REAL NOT NULL,
    rejected INTEGER NOT NULL, changed_ms INTEGER NOT NULL,
    PRIMARY KEY (device, point)
) WITHOUT ROWID;
CREATE TABLE anomalies (
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, point TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE point_slots (
    device TEXT NOT NULL, point TEXT NOT NULL, slot_ms INTEGER NOT NULL,
    delta REAL NOT NULL, covered_ms INTEGER NOT NULL, estimated REAL NOT NULL,
    PRIMARY KEY (device, point, slot_ms)
) WITHOUT ROWID;
"#,
    r#"
-- When each device last delivered a good reading (plant time): what "offline" is judged on.
ALTER TABLE devices ADD COLUMN last_good_ms INTEGER;
-- A counter's recent rate, per hour: what fills an interval it could not measure.
ALTER TABLE counter_state ADD COLUMN rate_per_h REAL;
CREATE TABLE alarms (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL,
    raised_ms INTEGER NOT NULL, cleared_ms INTEGER,
    value REAL, threshold REAL, message TEXT NOT NULL,
    acked_ms INTEGER, acked_by TEXT,
    -- For counter anomalies: the anomaly this alarm reports.
    anomaly_id INTEGER
);
-- At most one open alarm per condition.
CREATE UNIQUE INDEX alarms_open ON alarms (kind, subject) WHERE cleared_ms IS NULL;
"#,
    r#"
-- The time-series sink's queue: line protocol of stored messages not yet accepted, and the
-- 15-minute slots whose rollups changed since last sent (see influx.rs).
CREATE TABLE sink_queue (id INTEGER PRIMARY KEY, lines TEXT NOT NULL);
CREATE TABLE sink_dirty_slots (slot_ms INTEGER PRIMARY KEY, version INTEGER NOT NULL);
-- Raw samples before this poll time have been deleted by the retention setting; rollups and
-- the ledger are kept.
CREATE TABLE retention (id INTEGER PRIMARY KEY CHECK (id = 1), raw_before_ms INTEGER NOT NULL);
"#,
    r#"
-- Raw samples keyed by a small integer per device and point, in one B-tree ordered by time:
-- a third of the bytes per row and one insert per point instead of two (row + index). The
-- `samples` view keeps the old shape for readers.
CREATE TABLE series (
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, point TEXT NOT NULL, UNIQUE (device, point)
);
CREATE TABLE point_samples (
    series INTEGER NOT NULL, ts_ms INTEGER NOT NULL, seq INTEGER NOT NULL,
    value REAL, quality TEXT NOT NULL,
    PRIMARY KEY (series, ts_ms, seq)
) WITHOUT ROWID;
INSERT INTO series (device, point) SELECT DISTINCT device, point FROM samples ORDER BY device, point;
INSERT INTO point_samples (series, ts_ms, seq, value, quality)
    SELECT r.id, s.ts_ms, s.seq, s.value, s.quality FROM samples s
    JOIN series r ON r.device = s.device AND r.point = s.point;
DROP TABLE samples;
CREATE VIEW samples AS
    SELECT r.device AS device, p.seq AS seq, r.point AS point, p.ts_ms AS ts_ms,
           p.value AS value, p.quality AS quality
    FROM point_samples p JOIN series r ON r.id = p.series;
"#,
    r#"
-- Sequence ranges an operator declared lost (the edge's spool overflowed, a board died): no
-- longer counted as missing, kept with who declared them and why. A number that arrives after
-- all is stored and taken out of its range.
CREATE TABLE lost (
    device TEXT NOT NULL, from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL,
    declared_ms INTEGER NOT NULL, declared_by TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (device, from_seq)
) WITHOUT ROWID;
"#,
    r#"
-- What each edge last said of its spool: results not yet delivered, results dropped (full).
ALTER TABLE edges ADD COLUMN spool_depth INTEGER;
ALTER TABLE edges ADD COLUMN spool_dropped INTEGER;
"#,
    r#"
-- Raw samples packed into their message's row (see packed.rs): one insert per message instead
-- of one per point, so ingest keeps its rate as the database grows. `points` is NULL once
-- retention deleted the samples; the row stays as the ledger's record of the number.
-- `pack_point_samples` moves the samples stored so far, then drops their table.
ALTER TABLE messages ADD COLUMN points BLOB;
CREATE INDEX messages_by_time ON messages (device, ts_ms);
DROP VIEW samples;
"#,
    r#"
-- The provincial upload (upload.rs): records as sent, each endpoint's acknowledgements, and
-- where each kind of record goes on.
CREATE TABLE upload_outbox (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, period_start_ms INTEGER NOT NULL,
    record_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL, created_ms INTEGER NOT NULL,
    UNIQUE (kind, period_start_ms)
);
CREATE TABLE upload_acks (
    endpoint TEXT NOT NULL, outbox_id INTEGER NOT NULL, acked_ms INTEGER NOT NULL,
    PRIMARY KEY (endpoint, outbox_id)
) WITHOUT ROWID;
CREATE TABLE upload_state (kind TEXT PRIMARY KEY, next_start_ms INTEGER NOT NULL);
"#,
    r#"
-- A tracked counter's state after the last reading of each 15-minute slot (accounting.rs,
-- `replay`): a late reading is accounted by replaying the counter from the checkpoint before
-- it, so ingest decides every reading as the integrity check does. The newest row of a point
-- is its current state (it replaces counter_state). Rows older than `max_late_s` are pruned,
-- the newest before that kept.
CREATE TABLE counter_checkpoints (
    device TEXT NOT NULL, point TEXT NOT NULL, slot_ms INTEGER NOT NULL,
    through_ms INTEGER NOT NULL, ts_ms INTEGER NOT NULL, value REAL NOT NULL,
    rejected INTEGER NOT NULL, changed_ms INTEGER NOT NULL, rate_per_h REAL,
    PRIMARY KEY (device, point, slot_ms)
) WITHOUT ROWID;
INSERT INTO counter_checkpoints
    SELECT device, point, ts_ms - (((ts_ms % 900000) + 900000) % 900000), ts_ms, ts_ms, value,
           rejected, changed_ms, rate_per_h
    FROM counter_state;
DROP TABLE counter_state;
-- An anomaly a late reading showed to be none (the replay with it no longer finds it).
ALTER TABLE anomalies ADD COLUMN withdrawn_ms INTEGER;
-- Copies of a stored (device, seq) with other content, quarantined.
ALTER TABLE devices ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;
-- What was refused: the full size and SHA-256 of the payload (of which at most
-- [quarantine] max_payload_bytes is kept), and totals by reason that outlive retention.
ALTER TABLE quarantine ADD COLUMN payload_bytes INTEGER;
ALTER TABLE quarantine ADD COLUMN payload_sha256 TEXT;
CREATE TABLE quarantine_totals (
    reason TEXT PRIMARY KEY, count INTEGER NOT NULL, bytes INTEGER NOT NULL
);
INSERT INTO quarantine_totals
    SELECT CASE WHEN instr(reason, ':') > 0 THEN substr(reason, 1, instr(reason, ':') - 1) ELSE reason END,
           COUNT(*), SUM(length(payload))
    FROM quarantine GROUP BY 1;
CREATE INDEX quarantine_by_time ON quarantine (received_ms);
"#,
];

/// The schema version whose migration packs `point_samples` into `messages.points`.
const PACKED_SAMPLES_VERSION: usize = 7;

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
}

impl From<AccountingRules> for WriteRules {
    /// The configuration's defaults (`[ingest]`, `[quarantine]`).
    fn from(accounting: AccountingRules) -> WriteRules {
        WriteRules {
            accounting,
            max_late_ms: 86_400_000,
            max_seq_jump: 10_000_000,
            quarantine_payload_bytes: 65_536,
        }
    }
}

/// A message that failed validation, kept with its reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub topic: String,
    pub reason: String,
    pub payload: Vec<u8>,
}

/// A valid message as it came: kept in the quarantine if the store refuses it (late, a
/// sequence jump, a conflicting copy).
#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub topic: String,
    /// Empty for a message built in-process (tests, benchmarks): the quarantine then keeps it
    /// serialised.
    pub payload: bytes::Bytes,
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
}

/// The writer's own maps, looked up for every point of every message: a faster hash than the
/// standard SipHash (per-process seeded).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Device -> point -> state of each tracked counter point.
type CounterTracks = FastMap<String, FastMap<String, CounterTrack>>;

pub struct Store {
    path: PathBuf,
    conn: Connection,
    /// State of each tracked counter point.
    last: CounterTracks,
    /// Series id of each device's points.
    series: SeriesIds,
    /// Queue what is stored for the time-series sink.
    sink: bool,
}

pub(crate) fn open_conn(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let mut conn = open_conn(path)?;
        // The writer revisits the recent pages of every device's series and rollups: keep them
        // in memory (32 MiB) rather than reading them back from the file on every batch.
        conn.pragma_update(None, "cache_size", -32_768)?;
        // Checkpoint every 8 192 pages (32 MiB of WAL) rather than 1 000: a hot page rewritten by
        // many batches is copied into the database once per checkpoint, not once per few batches.
        conn.pragma_update(None, "wal_autocheckpoint", 8_192)?;
        migrate(&mut conn)
            .with_context(|| format!("cannot migrate database {}", path.display()))?;
        Ok(Store {
            path: path.to_owned(),
            conn,
            last: CounterTracks::default(),
            series: SeriesIds::default(),
            sink: false,
        })
    }

    /// From now on, queue every stored message and every changed rollup slot for the
    /// time-series sink, in the transaction that stores them. (Temporary triggers: a gateway
    /// without a sink pays nothing.)
    pub fn enable_sink(&mut self) -> anyhow::Result<()> {
        self.conn.execute_batch(
            "CREATE TEMP TRIGGER IF NOT EXISTS sink_slot_inserted AFTER INSERT ON main.point_slots BEGIN
                 INSERT INTO sink_dirty_slots (slot_ms, version) VALUES (NEW.slot_ms, 1)
                 ON CONFLICT (slot_ms) DO UPDATE SET version = version + 1;
             END;
             CREATE TEMP TRIGGER IF NOT EXISTS sink_slot_updated AFTER UPDATE ON main.point_slots BEGIN
                 INSERT INTO sink_dirty_slots (slot_ms, version) VALUES (NEW.slot_ms, 1)
                 ON CONFLICT (slot_ms) DO UPDATE SET version = version + 1;
             END;",
        )?;
        self.sink = true;
        Ok(())
    }

    /// Copies the database at `from` to the new file `to` while a gateway may be writing to it
    /// (SQLite's online backup), then checks the copy. Returns the messages it holds.
    pub fn backup(from: &Path, to: &Path) -> anyhow::Result<u64> {
        anyhow::ensure!(from.exists(), "no database at {}", from.display());
        anyhow::ensure!(
            !to.exists(),
            "{} exists; a backup never overwrites",
            to.display()
        );
        let src = open_conn(from)?;
        let mut dst =
            Connection::open(to).with_context(|| format!("cannot create {}", to.display()))?;
        rusqlite::backup::Backup::new(&src, &mut dst)?
            .run_to_completion(256, std::time::Duration::from_millis(2), None)
            .context("backup interrupted")?;
        let check: String = dst.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        anyhow::ensure!(
            check == "ok",
            "the copy fails SQLite's integrity check: {check}"
        );
        let messages: i64 = dst.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))?;
        Ok(messages as u64)
    }

    pub fn reader(&self) -> anyhow::Result<Reader> {
        Ok(Reader {
            conn: Mutex::new(open_conn(&self.path)?),
            path: self.path.clone(),
        })
    }

    /// Commits one batch in one transaction.
    pub fn write_batch(
        &mut self,
        batch: &[Incoming],
        rules: &WriteRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome> {
        let mut out = BatchOutcome::default();
        let mut gathered = Gathered::default();
        let tx = self.conn.transaction()?;
        for item in batch {
            match item {
                Incoming::Telemetry(t, raw) => {
                    let stored = out.stored;
                    let caches = (&mut self.last, &mut self.series, &mut gathered);
                    write_telemetry(&tx, caches, (t, raw), rules, received_ms, &mut out)?;
                    if self.sink && out.stored > stored {
                        tx.prepare_cached("INSERT INTO sink_queue (lines) VALUES (?1)")?
                            .execute([crate::influx::sample_lines(t)])?;
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
                }
            }
        }
        gathered.write(&tx, received_ms)?;
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

/// The code of a refusal reason: what comes before its first `:`.
pub fn reason_code(reason: &str) -> &str {
    reason.split(':').next().unwrap_or(reason)
}

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut_at_char(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    anyhow::ensure!(
        current as usize <= MIGRATIONS.len(),
        "database schema version {current} is newer than this gateway ({})",
        MIGRATIONS.len()
    );
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if i + 1 == PACKED_SAMPLES_VERSION {
            pack_point_samples(&tx)?;
        }
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [i as i64 + 1],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// Migration 7's data step: every sample of `point_samples` into its message's BLOB. A sample
/// without a message row (none are written so, but nothing is dropped on that assumption) gets
/// one, with no edge and no receive time.
fn pack_point_samples(tx: &Transaction<'_>) -> anyhow::Result<()> {
    tx.execute_batch(
        "INSERT OR IGNORE INTO messages (device, seq, ts_ms, edge, received_ms)
           SELECT r.device, p.seq, MIN(p.ts_ms), '', 0 FROM point_samples p
           JOIN series r ON r.id = p.series GROUP BY r.device, p.seq",
    )?;
    let mut read = tx.prepare(
        "SELECT r.device, p.seq, p.series, p.value, p.quality FROM point_samples p
         JOIN series r ON r.id = p.series ORDER BY r.device, p.seq, r.point",
    )?;
    let mut write = tx.prepare("UPDATE messages SET points = ?3 WHERE device = ?1 AND seq = ?2")?;
    let mut rows = read.query([])?;
    let mut current: Option<(String, i64)> = None;
    let mut blob = Vec::new();
    while let Some(r) = rows.next()? {
        let key: (String, i64) = (r.get(0)?, r.get(1)?);
        if current.as_ref() != Some(&key) {
            if let Some((device, seq)) = current.replace(key) {
                write.execute(params![device, seq, blob])?;
                blob.clear();
            }
        }
        let q: String = r.get(4)?;
        let q = q
            .parse()
            .map_err(|e| anyhow::anyhow!("stored quality {q:?}: {e}"))?;
        crate::packed::push(&mut blob, r.get(2)?, r.get(3)?, q);
    }
    if let Some((device, seq)) = current {
        write.execute(params![device, seq, blob])?;
    }
    tx.execute_batch("DROP TABLE point_samples")?;
    Ok(())
}

/// What a batch touches many times but stores once, at its end: additions to the rollup slots,
/// the counters' checkpoints and the devices' ledger rows (keyed by the batch's own strings).
#[derive(Debug, Default)]
struct Gathered<'a> {
    slots: FastMap<(&'a str, &'a str, i64), PointSlot>,
    /// Per counter point, its state after the last reading of each slot the batch reached.
    checkpoints: FastMap<(&'a str, &'a str), Vec<(i64, CounterTrack)>>,
    devices: FastMap<&'a str, LedgerUpdate<'a>>,
}

/// A device's ledger row changes within one batch.
#[derive(Debug)]
struct LedgerUpdate<'a> {
    /// Highest sequence number so far, with its poll time, site and edge.
    newest: Option<(i64, i64, &'a str, &'a str)>,
    messages: i64,
    last_good_ms: Option<i64>,
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

fn write_checkpoints(
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
fn checkpoint_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CounterTrack> {
    Ok(CounterTrack {
        through_ms: r.get(0)?,
        anchor: Some((r.get(1)?, r.get(2)?)),
        rejected: r.get(3)?,
        changed_ms: r.get(4)?,
        rate_per_h: r.get(5)?,
    })
}

const CHECKPOINT_COLUMNS: &str = "through_ms, ts_ms, value, rejected, changed_ms, rate_per_h";

/// The `series` id of each device and point, as stored.
#[derive(Debug, Default)]
struct SeriesIds(FastMap<String, FastMap<String, i64>>);

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

/// One good reading of a counter point.
#[derive(Debug, Clone, Copy)]
struct Reading {
    ts_ms: i64,
    seq: i64,
    value: f64,
}

/// Adds one good counter reading to the point-slot rollups. Returns whether it arrived late.
///
/// Every reading is decided by [`CounterTrack::push`]. In order (after the last reading the
/// counter took), it is pushed onto the counter's state: the interval from the last accepted
/// reading is added, a spike is rejected, a restarted meter is bridged and marked estimated, a
/// frozen counter is flagged. A late reading makes the counter replay from the checkpoint
/// before it, over the stored readings with it and without it, and the difference goes in (see
/// [`recount`]): the rollups stay what a replay of all readings in time order gives.
fn account_sample<'a>(
    tx: &Transaction<'_>,
    (last, gathered): (&mut CounterTracks, &mut Gathered<'a>),
    key: (&'a str, &'a str),
    reading: Reading,
    rule: &CounterRule,
    max_gap_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<bool> {
    let mut track = track_of(tx, last, key)?;
    let late = track.anchor.is_some()
        && (reading.ts_ms < track.through_ms
            || (reading.ts_ms == track.through_ms && !last_at_its_time(tx, key.0, reading)?));
    if late {
        track = recount(tx, gathered, key, reading, rule, max_gap_ms, out)?;
    } else {
        for event in track.push(reading.ts_ms, reading.value, rule) {
            add_event(&event, max_gap_ms, |slot, r| {
                gathered.add_slot(key, slot, r)
            });
            record_anomaly(tx, key, reading.ts_ms, reading.value, &event, rule, out)?;
        }
        gathered.checkpoint(key, slot_of(reading.ts_ms), track);
    }
    // Owned keys are built only for a device or point seen for the first time.
    if !last.contains_key(key.0) {
        last.insert(key.0.to_owned(), FastMap::default());
    }
    let tracks = last.get_mut(key.0).expect("inserted");
    match tracks.get_mut(key.1) {
        Some(t) => *t = track,
        None => {
            tracks.insert(key.1.to_owned(), track);
        }
    }
    Ok(late)
}

/// A counter point's state: cached, else its newest checkpoint, else none yet.
fn track_of(
    tx: &Transaction<'_>,
    last: &CounterTracks,
    (device, point): (&str, &str),
) -> rusqlite::Result<CounterTrack> {
    if let Some(t) = last.get(device).and_then(|d| d.get(point)) {
        return Ok(*t);
    }
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM counter_checkpoints WHERE device = ?1 AND point = ?2
             ORDER BY slot_ms DESC LIMIT 1"
        ))?
        .query_row(params![device, point], checkpoint_row)
        .optional()?
        .unwrap_or_default())
}

/// Whether `reading` (stored already) has the highest sequence number of its device's readings
/// at its poll time: then it comes last in time order, and a meter whose clock stands still does
/// not make every poll a replay.
fn last_at_its_time(
    tx: &Transaction<'_>,
    device: &str,
    reading: Reading,
) -> rusqlite::Result<bool> {
    let highest: Option<i64> = tx
        .prepare_cached("SELECT MAX(seq) FROM messages WHERE device = ?1 AND ts_ms = ?2")?
        .query_row(params![device, reading.ts_ms], |r| r.get(0))?;
    Ok(highest == Some(reading.seq))
}

/// Stores what a finding other than an interval says of the counter (an anomaly).
fn record_anomaly(
    tx: &Transaction<'_>,
    (device, point): (&str, &str),
    ts_ms: i64,
    value: f64,
    event: &CounterEvent,
    rule: &CounterRule,
    out: &mut BatchOutcome,
) -> rusqlite::Result<()> {
    let Some((kind, detail)) = anomaly_text(event, value, rule) else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO anomalies (device, point, ts_ms, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![device, point, ts_ms, kind, detail])?;
    out.anomalies.push(kind);
    Ok(())
}

fn anomaly_text(
    event: &CounterEvent,
    value: f64,
    rule: &CounterRule,
) -> Option<(&'static str, String)> {
    Some(match *event {
        CounterEvent::Interval { .. } => return None,
        CounterEvent::Restart { from, to } => ("restart", format!("counter went back from {from} to {to} (meter replaced or reset); counting resumes there, the interval is {}", fill_note(rule.fill))),
        CounterEvent::Spike { rate_per_h } => ("spike", format!("reading {value} implies {rate_per_h:.1} per hour, above the flow's maximum; rejected")),
        CounterEvent::Jump { from, to } => ("jump", format!("counter moved from {from} to {to} and stayed; counting resumes there, the interval is {}", fill_note(rule.fill))),
        CounterEvent::Frozen { since_ms } => ("frozen", format!("unchanged since {}", rfc3339(since_ms))),
    })
}

fn fill_note(fill: GapFill) -> &'static str {
    match fill {
        GapFill::Rate => "filled at the recent rate and marked estimated",
        GapFill::None => "not filled (a restart's count since zero is kept, marked estimated)",
    }
}

const UPSERT_SLOT: &str = "INSERT INTO point_slots (device, point, slot_ms, delta, covered_ms, estimated) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (device, point, slot_ms) DO UPDATE SET
       delta = delta + excluded.delta, covered_ms = covered_ms + excluded.covered_ms,
       estimated = estimated + excluded.estimated";

/// A late reading (already stored with its message): the counter is replayed from its last
/// checkpoint before the reading, over the stored readings after that checkpoint with and
/// without this one. The slots get the difference, the anomalies the findings that differ (new
/// ones recorded, ones no longer found withdrawn), the checkpoints the new states. The work is
/// bounded by `[ingest] max_late_s`: nothing later than that behind the device's newest
/// message is stored. Returns the counter's state after its newest reading.
fn recount<'a>(
    tx: &Transaction<'_>,
    gathered: &mut Gathered<'a>,
    key: (&'a str, &'a str),
    late: Reading,
    rule: &CounterRule,
    max_gap_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<CounterTrack> {
    // The checkpoints of this batch go first, so that the table holds every state.
    if let Some(list) = gathered.checkpoints.remove(&key) {
        write_checkpoints(tx, key, &list)?;
    }
    let start: Option<CounterTrack> = tx
        .prepare_cached(&format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM counter_checkpoints
             WHERE device = ?1 AND point = ?2 AND slot_ms <= ?3 AND through_ms < ?4
             ORDER BY slot_ms DESC LIMIT 1"
        ))?
        .query_row(
            params![key.0, key.1, slot_of(late.ts_ms), late.ts_ms],
            checkpoint_row,
        )
        .optional()?;
    let from_ms = start.map_or(i64::MIN, |t| t.through_ms);
    let series: i64 = tx
        .prepare_cached("SELECT id FROM series WHERE device = ?1 AND point = ?2")?
        .query_row(params![key.0, key.1], |r| r.get(0))?;
    // The stored readings after the checkpoint, in the order the integrity check takes them.
    let mut readings: Vec<Reading> = Vec::new();
    let mut stmt = tx.prepare_cached(
        "SELECT ts_ms, seq, points FROM messages WHERE device = ?1 AND ts_ms > ?2 AND points IS NOT NULL
         ORDER BY ts_ms, seq",
    )?;
    let mut rows = stmt.query(params![key.0, from_ms])?;
    while let Some(r) = rows.next()? {
        if let Some(value) = crate::packed::good_value(r.get_ref(2)?.as_blob()?, series)? {
            readings.push(Reading {
                ts_ms: r.get(0)?,
                seq: r.get(1)?,
                value,
            });
        }
    }
    let start = start.unwrap_or_default();
    let with = replay(
        start,
        readings.iter().map(|r| (r.ts_ms, r.value)),
        rule,
        max_gap_ms,
    );
    let without = replay(
        start,
        readings
            .iter()
            .filter(|r| r.seq != late.seq)
            .map(|r| (r.ts_ms, r.value)),
        rule,
        max_gap_ms,
    );
    let slots: std::collections::BTreeSet<i64> = with
        .slots
        .keys()
        .chain(without.slots.keys())
        .copied()
        .collect();
    for slot in slots {
        let (a, b) = (
            with.slots.get(&slot).copied().unwrap_or_default(),
            without.slots.get(&slot).copied().unwrap_or_default(),
        );
        let diff = PointSlot {
            delta: a.delta - b.delta,
            covered_ms: a.covered_ms - b.covered_ms,
            estimated: a.estimated - b.estimated,
        };
        if diff != PointSlot::default() {
            gathered.add_slot(key, slot, diff);
        }
    }
    // Findings are matched by time and kind.
    let kinds = |r: &crate::accounting::Replay| -> Vec<(i64, &'static str)> {
        let mut v: Vec<_> = r
            .findings
            .iter()
            .filter_map(|(ts, value, e)| anomaly_text(e, *value, rule).map(|(k, _)| (*ts, k)))
            .collect();
        v.sort_unstable();
        v
    };
    let (found_with, found_without) = (kinds(&with), kinds(&without));
    for (ts, value, event) in &with.findings {
        let Some((kind, _)) = anomaly_text(event, *value, rule) else {
            continue;
        };
        let had = found_without.iter().filter(|f| **f == (*ts, kind)).count();
        let has = found_with.iter().filter(|f| **f == (*ts, kind)).count();
        if has > had {
            record_anomaly(tx, key, *ts, *value, event, rule, out)?;
        }
    }
    for f in found_without.iter().filter(|f| !found_with.contains(f)) {
        tx.prepare_cached(
            "UPDATE anomalies SET withdrawn_ms = ?5 WHERE id = (
                 SELECT id FROM anomalies WHERE device = ?1 AND point = ?2 AND ts_ms = ?3 AND kind = ?4
                   AND withdrawn_ms IS NULL ORDER BY id DESC LIMIT 1)",
        )?
        .execute(params![key.0, key.1, f.0, f.1, late.ts_ms])?;
    }
    write_checkpoints(tx, key, &with.checkpoints)?;
    Ok(with.end)
}

/// Deletes raw samples older than the retention horizon; rollups and the ledger stay.
pub struct Pruner {
    conn: Connection,
}

impl Pruner {
    pub fn open(path: &Path) -> anyhow::Result<Pruner> {
        Ok(Pruner {
            conn: open_conn(path)?,
        })
    }

    /// Deletes the samples polled before `before_ms`, device by device in short transactions
    /// (ingest goes on meanwhile); the message rows stay for the ledger. Returns the samples
    /// deleted.
    pub fn prune_raw(&mut self, before_ms: i64) -> anyhow::Result<u64> {
        let devices: Vec<String> = self
            .conn
            .prepare("SELECT device FROM devices")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut deleted = 0u64;
        for device in devices {
            // Sequence numbers follow poll order, so everything old sits at the low end of
            // the device's key range; the time check guards against a clock set back.
            let last_old: Option<i64> = self.conn.query_row(
                "SELECT MAX(seq) FROM messages WHERE device = ?1 AND ts_ms < ?2",
                params![device, before_ms],
                |r| r.get(0),
            )?;
            if let Some(seq) = last_old {
                let tx = self.conn.transaction()?;
                let bytes: i64 = tx.query_row(
                    "SELECT COALESCE(SUM(length(points)), 0) FROM messages
                     WHERE device = ?1 AND seq <= ?2 AND ts_ms < ?3",
                    params![device, seq, before_ms],
                    |r| r.get(0),
                )?;
                tx.execute(
                    "UPDATE messages SET points = NULL
                     WHERE device = ?1 AND seq <= ?2 AND ts_ms < ?3 AND points IS NOT NULL",
                    params![device, seq, before_ms],
                )?;
                tx.commit()?;
                deleted += crate::packed::count(bytes as usize) as u64;
            }
        }
        self.conn.execute(
            "INSERT INTO retention (id, raw_before_ms) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET raw_before_ms = MAX(raw_before_ms, ?1)",
            [before_ms],
        )?;
        Ok(deleted)
    }
}

impl Pruner {
    /// Deletes counter checkpoints no late reading can need any more: those of a point older
    /// than `window_ms` behind its device's newest message, except the newest of them (the
    /// state a replay starts from). Returns the rows deleted.
    pub fn prune_checkpoints(&mut self, window_ms: i64) -> anyhow::Result<u64> {
        let devices: Vec<(String, i64)> = self
            .conn
            .prepare("SELECT device, last_ts_ms FROM devices")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut deleted = 0;
        for (device, newest) in devices {
            let cutoff = slot_of(newest.saturating_sub(window_ms));
            deleted += self.conn.execute(
                "DELETE FROM counter_checkpoints AS c WHERE device = ?1 AND slot_ms < (
                     SELECT MAX(k.slot_ms) FROM counter_checkpoints k
                     WHERE k.device = c.device AND k.point = c.point AND k.slot_ms <= ?2)",
                params![device, cutoff],
            )? as u64;
        }
        Ok(deleted)
    }

    /// Deletes quarantine entries received before `before_ms`; their counts stay in the totals.
    pub fn prune_quarantine(&mut self, before_ms: i64) -> anyhow::Result<u64> {
        Ok(self
            .conn
            .execute("DELETE FROM quarantine WHERE received_ms < ?1", [before_ms])?
            as u64)
    }
}

/// A read-only view for the API.
pub struct Reader {
    conn: Mutex<Connection>,
    /// For reads that take long (an export paced by its client): a connection of their own,
    /// so that they never hold up the API's other reads.
    path: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
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
}

/// An edge as its last status message described it.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct Integrity {
    pub samples_checked: u64,
    pub slots_checked: u64,
    /// Empty when every stored rollup equals its recomputation.
    pub mismatches: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
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

/// How much of each payload a quarantine listing shows.
pub const PAYLOAD_PREVIEW: usize = 2_048;

/// Refusals by reason since the database was made, kept whatever quarantine retention deletes.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineTotal {
    pub reason: String,
    pub count: i64,
    pub bytes: i64,
}

impl Reader {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> anyhow::Result<T> {
        let conn = self.conn.lock().expect("reader lock poisoned");
        Ok(f(&conn)?)
    }

    pub fn devices(&self) -> anyhow::Result<Vec<DeviceRow>> {
        self.with(|c| {
            let mut gaps: HashMap<String, Vec<[i64; 2]>> = HashMap::new();
            let mut stmt = c.prepare("SELECT device, from_seq, to_seq FROM gaps ORDER BY device, from_seq")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?)))? {
                let (d, a, b) = row?;
                gaps.entry(d).or_default().push([a, b]);
            }
            let mut lost: HashMap<String, Vec<LostRange>> = HashMap::new();
            let mut stmt = c.prepare("SELECT device, from_seq, to_seq, declared_ms, declared_by, reason FROM lost ORDER BY device, from_seq")?;
            for row in stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, LostRange { from_seq: r.get(1)?, to_seq: r.get(2)?, declared: rfc3339(r.get(3)?), declared_by: r.get(4)?, reason: r.get(5)? }))
            })? {
                let (d, range) = row?;
                lost.entry(d).or_default().push(range);
            }
            let mut online: HashMap<String, bool> = HashMap::new();
            let mut stmt = c.prepare("SELECT edge, online FROM edges")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))? {
                let (e, o) = row?;
                online.insert(e, o);
            }
            let mut stmt = c.prepare(
                "SELECT device, site, edge, last_seq, last_ts_ms, last_seen_ms, messages, duplicates, conflicts FROM devices ORDER BY device",
            )?;
            let rows = stmt.query_map([], |r| {
                let id: String = r.get(0)?;
                let edge: String = r.get(2)?;
                let g = gaps.get(&id).cloned().unwrap_or_default();
                let l = lost.get(&id).cloned().unwrap_or_default();
                Ok(DeviceRow {
                    online: online.get(&edge).copied().unwrap_or(false),
                    site: r.get(1)?,
                    last_seq: r.get(3)?,
                    last_sample: rfc3339(r.get(4)?),
                    last_seen: rfc3339(r.get(5)?),
                    messages: r.get(6)?,
                    duplicates: r.get(7)?,
                    conflicts: r.get(8)?,
                    missing: g.iter().fold(0i64, |n, [a, b]| n.saturating_add(b - a + 1)),
                    gaps: g,
                    lost: l.iter().fold(0i64, |n, r| n.saturating_add(r.to_seq - r.from_seq + 1)),
                    lost_ranges: l,
                    edge,
                    id,
                })
            })?;
            rows.collect()
        })
    }

    pub fn edges(&self) -> anyhow::Result<Vec<EdgeRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT edge, site, online, devices, changed_ms, spool_depth, spool_dropped FROM edges ORDER BY edge",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(EdgeRow {
                    id: r.get(0)?,
                    site: r.get(1)?,
                    online: r.get(2)?,
                    devices: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                    changed: rfc3339(r.get(4)?),
                    spool_depth: r.get(5)?,
                    spool_dropped: r.get(6)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Sequence numbers missing (open gaps) and declared lost, over all devices.
    pub fn sequence_totals(&self) -> anyhow::Result<(i64, i64)> {
        self.with(|c| {
            c.query_row(
                "SELECT (SELECT TOTAL(to_seq - from_seq + 1) FROM gaps),
                        (SELECT TOTAL(to_seq - from_seq + 1) FROM lost)",
                [],
                // TOTAL sums as a float: numbers near 2^63 overflow SUM's integer.
                |r| Ok((r.get::<_, f64>(0)? as i64, r.get::<_, f64>(1)? as i64)),
            )
        })
    }

    /// The first 15-minute slot the point has data in.
    pub fn first_slot(&self, device: &str, point: &str) -> anyhow::Result<Option<i64>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT MIN(slot_ms) FROM point_slots WHERE device = ?1 AND point = ?2",
            )?
            .query_row(params![device, point], |r| r.get(0))
        })
    }

    /// Rollup rows of one point with `from_ms <= slot < to_ms`.
    pub fn point_slots(
        &self,
        device: &str,
        point: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> anyhow::Result<Vec<(i64, PointSlot)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT slot_ms, delta, covered_ms, estimated FROM point_slots
                 WHERE device = ?1 AND point = ?2 AND slot_ms >= ?3 AND slot_ms < ?4 ORDER BY slot_ms",
            )?;
            let rows = stmt.query_map(params![device, point, from_ms, to_ms], |r| {
                Ok((r.get(0)?, PointSlot { delta: r.get(1)?, covered_ms: r.get(2)?, estimated: r.get(3)? }))
            })?;
            rows.collect()
        })
    }

    pub fn quarantine(&self, limit: i64) -> anyhow::Result<Vec<QuarantineRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT id, received_ms, topic, reason, substr(payload, 1, {PAYLOAD_PREVIEW}),
                        length(payload), payload_bytes, payload_sha256
                 FROM quarantine ORDER BY id DESC LIMIT ?1"
            ))?;
            let rows = stmt.query_map([limit], |r| {
                let kept: i64 = r.get(5)?;
                let full: Option<i64> = r.get(6)?;
                Ok(QuarantineRow {
                    id: r.get(0)?,
                    received: rfc3339(r.get(1)?),
                    topic: r.get(2)?,
                    reason: r.get(3)?,
                    payload: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(4)?).into_owned(),
                    truncated: full.unwrap_or(kept) > (PAYLOAD_PREVIEW as i64).min(kept),
                    payload_bytes: full,
                    payload_sha256: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    /// The kept part of one quarantined payload, as received.
    pub fn quarantine_payload(&self, id: i64) -> anyhow::Result<Option<Vec<u8>>> {
        self.with(|c| {
            c.query_row("SELECT payload FROM quarantine WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    pub fn quarantine_totals(&self) -> anyhow::Result<Vec<QuarantineTotal>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT reason, count, bytes FROM quarantine_totals ORDER BY reason")?;
            let rows = stmt.query_map([], |r| {
                Ok(QuarantineTotal {
                    reason: r.get(0)?,
                    count: r.get(1)?,
                    bytes: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Recomputes every tracked point's hourly rollups from the raw samples and compares them
    /// with the stored ones: what an auditor asks for.
    pub fn verify_rollups(&self, rules: &AccountingRules) -> anyhow::Result<Integrity> {
        self.with(|c| {
            let mut expected: HashMap<(String, String, i64), PointSlot> = HashMap::new();
            let mut stmt = c.prepare(
                "SELECT ts_ms, points FROM messages WHERE device = ?1 AND points IS NOT NULL ORDER BY ts_ms, seq",
            )?;
            let mut series_id = c.prepare("SELECT id FROM series WHERE device = ?1 AND point = ?2")?;
            let mut samples_checked = 0u64;
            // Where retention deleted older samples, the first kept one starts the recomputation
            // and the slot it falls in cannot be checked.
            let pruned: bool = c
                .query_row("SELECT COUNT(*) FROM retention", [], |r| r.get::<_, i64>(0))?
                > 0;
            let mut unchecked_before: HashMap<(String, String), i64> = HashMap::new();
            // Each device's messages are read once, in poll order, for all its tracked points.
            for (device, points) in &rules.tracked {
                let mut tracks: HashMap<i64, (&String, &CounterRule, CounterTrack)> = HashMap::new();
                for (point, rule) in points {
                    if let Some(id) = series_id.query_row(params![device, point], |r| r.get::<_, i64>(0)).optional()? {
                        tracks.insert(id, (point, rule, CounterTrack::default()));
                    }
                }
                let mut rows = stmt.query([device])?;
                while let Some(row) = rows.next()? {
                    let ts: i64 = row.get(0)?;
                    let packed = crate::packed::unpack(row.get_ref(1)?.as_blob()?)
                        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, e.into()))?;
                    for p in packed {
                        let (Some((point, rule, track)), Some(v), true) = (tracks.get_mut(&p.series), p.value, p.quality.is_good()) else {
                            continue;
                        };
                        unchecked_before
                            .entry((device.clone(), (*point).clone()))
                            .or_insert(ts - ts.rem_euclid(SLOT_MS) + SLOT_MS);
                        samples_checked += 1;
                        for event in track.push(ts, v, rule) {
                            add_event(&event, rules.max_gap_ms, |slot, r| {
                                let e = expected.entry((device.clone(), (*point).clone(), slot)).or_default();
                                e.delta += r.delta;
                                e.covered_ms += r.covered_ms;
                                e.estimated += r.estimated;
                            });
                        }
                    }
                }
            }
            let mut stored: HashMap<(String, String, i64), PointSlot> = HashMap::new();
            let mut stmt = c.prepare("SELECT device, point, slot_ms, delta, covered_ms, estimated FROM point_slots")?;
            for row in stmt.query_map([], |r| {
                Ok(((r.get(0)?, r.get(1)?, r.get(2)?), PointSlot { delta: r.get(3)?, covered_ms: r.get(4)?, estimated: r.get(5)? }))
            })? {
                let (k, v) = row?;
                stored.insert(k, v);
            }
            let mut mismatches = Vec::new();
            let keys: std::collections::BTreeSet<_> = expected.keys().chain(stored.keys()).cloned().collect();
            for k in &keys {
                if pruned && unchecked_before.get(&(k.0.clone(), k.1.clone())).is_none_or(|&t| k.2 < t) {
                    continue;
                }
                let (e, s) = (expected.get(k).copied().unwrap_or_default(), stored.get(k).copied().unwrap_or_default());
                let tol = 1e-6 * e.delta.abs().max(1.0);
                if (e.delta - s.delta).abs() > tol || e.covered_ms != s.covered_ms || (e.estimated - s.estimated).abs() > tol {
                    mismatches.push(format!(
                        "{}/{} at {}: stored delta {} covered {} ms, raw samples give {} and {} ms",
                        k.0, k.1, rfc3339(k.2), s.delta, s.covered_ms, e.delta, e.covered_ms
                    ));
                }
            }
            Ok(Integrity { samples_checked, slots_checked: keys.len() as u64, mismatches })
        })
    }

    /// Writes the raw samples with `from_ms <= ts < to_ms` (of one device, or all) as CSV:
    /// device, seq, point, time (RFC 3339 UTC), value, quality. Returns the rows written.
    pub fn export_csv(
        &self,
        device: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        out: impl std::io::Write,
    ) -> anyhow::Result<u64> {
        let mut w = csv::Writer::from_writer(out);
        w.write_record(["device", "seq", "point", "time", "value", "quality"])?;
        let conn = open_conn(&self.path)?;
        let names: HashMap<i64, String> = conn
            .prepare("SELECT id, point FROM series")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = conn.prepare(
            "SELECT device, seq, ts_ms, points FROM messages
             WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR device = ?3) AND points IS NOT NULL
             ORDER BY device, ts_ms, seq",
        )?;
        let mut rows = stmt.query(params![from_ms, to_ms, device])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let (device, seq, ts): (String, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let mut points = crate::packed::unpack(r.get_ref(3)?.as_blob()?)?;
            let name =
                |p: &crate::packed::PackedPoint| names.get(&p.series).map_or("", String::as_str);
            points.sort_by(|a, b| name(a).cmp(name(b)));
            for p in &points {
                w.write_record([
                    device.clone(),
                    seq.to_string(),
                    name(p).to_owned(),
                    rfc3339(ts),
                    p.value.map(|v| v.to_string()).unwrap_or_default(),
                    p.quality.to_string(),
                ])?;
                n += 1;
            }
        }
        w.flush()?;
        Ok(n)
    }

    pub fn anomalies(&self, limit: i64) -> anyhow::Result<Vec<AnomalyRow>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT device, point, ts_ms, kind, detail, withdrawn_ms FROM anomalies ORDER BY id DESC LIMIT ?1")?;
            let rows = stmt.query_map([limit], |r| {
                Ok(AnomalyRow { device: r.get(0)?, point: r.get(1)?, at: rfc3339(r.get(2)?), kind: r.get(3)?, detail: r.get(4)?, withdrawn: r.get::<_, Option<i64>>(5)?.map(rfc3339) })
            })?;
            rows.collect()
        })
    }
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ems_core::wire::PointValue;
    use ems_core::Quality;

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
        // The issue's case: 2000.0, 2000.5, 2001.0 at 0, 60 s and 120 s (seq 1, 2, 4), then
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
}
