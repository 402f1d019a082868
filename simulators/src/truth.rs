//! The truth file: what really flowed, integrated from the model, never read from a meter.
//!
//! One JSON line per unit per simulated hour (the first and last may be shorter), appended as
//! each hour closes. Tests compare the gateway's figures with these.

use serde::{Deserialize, Serialize};

use crate::model::{Role, UnitKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthRecord {
    pub unit: String,
    pub kind: UnitKind,
    /// Interval covered, RFC 3339 UTC.
    pub start: String,
    pub end: String,
    pub product_t: f64,
    pub water_m3: f64,
    pub flows: Vec<TruthFlow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthFlow {
    pub flow: String,
    pub carrier: String,
    pub role: Role,
    pub unit: String,
    pub qty: f64,
}
