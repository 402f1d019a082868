//! A compacted history block as read back from the database (a damaged file): an error or its
//! messages, never a panic (nor an allocation the bytes do not justify); what decodes encodes
//! again to a block that decodes to the same messages.
#![no_main]

use ems_gateway::history::{decode, encode};
use ems_gateway::packed::raw_entries;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|block: &[u8]| {
    if let Ok(messages) = decode(block) {
        if messages.is_empty() {
            return;
        }
        // Only whole packed entries reach `encode` from the store.
        if messages
            .iter()
            .any(|m| m.points.as_ref().is_some_and(|p| raw_entries(p).is_err()))
        {
            return;
        }
        if let Ok((again, _)) = encode(&messages) {
            assert_eq!(decode(&again).expect("what was encoded decodes"), messages);
        }
    }
});
