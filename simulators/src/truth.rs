//! The truth file: what really flowed and what really happened, never read from a meter.
//!
//! JSON lines of two kinds, told apart by `record`: an `interval` per unit per simulated hour
//! (the first and last may be shorter) with the true quantities integrated from the model, and
//! an `event` for everything that happened that a meter reading may not show: injected faults
//! starting and ending, counters wrapping, meters replaced, operating states changing, anode
//! effects. Tests compare the gateway's figures and flags with these.

use serde::{Deserialize, Serialize};

use crate::model::{Role, UnitKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum TruthLine {
    Interval(TruthRecord),
    Event(TruthEvent),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthRecord {
    pub unit: String,
    pub kind: UnitKind,
    /// The enterprise whose boundary the unit is inside (an enterprise's own id for itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enterprise: Option<String>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TruthEvent {
    /// When it happened, RFC 3339 UTC.
    pub at: String,
    /// fault_start, fault_end, rollover, meter_replaced, state, anode_effect.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub detail: String,
}
