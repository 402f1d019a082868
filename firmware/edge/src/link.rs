//! Where devices are reached, and how: Modbus TCP, Modbus RTU, DL/T 645 and CJ/T 188, on a
//! serial line (RS-485, or M-Bus through its converter) or over TCP to a serial device server.
//!
//! A link is written in the site config as a URL:
//! - `tcp://host:port`: Modbus TCP, one persistent connection, many unit ids over it;
//! - `rtu:///dev/ttyUSB0?baud=9600&parity=even&stop_bits=1&turnaround_ms=0`: one bus, one
//!   transaction at a time on it, each request sent only after the line has been silent for
//!   3.5 characters (1.75 ms above 19 200 baud, as the Modbus serial line specification says)
//!   plus the configured turnaround gap that slow devices need between frames; `de=/dev/gpiochip0:22`
//!   names the GPIO line that enables the RS-485 driver of a half-duplex adapter;
//! - `rtu+tcp://host:port`: RTU frames (with their CRC) over TCP, to an RS-485 bus behind a
//!   serial device server in transparent mode, several unit ids on it;
//! - `dlt645:///dev/ttyS1?baud=2400` (DL/T 645's own default line: 2400 baud, 8E1) and
//!   `dlt645+tcp://host:port`: DL/T 645 meters, addressed by their 12-digit numbers;
//! - `cjt188:///dev/ttyS2?baud=2400` (its usual line, 2400 8E1) and `cjt188+tcp://host:port`:
//!   CJ/T 188 water and heat meters, addressed by their 14-digit numbers.
//!
//! The edge frames RTU, DL/T 645 and CJ/T 188 itself (ems-core's `rtu`, `dlt645` and
//! `cjt188`): a corrupt answer is known as `crc` the moment it has arrived (or stops arriving),
//! not after a timeout, and what a late answer leaves behind is thrown away before the next
//! request.

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
    /// Modbus TCP to `host:port`.
    Tcp(String),
    /// A serial line (RS-485) speaking Modbus RTU, DL/T 645 or CJ/T 188.
    Serial(Protocol, SerialLine),
    /// The same frames over TCP to a serial device server at `host:port`.
    Server(Protocol, String),
}

pub use crate::profile::Protocol;

impl Protocol {
    /// The link URL's scheme on a serial line; `+tcp` behind a serial device server.
    fn scheme(self) -> &'static str {
        match self {
            Protocol::Modbus => "rtu",
            Protocol::Dlt645 => "dlt645",
            Protocol::Cjt188 => "cjt188",
        }
    }

    /// The line the protocol's devices are set to out of the box: Modbus 9600 8E1, DL/T 645
    /// and CJ/T 188 2400 8E1.
    fn default_baud(self) -> u32 {
        match self {
            Protocol::Modbus => 9_600,
            Protocol::Dlt645 | Protocol::Cjt188 => 2_400,
        }
    }

    const ALL: [Protocol; 3] = [Protocol::Modbus, Protocol::Dlt645, Protocol::Cjt188];
}

/// How a meter on a DL/T 645 or CJ/T 188 line is addressed and asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter {
    Dlt645 {
        edition: ems_core::dlt645::Edition,
        addr: ems_core::dlt645::Address,
    },
    Cjt188 {
        meter_type: u8,
        addr: ems_core::cjt188::Address,
    },
}

impl Meter {
    /// The meter at `address` (its nameplate number) as `dialect` addresses it.
    pub fn parse(dialect: crate::profile::Dialect, address: &str) -> Result<Meter, String> {
        use crate::profile::Dialect;
        match dialect {
            Dialect::Dlt645(edition) => ems_core::dlt645::Address::parse(address)
                .map(|addr| Meter::Dlt645 { edition, addr })
                .ok_or_else(|| {
                    "a DL/T 645 address is the meter's 12 digits, \"000012345678\"".into()
                }),
            Dialect::Cjt188 { meter_type } => ems_core::cjt188::Address::parse(address)
                .map(|addr| Meter::Cjt188 { meter_type, addr })
                .ok_or_else(|| {
                    "a CJ/T 188 address is the meter's 14 digits, \"00000012345678\"".into()
                }),
            Dialect::Modbus => Err("a Modbus device has a unit id, not an address".into()),
        }
    }
}

