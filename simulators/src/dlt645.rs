//! DL/T 645-2007 meters of the plant on a serial line (a real port or a pseudo-terminal) or over
//! TCP as behind a serial device server: the meter's side, with a framer of its own (the edge's
//! is ems-core's; two implementations of the standard check each other).
//!
//! A meter answers a read (control code 0x11) addressed to it, or broadcast, with 0x91 and the
//! value; an identifier it does not have gets the error reply 0xD1 with "no such data". The same
//! faults as on Modbus: no answer (offline, no response), late (slow), a corrupt or cut-short
//! frame, and an error reply in place of an exception.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::clock::SimClock;
use crate::faults::FaultKind;
use crate::service::SharedPlant;

const OFFSET: u8 = 0x33;

/// The 12-digit address of the meter at `unit_id`, as the wire carries it (lowest pair first).
pub fn address_of(unit_id: u8) -> [u8; 6] {
    let digits = format!("{unit_id:012}");
    let mut wire = [0u8; 6];
    for (i, pair) in digits.as_bytes().chunks(2).enumerate() {
        wire[5 - i] = ((pair[0] - b'0') << 4) | (pair[1] - b'0');
    }
    wire
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// A read request taken off the line: the address it names and its data identifier.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub address: [u8; 6],
    pub di: u32,
}

/// Takes the next read request off the front of `buf`, dropping what cannot start one (the
/// wake-up FE bytes, noise, frames of other kinds). `None` when more bytes are needed.
pub fn take_request(buf: &mut Vec<u8>) -> Option<ReadRequest> {
    loop {
        let start = buf.iter().position(|&b| b == 0x68)?;
        buf.drain(..start);
        if buf.len() < 10 {
            return None;
        }
        if buf[7] != 0x68 {
            buf.remove(0);
            continue;
        }
        let len = usize::from(buf[9]);
        let total = 12 + len;
        if buf.len() < total {
            return None;
        }
        let frame: Vec<u8> = buf.drain(..total).collect();
        if sum(&frame[..total - 2]) != frame[total - 2] || frame[total - 1] != 0x16 {
            continue; // noise that looked like a frame
        }
        if frame[8] != 0x11 || len != 4 {
            continue; // not a read of one identifier
        }
        let di: Vec<u8> = frame[10..14]
            .iter()
            .map(|b| b.wrapping_sub(OFFSET))
            .collect();
        let mut address = [0u8; 6];
        address.copy_from_slice(&frame[1..7]);
        return Some(ReadRequest {
            address,
            di: u32::from_le_bytes([di[0], di[1], di[2], di[3]]),
        });
    }
}

/// A reply frame: normal (0x91, the identifier and the value) or an error (0xD1, its byte).
pub fn reply_frame(address: &[u8; 6], di: u32, value: Result<Vec<u8>, u8>) -> Vec<u8> {
    let (control, data) = match value {
        Ok(v) => {
            let mut d = di.to_le_bytes().to_vec();
            d.extend(v);
            (0x91, d)
        }
        Err(code) => (0xD1, vec![code]),
    };
    let mut f = vec![0xFE, 0xFE, 0xFE, 0xFE, 0x68];
    f.extend_from_slice(address);
    f.extend_from_slice(&[0x68, control, data.len() as u8]);
    f.extend(data.iter().map(|b| b.wrapping_add(OFFSET)));
    let cs = sum(&f[4..]);
    f.extend_from_slice(&[cs, 0x16]);
    f
}

/// The error byte's "no such data".
const NO_SUCH_DATA: u8 = 0x02;

