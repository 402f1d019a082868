//! Where devices are reached: Modbus TCP, or Modbus RTU on a serial line (RS-485).
//!
//! A link is written in the site config as a URL:
//! - `tcp://host:port`: one persistent connection, many unit ids over it;
//! - `rtu:///dev/ttyUSB0?baud=9600&parity=even&stop_bits=1&turnaround_ms=0`: one bus, one
//!   transaction at a time on it, each request sent only after the line has been silent for
//!   3.5 characters (1.75 ms above 19 200 baud, as the Modbus serial line specification says)
//!   plus the configured turnaround gap that slow devices need between frames; `de=/dev/gpiochip0:22`
//!   names the GPIO line that enables the RS-485 driver of a half-duplex adapter.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ems_core::plan::LinkCost;
use tokio_modbus::client::{Context, Reader as _};
use tokio_modbus::prelude::SlaveContext as _;
use tokio_modbus::Slave;

use crate::board::{DirectionControlled, GpioLine};
use crate::profile::Table;

/// Round trip assumed for Modbus TCP when planning; bridging any gap within the device limit
/// is cheaper than a second request at this cost.
const TCP_ROUND_TRIP_S: f64 = 0.002;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Link {
    /// `host:port`.
    Tcp(String),
    Rtu(SerialLine),
}

/// A serial bus and its line settings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SerialLine {
    pub path: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub stop_bits: u8,
    /// Extra silence after each answer before the next request, for devices that need it.
    pub turnaround_ms: u32,
    /// The GPIO line that enables the RS-485 driver of a half-duplex adapter, if it is not
    /// switched by the adapter or the kernel itself.
    pub de: Option<GpioLine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl SerialLine {
    /// One character on the wire.
    pub fn char_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.bits_per_char()) / f64::from(self.baud))
    }

    /// Bits on the wire per character: start, 8 data, parity, stop.
    fn bits_per_char(&self) -> u32 {
        1 + 8 + u32::from(self.parity != Parity::None) + u32::from(self.stop_bits)
    }

    /// The silence before every frame (Modbus over serial line V1.02, 2.5.1.1).
    pub fn silent_interval(&self) -> Duration {
        let t35 = if self.baud > 19_200 {
            Duration::from_micros(1_750)
        } else {
            Duration::from_secs_f64(3.5 * f64::from(self.bits_per_char()) / f64::from(self.baud))
        };
        t35 + Duration::from_millis(u64::from(self.turnaround_ms))
    }
}

