//! The gateway's "now": the wall clock in production, the simulator's in the demo and tests.

use std::sync::Arc;

pub type NowFn = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A time in milliseconds since the Unix epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
