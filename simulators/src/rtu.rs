//! Modbus RTU: the plant on a serial line (a real port or a pseudo-terminal) or RTU framing
//! over TCP, with the line's timing for its baud rate.
//!
//! A small framer of our own rather than tokio-modbus' RTU server, because the simulator must
//! also misbehave on purpose: answer with a bad CRC, cut a frame short, answer late after the
//! master has given up. It resynchronises on garbage by sliding one byte at a time until a
//! frame's CRC checks, as a real slave does after line noise. A unit id nobody has stays silent
//! (on RS-485 there is no gateway to answer for it).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

use crate::clock::SimClock;
use crate::service::{answer, SharedPlant};

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial 0xFFFF), sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

/// Length of the request frame starting `buf`, if its function code is known and it is complete
/// enough to tell.
fn request_len(buf: &[u8]) -> Option<usize> {
    match *buf.get(1)? {
        1..=6 => Some(8),
        15 | 16 => buf.get(6).map(|&n| 9 + usize::from(n)),
        _ => None,
    }
}

/// A parsed request: unit id and what it asks.
#[derive(Debug, PartialEq)]
pub struct Frame {
    pub unit: u8,
    pub function: u8,
    pub addr: u16,
    pub count: u16,
}

/// Takes one valid frame off the front of `buf`, dropping garbage before it. `None` when more
/// bytes are needed.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Frame> {
    loop {
        if buf.len() < 2 {
            return None;
        }
        let Some(len) = request_len(buf) else {
            buf.remove(0); // not a function code we know: noise
            continue;
        };
        if buf.len() < len {
            return None;
        }
        let (body, crc) = buf[..len].split_at(len - 2);
        if crc16(body).to_le_bytes() != [crc[0], crc[1]] {
            buf.remove(0);
            continue;
        }
        let f = Frame {
            unit: body[0],
            function: body[1],
            addr: u16::from_be_bytes([body[2], body[3]]),
            count: u16::from_be_bytes([body[4], body[5]]),
        };
        buf.drain(..len);
        return Some(f);
    }
}

/// The response frame for `frame`: data or exception.
pub fn response_frame(frame: &Frame, response: &Result<Response, ExceptionCode>) -> Vec<u8> {
    let body = match response {
        Ok(Response::ReadHoldingRegisters(regs) | Response::ReadInputRegisters(regs)) => {
            let mut b = vec![frame.unit, frame.function, (regs.len() * 2) as u8];
            for r in regs {
                b.extend_from_slice(&r.to_be_bytes());
            }
            b
        }
        Ok(_) => vec![frame.unit, frame.function | 0x80, 0x01],
        Err(e) => vec![frame.unit, frame.function | 0x80, u8::from(*e)],
    };
    with_crc(body)
}

/// Time one character takes on the line: 11 bits (start, 8 data, parity or a second stop, stop).
pub fn char_time(baud: u32) -> Duration {
    Duration::from_secs_f64(11.0 / f64::from(baud))
}