impl Link {
    /// The cost model the request planner optimises for this link.
    pub fn cost(&self) -> LinkCost {
        match self {
            Link::Tcp(_) => LinkCost::tcp(TCP_ROUND_TRIP_S),
            Link::Rtu(line) => LinkCost::rtu(line.baud, f64::from(line.turnaround_ms) / 1000.0),
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::Tcp(addr) => write!(f, "tcp://{addr}"),
            Link::Rtu(l) => {
                let parity = match l.parity {
                    Parity::None => "none",
                    Parity::Even => "even",
                    Parity::Odd => "odd",
                };
                write!(
                    f,
                    "rtu://{}?baud={}&parity={parity}&stop_bits={}&turnaround_ms={}",
                    l.path.display(),
                    l.baud,
                    l.stop_bits,
                    l.turnaround_ms
                )?;
                match &l.de {
                    Some(de) => write!(f, "&de={de}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl FromStr for Link {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = s.strip_prefix("tcp://") {
            if addr
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!("`{s}`: expected tcp://host:port"));
            }
            return Ok(Link::Tcp(addr.to_owned()));
        }
        let Some(rest) = s.strip_prefix("rtu://") else {
            return Err(format!(
                "`{s}`: expected tcp://host:port or rtu:///dev/ttyX?baud=9600"
            ));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !path.starts_with('/') {
            return Err(format!("`{s}`: the serial port must be an absolute path"));
        }
        let mut line = SerialLine {
            path: PathBuf::from(path),
            baud: 9_600,
            parity: Parity::Even,
            stop_bits: 1,
            turnaround_ms: 0,
            de: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}`: expected name=value"))?;
            let bad = || format!("`{k}={v}` is not a valid value");
            match k {
                "baud" => line.baud = v.parse().ok().filter(|b| *b > 0).ok_or_else(bad)?,
                "parity" => {
                    line.parity = match v {
                        "none" => Parity::None,
                        "even" => Parity::Even,
                        "odd" => Parity::Odd,
                        _ => return Err(format!("{}: none, even or odd", bad())),
                    }
                }
                "stop_bits" => {
                    line.stop_bits = v
                        .parse()
                        .ok()
                        .filter(|b| (1..=2).contains(b))
                        .ok_or_else(bad)?
                }
                "turnaround_ms" => line.turnaround_ms = v.parse().map_err(|_| bad())?,
                "de" => line.de = Some(v.parse()?),
                _ => {
                    return Err(format!(
                        "unknown setting `{k}`; known: baud, parity, stop_bits, turnaround_ms, de"
                    ))
                }
            }
        }
        Ok(Link::Rtu(line))
    }
}

/// An open link: the Modbus client and, on a serial bus, when the line last went quiet.
pub struct Connection {
    ctx: Context,
    /// The silence owed before each request (zero on TCP).
    silence: Duration,
    quiet_since: Instant,
    /// On a serial bus, a second handle to the port to throw away what a late answer leaves.
    serial: Option<serial2_tokio::SerialPort>,
}

/// "The device said no" kept apart from "the wire failed".
pub enum Failure {
    Device(u8),
    Link {
        quality: ems_core::Quality,
        error: String,
        /// The connection must be rebuilt (TCP: a late answer would be taken for the next
        /// one's). A silent or garbled device on a serial bus leaves the bus usable.
        broken: bool,
    },
}

impl Connection {
    /// Reads `len` registers at `start` from `unit`, waiting out the line's silent interval
    /// first on a serial bus.
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        len: u16,
        timeout: Duration,
    ) -> Result<Vec<u16>, Failure> {
        use ems_core::Quality;
        if !self.silence.is_zero() {
            tokio::time::sleep_until((self.quiet_since + self.silence).into()).await;
        }
        self.ctx.set_slave(Slave(unit));
        let ctx = &mut self.ctx;
        let call = async {
            match table {
                Table::Holding => ctx.read_holding_registers(start, len).await,
                Table::Input => ctx.read_input_registers(start, len).await,
            }
        };
        let result = tokio::time::timeout(timeout, call).await;
        self.quiet_since = Instant::now();
        let (quality, error) = match result {
            Ok(Ok(Ok(regs))) => return Ok(regs),
            Ok(Ok(Err(exception))) => return Err(Failure::Device(u8::from(exception))),
            Ok(Err(e)) => {
                let text = e.to_string();
                // On a serial bus a corrupt frame (bad CRC, an answer to someone else) is the
                // line's fault, not the device's silence: it gets its own quality code.
                let serial = self.serial.is_some();
                let q = if serial && (text.contains("CRC") || text.contains("mismatch")) {
                    Quality::Crc
                } else {
                    Quality::Comm
                };
                (q, text)
            }
            Err(_) => (Quality::Timeout, "no answer in time".to_owned()),
        };
        let broken = match &self.serial {
            // Whatever is left of a garbled or late answer is thrown away once the line has
            // been quiet; the client's own buffer is cleared before its next request.
            Some(port) if quality != Quality::Comm => {
                tokio::time::sleep(self.silence).await;
                port.discard_input_buffer().is_err()
            }
            _ => true,
        };
        Err(Failure::Link {
            quality,
            error,
            broken,
        })
    }

    /// [`Connection::read`], sent again up to `retries` times after a timeout or a garbled
    /// answer that left the link usable (a serial bus). An exception is the device's answer:
    /// it would say the same again.
    pub async fn read_retrying(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        len: u16,
        timeout: Duration,
        retries: u8,
    ) -> Result<Vec<u16>, Failure> {
        let mut tries = 0;
        loop {
            match self.read(unit, table, start, len, timeout).await {
                Err(Failure::Link { broken: false, .. }) if tries < retries => tries += 1,
                answer => return answer,
            }
        }
    }
}

/// Opens `link`: connects over TCP, or opens the serial port raw with its line settings and
/// discards whatever was left in its buffers.
pub async fn connect(link: &Link, timeout: Duration) -> anyhow::Result<Connection> {
    match link {
        Link::Tcp(addr) => {
            let sock = tokio::net::lookup_host(addr.as_str())
                .await
                .with_context(|| format!("cannot resolve {addr}"))?
                .next()
                .with_context(|| format!("{addr} resolves to nothing"))?;
            let ctx = tokio::time::timeout(timeout, tokio_modbus::client::tcp::connect(sock))
                .await
                .with_context(|| format!("connecting to {link} timed out"))??;
            Ok(Connection {
                ctx,
                silence: Duration::ZERO,
                quiet_since: Instant::now(),
                serial: None,
            })
        }
        Link::Rtu(line) => {
            let path = line.path.display();
            let mut port = serial2_tokio::SerialPort::open(&line.path, serial2_tokio::KeepSettings)
                .with_context(|| format!("cannot open serial port {path}"))?;
            let mut s = port.get_configuration()?;
            s.set_raw();
            s.set_baud_rate(line.baud)?;
            s.set_char_size(serial2_tokio::CharSize::Bits8);
            s.set_parity(match line.parity {
                Parity::None => serial2_tokio::Parity::None,
                Parity::Even => serial2_tokio::Parity::Even,
                Parity::Odd => serial2_tokio::Parity::Odd,
            });
            s.set_stop_bits(if line.stop_bits == 2 {
                serial2_tokio::StopBits::Two
            } else {
                serial2_tokio::StopBits::One
            });
            s.set_flow_control(serial2_tokio::FlowControl::None);
            // The settings are applied, then read back; a port that keeps some of its own (a
            // pseudo-terminal has no parity) still carries frames, so that is a warning.
            if let Err(e) = port.set_configuration(&s) {
                tracing::warn!(port = %path, error = %e, "Serial line settings not all taken; going on with what the port accepted.");
            }
            port.discard_buffers()
                .with_context(|| format!("cannot flush {path}"))?;
            let serial = Some(port.try_clone()?);
            let ctx = match &line.de {
                None => tokio_modbus::client::rtu::attach(port),
                Some(de) => tokio_modbus::client::rtu::attach(DirectionControlled::new(
                    port,
                    de.open()?,
                    line.char_time(),
                )?),
            };
            Ok(Connection {
                serial,
                ctx,
                silence: line.silent_interval(),
                quiet_since: Instant::now(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse_with_defaults_and_print_back() {
        let tcp: Link = "tcp://10.0.0.5:502".parse().unwrap();
        assert_eq!(tcp, Link::Tcp("10.0.0.5:502".into()));
        let rtu: Link = "rtu:///dev/ttyUSB0".parse().unwrap();
        let Link::Rtu(line) = &rtu else { panic!() };
        assert_eq!(
            (line.baud, line.parity, line.stop_bits, line.turnaround_ms),
            (9_600, Parity::Even, 1, 0),
            "Modbus's default line: 9600 8E1"
        );
        let full = "rtu:///dev/ttyS1?baud=19200&parity=none&stop_bits=2&turnaround_ms=5&de=/dev/gpiochip0:22";
        assert_eq!(full.parse::<Link>().unwrap().to_string(), full);
        for bad in [
            "udp://x:1",
            "tcp://host",
            "rtu://dev/ttyS1",
            "rtu:///dev/ttyS1?baud=fast",
            "rtu:///dev/ttyS1?parity=mark",
            "rtu:///dev/ttyS1?stop_bits=3",
            "rtu:///dev/ttyS1?speed=9600",
            "rtu:///dev/ttyS1?de=22",
        ] {
            assert!(bad.parse::<Link>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_silent_interval_is_three_and_a_half_characters_or_1750_us() {
        let line = |baud, turnaround_ms| SerialLine {
            path: "/dev/ttyS0".into(),
            baud,
            parity: Parity::Even,
            stop_bits: 1,
            turnaround_ms,
            de: None,
        };
        // 9600 8E1: 11 bits a character, 3.5 characters = 38.5 bits = 4.0104 ms.
        let t = line(9_600, 0).silent_interval().as_secs_f64();
        assert!((t - 38.5 / 9_600.0).abs() < 1e-6, "{t}");
        assert_eq!(
            line(38_400, 0).silent_interval(),
            Duration::from_micros(1_750)
        );
        assert_eq!(
            line(38_400, 3).silent_interval(),
            Duration::from_micros(4_750)
        );
        // The planner sees the serial line's costs: a request at 9600 baud costs what 10
        // registers do, so it bridges gaps of up to 10 registers and no longer.
        let cost = Link::Rtu(line(9_600, 0)).cost();
        assert!((cost.per_request / cost.per_register - 10.0).abs() < 1e-9);
    }
}
