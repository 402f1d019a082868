//! The gateway's "now": the wall clock in production, the simulator's in the demo and tests.

use std::sync::Arc;

pub type NowFn = Arc<dyn Fn() -> i64 + Send + Sync>;