/// Serves RTU frames on `stream` until `shutdown` or the stream ends.
///
/// A late answer (the `slow` fault) does not hold the line: as on a real bus, the others go on
/// being answered, and the late frame goes out when it is due, between theirs.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    plant: SharedPlant,
    clock: SimClock,
    baud: u32,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let ct = char_time(baud);
    // Late answers, with when each is due.
    let mut late: Vec<(tokio::time::Instant, Vec<u8>)> = Vec::new();
    // When the last answer left the line: a request goes on the wire only after 3.5 characters
    // of silence from it. A master on the serial line waits that itself (the edge does); over
    // TCP the serial device server holds the request back, as here.
    let mut line_quiet_from: Option<tokio::time::Instant> = None;
    loop {
        while let Some(frame) = take_frame(&mut buf) {
            let request = match frame.function {
                3 => Request::ReadHoldingRegisters(frame.addr, frame.count),
                4 => Request::ReadInputRegisters(frame.addr, frame.count),
                _ => Request::ReadCoils(frame.addr, frame.count),
            };
            if plant
                .lock()
                .expect("plant lock poisoned")
                .meter_at(frame.unit)
                .is_none()
            {
                continue; // nobody with that address on the line
            }
            let mut a = answer(&plant, &clock, frame.unit, &request);
            if !matches!(frame.function, 3 | 4) {
                a.response = a.response.map(|_| Err(ExceptionCode::IllegalFunction));
            }
            let Some(response) = a.response else { continue };
            let mut out = response_frame(&frame, &response);
            match a.corrupt {
                Some(true) => out.truncate(out.len().saturating_sub(3)),
                Some(false) => *out.last_mut().expect("frames are never empty") ^= 0xFF,
                None => {}
            }
            // The request and the answer each take their time on the wire, with the 3.5
            // character silence before the answer.
            let wire = ct.mul_f64(8.0 + 3.5 + out.len() as f64);
            if !a.delay.is_zero() {
                late.push((tokio::time::Instant::now() + wire + a.delay, out));
                continue;
            }
            if let Some(quiet) = line_quiet_from {
                tokio::time::sleep_until(quiet + ct.mul_f64(3.5)).await;
            }
            tokio::time::sleep(wire).await;
            send_due(&mut stream, &mut late).await?;
            stream.write_all(&out).await?;
            stream.flush().await?;
            line_quiet_from = Some(tokio::time::Instant::now());
        }
        let next_late = late.iter().map(|l| l.0).min();
        let n = tokio::select! {
            n = stream.read(&mut chunk) => n?,
            () = until_due(next_late) => {
                send_due(&mut stream, &mut late).await?;
                continue;
            }
            () = shutdown.cancelled() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sleeps until the first late answer is due; for ever when none is waiting.
pub(crate) async fn until_due(next: Option<tokio::time::Instant>) {
    match next {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Writes the late answers that are due, in the order they fall due (the DL/T 645 server's too).
pub(crate) async fn send_due<S: AsyncWrite + Unpin>(
    stream: &mut S,
    late: &mut Vec<(tokio::time::Instant, Vec<u8>)>,
) -> anyhow::Result<()> {
    let now = tokio::time::Instant::now();
    late.sort_by_key(|l| l.0);
    let due = late.iter().take_while(|l| l.0 <= now).count();
    for (_, frame) in late.drain(..due) {
        stream.write_all(&frame).await?;
    }
    stream.flush().await?;
    Ok(())
}

/// A serial line as the simulator serves it: reads and writes on two handles of the same
/// port. `tokio::fs::File` runs each operation on the blocking pool, one at a time a handle: on
/// one handle, a late answer due while a read waits for bytes would wait for the next request
/// (and at the end, when no more come, for ever: the simulator did not stop).
pub type Line = tokio::io::Join<tokio::fs::File, tokio::fs::File>;

fn line_of(fd: OwnedFd) -> anyhow::Result<Line> {
    let writer = fd
        .try_clone()
        .context("cannot duplicate the line's handle")?;
    Ok(tokio::io::join(
        tokio::fs::File::from_std(std::fs::File::from(fd)),
        tokio::fs::File::from_std(std::fs::File::from(writer)),
    ))
}

/// A pseudo-terminal pair: the simulator serves the master side; a master device (an edge, a
/// test client) opens `path` as its serial port.
pub struct Pty {
    pub path: PathBuf,
    pub master: Line,
    /// Kept open (hold it as long as the master is served) so the master does not read
    /// end-of-file while no client has the port open.
    pub _slave: OwnedFd,
}

pub fn open_pty() -> anyhow::Result<Pty> {
    let pair = nix::pty::openpty(None, None).context("cannot open a pseudo-terminal")?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd()))
        .context("pseudo-terminal name")?;
    raw_mode(&pair.slave, None)?;
    let master = line_of(pair.master)?;
    Ok(Pty {
        path,
        master,
        _slave: pair.slave,
    })
}

/// A real serial port, raw 8N1 at `baud`.
pub async fn open_serial(path: &Path, baud: u32) -> anyhow::Result<Line> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open serial port {}", path.display()))?;
    let fd = OwnedFd::from(file);
    raw_mode(&fd, Some(baud))?;
    line_of(fd)
}

fn raw_mode(fd: &OwnedFd, baud: Option<u32>) -> anyhow::Result<()> {
    use nix::sys::termios::{cfmakeraw, cfsetspeed, tcgetattr, tcsetattr, BaudRate, SetArg};
    let mut t = tcgetattr(fd).context("not a terminal")?;
    cfmakeraw(&mut t);
    if let Some(baud) = baud {
        let rate = match baud {
            1200 => BaudRate::B1200,
            2400 => BaudRate::B2400,
            4800 => BaudRate::B4800,
            9600 => BaudRate::B9600,
            19200 => BaudRate::B19200,
            38400 => BaudRate::B38400,
            57600 => BaudRate::B57600,
            115200 => BaudRate::B115200,
            other => anyhow::bail!("unsupported baud rate {other}"),
        };
        cfsetspeed(&mut t, rate)?;
    }
    tcsetattr(fd, SetArg::TCSANOW, &t)?;
    Ok(())
}

/// RTU framing over TCP (as many serial-to-Ethernet converters do in transparent mode).
pub async fn serve_over_tcp(
    listener: tokio::net::TcpListener,
    plant: SharedPlant,
    clock: SimClock,
    baud: u32,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_connections(listener, shutdown, "RTU over TCP", move |stream, stop| {
        serve(stream, plant.clone(), clock, baud, stop)
    })
    .await
}

/// Accepts connections at `listener` until `shutdown`, each served as one line by `serve_one`,
/// as behind a serial device server; a connection's end is logged as `what`'s.
pub async fn serve_connections<F, Fut>(
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    what: &'static str,
    serve_one: F,
) -> anyhow::Result<()>
where
    F: Fn(tokio::net::TcpStream, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let line = serve_one(stream, shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = line.await {
                tracing::debug!(error = %e, line = what, "Connection ended.");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_specification_example() {
        // Modbus over serial line v1.02, read holding registers example: 01 03 00 00 00 0A -> C5 CD.
        assert_eq!(
            crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A]).to_le_bytes(),
            [0xC5, 0xCD]
        );
    }

    #[test]
    fn frames_are_found_after_garbage_and_split_reads() {
        let frame = with_crc(vec![0x0B, 0x03, 0x40, 0x1E, 0x00, 0x02]);
        let mut buf = vec![0x00, 0xFF, 0x42];
        buf.extend_from_slice(&frame[..5]);
        assert_eq!(take_frame(&mut buf), None, "incomplete");
        buf.extend_from_slice(&frame[5..]);
        let f = take_frame(&mut buf).unwrap();
        assert_eq!(
            f,
            Frame {
                unit: 0x0B,
                function: 3,
                addr: 0x401E,
                count: 2
            }
        );
        assert!(buf.is_empty());
        let mut bad = frame.clone();
        bad[7] ^= 1;
        let mut buf = bad;
        assert_eq!(
            take_frame(&mut buf),
            None,
            "a frame with a bad CRC is not answered"
        );
    }

    /// Over TCP, as a serial device server: requests sent back to back still reach the line
    /// 3.5 characters after the answer before them, so each exchange takes the request, two
    /// silences and the answer on the wire, as the edge's wire-time bound counts them.
    #[tokio::test]
    async fn back_to_back_requests_over_tcp_wait_for_the_lines_silence() {
        let scenario = crate::scenario::Scenario::load("demo").unwrap();
        let clock = SimClock::new(1_750_000_000_000, 1.0);
        let plant: SharedPlant = std::sync::Arc::new(std::sync::Mutex::new(
            crate::plant::Plant::new(scenario, clock.now_ms()),
        ));
        let baud = 1_200;
        let (mut master, server) = tokio::io::duplex(1024);
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(server, plant, clock, baud, shutdown.clone()));
        let request = with_crc(vec![11, 3, 0x40, 0x1E, 0x00, 0x02]);
        // The first request; the second follows its answer at once, as the edge sends over TCP.
        master.write_all(&request).await.unwrap();
        // The time each answer arrived, and its length; the second request goes out the
        // moment the first answer is in.
        let mut answers = Vec::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64];
        let start = tokio::time::Instant::now();
        while answers.len() < 2 {
            let n = master.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let len = match buf.get(1..3) {
                Some([f, _]) if f & 0x80 != 0 => 5,
                Some([_, count]) => 5 + usize::from(*count),
                _ => continue,
            };
            if buf.len() >= len {
                answers.push((start.elapsed(), len));
                buf.drain(..len);
                if answers.len() == 1 {
                    master.write_all(&request).await.unwrap();
                }
            }
        }
        shutdown.cancel();
        let ct = char_time(baud).as_secs_f64();
        let len = answers[1].1 as f64;
        let second = (answers[1].0 - answers[0].0).as_secs_f64();
        let wire = (8.0 + 2.0 * 3.5 + len) * ct;
        assert!(
            second >= 0.98 * wire,
            "the second exchange took {second:.4} s, the wire {wire:.4} s"
        );
    }

    #[test]
    fn responses_carry_data_or_the_exception() {
        let f = Frame {
            unit: 5,
            function: 4,
            addr: 0,
            count: 2,
        };
        let ok = response_frame(&f, &Ok(Response::ReadInputRegisters(vec![0x1234, 0xABCD])));
        assert_eq!(&ok[..7], &[5, 4, 4, 0x12, 0x34, 0xAB, 0xCD]);
        assert_eq!(crc16(&ok[..7]).to_le_bytes(), [ok[7], ok[8]]);
        let exc = response_frame(&f, &Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(&exc[..3], &[5, 0x84, 2]);
    }
}
