//! Upkeep of PostgreSQL's record: raw history dropped a whole day partition at a time (no row
//! deletes, no bloat, no vacuum behind them), quarantine entries past their retention, counter
//! checkpoints no late reading can need. Rollups, the ledger of numbers and the quarantine's
//! totals stay. Every statement is idempotent: any gateway of the database may run it.

use ems_energy::counter::slot_of;
use postgres::Client;

use super::DAY_MS;

/// What dropping old raw history did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub partitions: u64,
    pub messages: u64,
}

/// Drops the raw partitions of the UTC days that ended at or before `before_ms` (so up to a
/// day more than asked for is kept), and records the horizon for the integrity check.
pub fn drop_raw_before(client: &mut Client, before_ms: i64) -> anyhow::Result<Dropped> {
    let partitions: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'messages'::regclass ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut dropped = Dropped::default();
    for name in partitions {
        // Named by their day (see `partition_for`): messages_d20454, messages_dm3 for day -3.
        let Some(day) = name
            .strip_prefix("messages_d")
            .and_then(|d| d.replace('m', "-").parse::<i64>().ok())
        else {
            continue;
        };
        if (day + 1) * DAY_MS > before_ms {
            continue;
        }
        let mut tx = client.transaction()?;
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {name}"), &[])?
            .get(0);
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))?;
        tx.execute(
            "INSERT INTO retention (id, raw_before_ms) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET raw_before_ms = GREATEST(retention.raw_before_ms, $1)",
            &[&((day + 1) * DAY_MS)],
        )?;
        tx.commit()?;
        dropped.partitions += 1;
        dropped.messages += n as u64;
    }
    Ok(dropped)
}

/// Deletes quarantine entries received before `before_ms`; their counts stay in the totals.
pub fn prune_quarantine(client: &mut Client, before_ms: i64) -> anyhow::Result<u64> {
    Ok(client.execute(
        "DELETE FROM quarantine WHERE received_ms < $1",
        &[&before_ms],
    )?)
}

/// Deletes counter checkpoints older than `window_ms` behind their device's newest message,
/// except the newest of them (the state a replay starts from). Returns the rows deleted.
pub fn prune_checkpoints(client: &mut Client, window_ms: i64) -> anyhow::Result<u64> {
    let devices: Vec<(String, i64)> = client
        .query("SELECT device, last_ts_ms FROM devices", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut deleted = 0;
    for (device, newest) in devices {
        let cutoff = slot_of(newest.saturating_sub(window_ms));
        deleted += client.execute(
            "DELETE FROM counter_checkpoints AS c WHERE device = $1 AND slot_ms < (
                 SELECT MAX(k.slot_ms) FROM counter_checkpoints k
                 WHERE k.device = c.device AND k.point = c.point AND k.slot_ms <= $2)",
            &[&device, &cutoff],
        )?;
    }
    Ok(deleted)
}
