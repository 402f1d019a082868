//! ems-sim: a simulated plant behind Modbus servers, with a ground-truth file.
//!
//! The process models ([`model`]) integrate every energy carrier, product and water flow on a
//! simulated clock ([`clock`]). Meters ([`meter`]) expose those integrals as Modbus registers
//! through a `tokio_modbus` service ([`service`]); the exact hourly integrals go to the truth file
//! ([`truth`]) so tests can prove the accounting right. Meters that speak DL/T 645 ([`dlt645`])
//! or CJ/T 188 ([`cjt188`]) are served on lines of their own ([`meter_line`]).

pub mod cjt188;
pub mod clock;
pub mod control;
pub mod dlt645;
pub mod faults;
pub mod meter;
pub mod meter_line;
pub mod model;
pub mod plant;
pub mod rtu;
pub mod scenario;
pub mod service;
pub mod truth;

pub use clock::SimClock;
pub use scenario::Scenario;
pub use service::{run, run_with, SimOptions};
