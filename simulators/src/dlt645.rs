//! DL/T 645-2007 meters of the plant, served on a line by [`crate::meter_line`]: the meter's
//! side of the framing, its own (the edge's is ems-core's; two implementations of the standard
//! check each other).
//!
//! A meter answers a read (control code 0x11) addressed to it, or broadcast, with 0x91 and the
//! value; an identifier it does not have gets the error reply 0xD1 with "no such data"; an
//! `exception` fault answers the error reply with its code.

use crate::meter::{MeterModel, Protocol, Reading};
use crate::meter_line::LineProtocol;

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

/// DL/T 645-2007 on a line (see [`crate::meter_line`]).
pub struct Dlt645;

impl LineProtocol for Dlt645 {
    type Request = ReadRequest;
    const NAME: &'static str = "DL/T 645";
    // FE FE FE FE, 68, six address bytes, 68, control, length, four identifier bytes, CS, 16.
    const REQUEST_BYTES: usize = 20;

    fn take_request(buf: &mut Vec<u8>) -> Option<ReadRequest> {
        take_request(buf)
    }

    fn addressed_to(req: &ReadRequest, unit_id: u8, model: MeterModel) -> bool {
        model.protocol() == Protocol::Dlt645
            && (address_of(unit_id) == req.address || req.address == [0xAA; 6])
    }

    fn value(req: &ReadRequest, model: MeterModel, shown: Reading) -> Result<Vec<u8>, u8> {
        model.dlt645_value(req.di, shown).ok_or(NO_SUCH_DATA)
    }

    fn reply(req: &ReadRequest, unit_id: u8, _: MeterModel, value: Result<Vec<u8>, u8>) -> Vec<u8> {
        reply_frame(&address_of(unit_id), req.di, value)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::clock::SimClock;
    use crate::service::SharedPlant;

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
        tokio::spawn(crate::meter_line::serve::<Dlt645, _>(
            line,
            plant,
            clock,
            9_600,
            shutdown.clone(),
        ));
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
