//! ems-energy: the energy domain, pure. The plant model and its boundaries ([`model`]), counters
//! and their 15-minute slots ([`counter`]), the plant's calendar ([`calendar`]), standard-coal
//! coefficients ([`coefficients`]) and those that change in time ([`schedule`]: a year's
//! figure, a laboratory's heating values) and limit standards ([`limits`]) as data with their sources,
//! a unit's figures over any period ([`indicators`], read through [`figures`]), and energy
//! baselines with savings ([`baseline`]).
//!
//! No I/O: no files, clock, network, database or runtime. Whatever stores the slots implements
//! [`figures::SlotSource`]; "now" is always a parameter.

pub mod balance;
pub mod baseline;
pub mod calendar;
pub mod coefficients;
pub mod cost;
pub mod counter;
pub mod figures;
pub mod flow;
pub mod indicators;
pub mod intensity;
pub mod limits;
pub mod model;
pub mod schedule;
pub mod tariff;

pub use model::Plant;
