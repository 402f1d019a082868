//! ems-gateway: the collector. MQTT ingest, ledger, storage, HTTP API and dashboard, reports,
//! upload. The energy domain (plant model, counters, calendar, coefficients, limits,
//! indicators, baselines) is the pure crate ems-energy beneath it.
//!
//! [`ingest`] validates and commits what the edges send through the seam of [`storage`]
//! ([`batch`] is what a batch does to the record, [`store`] keeps it in SQLite); [`alarms`] watches the figures and the ledger; [`api`] serves
//! them, [`report`] writes them for the authority, [`upload`] sends them to it. [`runtime`] runs
//! it all with shutdown as a parameter; [`demo`] (cargo feature `demo`) adds a broker, a
//! simulated plant and an edge in the same process.

pub mod alarm_book;
pub mod alarms;
pub mod api;
pub mod audit;
pub mod batch;
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod enrol;
pub mod evidence;
pub mod history;
pub mod influx;
pub mod ingest;
pub mod metrics;
pub mod packed;
pub mod pg;
pub mod pool;
pub mod receiver;
pub mod report;
pub mod runtime;
pub mod stock;
pub mod storage;
pub mod store;
pub mod strip;
pub mod upload;
pub mod view;

pub use config::Config;
pub use ems_energy::Plant;
pub use runtime::serve;
