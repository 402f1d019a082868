//! PostgreSQL as the system of record (`[storage] backend = "postgres"`): ingest's batches run
//! the same logic as SQLite's ([`crate::batch`]) over a PostgreSQL transaction, so both keep the
//! same record of the same messages. Each `(device, seq)` is stored once (`INSERT ... ON
//! CONFLICT DO NOTHING RETURNING` into `message_numbers`), raw messages go into day partitions,
//! and a gateway slot's lease fences every commit by its epoch.
//!
//! [`PgReader`] is what the API, reports and alarms read: every site of the database, whichever
//! slot wrote it. History compaction is SQLite's: here retention drops whole day partitions.

mod alarms;
mod audit_log;
mod read;
mod schema;
mod sink;
pub mod upkeep;
mod upload;

pub use alarms::PgAlarms;
pub use read::PgReader;
pub use sink::PgSinkQueue;
pub use upload::PgOutbox;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use ems_core::wire::{Status, Telemetry};
use ems_energy::counter::{CounterTrack, PointSlot};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement, Transaction};

use crate::batch::{
    Caches, ChainRow, DeviceUpdate, EvidenceRow, KeptRefusal, LedgerMark, Link, LostRow, Reading,
    StoredVersion, WriteTx,
};
use crate::storage::{reason_code, BatchOutcome, Fenced, Incoming, Storage, WriteRules};

const DAY_MS: i64 = 86_400_000;

/// The advisory lock of the ledger's gaps: every batch holds it shared, an operator declaring a
/// gap lost holds it alone (any constant of our own, beside the migrations' 7243001).
const LEDGER_LOCK: i64 = 7_243_002;

/// A gateway slot's lease, held by this writer with its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub slot: String,
    pub holder: String,
    pub epoch: i64,
}

pub struct PgStore {
    url: String,
    client: Client,
    caches: Caches,
    statements: HashMap<&'static str, Statement>,
    /// Days whose raw partition exists (as far as this writer knows).
    partitions: HashSet<i64>,
    lease: Option<Lease>,
    /// The lease's length, once one was taken: no transaction of this writer stays idle longer.
    lease_ms: Option<i64>,
    /// Queue what is stored for the time-series sink.
    sink: Option<crate::batch::SinkEncoder>,
}

impl PgStore {
    /// Connects (a libpq URL or key-value string) and brings the schema up to date.
    pub fn connect(url: &str) -> anyhow::Result<PgStore> {
        let mut client = Client::connect(url, NoTls)
            .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
        schema::migrate(&mut client).context("cannot migrate the PostgreSQL schema")?;
        Ok(PgStore {
            url: url.to_owned(),
            client,
            caches: Caches::default(),
            statements: HashMap::new(),
            partitions: HashSet::new(),
            lease: None,
            lease_ms: None,
            sink: None,
        })
    }

    /// From now on, queue every stored message (as `encode` writes it) and every 15-minute slot
    /// whose rollups changed for the time-series sink, in the transaction that stores them.
    pub fn enable_sink(&mut self, encode: crate::batch::SinkEncoder) {
        self.sink = Some(encode);
    }

