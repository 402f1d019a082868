//! PostgreSQL's tables for the record ingest writes, and their migrations: the same meaning as
//! SQLite's ([`crate::store`]'s schema), with two differences of the system of record:
//!
//! - Raw messages (`messages`, the packed samples) are partitioned by UTC day of their poll
//!   time, so retention drops whole partitions. A partitioned table cannot hold a key without
//!   its partition column, so each `(device, seq)` is held once in `message_numbers`, the
//!   ledger of numbers, which retention keeps.
//! - `slots` holds each gateway slot's lease and epoch: every commit checks its epoch, so a
//!   writer that lost its lease (paused, partitioned) never writes after a takeover.

pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE devices (
    device TEXT PRIMARY KEY, site TEXT NOT NULL, edge TEXT NOT NULL,
    last_seq BIGINT NOT NULL, last_ts_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL,
    messages BIGINT NOT NULL DEFAULT 0, duplicates BIGINT NOT NULL DEFAULT 0,
    conflicts BIGINT NOT NULL DEFAULT 0, last_good_ms BIGINT
);
-- `written_by`: the slot and epoch of the writer that committed it ("slot#epoch"), NULL for a
-- gateway without a slot.
CREATE TABLE message_numbers (
    device TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL, written_by TEXT,
    PRIMARY KEY (device, seq)
);
CREATE INDEX message_numbers_by_time ON message_numbers (device, ts_ms);
CREATE TABLE messages (
    device TEXT NOT NULL, seq BIGINT NOT NULL, ts_ms BIGINT NOT NULL,
    edge TEXT NOT NULL, received_ms BIGINT NOT NULL, points BYTEA,
    PRIMARY KEY (device, ts_ms, seq)
) PARTITION BY RANGE (ts_ms);
CREATE TABLE gaps (
    device TEXT NOT NULL, from_seq BIGINT NOT NULL, to_seq BIGINT NOT NULL,
    detected_ms BIGINT NOT NULL,
    PRIMARY KEY (device, from_seq)
);
CREATE TABLE lost (
    device TEXT NOT NULL, from_seq BIGINT NOT NULL, to_seq BIGINT NOT NULL,
    declared_ms BIGINT NOT NULL, declared_by TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (device, from_seq)
);
CREATE TABLE series (
    id BIGSERIAL PRIMARY KEY, device TEXT NOT NULL, point TEXT NOT NULL, UNIQUE (device, point)
);
CREATE TABLE edges (
    edge TEXT PRIMARY KEY, site TEXT NOT NULL, online BOOLEAN NOT NULL,
    devices TEXT NOT NULL, changed_ms BIGINT NOT NULL,
    spool_depth BIGINT, spool_dropped BIGINT
);
CREATE TABLE quarantine (
    id BIGSERIAL PRIMARY KEY, received_ms BIGINT NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, payload BYTEA NOT NULL, payload_bytes BIGINT, payload_sha256 TEXT
);
CREATE TABLE quarantine_totals (
    reason TEXT PRIMARY KEY, count BIGINT NOT NULL, bytes BIGINT NOT NULL
);
CREATE TABLE anomalies (
    id BIGSERIAL PRIMARY KEY, device TEXT NOT NULL, point TEXT NOT NULL, ts_ms BIGINT NOT NULL,
    kind TEXT NOT NULL, detail TEXT NOT NULL, withdrawn_ms BIGINT
);
CREATE INDEX anomalies_by_point ON anomalies (device, point, ts_ms);
CREATE TABLE point_slots (
    device TEXT NOT NULL, point TEXT NOT NULL, slot_ms BIGINT NOT NULL,
    delta DOUBLE PRECISION NOT NULL, covered_ms BIGINT NOT NULL,
    estimated DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device, point, slot_ms)
);
CREATE TABLE counter_checkpoints (
    device TEXT NOT NULL, point TEXT NOT NULL, slot_ms BIGINT NOT NULL,
    through_ms BIGINT NOT NULL, ts_ms BIGINT NOT NULL, value DOUBLE PRECISION NOT NULL,
    rejected BIGINT NOT NULL, changed_ms BIGINT NOT NULL, rate_per_h DOUBLE PRECISION,
    PRIMARY KEY (device, point, slot_ms)
);
CREATE TABLE sink_queue (id BIGSERIAL PRIMARY KEY, lines TEXT NOT NULL);
CREATE TABLE slots (
    slot TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
"#,
    r#"
-- Raw messages polled before this time have been dropped by retention (whole day partitions);
-- rollups and the ledger of numbers stay. The integrity check starts each point at its first
-- kept sample.
CREATE TABLE retention (id INTEGER PRIMARY KEY CHECK (id = 1), raw_before_ms BIGINT NOT NULL);
-- The edge that sent each number, so that a copy of a message whose day was dropped is still
-- compared on its poll time and edge (SQLite keeps both in the message's row).
ALTER TABLE message_numbers ADD COLUMN edge TEXT;
-- The alarm book, one for the database (see pg/alarms.rs).
CREATE TABLE alarms (
    id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL,
    raised_ms BIGINT NOT NULL, cleared_ms BIGINT,
    value DOUBLE PRECISION, threshold DOUBLE PRECISION, message TEXT NOT NULL,
    acked_ms BIGINT, acked_by TEXT,
    -- For counter anomalies: the anomaly this alarm reports.
    anomaly_id BIGINT
);
-- At most one open alarm per condition.
CREATE UNIQUE INDEX alarms_open ON alarms (kind, subject) WHERE cleared_ms IS NULL;
-- The time-series sink's 15-minute slots whose rollups changed since last sent (the queue of
-- stored messages' lines is `sink_queue`).
CREATE TABLE sink_dirty_slots (slot_ms BIGINT PRIMARY KEY, version BIGINT NOT NULL);
-- The provincial upload: the outbox of records as made (one maker at a time, so ids follow the
-- order they were made in), each endpoint's confirmations, where each kind of record goes on.
CREATE TABLE upload_outbox (
    id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, period_start_ms BIGINT NOT NULL,
    record_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL, created_ms BIGINT NOT NULL,
    UNIQUE (kind, period_start_ms)
);
CREATE TABLE upload_acks (
    endpoint TEXT NOT NULL, outbox_id BIGINT NOT NULL, acked_ms BIGINT NOT NULL,
    PRIMARY KEY (endpoint, outbox_id)
);
CREATE TABLE upload_state (kind TEXT PRIMARY KEY, next_start_ms BIGINT NOT NULL);
"#,
    r#"
-- Protocol v1.2's evidence of each signed message (see SQLite's schema): one row a message,
-- and each device's chain.
CREATE TABLE evidence (
    device TEXT NOT NULL, seq BIGINT NOT NULL, site TEXT NOT NULL, edge TEXT NOT NULL,
    prev BYTEA NOT NULL, digest BYTEA NOT NULL, sig BYTEA NOT NULL, verified BOOLEAN NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE chains (
    device TEXT PRIMARY KEY, head_seq BIGINT NOT NULL, head_digest BYTEA NOT NULL,
    verified_through BIGINT NOT NULL, signed BIGINT NOT NULL, verified BIGINT NOT NULL,
    restarts BIGINT NOT NULL, refused BIGINT NOT NULL
);
-- The operator audit log (audit.rs): appended under an advisory lock, so ids follow the chain.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY, at_ms BIGINT NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
    subject TEXT NOT NULL, detail TEXT NOT NULL, prev BYTEA NOT NULL, digest BYTEA NOT NULL
);
"#,
];

/// Brings the database to the newest schema, one migration a transaction; two gateways that
/// start at once take turns (an advisory lock).
pub(super) fn migrate(client: &mut postgres::Client) -> anyhow::Result<()> {
    let mut tx = client.transaction()?;
    // Any constant of our own: the lock is held to the end of this transaction.
    tx.execute("SELECT pg_advisory_xact_lock(7243001)", &[])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let current: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
        .get(0);
    anyhow::ensure!(
        current as usize <= MIGRATIONS.len(),
        "the database's schema version {current} is newer than this gateway's ({}); upgrade the gateway",
        MIGRATIONS.len()
    );
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO schema_version VALUES ($1)", &[&(i as i32 + 1)])?;
    }
    tx.commit()?;
    Ok(())
}
