//! Faults on demand: what a device or its link does wrong, and when.
//!
//! A fault names a meter (or `*` for every meter on the server), a kind, a start (hours after
//! the start of the run) and, for lasting kinds, a duration. Scenario files list them under
//! `[[faults]]`; `ems-sim --fault '{...}'` and the control API add more while running.

use serde::{Deserialize, Serialize};

/// A fault as written in a scenario file, on the command line or posted to the control API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Device (meter) name, or "*" for every meter the simulator serves.
    pub device: String,
    pub kind: KindName,
    /// Start, hours after the start of the run.
    #[serde(default)]
    pub at_h: f64,
    /// Duration in hours (lasting kinds).
    #[serde(default)]
    pub for_h: f64,
    /// exception: the Modbus exception code (2, 4, 6, 11 ...).
    #[serde(default)]
    pub code: Option<u8>,
    /// slow, offline: how long the answer takes, real milliseconds.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// replace: the new meter's reading (default 0).
    #[serde(default)]
    pub reading: Option<f64>,
    /// spike: how far the counter jumps while the spike lasts, in the flow's unit.
    #[serde(default)]
    pub magnitude: Option<f64>,
    /// corrupt_frame: cut the frame short instead of spoiling its CRC.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// corrupt_frame: spoil only every n-th answer of the meter (line noise), not all.
    #[serde(default)]
    pub every: Option<u32>,
    /// short_requests: the most registers one request may ask for.
    #[serde(default)]
    pub registers: Option<u16>,
    /// short_requests: ignore a longer request (the master times out) instead of answering
    /// exception 03.
    #[serde(default)]
    pub silent: Option<bool>,
    /// serial_gateway: the baud rate of the serial bus behind the gateway (default 9 600).
    #[serde(default)]
    pub baud: Option<u32>,
    /// refuse_registers: the first and the last register refused (inclusive).
    #[serde(default)]
    pub from: Option<u16>,
    #[serde(default)]
    pub to: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    Exception,
    Slow,
    NoResponse,
    Offline,
    DropConnection,
    CorruptFrame,
    Rollover,
    Replace,
    Freeze,
    Spike,
    ShortRequests,
    SerialGateway,
    RefuseRegisters,
}

/// What a fault does, with its parameters checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// Every request answered with this exception.
    Exception(u8),
    /// Answers come late.
    Slow { delay_ms: u64 },
    /// Requests are ignored.
    NoResponse,
    /// The meter is dead behind a serial-to-Ethernet gateway: after the gateway's own timeout,
    /// exception 0x0B (gateway target device failed to respond).
    Offline { delay_ms: u64 },
    /// The TCP connection is closed when a request for the device arrives.
    DropConnection,
    /// RTU: the answer's CRC is wrong, or the frame is cut short.
    CorruptFrame { truncate: bool, every: u32 },
    /// The counter reaches its rollover at the fault's start (the meter's starting reading is
    /// set so that it does).
    Rollover,
    /// The meter is swapped for a new one reading `reading`.
    Replace { reading: f64 },
    /// The meter's values stop changing, then catch up.
    Freeze,
    /// The counter reads `magnitude` too high while the fault lasts.
    Spike { magnitude: f64 },
    /// A device (or the gateway in front of it) that takes shorter requests than Modbus allows:
    /// a read of more than `registers` is answered with exception 03 (illegal data value), or
    /// not at all when `silent`.
    ShortRequests { registers: u16, silent: bool },
    /// The meter sits on a serial bus behind a Modbus TCP gateway: each answer takes what its
    /// request and response frames and their silences take at `baud` (11 bits a character), so
    /// a register costs about as much as a tenth of a request at 9 600 baud.
    SerialGateway { baud: u32 },
    /// Registers `from..=to` are not in the meter's map (a firmware without them, a reserved
    /// range): a read that touches one is refused with exception 02.
    RefuseRegisters { from: u16, to: u16 },
}

impl FaultKind {
    /// Kinds that happen at an instant rather than over a window.
    pub fn is_instant(self) -> bool {
        matches!(self, FaultKind::Rollover | FaultKind::Replace { .. })
    }
}

/// A fault resolved to absolute simulated time.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub device: String,
    pub kind: FaultKind,
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Fault {
    pub fn applies(&self, device: &str, t_ms: i64) -> bool {
        (self.device == "*" || self.device == device) && t_ms >= self.from_ms && t_ms < self.to_ms
    }

    pub fn describe(&self) -> String {
        match self.kind {
            FaultKind::Exception(code) => format!("exception {code:02x}"),
            FaultKind::Slow { delay_ms } => format!("answers {delay_ms} ms late"),
            FaultKind::NoResponse => "no response".into(),
            FaultKind::Offline { delay_ms } => {
                format!("offline (exception 0b after {delay_ms} ms)")
            }
            FaultKind::DropConnection => "TCP connection dropped".into(),
            FaultKind::CorruptFrame { truncate, every } => format!(
                "{}RTU frames {}",
                if every > 1 {
                    format!("every {every}th of its ")
                } else {
                    String::new()
                },
                if truncate {
                    "truncated"
                } else {
                    "with bad CRC"
                }
            ),
            FaultKind::Rollover => "counter reaches its rollover".into(),
            FaultKind::Replace { reading } => format!("meter replaced, new reading {reading}"),
            FaultKind::Freeze => "values frozen".into(),
            FaultKind::Spike { magnitude } => format!("counter spikes by {magnitude}"),
            FaultKind::SerialGateway { baud } => {
                format!("behind a TCP gateway to a {baud}-baud serial bus")
            }
            FaultKind::RefuseRegisters { from, to } => {
                format!("exception 02 for reads touching registers {from}-{to}")
            }
            FaultKind::ShortRequests {
                registers,
                silent: false,
            } => {
                format!("exception 03 for reads of more than {registers} registers")
            }
            FaultKind::ShortRequests {
                registers,
                silent: true,
            } => {
                format!("no answer to reads of more than {registers} registers")
            }
        }
    }
}

