//! What the reference receiver reads of a request body: not JSON, or a record checked against
//! the format; never a panic. A record it accepts has the id it acknowledges by.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    if ems_gateway::upload::validate(&v).is_ok() {
        assert!(v["record_id"].as_str().is_some());
    }
});
