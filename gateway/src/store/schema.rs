//! Every table of the gateway's database and its migrations, in order: the one place that
//! knows a table's shape.

use rusqlite::{params, Connection, Transaction};

/// Schema migrations, applied in order; the index + 1 is the schema version.
pub(super) const MIGRATIONS: &[&str] = &[
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
    r#"
-- Settled raw history (compact.rs, history.rs): one device's messages of one UTC day, their
-- ledger fields and samples, in one compressed block. A message is a row of `messages` or in
-- a block, never both.
CREATE TABLE message_blocks (
    device TEXT NOT NULL, day_ms INTEGER NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    first_ts_ms INTEGER NOT NULL, last_ts_ms INTEGER NOT NULL,
    messages INTEGER NOT NULL, points INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (device, day_ms)
) WITHOUT ROWID;
CREATE INDEX message_blocks_by_seq ON message_blocks (device, first_seq);
"#,
    r#"
-- Protocol v1.2's evidence of each signed message, kept apart from `messages` (whose rows
-- compaction moves into blocks): the site and edge it was signed as, the digest it names as its
-- predecessor, its own digest and signature, and whether an enrolled key verified it.
CREATE TABLE evidence (
    device TEXT NOT NULL, seq INTEGER NOT NULL, site TEXT NOT NULL, edge TEXT NOT NULL,
    prev BLOB NOT NULL, digest BLOB NOT NULL, sig BLOB NOT NULL, verified INTEGER NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
-- Each device's chain: its head, how far it is verified without a break, its restarts and the
-- messages refused for their evidence.
CREATE TABLE chains (
    device TEXT PRIMARY KEY, head_seq INTEGER NOT NULL, head_digest BLOB NOT NULL,
    verified_through INTEGER NOT NULL, signed INTEGER NOT NULL, verified INTEGER NOT NULL,
    restarts INTEGER NOT NULL, refused INTEGER NOT NULL
) WITHOUT ROWID;
-- The operator audit log (audit.rs): append-only, each entry chained to the one before.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
    subject TEXT NOT NULL, detail TEXT NOT NULL, prev BLOB NOT NULL, digest BLOB NOT NULL
);
"#,
];

/// The schema version whose migration packs `point_samples` into `messages.points`.
const PACKED_SAMPLES_VERSION: usize = 7;

/// The migrations a database has had (0: none).
pub(super) fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )
}

pub(super) fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current = version(conn)?;
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