impl fmt::Display for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Meter::Dlt645 { addr, .. } => addr.fmt(f),
            Meter::Cjt188 { addr, .. } => addr.fmt(f),
        }
    }
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

/// A serial device server's bus is assumed to run at this speed until its answers are
/// measured (the common setting of Chinese plants' RS-485 meters).
const ASSUMED_SERVER_BAUD: u32 = 9_600;

impl Link {
    /// The cost model the request planner optimises for this link.
    pub fn cost(&self) -> LinkCost {
        match self {
            Link::Tcp(_) => LinkCost::tcp(TCP_ROUND_TRIP_S),
            Link::Serial(_, line) => {
                LinkCost::rtu(line.baud, f64::from(line.turnaround_ms) / 1000.0)
            }
            Link::Server(..) => LinkCost::rtu(ASSUMED_SERVER_BAUD, TCP_ROUND_TRIP_S),
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Link::Tcp(_) => Protocol::Modbus,
            Link::Serial(p, _) | Link::Server(p, _) => *p,
        }
    }

    /// Whether what its requests cost is learned from their answers (over TCP), rather than
    /// known from a serial line's speed.
    pub fn learns_cost(&self) -> bool {
        !matches!(self, Link::Serial(..))
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, l) = match self {
            Link::Tcp(addr) => return write!(f, "tcp://{addr}"),
            Link::Server(p, addr) => return write!(f, "{}+tcp://{addr}", p.scheme()),
            Link::Serial(p, l) => (p, l),
        };
        let parity = match l.parity {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        };
        write!(
            f,
            "{}://{}?baud={}&parity={parity}&stop_bits={}&turnaround_ms={}",
            p.scheme(),
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

impl FromStr for Link {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let host_port = |scheme: &str, addr: &str| {
            if addr
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(format!("`{s}`: expected {scheme}://host:port"));
            }
            Ok(addr.to_owned())
        };
        if let Some(addr) = s.strip_prefix("tcp://") {
            return Ok(Link::Tcp(host_port("tcp", addr)?));
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(expected(s));
        };
        let (name, server) = match scheme.strip_suffix("+tcp") {
            Some(name) => (name, true),
            None => (scheme, false),
        };
        let Some(protocol) = Protocol::ALL.into_iter().find(|p| p.scheme() == name) else {
            return Err(expected(s));
        };
        if server {
            return Ok(Link::Server(protocol, host_port(scheme, rest)?));
        }
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !path.starts_with('/') {
            return Err(format!("`{s}`: the serial port must be an absolute path"));
        }
        let mut line = SerialLine {
            path: PathBuf::from(path),
            baud: protocol.default_baud(),
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
        Ok(Link::Serial(protocol, line))
    }
}

fn expected(s: &str) -> String {
    format!(
        "`{s}`: expected tcp://host:port, rtu:///dev/ttyX?baud=9600, dlt645:///dev/ttyX?baud=2400, cjt188:///dev/ttyX?baud=2400, or rtu+tcp://, dlt645+tcp:// or cjt188+tcp://host:port (a serial device server)"
    )
}

/// The bytes of a serial line or of a TCP stream to a serial device server.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// An open link.
pub struct Connection {
    io: Io,
    /// The silence owed before each request (zero on Modbus TCP).
    silence: Duration,
    quiet_since: Instant,
    /// After the first byte of an answer, this long without another ends it: a frame cut short
    /// is known as such without waiting out the whole timeout.
    gap: Duration,
    /// Bytes that came after a whole frame, kept for the next frame of the same request.
    after: Vec<u8>,
    /// Requests given up on whose answers may still come (see [`Connection::awaits_late_answer`]).
    late: Vec<Late>,
    /// CJ/T 188's serial number of the last read: each read's own, echoed by its reply.
    serial: u8,
}

/// Who answers a request on a framed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Unit(u8),
    Meter(Meter),
}

/// A request whose answer may still arrive, until when.
#[derive(Debug)]
struct Late {
    peer: Peer,
    request: Vec<u8>,
    until: Instant,
}

