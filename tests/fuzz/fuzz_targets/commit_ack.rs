//! The gateway's commit marks as an edge receives them from the broker (any bytes on its ack
//! topic): a parse error or marks taken in, never a panic; the count of results awaiting
//! commit always equals the results held, and a result is released at most once.
#![no_main]

use ems_core::wire::Ack;
use ems_edge::confirm::Confirmations;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], Vec<(u8, u16)>, &[u8])| {
    let (first, held, second) = input;
    let mut c = Confirmations::default();
    let mut ids = std::collections::HashSet::new();
    let mut released = Vec::new();
    let take = |c: &mut Confirmations, bytes: &[u8], released: &mut Vec<u64>| {
        if let Ok(ack) = serde_json::from_slice::<Ack>(bytes) {
            released.extend(c.on_ack(ack));
        }
    };
    take(&mut c, first, &mut released);
    for (i, (device, seq)) in held.iter().enumerate() {
        let id = i as u64;
        ids.insert(id);
        let device = format!("d{}", device % 4);
        released.extend(c.on_puback(&device, u64::from(*seq), id, i as u32));
    }
    take(&mut c, second, &mut released);
    let _ = c.passed_over(u32::MAX);
    let unique: std::collections::HashSet<_> = released.iter().collect();
    assert_eq!(unique.len(), released.len(), "released twice");
    assert!(released.iter().all(|id| ids.contains(id)));
    assert_eq!(c.awaiting() + released.len(), ids.len());
});