    /// The database's clock, in milliseconds since the epoch: leases are timed by it alone, so
    /// the gateways' own clocks need not agree.
    fn now_ms(&mut self) -> anyhow::Result<i64> {
        Ok(self
            .client
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )?
            .get(0))
    }

    /// Takes slot `slot` for `holder` for `ttl_ms` if it is free or its lease has lapsed, with
    /// the next epoch; `None` while another holder's lease runs.
    pub fn acquire(
        &mut self,
        slot: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> anyhow::Result<Option<Lease>> {
        let now = self.now_ms()?;
        let row = self.client.query_opt(
            "INSERT INTO slots (slot, holder, epoch, expires_ms) VALUES ($1, $2, 1, $3::bigint + $4::bigint)
             ON CONFLICT (slot) DO UPDATE SET holder = EXCLUDED.holder, epoch = slots.epoch + 1,
               expires_ms = EXCLUDED.expires_ms
             WHERE slots.expires_ms < $3
             RETURNING epoch",
            &[&slot, &holder, &now, &ttl_ms],
        )?;
        let lease = row.map(|r| Lease {
            slot: slot.to_owned(),
            holder: holder.to_owned(),
            epoch: r.get(0),
        });
        if lease.is_some() {
            // A writer paused inside a transaction holds the slot's row (see write_batch): the
            // server ends such a transaction after the lease's length, so a takeover never
            // waits for the paused writer for longer.
            self.lease_ms = Some(ttl_ms.max(1));
            self.bound_idle_transactions()?;
            self.lease = lease.clone();
            // Another writer may have moved the counters on since this one last wrote.
            self.caches.clear();
        }
        Ok(lease)
    }

    /// Fences this writer's commits with `lease` (taken by another connection, the keeper's).
    pub fn hold(&mut self, lease: Lease) {
        self.lease = Some(lease);
        self.caches.clear();
    }

    fn bound_idle_transactions(&mut self) -> anyhow::Result<()> {
        if let Some(ms) = self.lease_ms {
            self.client
                .batch_execute(&format!("SET idle_in_transaction_session_timeout = {ms}"))?;
        }
        Ok(())
    }

    /// Extends the lease held; `false` if it was taken over (this writer must stop).
    pub fn renew(&mut self, ttl_ms: i64) -> anyhow::Result<bool> {
        let Some(lease) = self.lease.clone() else {
            return Ok(false);
        };
        let now = self.now_ms()?;
        let n = self.client.execute(
            "UPDATE slots SET expires_ms = $3::bigint + $4::bigint WHERE slot = $1 AND epoch = $2",
            &[&lease.slot, &lease.epoch, &now, &ttl_ms],
        )?;
        Ok(n == 1)
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Commits one batch in one transaction, if this writer's lease is still the slot's: checked
    /// last, with the slot's row share-locked from there to the commit, so that a takeover
    /// either comes before (and the batch is refused) or after the commit.
    pub fn write_batch(
        &mut self,
        batch: &[Incoming],
        rules: &WriteRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome> {
        if self.client.is_closed() {
            // The server ended the session (restarted, or a transaction left idle too long by
            // a paused writer): a new one, with the caches and statements of none.
            tracing::warn!("The PostgreSQL connection was closed; reconnecting.");
            self.client = Client::connect(&self.url, NoTls).with_context(|| {
                format!("cannot reconnect to PostgreSQL at {}", redact(&self.url))
            })?;
            self.statements.clear();
            self.caches.clear();
            self.partitions.clear();
            self.bound_idle_transactions()?;
        }
        self.make_partitions(batch)?;
        let result = self.write_in_transaction(batch, rules, received_ms);
        if result.is_err() {
            // Rolled back: the caches and the partitions made in it may be of that batch.
            self.caches.clear();
            self.partitions.clear();
        }
        result
    }

    /// The raw partitions of the batch's days, made before its transaction, each in one of its
    /// own: two writers making the same day's at once (two slots at midnight) must not fail a
    /// batch. `IF NOT EXISTS` is no guard against that race: the second waits for the first
    /// to commit, then fails as a duplicate, which is taken as made.
    fn make_partitions(&mut self, batch: &[Incoming]) -> anyhow::Result<()> {
        let days: std::collections::BTreeSet<i64> = batch
            .iter()
            .filter_map(|i| match i {
                Incoming::Telemetry(t, _) => Some(t.ts_ms.div_euclid(DAY_MS)),
                _ => None,
            })
            .filter(|d| !self.partitions.contains(d))
            .collect();
        for day in days {
            match self.client.batch_execute(&partition_ddl(day)) {
                Ok(()) => {}
                Err(e)
                    if e.code() == Some(&postgres::error::SqlState::DUPLICATE_TABLE)
                        || e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return Err(e.into()),
            }
            self.partitions.insert(day);
        }
        Ok(())
    }

    fn write_in_transaction(
        &mut self,
        batch: &[Incoming],
        rules: &WriteRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome> {
        let mut tx = self.client.transaction()?;
        let out = {
            let pg = PgTx {
                sink: self.sink.is_some(),
                writer: self
                    .lease
                    .as_ref()
                    .map(|l| format!("{}#{}", l.slot, l.epoch)),
                raw: RefCell::default(),
                numbers: RefCell::default(),
                slots: RefCell::default(),
                checkpoints: RefCell::default(),
                devices: RefCell::default(),
                tx: RefCell::new(&mut tx),
                statements: RefCell::new(&mut self.statements),
                partitions: RefCell::new(&mut self.partitions),
            };
            let out = crate::batch::write_batch(
                &pg,
                &mut self.caches,
                self.sink.as_ref(),
                batch,
                rules,
                received_ms,
            )?;
            pg.flush_all()?;
            out
        };
        if let Some(lease) = &self.lease {
            let current: Option<i64> = tx
                .query_opt(
                    "SELECT epoch FROM slots WHERE slot = $1 FOR SHARE",
                    &[&lease.slot],
                )?
                .map(|r| r.get(0));
            if current != Some(lease.epoch) {
                return Err(Fenced {
                    slot: lease.slot.clone(),
                    mine: lease.epoch,
                    current,
                }
                .into());
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// The client, for tests and tools that read what was written.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl Storage for PgStore {
    fn write_batch(
        &mut self,
        batch: &[Incoming],
        rules: &WriteRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome> {
        PgStore::write_batch(self, batch, rules, received_ms)
    }
}

/// A connection string without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url
            .split_whitespace()
            .filter(|p| !p.starts_with("password="))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// An open PostgreSQL transaction, as the batch logic uses it: statements prepared once per
/// connection, day partitions made as messages need them.
struct PgTx<'t, 'c> {
    /// "slot#epoch" of the lease this writer commits under.
    writer: Option<String>,
    /// The time-series sink is on: slots whose rollups change are marked for it.
    sink: bool,
    /// Raw messages numbered in this batch and not yet inserted: written many to a statement
    /// (before anything reads raw messages, and at the batch's end).
    raw: RefCell<RawRows>,
    /// The batch's (device, seq) and those of them stored before it (looked up at once).
    numbers: RefCell<Numbers>,
    /// The batch's rollup additions, counter checkpoints and ledger rows, written many to a
    /// statement at its end (or before something reads them).
    slots: RefCell<SlotRows>,
    checkpoints: RefCell<std::collections::BTreeMap<(String, String, i64), CounterTrack>>,
    devices: RefCell<DeviceRows>,
    tx: RefCell<&'t mut Transaction<'c>>,
    statements: RefCell<&'t mut HashMap<&'static str, Statement>>,
    partitions: RefCell<&'t mut HashSet<i64>>,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// The sequence numbers of a batch: which it holds, which were stored before it, and those it
/// stores, to be inserted many to a statement.
#[derive(Default)]
struct Numbers {
    in_batch: HashSet<(String, i64)>,
    stored_before: HashSet<(String, i64)>,
    new: HashSet<(String, i64)>,
    device: Vec<String>,
    seq: Vec<i64>,
    ts_ms: Vec<i64>,
    edge: Vec<String>,
}

/// Rollup additions, column by column, each key once.
#[derive(Default)]
struct SlotRows {
    keys: HashSet<(String, String, i64)>,
    device: Vec<String>,
    point: Vec<String>,
    slot_ms: Vec<i64>,
    delta: Vec<f64>,
    covered_ms: Vec<i64>,
    estimated: Vec<f64>,
}

/// Ledger row changes, column by column, each device once.
#[derive(Default)]
struct DeviceRows {
    keys: HashSet<String>,
    device: Vec<String>,
    seq: Vec<Option<i64>>,
    ts_ms: Vec<Option<i64>>,
    site: Vec<Option<String>>,
    edge: Vec<Option<String>>,
    seen_ms: Vec<i64>,
    messages: Vec<i64>,
    last_good_ms: Vec<Option<i64>>,
}

/// Raw message rows, column by column (as `unnest` takes them).
#[derive(Default)]
struct RawRows {
    device: Vec<String>,
    seq: Vec<i64>,
    ts_ms: Vec<i64>,
    edge: Vec<String>,
    received_ms: Vec<i64>,
    points: Vec<Vec<u8>>,
}

impl PgTx<'_, '_> {
    /// Inserts the numbers held back, in one statement: `ON CONFLICT DO NOTHING RETURNING`
    /// tells whether each was new; one that was not (a writer outside the slots stored it
    /// meanwhile) fails the batch, which is retried and then finds it stored.
    fn flush_numbers(&self) -> anyhow::Result<()> {
        let (device, seq, ts_ms, edge) = {
            let mut n = self.numbers.borrow_mut();
            (
                std::mem::take(&mut n.device),
                std::mem::take(&mut n.seq),
                std::mem::take(&mut n.ts_ms),
                std::mem::take(&mut n.edge),
            )
        };
        if seq.is_empty() {
            return Ok(());
        }
        let inserted = self
            .query(
                "INSERT INTO message_numbers (device, seq, ts_ms, written_by, edge)
                 SELECT d, s, t, $4::text, e FROM unnest($1::text[], $2::int8[], $3::int8[], $5::text[]) AS u(d, s, t, e)
                 ON CONFLICT DO NOTHING RETURNING seq",
                &[&device, &seq, &ts_ms, &self.writer, &edge],
            )?
            .len();
        anyhow::ensure!(
            inserted == seq.len(),
            "{} of {} sequence numbers were stored meanwhile by another writer; the batch is retried",
            seq.len() - inserted,
            seq.len()
        );
        Ok(())
    }

    /// Inserts the raw messages held back (and their numbers), in one statement each.
    fn flush_raw(&self) -> anyhow::Result<()> {
        self.flush_numbers()?;
        let rows = std::mem::take(&mut *self.raw.borrow_mut());
        if rows.seq.is_empty() {
            return Ok(());
        }
        self.execute(
            "INSERT INTO messages (device, seq, ts_ms, edge, received_ms, points)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[], $6::bytea[])",
            &[&rows.device, &rows.seq, &rows.ts_ms, &rows.edge, &rows.received_ms, &rows.points],
        )?;
        Ok(())
    }

    fn flush_slots(&self) -> anyhow::Result<()> {
        let rows = std::mem::take(&mut *self.slots.borrow_mut());
        if rows.device.is_empty() {
            return Ok(());
        }
        self.execute(
            "INSERT INTO point_slots (device, point, slot_ms, delta, covered_ms, estimated)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::float8[], $5::int8[], $6::float8[])
             ON CONFLICT (device, point, slot_ms) DO UPDATE SET
               delta = point_slots.delta + EXCLUDED.delta,
               covered_ms = point_slots.covered_ms + EXCLUDED.covered_ms,
               estimated = point_slots.estimated + EXCLUDED.estimated",
            &[&rows.device, &rows.point, &rows.slot_ms, &rows.delta, &rows.covered_ms, &rows.estimated],
        )?;
        if self.sink {
            // Each changed slot's version moves on: the sink sends a slot once it settled. The
            // rows are shared by every slot's writer: taken in slot order, so that two writers
            // never wait for each other in a circle.
            self.execute(
                "INSERT INTO sink_dirty_slots (slot_ms, version)
                 SELECT DISTINCT s, 1 FROM unnest($1::int8[]) AS u(s) ORDER BY s
                 ON CONFLICT (slot_ms) DO UPDATE SET version = sink_dirty_slots.version + 1",
                &[&rows.slot_ms],
            )?;
        }
        Ok(())
    }

    fn flush_checkpoints(&self) -> anyhow::Result<()> {
        let rows = std::mem::take(&mut *self.checkpoints.borrow_mut());
        if rows.is_empty() {
            return Ok(());
        }
        let (mut device, mut point, mut slot_ms, mut through_ms) = (vec![], vec![], vec![], vec![]);
        let (mut ts_ms, mut value, mut rejected, mut changed_ms, mut rate) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((d, p, slot), t) in rows {
            let Some((ts, v)) = t.anchor else { continue };
            device.push(d);
            point.push(p);
            slot_ms.push(slot);
            through_ms.push(t.through_ms);
            ts_ms.push(ts);
            value.push(v);
            rejected.push(i64::from(t.rejected));
            changed_ms.push(t.changed_ms);
            rate.push(t.rate_per_h);
        }
        self.execute(
            "INSERT INTO counter_checkpoints (device, point, slot_ms, through_ms, ts_ms, value, rejected, changed_ms, rate_per_h)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::float8[], $7::int8[], $8::int8[], $9::float8[])
             ON CONFLICT (device, point, slot_ms) DO UPDATE SET through_ms = EXCLUDED.through_ms,
               ts_ms = EXCLUDED.ts_ms, value = EXCLUDED.value, rejected = EXCLUDED.rejected,
               changed_ms = EXCLUDED.changed_ms, rate_per_h = EXCLUDED.rate_per_h",
            &[&device, &point, &slot_ms, &through_ms, &ts_ms, &value, &rejected, &changed_ms, &rate],
        )?;
        Ok(())
    }

    fn flush_devices(&self) -> anyhow::Result<()> {
        let rows = std::mem::take(&mut *self.devices.borrow_mut());
        if rows.device.is_empty() {
            return Ok(());
        }
        self.execute(
            "UPDATE devices d SET last_seq = COALESCE(u.seq, d.last_seq),
               last_ts_ms = COALESCE(u.ts_ms, d.last_ts_ms), site = COALESCE(u.site, d.site),
               edge = COALESCE(u.edge, d.edge), last_seen_ms = u.seen_ms,
               messages = d.messages + u.messages, last_good_ms = COALESCE(u.last_good_ms, d.last_good_ms)
             FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::int8[], $7::int8[], $8::int8[])
               AS u(device, seq, ts_ms, site, edge, seen_ms, messages, last_good_ms)
             WHERE d.device = u.device",
            &[&rows.device, &rows.seq, &rows.ts_ms, &rows.site, &rows.edge, &rows.seen_ms, &rows.messages, &rows.last_good_ms],
        )?;
        Ok(())
    }

    /// Everything held back, before the commit.
    fn flush_all(&self) -> anyhow::Result<()> {
        self.flush_raw()?;
        self.flush_slots()?;
        self.flush_checkpoints()?;
        self.flush_devices()
    }

    fn statement(&self, sql: &'static str) -> anyhow::Result<Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.borrow_mut().prepare(sql)?;
        self.statements.borrow_mut().insert(sql, s.clone());
        Ok(s)
    }

    fn query(&self, sql: &'static str, params: Params<'_>) -> anyhow::Result<Vec<Row>> {
        let s = self.statement(sql)?;
        Ok(self.tx.borrow_mut().query(&s, params)?)
    }

    fn query_opt(&self, sql: &'static str, params: Params<'_>) -> anyhow::Result<Option<Row>> {
        let s = self.statement(sql)?;
        Ok(self.tx.borrow_mut().query_opt(&s, params)?)
    }

    fn execute(&self, sql: &'static str, params: Params<'_>) -> anyhow::Result<u64> {
        let s = self.statement(sql)?;
        Ok(self.tx.borrow_mut().execute(&s, params)?)
    }

    /// The raw partition of the day of `ts_ms`, made if it is not there.
    fn partition_for(&self, ts_ms: i64) -> anyhow::Result<()> {
        let day = ts_ms.div_euclid(DAY_MS);
        if self.partitions.borrow().contains(&day) {
            return Ok(());
        }
        self.tx.borrow_mut().batch_execute(&partition_ddl(day))?;
        self.partitions.borrow_mut().insert(day);
        Ok(())
    }
}

/// The statement that makes day `day`'s raw partition (named by its day: `messages_d20454`,
/// `messages_dm3` for day -3), if it is not there.
fn partition_ddl(day: i64) -> String {
    let name = format!("messages_d{}", day.to_string().replace('-', "m"));
    format!(
        "CREATE TABLE IF NOT EXISTS {name} PARTITION OF messages FOR VALUES FROM ({}) TO ({})",
        day * DAY_MS,
        (day + 1) * DAY_MS
    )
}

fn checkpoint(r: &Row) -> CounterTrack {
    CounterTrack {
        through_ms: r.get(0),
        anchor: Some((r.get(1), r.get(2))),
        rejected: r.get::<_, i64>(3) as u32,
        changed_ms: r.get(4),
        rate_per_h: r.get(5),
    }
}

impl WriteTx for PgTx<'_, '_> {
    fn ledger_row(&self, device: &str) -> anyhow::Result<Option<(i64, i64)>> {
        self.flush_devices()?;
        Ok(self
            .query_opt(
                "SELECT last_seq, last_ts_ms FROM devices WHERE device = $1",
                &[&device],
            )?
            .map(|r| (r.get(0), r.get(1))))
    }

    fn reopen(&self, _device: &str, _seq: i64, _ts_ms: i64) -> anyhow::Result<usize> {
        // Nothing is compacted here: raw history stays in rows, in day partitions.
        Ok(0)
    }

    fn prepare(&self, batch: &[Incoming]) -> anyhow::Result<()> {
        let (mut device, mut seq) = (Vec::new(), Vec::new());
        let mut numbers = self.numbers.borrow_mut();
        for item in batch {
            if let Incoming::Telemetry(t, _) = item {
                if numbers.in_batch.insert((t.device.clone(), t.seq as i64)) {
                    device.push(t.device.clone());
                    seq.push(t.seq as i64);
                }
            }
        }
        drop(numbers);
        if device.is_empty() {
            return Ok(());
        }
        // Gaps are split and closed by this batch: never while an operator declares one lost.
        self.query("SELECT pg_advisory_xact_lock_shared($1)", &[&LEDGER_LOCK])?;
        let stored: HashSet<(String, i64)> = self
            .query(
                "SELECT m.device, m.seq FROM message_numbers m
                 JOIN unnest($1::text[], $2::int8[]) AS b(device, seq) USING (device, seq)",
                &[&device, &seq],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        self.numbers.borrow_mut().stored_before = stored;
        Ok(())
    }

    fn message_stored(&self, device: &str, seq: i64) -> anyhow::Result<bool> {
        {
            let n = self.numbers.borrow();
            let key = (device.to_owned(), seq);
            if n.new.contains(&key) || n.stored_before.contains(&key) {
                return Ok(true);
            }
            if n.in_batch.contains(&key) {
                return Ok(false);
            }
        }
        Ok(self
            .query_opt(
                "SELECT 1 FROM message_numbers WHERE device = $1 AND seq = $2",
                &[&device, &seq],
            )?
            .is_some())
    }

    fn insert_message(
        &self,
        t: &Telemetry,
        received_ms: i64,
        points: &[u8],
    ) -> anyhow::Result<bool> {
        let seq = t.seq as i64;
        if self.message_stored(&t.device, seq)? {
            return Ok(false);
        }
        {
            let mut n = self.numbers.borrow_mut();
            n.new.insert((t.device.clone(), seq));
            n.device.push(t.device.clone());
            n.seq.push(seq);
            n.ts_ms.push(t.ts_ms);
            n.edge.push(t.edge.clone());
        }
        self.partition_for(t.ts_ms)?;
        let mut raw = self.raw.borrow_mut();
        raw.device.push(t.device.clone());
        raw.seq.push(seq);
        raw.ts_ms.push(t.ts_ms);
        raw.edge.push(t.edge.clone());
        raw.received_ms.push(received_ms);
        raw.points.push(points.to_vec());
        Ok(true)
    }

    fn stored_version(&self, device: &str, seq: i64) -> anyhow::Result<StoredVersion> {
        self.flush_raw()?;
        let number = self
            .query_opt(
                "SELECT ts_ms, edge FROM message_numbers WHERE device = $1 AND seq = $2",
                &[&device, &seq],
            )?
            .context("a stored number without its ledger row")?;
        let (ts_ms, edge): (i64, Option<String>) = (number.get(0), number.get(1));
        let row = self.query_opt(
            "SELECT edge, points FROM messages WHERE device = $1 AND ts_ms = $2 AND seq = $3",
            &[&device, &ts_ms, &seq],
        )?;
        Ok(match row {
            Some(r) => StoredVersion {
                ts_ms,
                edge: r.get(0),
                points: r.get(1),
            },
            // Its day's partition was dropped by retention: the number, time and edge stay
            // (the edge from schema version 2 on), and a copy is still compared on them.
            None => StoredVersion {
                ts_ms,
                edge: edge.unwrap_or_default(),
                points: None,
            },
        })
    }

    fn point_of_series(&self, series: i64) -> anyhow::Result<String> {
        Ok(self
            .query_opt("SELECT point FROM series WHERE id = $1", &[&series])?
            .context("a packed sample of an unknown series")?
            .get(0))
    }

    fn count_copy(&self, device: &str, conflict: bool) -> anyhow::Result<()> {
        if conflict {
            self.execute(
                "UPDATE devices SET conflicts = conflicts + 1 WHERE device = $1",
                &[&device],
            )?;
        } else {
            self.execute(
                "UPDATE devices SET duplicates = duplicates + 1 WHERE device = $1",
                &[&device],
            )?;
        }
        Ok(())
    }

    fn insert_device(&self, t: &Telemetry, received_ms: i64) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO devices (device, site, edge, last_seq, last_ts_ms, last_seen_ms, messages, last_good_ms)
             VALUES ($1, $2, $3, $4, $5, $6, 0, NULL)",
            &[&t.device, &t.site, &t.edge, &(t.seq as i64), &t.ts_ms, &received_ms],
        )?;
        Ok(())
    }

    fn update_device(
        &self,
        device: &str,
        u: &DeviceUpdate<'_>,
        received_ms: i64,
    ) -> anyhow::Result<()> {
        if self.devices.borrow().keys.contains(device) {
            self.flush_devices()?;
        }
        let mut rows = self.devices.borrow_mut();
        rows.keys.insert(device.to_owned());
        rows.device.push(device.to_owned());
        rows.seq.push(u.newest.map(|n| n.0));
        rows.ts_ms.push(u.newest.map(|n| n.1));
        rows.site.push(u.newest.map(|n| n.2.to_owned()));
        rows.edge.push(u.newest.map(|n| n.3.to_owned()));
        rows.seen_ms.push(received_ms);
        rows.messages.push(u.messages);
        rows.last_good_ms.push(u.last_good_ms);
        Ok(())
    }

    fn insert_gap(&self, device: &str, from: i64, to: i64, detected_ms: i64) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO gaps (device, from_seq, to_seq, detected_ms) VALUES ($1, $2, $3, $4)",
            &[&device, &from, &to, &detected_ms],
        )?;
        Ok(())
    }

    fn gap_containing(&self, device: &str, seq: i64) -> anyhow::Result<Option<(i64, i64, i64)>> {
        Ok(self
            .query_opt(
                "SELECT from_seq, to_seq, detected_ms FROM gaps WHERE device = $1 AND from_seq <= $2 AND to_seq >= $2",
                &[&device, &seq],
            )?
            .map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    fn delete_gap(&self, device: &str, from: i64) -> anyhow::Result<()> {
        self.execute(
            "DELETE FROM gaps WHERE device = $1 AND from_seq = $2",
            &[&device, &from],
        )?;
        Ok(())
    }

    fn lost_containing(&self, device: &str, seq: i64) -> anyhow::Result<Option<LostRow>> {
        Ok(self
            .query_opt(
                "SELECT from_seq, to_seq, declared_ms, declared_by, reason FROM lost
                 WHERE device = $1 AND from_seq <= $2 AND to_seq >= $2",
                &[&device, &seq],
            )?
            .map(|r| LostRow {
                from_seq: r.get(0),
                to_seq: r.get(1),
                declared_ms: r.get(2),
                declared_by: r.get(3),
                reason: r.get(4),
            }))
    }

    fn delete_lost(&self, device: &str, from: i64) -> anyhow::Result<()> {
        self.execute(
            "DELETE FROM lost WHERE device = $1 AND from_seq = $2",
            &[&device, &from],
        )?;
        Ok(())
    }

    fn insert_lost(&self, device: &str, row: &LostRow) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO lost (device, from_seq, to_seq, declared_ms, declared_by, reason) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&device, &row.from_seq, &row.to_seq, &row.declared_ms, &row.declared_by, &row.reason],
        )?;
        Ok(())
    }

    fn ledger_marks(&self, devices: &[&str], max: usize) -> anyhow::Result<Vec<LedgerMark>> {
        self.flush_devices()?;
        // Three statements for the whole batch, not three a device.
        let names: Vec<&str> = devices.to_vec();
        let mut marks: HashMap<String, LedgerMark> = devices
            .iter()
            .map(|d| {
                let empty = LedgerMark {
                    last: 0,
                    newest_gaps: Vec::new(),
                    first_gap: None,
                };
                (d.to_string(), empty)
            })
            .collect();
        for r in self.query(
            "SELECT device, last_seq FROM devices WHERE device = ANY($1)",
            &[&names],
        )? {
            if let Some(m) = marks.get_mut(r.get::<_, &str>(0)) {
                m.last = r.get(1);
            }
        }
        for r in self.query(
            "SELECT device, from_seq, to_seq FROM (
                 SELECT device, from_seq, to_seq,
                        row_number() OVER (PARTITION BY device ORDER BY from_seq DESC) AS newest
                 FROM gaps WHERE device = ANY($1)) g
             WHERE newest <= $2 ORDER BY device, from_seq",
            &[&names, &(max as i64)],
        )? {
            if let Some(m) = marks.get_mut(r.get::<_, &str>(0)) {
                m.newest_gaps.push((r.get(1), r.get(2)));
            }
        }
        for r in self.query(
            "SELECT device, MIN(from_seq) FROM gaps WHERE device = ANY($1) GROUP BY device",
            &[&names],
        )? {
            if let Some(m) = marks.get_mut(r.get::<_, &str>(0)) {
                m.first_gap = r.get(1);
            }
        }
        Ok(devices
            .iter()
            .map(|d| marks.remove(*d).expect("every device has a mark"))
            .collect())
    }

    fn series_id(&self, device: &str, point: &str) -> anyhow::Result<i64> {
        const SELECT: &str = "SELECT id FROM series WHERE device = $1 AND point = $2";
        if let Some(r) = self.query_opt(SELECT, &[&device, &point])? {
            return Ok(r.get(0));
        }
        // Looked up first: an insert that conflicts would still use up a number of the
        // sequence, and the ids would run apart from SQLite's.
        let made = self.query_opt(
            "INSERT INTO series (device, point) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id",
            &[&device, &point],
        )?;
        match made {
            Some(r) => Ok(r.get(0)),
            // Another writer made it meanwhile.
            None => Ok(self
                .query_opt(SELECT, &[&device, &point])?
                .context("a series just made")?
                .get(0)),
        }
    }

    fn keep_refused(&self, r: &KeptRefusal<'_>) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO quarantine (received_ms, topic, reason, payload, payload_bytes, payload_sha256) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&r.received_ms, &r.topic, &r.reason, &r.kept, &r.size, &r.sha256],
        )?;
        self.execute(
            "INSERT INTO quarantine_totals (reason, count, bytes) VALUES ($1, 1, $2)
             ON CONFLICT (reason) DO UPDATE SET count = quarantine_totals.count + 1,
               bytes = quarantine_totals.bytes + $2",
            &[&reason_code(r.reason), &r.size],
        )?;
        Ok(())
    }

    fn upsert_edge(&self, s: &Status, received_ms: i64) -> anyhow::Result<()> {
        let devices = serde_json::to_string(&s.devices)?;
        let depth = s.spool_depth.map(|d| d.min(i64::MAX as u64) as i64);
        let dropped = s.spool_dropped.map(|d| d.min(i64::MAX as u64) as i64);
        // The last will says nothing of the spool: the last report stands.
        self.execute(
            "INSERT INTO edges (edge, site, online, devices, changed_ms, spool_depth, spool_dropped) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (edge) DO UPDATE SET site = $2, online = $3,
               devices = CASE WHEN $3 THEN $4 ELSE edges.devices END, changed_ms = $5,
               spool_depth = COALESCE($6, edges.spool_depth), spool_dropped = COALESCE($7, edges.spool_dropped)",
            &[&s.edge, &s.site, &s.online, &devices, &received_ms, &depth, &dropped],
        )?;
        Ok(())
    }

    fn queue_sink_lines(&self, lines: &str) -> anyhow::Result<()> {
        self.execute("INSERT INTO sink_queue (lines) VALUES ($1)", &[&lines])?;
        Ok(())
    }

    fn latest_checkpoint(&self, device: &str, point: &str) -> anyhow::Result<Option<CounterTrack>> {
        self.flush_checkpoints()?;
        Ok(self
            .query_opt(
                "SELECT through_ms, ts_ms, value, rejected, changed_ms, rate_per_h FROM counter_checkpoints
                 WHERE device = $1 AND point = $2 ORDER BY slot_ms DESC LIMIT 1",
                &[&device, &point],
            )?
            .map(|r| checkpoint(&r)))
    }

    fn checkpoint_before(
        &self,
        device: &str,
        point: &str,
        slot_ms: i64,
        ts_ms: i64,
    ) -> anyhow::Result<Option<CounterTrack>> {
        self.flush_checkpoints()?;
        Ok(self
            .query_opt(
                "SELECT through_ms, ts_ms, value, rejected, changed_ms, rate_per_h FROM counter_checkpoints
                 WHERE device = $1 AND point = $2 AND slot_ms <= $3 AND through_ms < $4
                 ORDER BY slot_ms DESC LIMIT 1",
                &[&device, &point, &slot_ms, &ts_ms],
            )?
            .map(|r| checkpoint(&r)))
    }

    fn write_checkpoint(
        &self,
        device: &str,
        point: &str,
        slot_ms: i64,
        t: &CounterTrack,
    ) -> anyhow::Result<()> {
        if t.anchor.is_some() {
            // A later state of the same slot replaces an earlier one, as the upsert would.
            self.checkpoints
                .borrow_mut()
                .insert((device.to_owned(), point.to_owned(), slot_ms), *t);
        }
        Ok(())
    }

    fn add_slot(
        &self,
        device: &str,
        point: &str,
        slot_ms: i64,
        r: &PointSlot,
    ) -> anyhow::Result<()> {
        let key = (device.to_owned(), point.to_owned(), slot_ms);
        if self.slots.borrow().keys.contains(&key) {
            // Added in the order given, as one upsert each would.
            self.flush_slots()?;
        }
        let mut rows = self.slots.borrow_mut();
        rows.keys.insert(key);
        rows.device.push(device.to_owned());
        rows.point.push(point.to_owned());
        rows.slot_ms.push(slot_ms);
        rows.delta.push(r.delta);
        rows.covered_ms.push(r.covered_ms);
        rows.estimated.push(r.estimated);
        Ok(())
    }

    fn highest_seq_at(&self, device: &str, ts_ms: i64) -> anyhow::Result<Option<i64>> {
        self.flush_numbers()?;
        Ok(self
            .query_opt(
                "SELECT MAX(seq) FROM message_numbers WHERE device = $1 AND ts_ms = $2",
                &[&device, &ts_ms],
            )?
            .and_then(|r| r.get(0)))
    }

    fn good_readings(
        &self,
        device: &str,
        series: i64,
        from_ms: i64,
    ) -> anyhow::Result<Vec<Reading>> {
        self.flush_raw()?;
        let from = from_ms.saturating_add(1);
        let rows = self.query(
            "SELECT seq, ts_ms, points FROM messages WHERE device = $1 AND ts_ms >= $2
             ORDER BY ts_ms, seq",
            &[&device, &from],
        )?;
        let mut readings = Vec::new();
        for r in rows {
            let Some(blob) = r.get::<_, Option<Vec<u8>>>(2) else {
                continue;
            };
            if let Some(value) = crate::packed::good_value(&blob, series)? {
                readings.push(Reading {
                    ts_ms: r.get(1),
                    seq: r.get(0),
                    value,
                });
            }
        }
        Ok(readings)
    }

    fn insert_anomaly(
        &self,
        device: &str,
        point: &str,
        ts_ms: i64,
        kind: &str,
        detail: &str,
    ) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO anomalies (device, point, ts_ms, kind, detail) VALUES ($1, $2, $3, $4, $5)",
            &[&device, &point, &ts_ms, &kind, &detail],
        )?;
        Ok(())
    }

    fn evidence(&self, device: &str, seq: i64) -> anyhow::Result<Option<Link>> {
        let Some(r) = self.query_opt(
            "SELECT prev, digest, verified FROM evidence WHERE device = $1 AND seq = $2",
            &[&device, &seq],
        )?
        else {
            return Ok(None);
        };
        Ok(Some((bytes32(r.get(0))?, bytes32(r.get(1))?, r.get(2))))
    }

    fn insert_evidence(&self, e: &EvidenceRow) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO evidence (device, seq, site, edge, prev, digest, sig, verified)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &e.device,
                &e.seq,
                &e.site,
                &e.edge,
                &&e.prev[..],
                &&e.digest[..],
                &&e.sig[..],
                &e.verified,
            ],
        )?;
        Ok(())
    }

    fn chain(&self, device: &str) -> anyhow::Result<Option<ChainRow>> {
        let Some(r) = self.query_opt(
            "SELECT head_seq, head_digest, verified_through, signed, verified, restarts, refused
             FROM chains WHERE device = $1",
            &[&device],
        )?
        else {
            return Ok(None);
        };
        Ok(Some(ChainRow {
            head_seq: r.get(0),
            head_digest: bytes32(r.get(1))?,
            verified_through: r.get(2),
            signed: r.get(3),
            verified: r.get(4),
            restarts: r.get(5),
            refused: r.get(6),
        }))
    }

    fn put_chain(&self, device: &str, c: &ChainRow) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO chains
             (device, head_seq, head_digest, verified_through, signed, verified, restarts, refused)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (device) DO UPDATE SET head_seq = EXCLUDED.head_seq,
                head_digest = EXCLUDED.head_digest, verified_through = EXCLUDED.verified_through,
                signed = EXCLUDED.signed, verified = EXCLUDED.verified,
                restarts = EXCLUDED.restarts, refused = EXCLUDED.refused",
            &[
                &device,
                &c.head_seq,
                &&c.head_digest[..],
                &c.verified_through,
                &c.signed,
                &c.verified,
                &c.restarts,
                &c.refused,
            ],
        )?;
        Ok(())
    }

    fn withdraw_anomaly(
        &self,
        device: &str,
        point: &str,
        ts_ms: i64,
        kind: &str,
        at_ms: i64,
    ) -> anyhow::Result<()> {
        self.execute(
            "UPDATE anomalies SET withdrawn_ms = $5 WHERE id = (
                 SELECT id FROM anomalies WHERE device = $1 AND point = $2 AND ts_ms = $3 AND kind = $4
                   AND withdrawn_ms IS NULL ORDER BY id DESC LIMIT 1)",
            &[&device, &point, &ts_ms, &kind, &at_ms],
        )?;
        Ok(())
    }
}

