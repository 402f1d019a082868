//! The packed sample BLOB as read back from the database (a damaged file): an error or the
//! points, never a panic; what decodes re-encodes to the same bytes.
#![no_main]

use ems_gateway::packed::{good_value, push, unpack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|blob: &[u8]| {
    if let Ok(points) = unpack(blob) {
        let mut again = Vec::new();
        for p in &points {
            push(&mut again, p.series, p.value, p.quality);
        }
        let back = unpack(&again).expect("what was encoded decodes");
        assert_eq!(back.len(), points.len());
        for (a, b) in back.iter().zip(&points) {
            assert_eq!(a.series, b.series);
            assert_eq!(a.quality, b.quality);
            assert_eq!(a.value.map(f64::to_bits), b.value.map(f64::to_bits));
        }
        if let Some(p) = points.first() {
            let _ = good_value(blob, p.series).expect("a whole blob reads");
        }
    } else {
        let _ = good_value(blob, 1);
    }
});