impl FaultSpec {
    /// Checks the parameters; the error names the offending key.
    pub fn resolve(&self, start_ms: i64) -> Result<Fault, (&'static str, String)> {
        if !(self.at_h.is_finite() && self.at_h >= 0.0) {
            return Err(("at_h", "must be zero or more hours".into()));
        }
        if !(self.for_h.is_finite() && self.for_h >= 0.0) {
            return Err(("for_h", "must be zero or more hours".into()));
        }
        let need = |v: Option<f64>, key: &'static str| {
            v.ok_or((key, format!("a {:?} fault needs `{key}`", self.kind)))
        };
        let kind = match self.kind {
            KindName::Exception => FaultKind::Exception(
                self.code
                    .ok_or(("code", "an exception fault needs `code`".to_owned()))?,
            ),
            KindName::Slow => FaultKind::Slow {
                delay_ms: self.delay_ms.unwrap_or(1_500),
            },
            KindName::NoResponse => FaultKind::NoResponse,
            KindName::Offline => FaultKind::Offline {
                delay_ms: self.delay_ms.unwrap_or(300),
            },
            KindName::DropConnection => FaultKind::DropConnection,
            KindName::CorruptFrame => FaultKind::CorruptFrame {
                truncate: self.truncate.unwrap_or(false),
                every: self.every.unwrap_or(1).max(1),
            },
            KindName::Rollover => FaultKind::Rollover,
            KindName::Replace => FaultKind::Replace {
                reading: self.reading.unwrap_or(0.0),
            },
            KindName::Freeze => FaultKind::Freeze,
            KindName::Spike => FaultKind::Spike {
                magnitude: need(self.magnitude, "magnitude")?,
            },
            KindName::ShortRequests => FaultKind::ShortRequests {
                registers: self.registers.filter(|&r| r > 0).ok_or((
                    "registers",
                    "a short_requests fault needs `registers` above zero".to_owned(),
                ))?,
                silent: self.silent.unwrap_or(false),
            },
            KindName::RefuseRegisters => match (self.from, self.to) {
                (Some(from), Some(to)) if from <= to => FaultKind::RefuseRegisters { from, to },
                (Some(_), Some(_)) => return Err(("to", "must be at or after `from`".to_owned())),
                (None, _) => {
                    return Err(("from", "a refuse_registers fault needs `from`".to_owned()))
                }
                (_, None) => return Err(("to", "a refuse_registers fault needs `to`".to_owned())),
            },
            KindName::SerialGateway => match self.baud.unwrap_or(9_600) {
                baud if baud >= 300 => FaultKind::SerialGateway { baud },
                _ => return Err(("baud", "must be 300 or more".to_owned())),
            },
        };
        if !kind.is_instant() && self.for_h <= 0.0 {
            return Err((
                "for_h",
                format!("a {:?} fault lasts: give `for_h`", self.kind),
            ));
        }
        let from_ms = start_ms + (self.at_h * 3_600_000.0) as i64;
        let to_ms = if kind.is_instant() {
            from_ms
        } else {
            from_ms + (self.for_h * 3_600_000.0) as i64
        };
        Ok(Fault {
            device: self.device.clone(),
            kind,
            from_ms,
            to_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> FaultSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn specs_resolve_to_windows_in_simulated_time() {
        let f = spec("device = \"m\"\nkind = \"exception\"\ncode = 4\nat_h = 1.0\nfor_h = 0.5\n")
            .resolve(1_000)
            .unwrap();
        assert_eq!(f.kind, FaultKind::Exception(4));
        assert_eq!((f.from_ms, f.to_ms), (1_000 + 3_600_000, 1_000 + 5_400_000));
        assert!(
            f.applies("m", 1_000 + 3_600_000)
                && !f.applies("m", 1_000 + 5_400_000)
                && !f.applies("n", 4_000_000)
        );
        let all = spec("device = \"*\"\nkind = \"drop_connection\"\nfor_h = 1.0\n")
            .resolve(0)
            .unwrap();
        assert!(all.applies("anything", 10));
    }

    #[test]
    fn missing_parameters_name_their_key() {
        assert_eq!(
            spec("device = \"m\"\nkind = \"exception\"\nfor_h = 1.0\n")
                .resolve(0)
                .unwrap_err()
                .0,
            "code"
        );
        assert_eq!(
            spec("device = \"m\"\nkind = \"freeze\"\n")
                .resolve(0)
                .unwrap_err()
                .0,
            "for_h"
        );
        assert_eq!(
            spec("device = \"m\"\nkind = \"spike\"\nfor_h = 0.1\n")
                .resolve(0)
                .unwrap_err()
                .0,
            "magnitude"
        );
        assert!(
            spec("device = \"m\"\nkind = \"replace\"\nat_h = 2.0\n")
                .resolve(0)
                .is_ok(),
            "instant kinds need no duration"
        );
        assert!(toml::from_str::<FaultSpec>("device = \"m\"\nkind = \"meltdown\"\n").is_err());
    }
}
