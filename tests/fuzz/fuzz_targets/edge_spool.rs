//! The edge's disk spool opened over whatever a power cut or a bad flash left in a segment and
//! in its acknowledgement file: an error or the records that check out, never a panic; records
//! appended after opening come back.
#![no_main]

use ems_edge::spool::{Spool, SpoolConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &[u8], &[u8])| {
    let (first, segment, acked) = input;
    let dir = std::env::temp_dir().join(format!("ems-fuzz-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{:020}.seg", u64::from(first) + 1)),
        segment,
    )
    .unwrap();
    if first % 2 == 0 {
        std::fs::write(dir.join("acked"), acked).unwrap();
    }
    let cfg = SpoolConfig {
        max_bytes: 1 << 20,
        segment_bytes: 4096,
        fsync_ms: 0,
    };
    if let Ok((mut spool, _report)) = Spool::open(&dir, cfg) {
        while let Ok(records) = spool.read_next(64) {
            if records.is_empty() {
                break;
            }
            for r in records {
                let _ = spool.ack(r.id);
            }
        }
        let id = spool.append("t", b"after").expect("append");
        let _ = id;
    }
    let _ = std::fs::remove_dir_all(&dir);
});
