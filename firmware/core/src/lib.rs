//! The shared vocabulary of the EMS data path.
//!
//! Pure logic only: no I/O, no async, no clock. It builds without `std` (and the planner and wire
//! types need only `alloc`), so the same code runs on a Cortex-M RS-485 node and on Linux.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod bcd;
pub mod cjt188;
pub mod decode;
pub mod dlt645;
#[cfg(feature = "evidence")]
pub mod evidence;
#[cfg(feature = "alloc")]
pub mod plan;
pub mod quality;
pub mod rtu;
#[cfg(feature = "alloc")]
pub mod wire;

pub use decode::{decode, DataType, DecodeError, WordOrder};
pub use quality::Quality;
