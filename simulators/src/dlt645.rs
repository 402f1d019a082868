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
    // Late replies (the `slow` fault), with when each is due: as on a real bus a slow meter
    // does not hold the line, and the other meters go on being answered meanwhile.
    let mut late: Vec<(tokio::time::Instant, Vec<u8>)> = Vec::new();
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
            let wire = ct.mul_f64(20.0 + reply.len() as f64);
            if !delay.is_zero() {
                late.push((tokio::time::Instant::now() + wire + delay, reply));
                continue;
            }
            tokio::time::sleep(wire).await;
            crate::rtu::send_due(&mut stream, &mut late).await?;
            stream.write_all(&reply).await?;
            stream.flush().await?;
        }
        let next_late = late.iter().map(|l| l.0).min();
        let n = tokio::select! {
            n = stream.read(&mut chunk) => n?,
            () = crate::rtu::until_due(next_late) => {
                crate::rtu::send_due(&mut stream, &mut late).await?;
                continue;
            }
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

    fn read_of(unit_id: u8, di: u32) -> Vec<u8> {
        let mut req = vec![0xFE, 0xFE, 0xFE, 0xFE, 0x68];
        req.extend_from_slice(&address_of(unit_id));
        req.extend_from_slice(&[0x68, 0x11, 0x04]);
        req.extend(di.to_le_bytes().iter().map(|b| b.wrapping_add(OFFSET)));
        let cs = sum(&req[4..]);
        req.extend_from_slice(&[cs, 0x16]);
        req
    }

    /// A slow meter does not hold the line: the meter asked after it answers first, and the
    /// slow one's reply still comes, late.
    #[tokio::test]
    async fn a_slow_meters_late_reply_does_not_hold_the_line() {
        let text = "name = \"two\"\ndescription = \"Two DL/T 645 meters\"\nseed = 1\n\n[[units]]\nid = \"kiln1\"\nname = \"kiln\"\nkind = \"kiln\"\ncapacity_t_per_h = 208.0\n\n[[meters]]\ndevice = \"slow\"\nunit_id = 43\nunit = \"kiln1\"\nflow = \"power\"\nmodel = \"dlt645-meter\"\n\n[[meters]]\ndevice = \"quick\"\nunit_id = 44\nunit = \"kiln1\"\nflow = \"power\"\nmodel = \"dlt645-meter\"\n";
        let scenario =
            crate::scenario::Scenario::from_source(&ems_config::Source::embedded("two.toml", text))
                .unwrap();
        let clock = SimClock::new(1_750_000_000_000, 1.0);
        let mut plant = crate::plant::Plant::new(scenario, clock.now_ms());
        let slow: crate::faults::FaultSpec =
            toml::from_str("device = \"slow\"\nkind = \"slow\"\ndelay_ms = 400\nfor_h = 1.0\n")
                .unwrap();
        plant.add_fault(&slow, clock.now_ms()).unwrap();
        let plant: SharedPlant = std::sync::Arc::new(std::sync::Mutex::new(plant));
        let (mut master, line) = tokio::io::duplex(1024);
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(line, plant, clock, 9_600, shutdown.clone()));
        let mut both = read_of(43, 0x0001_0000);
        both.extend(read_of(44, 0x0001_0000));
        master.write_all(&both).await.unwrap();
        // The replies in the order they come: each names its meter after the preamble and 68.
        let mut got = Vec::new();
        let mut from = Vec::new();
        let mut chunk = [0u8; 256];
        while from.len() < 2 {
            let n = tokio::time::timeout(Duration::from_secs(3), master.read(&mut chunk))
                .await
                .expect("both meters answer")
                .unwrap();
            got.extend_from_slice(&chunk[..n]);
            while let ems_core::dlt645::Scan::Frame { start, end } =
                ems_core::dlt645::find_frame(&got)
            {
                from.push(got[start + 1..start + 7].to_vec());
                got.drain(..end);
            }
        }
        shutdown.cancel();
        assert_eq!(from, [address_of(44).to_vec(), address_of(43).to_vec()]);
    }

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
