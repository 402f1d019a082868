//! The framing the edge does itself (ems-core's `rtu`, `dlt645` and `cjt188`) over a byte stream off an
//! RS-485 line or a serial device server (noise, torn, glued and other devices' frames): never a
//! panic; a frame the scan finds is found again in the bytes cut at its end (the edge relies on
//! it); an answer taken has passed its CRC or checksum and answers the request sent.
#![no_main]

use arbitrary::Arbitrary;
use ems_core::bcd;
use ems_core::cjt188;
use ems_core::dlt645::{self, Edition, Reply, Scan};
use ems_core::rtu::{self, Answer};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    dlt645: bool,
    cjt188: bool,
    meter_type: u8,
    ser: u8,
    edition_1997: bool,
    unit: u8,
    start: u16,
    count: u8,
    address: [u8; 6],
    di: u32,
    format_digits: u8,
    decimals: u8,
    signed: bool,
    chunks: Vec<Vec<u8>>,
}

fuzz_target!(|input: Input| {
    if input.cjt188 {
        cjt188_stream(&input)
    } else if input.dlt645 {
        dlt645_stream(&input)
    } else {
        rtu_stream(&input)
    }
});

fn rtu_stream(input: &Input) {
    let count = u16::from(input.count % 126);
    let request = rtu::read_request(input.unit, rtu::READ_HOLDING, input.start, count);
    let mut buf = Vec::new();
    for chunk in &input.chunks {
        buf.extend_from_slice(chunk);
        while let Some(len) = rtu::answer_len(&buf) {
            if buf.len() < len {
                break;
            }
            assert_eq!(rtu::answer_len(&buf[..len]), Some(len));
            let frame: Vec<u8> = buf.drain(..len).collect();
            match rtu::parse_answer(&request, &frame) {
                Ok(Answer::Registers(regs)) => {
                    assert_eq!(regs.len(), usize::from(count));
                    assert_eq!(frame[0], input.unit);
                    let (body, crc) = frame.split_at(frame.len() - 2);
                    assert_eq!(rtu::crc16(body).to_le_bytes(), [crc[0], crc[1]]);
                }
                Ok(Answer::Exception(_)) => assert_eq!(frame[1], rtu::READ_HOLDING | 0x80),
                Err(_) => {}
            }
        }
        if buf.len() > 4096 {
            buf.clear();
        }
    }
}

fn dlt645_stream(input: &Input) {
    let edition = if input.edition_1997 {
        Edition::V1997
    } else {
        Edition::V2007
    };
    let addr = bcd::Address(input.address);
    let format = format_of(input);
    let _ = dlt645::read_request(edition, &addr, input.di);
    let mut buf = Vec::new();
    for chunk in &input.chunks {
        buf.extend_from_slice(chunk);
        loop {
            match dlt645::find_frame(&buf) {
                Scan::NeedMore { from } => {
                    assert!(from <= buf.len());
                    buf.drain(..from);
                    break;
                }
                Scan::Frame { start, end } => {
                    assert!(start < end && end <= buf.len());
                    assert_eq!(
                        dlt645::find_frame(&buf[..end]),
                        Scan::Frame { start, end },
                        "the frame is found again in the bytes cut at its end"
                    );
                    let frame: Vec<u8> = buf[start..end].to_vec();
                    buf.drain(..end);
                    if let Ok(Reply::Data(value)) =
                        dlt645::parse_reply(edition, &addr, input.di, &frame)
                    {
                        assert_eq!(frame[1..7], input.address);
                        if let Ok(v) = bcd::decode(&value, format) {
                            assert!(v.is_finite());
                        }
                    }
                }
            }
        }
        if buf.len() > 4096 {
            buf.clear();
        }
    }
}

/// A BCD format of 2 to 16 digits from the input.
fn format_of(input: &Input) -> bcd::Format {
    let digits = 2 * (1 + usize::from(input.format_digits % 8));
    let decimals = usize::from(input.decimals) % digits;
    let text = format!("{}.{}", "X".repeat(digits - decimals), "X".repeat(decimals));
    let text = text.trim_end_matches('.');
    bcd::Format::parse(text, input.signed).expect("a format of X digits")
}

fn cjt188_stream(input: &Input) {
    let mut seven = [0u8; 7];
    seven[..6].copy_from_slice(&input.address);
    seven[6] = input.unit;
    let addr = bcd::Address(seven);
    let di = input.di as u16;
    let format = format_of(input);
    let _ = cjt188::read_request(input.meter_type, &addr, di, input.ser);
    let mut buf = Vec::new();
    for chunk in &input.chunks {
        buf.extend_from_slice(chunk);
        loop {
            match cjt188::find_frame(&buf) {
                Scan::NeedMore { from } => {
                    assert!(from <= buf.len());
                    buf.drain(..from);
                    break;
                }
                Scan::Frame { start, end } => {
                    assert!(start < end && end <= buf.len());
                    assert_eq!(
                        cjt188::find_frame(&buf[..end]),
                        Scan::Frame { start, end },
                        "the frame is found again in the bytes cut at its end"
                    );
                    let frame: Vec<u8> = buf[start..end].to_vec();
                    buf.drain(..end);
                    if let Ok(cjt188::Reply::Data(values)) =
                        cjt188::parse_reply(input.meter_type, &addr, di, input.ser, &frame)
                    {
                        assert_eq!(frame[1], input.meter_type);
                        assert_eq!(frame[2..9], seven);
                        assert_eq!(frame[11..14], [(di >> 8) as u8, di as u8, input.ser]);
                        if let Ok(v) = bcd::decode(&values, format) {
                            assert!(v.is_finite());
                        }
                    }
                }
            }
        }
        if buf.len() > 4096 {
            buf.clear();
        }
    }
}