/// A database of its own on a PostgreSQL server, made fresh and dropped when it goes: what the
/// tests and benchmarks write to (the machine's server on 127.0.0.1:5432 with trust
/// authentication unless `server` says otherwise).
pub struct ScratchDatabase {
    server: String,
    name: String,
}

impl ScratchDatabase {
    /// Makes database `name` on `server` (a key-value connection string without `dbname`),
    /// dropping one of that name first.
    pub fn new(server: &str, name: &str) -> anyhow::Result<ScratchDatabase> {
        // One statement a call: neither may run inside a transaction block.
        let mut admin = Client::connect(&format!("{server} dbname=postgres"), NoTls)
            .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(server)))?;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(ScratchDatabase {
            server: server.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The server tests and benchmarks use: `EMS_TEST_POSTGRES`, else the machine's.
    pub fn default_server() -> String {
        std::env::var("EMS_TEST_POSTGRES")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".to_owned())
    }

    pub fn url(&self) -> String {
        format!("{} dbname={}", self.server, self.name)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&format!("{} dbname=postgres", self.server), NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A 32-byte digest from a BYTEA column.
pub(crate) fn bytes32(b: &[u8]) -> anyhow::Result<[u8; 32]> {
    b.try_into()
        .map_err(|_| anyhow::anyhow!("a stored digest of {} bytes, not 32", b.len()))
}
