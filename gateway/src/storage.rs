//! The storage seam: what ingest needs of a backend. SQLite ([`crate::store::Store`]) is the
//! embedded default; a relational or time-series backend implements [`Storage`] and plugs into
//! [`crate::ingest::run`] with ingest and the accounting arithmetic ([`crate::accounting`])
//! unchanged.

use crate::store::{BatchOutcome, Incoming, WriteRules};

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

impl Storage for crate::store::Store {
    fn write_batch(
        &mut self,
        batch: &[Incoming],
        rules: &WriteRules,
        received_ms: i64,
    ) -> anyhow::Result<BatchOutcome> {
        crate::store::Store::write_batch(self, batch, rules, received_ms)
    }
}