/// Serves DL/T 645 meters on `stream` until `shutdown` or the stream ends.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    plant: SharedPlant,
    clock: SimClock,
    baud: u32,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let ct = crate::rtu::char_time(baud);
    loop {
        while let Some(req) = take_request(&mut buf) {
            let (reply, delay) = {
                let mut p = plant.lock().expect("plant lock poisoned");
                p.advance_to(clock.now_ms());
                let meter = p.scenario().meters.iter().position(|m| {
                    m.model.dlt645()
                        && (address_of(m.unit_id) == req.address || req.address == [0xAA; 6])
                });
                let Some(m) = meter else { continue }; // nobody with that address on the line
                let asked = p.ask(m);
                let model = p.scenario().meters[m].model;
                let mut value = model.dlt645_value(req.di, p.shown(m)).ok_or(NO_SUCH_DATA);
                let (mut silent, mut delay, mut corrupt) = (false, Duration::ZERO, None);
                for fault in p.active_faults(m) {
                    match fault.kind {
                        FaultKind::NoResponse | FaultKind::Offline { .. } => silent = true,
                        FaultKind::Slow { delay_ms } => {
                            delay = delay.max(Duration::from_millis(delay_ms))
                        }
                        FaultKind::Exception(code) => value = Err(code),
                        FaultKind::CorruptFrame { truncate, every }
                            if asked.is_multiple_of(u64::from(every)) =>
                        {
                            corrupt = Some(truncate);
                        }
                        _ => {}
                    }
                }
                if silent {
                    continue;
                }
                let address = p.scenario().meters[m].unit_id;
                let mut out = reply_frame(&address_of(address), req.di, value);
                match corrupt {
                    Some(true) => out.truncate(out.len() - 4),
                    Some(false) => {
                        let cs = out.len() - 2;
                        out[cs] ^= 0xFF;
                    }
                    None => {}
                }
                (out, delay)
            };
            // The request (about 20 bytes) and the reply take their time on the wire.
            tokio::time::sleep(ct.mul_f64(20.0 + reply.len() as f64) + delay).await;
            stream.write_all(&reply).await?;
            stream.flush().await?;
        }
        let n = tokio::select! {
            n = stream.read(&mut chunk) => n?,
            () = shutdown.cancelled() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // Noise without a frame in it cannot fill memory.
        if buf.len() > 4_096 {
            buf.drain(..buf.len() - 256);
        }
    }
}

/// Serves DL/T 645 over TCP at `listener`, each connection as one line (a serial device server).
pub async fn serve_over_tcp(
    listener: tokio::net::TcpListener,
    plant: SharedPlant,
    clock: SimClock,
    baud: u32,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let (sock, _) = tokio::select! {
            a = listener.accept() => a?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let (plant, stop) = (plant.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(sock, plant, clock, baud, stop).await {
                tracing::debug!(error = %e, "DL/T 645 connection ended.");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_taken_through_its_wake_up_bytes_and_noise() {
        // FE FE FE FE, then a read of 00 01 00 00 from meter 000000000041.
        let mut req = vec![0xFE, 0x00, 0xFE, 0xFE, 0xFE, 0x68];
        req.extend_from_slice(&address_of(41));
        req.extend_from_slice(&[0x68, 0x11, 0x04, 0x33, 0x33, 0x34, 0x33]);
        let cs = sum(&req[5..]);
        req.extend_from_slice(&[cs, 0x16]);
        let mut buf = req.clone();
        assert_eq!(
            take_request(&mut buf),
            Some(ReadRequest {
                address: [0x41, 0, 0, 0, 0, 0],
                di: 0x0001_0000
            })
        );
        assert!(buf.is_empty());
        let mut noisy = req.clone();
        let n = noisy.len();
        noisy[n - 2] ^= 1;
        assert_eq!(take_request(&mut noisy), None);
        let reply = reply_frame(
            &address_of(41),
            0x0001_0000,
            Ok(vec![0x50, 0x45, 0x23, 0x01]),
        );
        assert_eq!(&reply[..5], [0xFE, 0xFE, 0xFE, 0xFE, 0x68]);
        assert_eq!(reply[12], 0x91);
        assert_eq!(sum(&reply[4..reply.len() - 2]), reply[reply.len() - 2]);
    }
}