enum Io {
    /// Modbus TCP through tokio-modbus (MBAP headers carry the framing).
    ModbusTcp(Context),
    /// A byte stream framed by the edge: Modbus RTU or DL/T 645.
    Framed {
        stream: Box<dyn Stream>,
        /// On a serial line, a second handle to the port to throw away what a late answer
        /// leaves; over TCP what is waiting is read off before each request.
        serial: Option<serial2_tokio::SerialPort>,
    },
}

/// "The device said no" kept apart from "the wire failed".
#[derive(Debug)]
pub enum Failure {
    /// A Modbus exception code, or a DL/T 645 meter's error byte.
    Device(u8),
    Link {
        quality: ems_core::Quality,
        /// What happened, in words for the person at the meter.
        error: String,
        /// The connection must be rebuilt (a TCP stream that failed or lost its place). A silent
        /// or garbled device on a bus leaves the bus usable.
        broken: bool,
    },
}

impl Failure {
    fn corrupt(error: String) -> Failure {
        Failure::Link {
            quality: ems_core::Quality::Crc,
            error,
            broken: false,
        }
    }
}

/// An answer read off a framed link.
enum Arrived {
    /// As many bytes as the frame said it has.
    Whole(Vec<u8>),
    /// Nothing came back in time.
    Nothing,
    /// Bytes came, then stopped before the frame was whole.
    CutShort(Vec<u8>),
}

