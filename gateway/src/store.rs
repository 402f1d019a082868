//! SQLite storage: the ledger, raw samples, quarantine, edge status and the point-hour rollups.
//!
//! One writer connection commits each ingest batch in one transaction (WAL, synchronous=FULL:
//! a commit survives a power cut, and only committed messages are acknowledged to the broker).
//! Readers use their own connections.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context as _;
use ems_core::wire::{Status, Telemetry};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use crate::accounting::{
    add_event, add_interval, counter_delta, CounterEvent, CounterRule, CounterTrack, GapFill,
    PointSlot, SLOT_MS,
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

/// A message that failed validation, kept with its reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub topic: String,
    pub reason: String,
    pub payload: Vec<u8>,
}

/// One unit of ingest work, in arrival order.
#[derive(Debug, Clone)]
pub enum Incoming {
    Telemetry(Telemetry),
    Status(Status),
    Rejected(Rejected),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub stored: u64,
    pub duplicates: u64,
    pub points: u64,
    pub quarantined: u64,
    pub late_samples: u64,
    /// Counter anomalies found (spikes, jumps, restarts, frozen counters), by kind.
    pub anomalies: Vec<&'static str>,
}

/// The writer's own maps, looked up for every point of every message: a faster hash than the
/// standard SipHash (per-process seeded).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

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
        })
    }

    /// Commits one batch in one transaction.
    pub fn write_batch(
        &mut self,
        batch: &[Incoming],
        rules: &AccountingRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome> {
        let mut out = BatchOutcome::default();
        let mut gathered = Gathered::default();
        let tx = self.conn.transaction()?;
        for item in batch {
            match item {
                Incoming::Telemetry(t) => {
                    let stored = out.stored;
                    let caches = (&mut self.last, &mut self.series, &mut gathered);
                    write_telemetry(&tx, caches, t, rules, received_ms, &mut out)?;
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
                        params![s.edge, s.site, s.online, serde_json::to_string(&s.devices)?, received_ms, s.spool_depth.map(|d| d as i64), s.spool_dropped.map(|d| d as i64)],
                    )?;
                }
                Incoming::Rejected(r) => {
                    tx.execute(
                        "INSERT INTO quarantine (received_ms, topic, reason, payload) VALUES (?1, ?2, ?3, ?4)",
                        params![received_ms, r.topic, r.reason, r.payload],
                    )?;
                    out.quarantined += 1;
                }
            }
        }
        gathered.write(&tx, &self.last, received_ms)?;
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
/// counter states and the devices' ledger rows (keyed by the batch's own strings).
#[derive(Debug, Default)]
struct Gathered<'a> {
    slots: FastMap<(&'a str, &'a str, i64), PointSlot>,
    counters: FastSet<(&'a str, &'a str)>,
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

    fn write(
        self,
        tx: &Transaction<'_>,
        last: &CounterTracks,
        received_ms: i64,
    ) -> rusqlite::Result<()> {
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
        let mut stmt = tx.prepare_cached(
            "INSERT INTO counter_state (device, point, ts_ms, value, rejected, changed_ms, rate_per_h) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (device, point) DO UPDATE SET ts_ms = ?3, value = ?4, rejected = ?5, changed_ms = ?6, rate_per_h = ?7",
        )?;
        for &(device, point) in &self.counters {
            if let Some(
                track @ CounterTrack {
                    anchor: Some((ts, v)),
                    ..
                },
            ) = last.get(device).and_then(|d| d.get(point))
            {
                stmt.execute(params![
                    device,
                    point,
                    ts,
                    v,
                    track.rejected,
                    track.changed_ms,
                    track.rate_per_h
                ])?;
            }
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
    t: &'a Telemetry,
    rules: &AccountingRules,
    received_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<()> {
    let mut blob = Vec::with_capacity(t.points.len() * 14);
    for p in &t.points {
        crate::packed::push(&mut blob, series.get(tx, &t.device, &p.id)?, p.v, p.q);
    }
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO messages (device, seq, ts_ms, edge, received_ms, points) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![t.device, t.seq as i64, t.ts_ms, t.edge, received_ms, blob])?;
    if inserted == 0 {
        out.duplicates += 1;
        tx.execute(
            "UPDATE devices SET duplicates = duplicates + 1 WHERE device = ?1",
            [&t.device],
        )?;
        return Ok(());
    }
    out.stored += 1;
    update_ledger(tx, gathered, t, received_ms)?;
    out.points += t.points.len() as u64;
    let Some(device_rules) = rules.tracked.get(&t.device) else {
        return Ok(());
    };
    for p in &t.points {
        let (Some(rule), Some(v)) = (device_rules.get(&p.id), p.v) else {
            continue;
        };
        let key = (t.device.as_str(), p.id.as_str());
        let state = (&mut *last, &mut *gathered);
        if account_sample(tx, state, key, t.ts_ms, v, rule, rules.max_gap_ms, out)? {
            out.late_samples += 1;
        }
    }
    Ok(())
}

/// Sequence bookkeeping: last number, and the ranges still missing. The device's row is
/// written once per batch (see [`Gathered`]); gaps at once.
fn update_ledger<'a>(
    tx: &Transaction<'_>,
    gathered: &mut Gathered<'a>,
    t: &'a Telemetry,
    received_ms: i64,
) -> anyhow::Result<()> {
    let seq = t.seq as i64;
    let any_good = t.points.iter().any(|p| p.q.is_good() && p.v.is_some());
    let prev: Option<i64> = match gathered.devices.get(t.device.as_str()) {
        Some(LedgerUpdate {
            newest: Some((s, ..)),
            ..
        }) => Some(*s),
        _ => tx
            .prepare_cached("SELECT last_seq FROM devices WHERE device = ?1")?
            .query_row([&t.device], |r| r.get(0))
            .optional()?,
    };
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

/// Adds one good counter sample to the point-slot rollups. Returns whether it arrived late.
///
/// In order, the counter track decides (see [`CounterTrack`]): the interval from the last
/// accepted reading is added, a spike is rejected, a restarted meter is bridged and marked
/// estimated, a frozen counter is flagged; anomalies are recorded. Out of order, the interval
/// that used to span this sample's time is taken out and its two halves are put in: exactly the
/// intervals the sample touches are recomputed, nothing else.
#[allow(clippy::too_many_arguments)]
fn account_sample<'a>(
    tx: &Transaction<'_>,
    (last, gathered): (&mut CounterTracks, &mut Gathered<'a>),
    key: (&'a str, &'a str),
    ts_ms: i64,
    value: f64,
    rule: &CounterRule,
    max_gap_ms: i64,
    out: &mut BatchOutcome,
) -> anyhow::Result<bool> {
    // Owned keys are built only for a device or point seen for the first time.
    if !last.contains_key(key.0) {
        last.insert(key.0.to_owned(), FastMap::default());
    }
    let tracks = last.get_mut(key.0).expect("inserted");
    let mut track = match tracks.get(key.1) {
        Some(t) => *t,
        None => tx
            .query_row(
                "SELECT ts_ms, value, rejected, changed_ms, rate_per_h FROM counter_state WHERE device = ?1 AND point = ?2",
                params![key.0, key.1],
                |r| Ok(CounterTrack { anchor: Some((r.get(0)?, r.get(1)?)), rejected: r.get(2)?, changed_ms: r.get(3)?, rate_per_h: r.get(4)? }),
            )
            .optional()?
            .unwrap_or_default(),
    };
    if let Some((anchor_ts, _)) = track.anchor {
        if ts_ms == anchor_ts {
            return Ok(false);
        }
        if ts_ms < anchor_ts {
            late_sample(tx, gathered, key, ts_ms, value, rule, max_gap_ms)?;
            return Ok(true);
        }
    }
    for event in track.push(ts_ms, value, rule) {
        add_event(&event, max_gap_ms, |slot, r| {
            gathered.add_slot(key, slot, r)
        });
        let anomaly = match event {
            CounterEvent::Interval { .. } => None,
            CounterEvent::Restart { from, to } => Some(("restart", format!("counter went back from {from} to {to} (meter replaced or reset); counting resumes there, the interval is {}", fill_note(rule.fill)))),
            CounterEvent::Spike { rate_per_h } => Some(("spike", format!("reading {value} implies {rate_per_h:.1} per hour, above the flow's maximum; rejected"))),
            CounterEvent::Jump { from, to } => Some(("jump", format!("counter moved from {from} to {to} and stayed; counting resumes there, the interval is {}", fill_note(rule.fill)))),
            CounterEvent::Frozen { since_ms } => Some(("frozen", format!("unchanged since {}", rfc3339(since_ms)))),
        };
        if let Some((kind, detail)) = anomaly {
            tx.execute(
                "INSERT INTO anomalies (device, point, ts_ms, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.0, key.1, ts_ms, kind, detail],
            )?;
            out.anomalies.push(kind);
        }
    }
    if track.anchor.is_some() {
        gathered.counters.insert(key);
    }
    match tracks.get_mut(key.1) {
        Some(t) => *t = track,
        None => {
            tracks.insert(key.1.to_owned(), track);
        }
    }
    Ok(false)
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

/// A sample older than the last accepted one: the interval between its stored neighbours is
/// replaced by the two intervals it splits it into. (Spike rejection applies to samples in
/// order; a late sample is taken as read.)
fn late_sample<'a>(
    tx: &Transaction<'_>,
    gathered: &mut Gathered<'a>,
    key: (&'a str, &'a str),
    ts_ms: i64,
    value: f64,
    rule: &CounterRule,
    max_gap_ms: i64,
) -> anyhow::Result<()> {
    let mut interval = |a: (i64, f64), b: (i64, f64), sign: f64| {
        if let Some(delta) = counter_delta(a.1, b.1, rule.rollover) {
            add_interval(a.0, b.0, delta, max_gap_ms, |slot, r| {
                let r = PointSlot {
                    delta: sign * r.delta,
                    covered_ms: sign as i64 * r.covered_ms,
                    estimated: sign * r.estimated,
                };
                gathered.add_slot(key, slot, r);
            });
        }
    };
    let series: i64 = tx
        .prepare_cached("SELECT id FROM series WHERE device = ?1 AND point = ?2")?
        .query_row(params![key.0, key.1], |r| r.get(0))?;
    // The nearest stored message on that side with a good value of this point.
    let neighbour = |sql: &str| -> anyhow::Result<Option<(i64, f64)>> {
        let mut stmt = tx.prepare_cached(sql)?;
        let mut rows = stmt.query(params![key.0, ts_ms])?;
        while let Some(r) = rows.next()? {
            if let Some(v) = crate::packed::good_value(r.get_ref(1)?.as_blob()?, series)? {
                return Ok(Some((r.get(0)?, v)));
            }
        }
        Ok(None)
    };
    let before = neighbour(
        "SELECT ts_ms, points FROM messages WHERE device = ?1 AND ts_ms < ?2 AND points IS NOT NULL ORDER BY ts_ms DESC, seq DESC",
    )?;
    let after = neighbour(
        "SELECT ts_ms, points FROM messages WHERE device = ?1 AND ts_ms > ?2 AND points IS NOT NULL ORDER BY ts_ms ASC, seq ASC",
    )?;
    if let (Some(b), Some(a)) = (before, after) {
        interval(b, a, -1.0);
    }
    if let Some(b) = before {
        interval(b, (ts_ms, value), 1.0);
    }
    if let Some(a) = after {
        interval((ts_ms, value), a, 1.0);
    }
    Ok(())
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

/// A read-only view for the API.
pub struct Reader {
    conn: Mutex<Connection>,
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
    /// The payload as received (lossy UTF-8).
    pub payload: String,
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
                "SELECT device, site, edge, last_seq, last_ts_ms, last_seen_ms, messages, duplicates FROM devices ORDER BY device",
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
                    missing: g.iter().map(|[a, b]| b - a + 1).sum(),
                    gaps: g,
                    lost: l.iter().map(|r| r.to_seq - r.from_seq + 1).sum(),
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
                "SELECT (SELECT COALESCE(SUM(to_seq - from_seq + 1), 0) FROM gaps),
                        (SELECT COALESCE(SUM(to_seq - from_seq + 1), 0) FROM lost)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
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
            let mut stmt =
                c.prepare("SELECT id, received_ms, topic, reason, payload FROM quarantine ORDER BY id DESC LIMIT ?1")?;
            let rows = stmt.query_map([limit], |r| {
                Ok(QuarantineRow {
                    id: r.get(0)?,
                    received: rfc3339(r.get(1)?),
                    topic: r.get(2)?,
                    reason: r.get(3)?,
                    payload: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(4)?).into_owned(),
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
        let conn = self.conn.lock().expect("reader lock poisoned");
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
            let mut stmt = c.prepare("SELECT device, point, ts_ms, kind, detail FROM anomalies ORDER BY id DESC LIMIT ?1")?;
            let rows = stmt.query_map([limit], |r| {
                Ok(AnomalyRow { device: r.get(0)?, point: r.get(1)?, at: rfc3339(r.get(2)?), kind: r.get(3)?, detail: r.get(4)? })
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
        Incoming::Telemetry(Telemetry {
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

    fn rules() -> AccountingRules {
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
            .verify_rollups(&rules())
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
        let check = reader.verify_rollups(&rules()).unwrap();
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
        r2.tracked
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
                .verify_rollups(&r2)
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
        let integrity = store.reader().unwrap().verify_rollups(&rules()).unwrap();
        assert!(integrity.mismatches.is_empty() && integrity.samples_checked == 2);
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE point_slots SET delta = delta + 1", [])
            .unwrap();
        let integrity = store.reader().unwrap().verify_rollups(&rules()).unwrap();
        assert_eq!(integrity.mismatches.len(), 1, "{:?}", integrity.mismatches);
    }
}
