//! CJ/T 188-2004 water meters of the plant, served on a line by [`crate::meter_line`]: the
//! meter's side of the framing, its own (the edge's is ems-core's; two implementations of the
//! standard check each other).
//!
//! A meter answers a read (control code 01H) addressed to it, or broadcast, with 81H: the data
//! identifier, the request's serial number and the values; an identifier it does not have, or
//! an `exception` fault, gets the abnormal reply C1H with a status byte.

use crate::meter::{MeterModel, Protocol, Reading};
use crate::meter_line::LineProtocol;

/// A cold-water meter's type byte.
const COLD_WATER: u8 = 0x10;

/// The 14-digit address of the meter at `unit_id`, as the wire carries it (lowest pair first).
pub fn address_of(unit_id: u8) -> [u8; 7] {
    let digits = format!("{unit_id:014}");
    let mut wire = [0u8; 7];
    for (i, pair) in digits.as_bytes().chunks(2).enumerate() {
        wire[6 - i] = ((pair[0] - b'0') << 4) | (pair[1] - b'0');
    }
    wire
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// A read request taken off the line.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub meter_type: u8,
    pub address: [u8; 7],
    pub di: u16,
    pub ser: u8,
}

/// Takes the next read request off the front of `buf`, dropping what cannot start one.
/// `None` when more bytes are needed.
pub fn take_request(buf: &mut Vec<u8>) -> Option<ReadRequest> {
    loop {
        let start = buf.iter().position(|&b| b == 0x68)?;
        buf.drain(..start);
        if buf.len() < 11 {
            return None;
        }
        // A read is `68 T A0..A6 01 03 DI0 DI1 SER CS 16`: anything else at a start byte is
        // noise or another kind of frame.
        if buf[9] != 0x01 || buf[10] != 0x03 {
            buf.remove(0);
            continue;
        }
        if buf.len() < 16 {
            return None;
        }
        let frame: Vec<u8> = buf.drain(..16).collect();
        if sum(&frame[..14]) != frame[14] || frame[15] != 0x16 {
            continue; // noise that looked like a frame
        }
        let mut address = [0u8; 7];
        address.copy_from_slice(&frame[2..9]);
        return Some(ReadRequest {
            meter_type: frame[1],
            address,
            di: u16::from_be_bytes([frame[11], frame[12]]),
            ser: frame[13],
        });
    }
}

/// A reply frame: normal (81H: identifier, SER, values) or abnormal (C1H: identifier, SER,
/// status).
pub fn reply_frame(req: &ReadRequest, address: &[u8; 7], value: Result<Vec<u8>, u8>) -> Vec<u8> {
    let (control, tail) = match value {
        Ok(v) => (0x81, v),
        Err(status) => (0xC1, vec![status]),
    };
    let mut f = vec![0xFE, 0xFE, 0x68, req.meter_type];
    f.extend_from_slice(address);
    f.push(control);
    f.push((3 + tail.len()) as u8);
    f.extend_from_slice(&req.di.to_be_bytes());
    f.push(req.ser);
    f.extend(tail);
    let cs = sum(&f[2..]);
    f.extend_from_slice(&[cs, 0x16]);
    f
}

/// The abnormal reply's status for an identifier the meter does not have (the simulator's
/// choice: the standard's status bits say nothing of it).
const NO_SUCH_DATA: u8 = 0x02;

/// CJ/T 188 on a line (see [`crate::meter_line`]).
pub struct Cjt188;

impl LineProtocol for Cjt188 {
    type Request = ReadRequest;
    const NAME: &'static str = "CJ/T 188";
    // FE FE, 68, type, seven address bytes, control, length, identifier, SER, CS, 16.
    const REQUEST_BYTES: usize = 18;

    fn take_request(buf: &mut Vec<u8>) -> Option<ReadRequest> {
        take_request(buf)
    }

    fn addressed_to(req: &ReadRequest, unit_id: u8, model: MeterModel) -> bool {
        model.protocol() == Protocol::Cjt188
            && (req.meter_type == COLD_WATER || req.meter_type == 0xAA)
            && (address_of(unit_id) == req.address || req.address == [0xAA; 7])
    }

    fn value(req: &ReadRequest, model: MeterModel, shown: Reading) -> Result<Vec<u8>, u8> {
        model.cjt188_value(req.di, shown).ok_or(NO_SUCH_DATA)
    }

    fn reply(req: &ReadRequest, unit_id: u8, _: MeterModel, value: Result<Vec<u8>, u8>) -> Vec<u8> {
        let req = ReadRequest {
            meter_type: COLD_WATER,
            ..*req
        };
        reply_frame(&req, &address_of(unit_id), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_of(unit_id: u8, di: u16, ser: u8) -> Vec<u8> {
        let mut req = vec![0xFE, 0xFE, 0x68, COLD_WATER];
        req.extend_from_slice(&address_of(unit_id));
        req.extend_from_slice(&[0x01, 0x03]);
        req.extend_from_slice(&di.to_be_bytes());
        req.push(ser);
        let cs = sum(&req[2..]);
        req.extend_from_slice(&[cs, 0x16]);
        req
    }

    #[test]
    fn a_request_is_taken_through_its_wake_up_bytes_and_noise_and_answered_with_its_number() {
        let mut buf = vec![0x00, 0x68, 0x13];
        buf.extend(read_of(45, 0x901F, 7));
        let req = take_request(&mut buf).unwrap();
        assert_eq!(
            req,
            ReadRequest {
                meter_type: COLD_WATER,
                address: [0x45, 0, 0, 0, 0, 0, 0],
                di: 0x901F,
                ser: 7
            }
        );
        assert!(buf.is_empty());
        let mut noisy = read_of(45, 0x901F, 7);
        noisy[15] ^= 1;
        assert_eq!(take_request(&mut noisy), None);
        // The edge's framer finds the reply and takes it as the answer to read number 7 only.
        let reply = reply_frame(
            &req,
            &address_of(45),
            Ok(vec![0x50, 0x45, 0x23, 0x01, 0x2C]),
        );
        let addr = ems_core::bcd::Address(address_of(45));
        let ems_core::cjt188::Scan::Frame { start, end } = ems_core::cjt188::find_frame(&reply)
        else {
            panic!("a frame")
        };
        let frame = &reply[start..end];
        assert_eq!(
            ems_core::cjt188::parse_reply(COLD_WATER, &addr, 0x901F, 7, frame),
            Ok(ems_core::cjt188::Reply::Data(vec![
                0x50, 0x45, 0x23, 0x01, 0x2C
            ]))
        );
        assert_eq!(
            ems_core::cjt188::parse_reply(COLD_WATER, &addr, 0x901F, 6, frame),
            Err(ems_core::cjt188::FrameError::Mismatch)
        );
        let abnormal = reply_frame(&req, &address_of(45), Err(NO_SUCH_DATA));
        assert_eq!(
            ems_core::cjt188::parse_reply(COLD_WATER, &addr, 0x901F, 7, &abnormal[2..]),
            Ok(ems_core::cjt188::Reply::Error(NO_SUCH_DATA))
        );
    }
}