impl Connection {
    /// The serial number of the next read (CJ/T 188): a reply that echoes another is a late
    /// reply to an earlier read, never taken for this one's. Its retries keep it.
    pub fn next_serial(&mut self) -> u8 {
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    /// Waits out the line's silent interval, then throws away whatever is waiting from before
    /// (a late answer to a request given up on would be taken for the next one's).
    async fn prepare(&mut self) -> Result<(), Failure> {
        if !self.silence.is_zero() {
            tokio::time::sleep_until((self.quiet_since + self.silence).into()).await;
        }
        self.after.clear();
        if let Io::Framed { stream, serial } = &mut self.io {
            match serial {
                Some(port) => {
                    let _ = port.discard_input_buffer();
                }
                None => {
                    let mut junk = [0u8; 256];
                    loop {
                        use tokio::io::AsyncReadExt as _;
                        match tokio::time::timeout(Duration::ZERO, stream.read(&mut junk)).await {
                            Ok(Ok(n)) if n > 0 => continue,
                            Ok(Ok(_)) => return Err(closed()),
                            _ => break,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends `request` to `peer` and reads the answer, for `timeout` at most, as long as
    /// `whole` says a frame of what has arrived is (`None` while it cannot tell yet). Returns
    /// it with the answer's deadline.
    ///
    /// Modbus RTU and DL/T 645 carry no transaction number: an answer that comes after its
    /// request was given up on would be taken for the answer to the next request to the same
    /// device if both answers have the same length (a clock read answered with a counter's
    /// registers). So a request to a device with a late answer owed to another request waits
    /// until that answer is due no more, and what came meanwhile is thrown away.
    async fn exchange(
        &mut self,
        peer: Peer,
        request: &[u8],
        timeout: Duration,
        whole: impl Fn(&[u8]) -> Option<usize>,
    ) -> Result<(Arrived, tokio::time::Instant), Failure> {
        use tokio::io::AsyncWriteExt as _;
        let now = Instant::now();
        self.late.retain(|l| l.until > now);
        let owed = self
            .late
            .iter()
            .filter(|l| l.peer == peer && l.request != request);
        if let Some(until) = owed.map(|l| l.until).max() {
            tracing::debug!(
                ?peer,
                wait_ms = (until - now).as_millis() as u64,
                "Waiting out a late answer owed to another request."
            );
            tokio::time::sleep_until(until.into()).await;
            self.late.retain(|l| l.peer != peer || l.request == request);
        }
        self.prepare().await?;
        let Io::Framed { stream, .. } = &mut self.io else {
            unreachable!("framed exchanges happen on framed links");
        };
        let sent = async {
            stream.write_all(request).await?;
            stream.flush().await
        };
        if let Err(e) = sent.await {
            return Err(Failure::Link {
                quality: ems_core::Quality::Comm,
                error: format!("cannot send: {e}"),
                broken: true,
            });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        Ok((self.receive(deadline, whole).await?, deadline))
    }

    /// After a request's last frame: if nothing came, or it came while an earlier try of the
    /// same request was owed an answer (either may have answered), its answer may still come
    /// until `most` after it was sent.
    fn owe(
        &mut self,
        peer: Peer,
        request: &[u8],
        answered: bool,
        sent: tokio::time::Instant,
        most: Duration,
    ) {
        let retried = self
            .late
            .iter()
            .any(|l| l.peer == peer && l.request == request);
        if !answered || retried {
            self.late.push(Late {
                peer,
                request: request.to_vec(),
                until: (sent + most).into_std(),
            });
        }
    }

    /// Waits until no answer of `peer`'s to an earlier request is owed any more (what came
    /// meanwhile is thrown away before the next request).
    pub async fn settle(&mut self, peer: Peer) {
        let now = Instant::now();
        self.late.retain(|l| l.until > now);
        if let Some(until) = self
            .late
            .iter()
            .filter(|l| l.peer == peer)
            .map(|l| l.until)
            .max()
        {
            tracing::debug!(
                ?peer,
                wait_ms = (until - now).as_millis() as u64,
                "Waiting out a late answer."
            );
            tokio::time::sleep_until(until.into()).await;
            self.late.retain(|l| l.peer != peer);
        }
    }

    /// Whether `peer` may still send an answer to a request given up on: the next request to
    /// it would wait that out (see [`Connection::exchange`]).
    pub fn awaits_late_answer(&self, peer: Peer) -> bool {
        let now = Instant::now();
        self.late.iter().any(|l| l.peer == peer && l.until > now)
    }

    /// Reads one frame, until `deadline` at most: after a stray frame (a late answer from
    /// another device) the answer may still come.
    async fn receive(
        &mut self,
        deadline: tokio::time::Instant,
        whole: impl Fn(&[u8]) -> Option<usize>,
    ) -> Result<Arrived, Failure> {
        use tokio::io::AsyncReadExt as _;
        let gap = self.gap;
        let Io::Framed { stream, .. } = &mut self.io else {
            unreachable!("framed exchanges happen on framed links");
        };
        let mut buf = std::mem::take(&mut self.after);
        let mut chunk = [0u8; 256];
        let arrived = loop {
            if let Some(n) = whole(&buf).filter(|&n| buf.len() >= n) {
                self.after = buf.split_off(n);
                break Arrived::Whole(buf);
            }
            let wait = if buf.is_empty() {
                deadline
            } else {
                deadline.min(tokio::time::Instant::now() + gap)
            };
            match tokio::time::timeout_at(wait, stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err(closed()),
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    return Err(Failure::Link {
                        quality: ems_core::Quality::Comm,
                        error: format!("the line failed: {e}"),
                        broken: true,
                    })
                }
                Err(_) if buf.is_empty() => break Arrived::Nothing,
                Err(_) => break Arrived::CutShort(buf),
            }
            // A frame's bytes are bounded: noise that never makes one cannot fill memory.
            if buf.len() > 1_024 {
                break Arrived::CutShort(buf);
            }
        };
        self.quiet_since = Instant::now();
        Ok(arrived)
    }

    /// Reads `len` registers at `start` from `unit` (Modbus TCP or RTU), waiting `wait.first`
    /// for the answer, which may come until `wait.most` (see [`Connection::exchange`]).
    pub async fn read(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        len: u16,
        wait: Wait,
    ) -> Result<Vec<u16>, Failure> {
        use ems_core::rtu::{self, Answer, FrameError};
        let timeout = wait.first;
        if let Io::ModbusTcp(ctx) = &mut self.io {
            return modbus_tcp_read(ctx, unit, table, start, len, timeout).await;
        }
        let function = match table {
            Table::Holding => rtu::READ_HOLDING,
            Table::Input => rtu::READ_INPUT,
        };
        let request = rtu::read_request(unit, function, start, len);
        let expected = 5 + 2 * usize::from(len);
        let peer = Peer::Unit(unit);
        let (mut arrived, deadline) = self
            .exchange(peer, &request, timeout, rtu::answer_len)
            .await?;
        // A whole, sound frame from another unit (or to another request) is a late answer
        // to a request given up on, ours or another master's: the answer may still follow.
        let mut strays = 0;
        while let Arrived::Whole(frame) = &arrived {
            if strays == MAX_STRAYS
                || rtu::parse_answer(&request, frame) != Err(FrameError::Mismatch)
            {
                break;
            }
            strays += 1;
            tracing::debug!(unit, frame = %hex(frame), "A stray frame on the line, passed over.");
            arrived = self.receive(deadline, rtu::answer_len).await?;
        }
        let answered = !matches!(arrived, Arrived::Nothing);
        self.owe(peer, &request, answered, deadline - timeout, wait.most);
        match arrived {
            Arrived::Whole(frame) => match rtu::parse_answer(&request, &frame) {
                Ok(Answer::Registers(regs)) => Ok(regs),
                Ok(Answer::Exception(code)) => Err(Failure::Device(code)),
                Err(FrameError::Crc) => Err(Failure::corrupt(
                    "the answer arrived corrupt (its CRC is wrong: noise or a collision on the line)".into(),
                )),
                Err(FrameError::Mismatch) => Err(Failure::corrupt(
                    "only answers from other units or to other requests came (two masters, or late answers)".into(),
                )),
            },
            Arrived::Nothing => Err(no_answer(timeout, false)),
            Arrived::CutShort(part) => Err(Failure::corrupt(format!(
                "the answer stopped after {} of {} bytes (a loose wire, or noise)",
                part.len(),
                rtu::answer_len(&part).unwrap_or(expected)
            ))),
        }
    }

    /// Reads data identifier `di` from `meter` (DL/T 645 or CJ/T 188): the value bytes after
    /// the identifier (and CJ/T 188's serial number `ser`, which its reply must echo).
    pub async fn read_meter(
        &mut self,
        meter: &Meter,
        di: u32,
        ser: u8,
        wait: Wait,
    ) -> Result<Vec<u8>, Failure> {
        use ems_core::{cjt188, dlt645};
        let timeout = wait.first;
        let (request, find): (_, fn(&[u8]) -> dlt645::Scan) = match meter {
            Meter::Dlt645 { edition, addr } => {
                (dlt645::read_request(*edition, addr, di), dlt645::find_frame)
            }
            Meter::Cjt188 { meter_type, addr } => (
                cjt188::read_request(*meter_type, addr, di as u16, ser),
                cjt188::find_frame,
            ),
        };
        let parse = |frame: &[u8]| -> Result<Result<Vec<u8>, u8>, dlt645::FrameError> {
            match meter {
                Meter::Dlt645 { edition, addr } => dlt645::parse_reply(*edition, addr, di, frame)
                    .map(|r| match r {
                        dlt645::Reply::Data(v) => Ok(v),
                        dlt645::Reply::Error(code) => Err(code),
                    }),
                Meter::Cjt188 { meter_type, addr } => {
                    cjt188::parse_reply(*meter_type, addr, di as u16, ser, frame).map(|r| match r {
                        cjt188::Reply::Data(v) => Ok(v),
                        cjt188::Reply::Error(code) => Err(code),
                    })
                }
            }
        };
        let frame = |bytes: &[u8]| match find(bytes) {
            dlt645::Scan::Frame { start, end } => Some(start..end),
            dlt645::Scan::NeedMore { .. } => None,
        };
        let frame_end = |buf: &[u8]| frame(buf).map(|r| r.end);
        let peer = Peer::Meter(*meter);
        let (mut arrived, deadline) = self.exchange(peer, &request, timeout, frame_end).await?;
        // Another meter's late reply (sound, to another address, identifier or number) is
        // passed over.
        let mut strays = 0;
        while let Arrived::Whole(bytes) = &arrived {
            let reply = frame(bytes).map(|r| parse(&bytes[r]));
            if strays == MAX_STRAYS || !matches!(reply, Some(Err(dlt645::FrameError::Mismatch))) {
                break;
            }
            strays += 1;
            tracing::debug!(%meter, frame = %hex(bytes), "A stray frame on the line, passed over.");
            arrived = self.receive(deadline, frame_end).await?;
        }
        let answered = !matches!(arrived, Arrived::Nothing);
        self.owe(peer, &request, answered, deadline - timeout, wait.most);
        match arrived {
            Arrived::Whole(bytes) => match frame(&bytes).map(|r| parse(&bytes[r])) {
                Some(Ok(Ok(value))) => Ok(value),
                Some(Ok(Err(code))) => Err(Failure::Device(code)),
                Some(Err(e)) => Err(Failure::corrupt(format!("the reply is not good: {e}"))),
                None => unreachable!("a whole frame was found in these bytes"),
            },
            Arrived::Nothing => Err(no_answer(timeout, false)),
            Arrived::CutShort(part) => Err(Failure::corrupt(format!(
                "the reply stopped after {} bytes (a loose wire, or noise)",
                part.len()
            ))),
        }
    }

    /// [`Connection::read`], sent again up to `retries` times after a timeout or a garbled
    /// answer that left the link usable (a bus), each try waiting as `wait` says. An exception
    /// is the device's answer: it would say the same again. With the registers comes whether
    /// the first try brought them (only such an answer's time says how fast the device is).
    pub async fn read_retrying(
        &mut self,
        unit: u8,
        table: Table,
        start: u16,
        len: u16,
        wait: Wait,
        retries: u8,
    ) -> Result<(Vec<u16>, bool), Failure> {
        // An answer owed to an earlier request, this one too, must not be taken for this
        // one's: only this request's own retries may take its first try's late answer.
        self.settle(Peer::Unit(unit)).await;
        let mut tries = 0;
        loop {
            let this_try = Wait {
                first: wait.try_number(tries),
                most: wait.most,
            };
            match self.read(unit, table, start, len, this_try).await {
                Err(Failure::Link { broken: false, .. }) if tries < retries => tries += 1,
                answer => return answer.map(|regs| (regs, tries == 0)),
            }
        }
    }
}

/// How long a request waits for its answer: `first` on its first try (a time fitted to the
/// device, see [`crate::bus::TimeoutFit`]), twice as long on each retry, never more than
/// `most` (the device's `timeout_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub first: Duration,
    pub most: Duration,
}

impl Wait {
    /// The same wait for every try.
    pub fn fixed(timeout: Duration) -> Wait {
        Wait {
            first: timeout,
            most: timeout,
        }
    }

    /// The wait of try `n` (0 is the first).
    pub fn try_number(self, n: u8) -> Duration {
        self.first.saturating_mul(1u32 << n.min(16)).min(self.most)
    }
}

/// Stray frames passed over while waiting for one answer: more is not a late answer but a
/// second master or a broken line.
const MAX_STRAYS: usize = 4;

/// Bytes as a debug log shows them.
fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn closed() -> Failure {
    Failure::Link {
        quality: ems_core::Quality::Comm,
        error: "the connection was closed by the other end".into(),
        broken: true,
    }
}

fn no_answer(timeout: Duration, broken: bool) -> Failure {
    Failure::Link {
        quality: ems_core::Quality::Timeout,
        error: format!(
            "no answer within {} ms (the device is off, unpowered, at another address or baud rate, or its wires are not connected)",
            timeout.as_millis()
        ),
        broken,
    }
}

async fn modbus_tcp_read(
    ctx: &mut Context,
    unit: u8,
    table: Table,
    start: u16,
    len: u16,
    timeout: Duration,
) -> Result<Vec<u16>, Failure> {
    ctx.set_slave(Slave(unit));
    let call = async {
        match table {
            Table::Holding => ctx.read_holding_registers(start, len).await,
            Table::Input => ctx.read_input_registers(start, len).await,
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(Ok(regs))) => Ok(regs),
        Ok(Ok(Err(exception))) => Err(Failure::Device(u8::from(exception))),
        Ok(Err(e)) => Err(Failure::Link {
            quality: ems_core::Quality::Comm,
            error: format!("the Modbus TCP connection failed: {e}"),
            broken: true,
        }),
        // A late answer would be taken for the next request's: the connection is made again.
        Err(_) => Err(no_answer(timeout, true)),
    }
}

/// How long a quiet line after an answer's first byte means it has ended: several characters'
/// time (3.5 end an RTU frame), and over TCP what a serial server takes to pass on a packet.
fn frame_gap(char_time: Duration, over_tcp: bool) -> Duration {
    let line = (char_time * 8).max(Duration::from_millis(5));
    if over_tcp {
        line + Duration::from_millis(50)
    } else {
        line
    }
}

/// Opens `link`: connects over TCP, or opens the serial port raw with its line settings and
/// discards whatever was left in its buffers.
pub async fn connect(link: &Link, timeout: Duration) -> anyhow::Result<Connection> {
    let tcp = |addr: &str| {
        let addr = addr.to_owned();
        async move {
            let sock = tokio::net::lookup_host(addr.as_str())
                .await
                .with_context(|| format!("cannot resolve {addr}"))?
                .next()
                .with_context(|| format!("{addr} resolves to nothing"))?;
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(sock))
                .await
                .with_context(|| format!("connecting to {addr} timed out"))?
                .with_context(|| format!("cannot connect to {addr}"))
        }
    };
    match link {
        Link::Tcp(addr) => {
            let stream = tcp(addr).await?;
            Ok(Connection {
                io: Io::ModbusTcp(tokio_modbus::client::tcp::attach(stream)),
                silence: Duration::ZERO,
                quiet_since: Instant::now(),
                gap: Duration::ZERO,
                after: Vec::new(),
                late: Vec::new(),
                serial: 0,
            })
        }
        Link::Server(_, addr) => {
            let stream = tcp(addr).await?;
            let _ = stream.set_nodelay(true);
            let char_time = Duration::from_secs_f64(11.0 / f64::from(ASSUMED_SERVER_BAUD));
            Ok(Connection {
                io: Io::Framed {
                    stream: Box::new(stream),
                    serial: None,
                },
                silence: Duration::ZERO,
                quiet_since: Instant::now(),
                gap: frame_gap(char_time, true),
                after: Vec::new(),
                late: Vec::new(),
                serial: 0,
            })
        }
        Link::Serial(protocol, line) => {
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
            let stream: Box<dyn Stream> = match &line.de {
                None => Box::new(port),
                Some(de) => Box::new(DirectionControlled::new(
                    port,
                    de.open()?,
                    line.char_time(),
                )?),
            };
            Ok(Connection {
                io: Io::Framed { stream, serial },
                // DL/T 645 and CJ/T 188 ask no silent interval, only the turnaround a meter may
                // need.
                silence: match protocol {
                    Protocol::Modbus => line.silent_interval(),
                    Protocol::Dlt645 | Protocol::Cjt188 => {
                        Duration::from_millis(u64::from(line.turnaround_ms))
                    }
                },
                quiet_since: Instant::now(),
                gap: frame_gap(line.char_time(), false),
                after: Vec::new(),
                late: Vec::new(),
                serial: 0,
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
        let Link::Serial(Protocol::Modbus, line) = &rtu else {
            panic!()
        };
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
        let cost = Link::Serial(Protocol::Modbus, line(9_600, 0)).cost();
        assert!((cost.per_request / cost.per_register - 10.0).abs() < 1e-9);
    }

    /// An RTU answer of `unit` with `regs`, as a device sends it.
    fn rtu_answer(unit: u8, regs: &[u16]) -> Vec<u8> {
        let mut f = vec![unit, ems_core::rtu::READ_HOLDING, 2 * regs.len() as u8];
        f.extend(regs.iter().flat_map(|r| r.to_be_bytes()));
        let crc = ems_core::rtu::crc16(&f);
        f.extend(crc.to_le_bytes());
        f
    }

    /// A serial device server that answers each request with `answers(request)`.
    async fn server(answers: fn(&[u8]) -> Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 8];
            while s.read_exact(&mut req).await.is_ok() {
                s.write_all(&answers(&req)).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_late_answer_from_another_unit_is_passed_over_and_ours_still_read() {
        // Unit 42's late answer comes first, then unit 43's own.
        let addr = server(|_| [rtu_answer(42, &[7, 7]), rtu_answer(43, &[1, 2])].concat()).await;
        let mut c = connect(
            &Link::Server(Protocol::Modbus, addr),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let regs = c
            .read(
                43,
                Table::Holding,
                0,
                2,
                Wait::fixed(Duration::from_millis(500)),
            )
            .await
            .unwrap();
        assert_eq!(regs, [1, 2]);

        // Nothing but others' answers: a plain failure, not taken for ours.
        let addr = server(|_| rtu_answer(42, &[7, 7]).repeat(6)).await;
        let mut c = connect(
            &Link::Server(Protocol::Modbus, addr),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        match c
            .read(
                43,
                Table::Holding,
                0,
                2,
                Wait::fixed(Duration::from_millis(300)),
            )
            .await
        {
            Err(Failure::Link { quality, error, .. }) => {
                assert!(
                    quality == ems_core::Quality::Crc || quality == ems_core::Quality::Timeout,
                    "{quality} {error}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_late_answer_is_never_taken_for_the_next_requests_answer() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // A device that answers its first request 150 ms late, and the next at once; both
        // answers are two registers of unit 7, alike but for their values.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 8];
            let mut first = true;
            while s.read_exact(&mut req).await.is_ok() {
                let start = u16::from_be_bytes([req[2], req[3]]);
                if first {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    first = false;
                }
                s.write_all(&rtu_answer(7, &[start, start])).await.unwrap();
            }
        });
        let mut c = connect(
            &Link::Server(Protocol::Modbus, addr),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        let fitted = Wait {
            first: Duration::from_millis(50),
            most: Duration::from_millis(400),
        };
        assert!(matches!(
            c.read(7, Table::Holding, 100, 2, fitted).await,
            Err(Failure::Link {
                quality: ems_core::Quality::Timeout,
                ..
            })
        ));
        assert!(c.awaits_late_answer(Peer::Unit(7)));
        assert!(!c.awaits_late_answer(Peer::Unit(8)));
        // The answer to the read of 100 comes while 200 would be waited for: it must not be
        // taken for 200's.
        let regs = c
            .read(
                7,
                Table::Holding,
                200,
                2,
                Wait::fixed(Duration::from_millis(500)),
            )
            .await
            .unwrap();
        assert_eq!(regs, [200, 200]);
        assert!(!c.awaits_late_answer(Peer::Unit(7)));
    }

    /// A CJ/T 188 water meter's reply to `request` (identifier and SER as asked, SER moved by
    /// `ser_shift`), its current total `total` (BCD, m3).
    fn cjt188_reply(request: &[u8], ser_shift: u8, total: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xFE, 0xFE, 0x68, 0x10];
        f.extend_from_slice(&request[4..11]);
        f.extend_from_slice(&[0x81, 8, request[13], request[14]]);
        f.push(request[15].wrapping_sub(ser_shift));
        f.extend_from_slice(&total);
        f.push(0x2C);
        let cs = f[2..].iter().fold(0u8, |s, b| s.wrapping_add(*b));
        f.extend_from_slice(&[cs, 0x16]);
        f
    }

    #[tokio::test]
    async fn a_cjt188_reply_is_taken_only_with_its_own_serial_number() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // Before each reply, a stale one: the reply to the read before (its SER one less),
        // with another total.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 18];
            while s.read_exact(&mut req).await.is_ok() {
                let stale = cjt188_reply(&req, 1, [0x99, 0x99, 0x00, 0x00]);
                let fresh = cjt188_reply(&req, 0, [0x56, 0x34, 0x12, 0x00]);
                s.write_all(&[stale, fresh].concat()).await.unwrap();
            }
        });
        let dialect = crate::profile::Dialect::Cjt188 { meter_type: 0x10 };
        let meter = Meter::parse(dialect, "00000000000045").unwrap();
        let mut c = connect(
            &Link::Server(Protocol::Cjt188, addr),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        for _ in 0..3 {
            let ser = c.next_serial();
            let value = c
                .read_meter(
                    &meter,
                    u32::from(ems_core::cjt188::READ_DATA),
                    ser,
                    Wait::fixed(Duration::from_millis(500)),
                )
                .await
                .unwrap();
            assert_eq!(value, [0x56, 0x34, 0x12, 0x00, 0x2C]);
        }
    }
}
