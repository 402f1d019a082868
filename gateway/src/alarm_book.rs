//! The alarm book, whichever backend keeps it: alarms raised, kept current, cleared with
//! hysteresis and acknowledged once. [`AlarmStore`] is what a backend does (SQLite's in
//! [`crate::store`], PostgreSQL's in [`crate::pg`]); [`AlarmBook`] is the handle
//! [`crate::alarms`] and the API share; the types and the hysteresis rule are the same for both.

use std::collections::HashMap;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    AboveLimit,
    NearLimit,
    DataGap,
    DeviceOffline,
    SequenceGap,
    CounterAnomaly,
    Evidence,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::AboveLimit,
        Kind::NearLimit,
        Kind::DataGap,
        Kind::DeviceOffline,
        Kind::SequenceGap,
        Kind::CounterAnomaly,
        Kind::Evidence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AboveLimit => "above_limit",
            Kind::NearLimit => "near_limit",
            Kind::DataGap => "data_gap",
            Kind::DeviceOffline => "device_offline",
            Kind::SequenceGap => "sequence_gap",
            Kind::CounterAnomaly => "counter_anomaly",
            Kind::Evidence => "evidence",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The alarm kind of an `anomalies` row, in SQL both backends speak: a device's evidence
/// troubles (point `evidence`, see `batch::chain`) are `evidence`, the rest counter anomalies.
pub const ANOMALY_KIND_SQL: &str = "CASE WHEN point = 'evidence' AND kind IN ('signature', 'unsigned', 'chain', 'chain_restart') THEN 'evidence' ELSE 'counter_anomaly' END";

/// What one evaluation found about one condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: Kind,
    pub subject: String,
    /// The raise condition holds.
    pub raise: bool,
    /// The clear condition holds; with hysteresis it is stricter than `!raise`.
    pub clear: bool,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Raise,
    Clear,
}

/// Hysteresis: an open alarm stays open until its clear condition holds; a closed one opens
/// when its raise condition holds.
pub fn change(open: bool, obs: &Observation) -> Option<Change> {
    match (open, obs.raise, obs.clear) {
        (false, true, _) => Some(Change::Raise),
        (true, _, true) => Some(Change::Clear),
        _ => None,
    }
}

/// What the ledger says about one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    pub device: String,
    /// Its edge's last status.
    pub edge_online: bool,
    pub last_good_ms: Option<i64>,
    pub missing: i64,
}

/// One alarm as the API and the MQTT topic show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlarmRow {
    pub id: i64,
    pub kind: Kind,
    pub subject: String,
    /// The condition still holds.
    pub active: bool,
    pub raised: String,
    pub cleared: Option<String>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
    pub acked: Option<String>,
    pub acked_by: Option<String>,
}

impl AlarmRow {
    pub fn topic(&self, prefix: &str) -> String {
        format!("{prefix}/alarms/{}/{}", self.kind.as_str(), self.subject)
    }
}

#[derive(Debug)]
pub enum AckOutcome {
    Acked(AlarmRow),
    AlreadyAcked(AlarmRow),
    NotFound,
}

/// What a backend keeps of the alarms. Each call is one transaction.
pub trait AlarmStore: Send {
    /// Whether this gateway evaluates the alarms: always with SQLite; with PostgreSQL, one
    /// gateway of the database at a time.
    fn evaluates(&mut self) -> anyhow::Result<bool> {
        Ok(true)
    }
    /// The newest poll time any device delivered.
    fn newest_poll_ms(&mut self) -> anyhow::Result<Option<i64>>;
    /// What the ledger says about each device, in name order.
    fn devices(&mut self) -> anyhow::Result<Vec<DeviceState>>;
    /// Applies one evaluation ([`change`] decides each observation); returns the alarms raised
    /// or cleared.
    fn apply(&mut self, now_ms: i64, found: &[Observation]) -> anyhow::Result<Vec<AlarmRow>>;
    /// Raises one event alarm (raised cleared) for each counter anomaly not reported yet, in
    /// the anomalies' order.
    fn report_anomalies(&mut self, now_ms: i64) -> anyhow::Result<Vec<AlarmRow>>;
    /// Alarms newest first: all, or only those open or unacknowledged.
    fn list(&mut self, pending_only: bool, limit: i64) -> anyhow::Result<Vec<AlarmRow>>;
    /// Open alarms by kind.
    fn open_counts(&mut self) -> anyhow::Result<HashMap<Kind, i64>>;
    /// An operator acknowledges an alarm; the first acknowledgement stands.
    fn ack(&mut self, id: i64, by: &str, now_ms: i64) -> anyhow::Result<AckOutcome>;
}

/// The alarm book, kept by whichever backend holds the record.
pub struct AlarmBook(Box<dyn AlarmStore>);

impl AlarmBook {
    pub fn new(backend: impl AlarmStore + 'static) -> AlarmBook {
        AlarmBook(Box::new(backend))
    }
}

impl std::ops::Deref for AlarmBook {
    type Target = dyn AlarmStore;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl std::ops::DerefMut for AlarmBook {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut *self.0
    }
}
