//! What the gateway has committed (protocol v1.1), as a pure state machine.
//!
//! A broker's PUBACK says only that the broker has a message: a broker that then loses its
//! queue (restarted without persistence, a cluster node lost) leaves a gap nobody can fill.
//! So once the gateway tells this edge what it commits (retained on `{prefix}/{site}/ack/{edge}`),
//! a spooled result is released only when the gateway's mark of its device covers it. Results
//! the broker acknowledged and the gateway has not yet committed wait here; after a reconnect
//! they are sent again (the gateway stores each number once), and so are they when the
//! gateway's mark shows it has newer numbers of their device but not them (the broker dropped
//! them: lost with its queue, or taken before the gateway had subscribed). An edge whose
//! gateway never speaks v1.1 releases on PUBACK as before.

use std::collections::{HashMap, VecDeque};

use ems_core::wire::{Ack, DeviceAck};

/// Most results held for the gateway's commit; past it no new result is handed to the broker
/// until commits catch up (the rest waits in the spool on disk, bounded as ever).
pub const MAX_AWAITING: usize = 100_000;

/// A result passed over by the gateway's mark is sent again once it has waited this long since
/// the broker's PUBACK (time for a copy already sent again to be committed).
pub const RESEND_AFTER_S: u32 = 5;

#[derive(Debug, Default)]
pub struct Confirmations {
    /// The newest mark the gateway gave of each device.
    marks: HashMap<String, DeviceAck>,
    /// Per device, results the broker acknowledged and the gateway has not yet committed:
    /// (sequence number, spool id, second of the PUBACK on the caller's clock).
    awaiting: HashMap<String, VecDeque<(u64, u64, u32)>>,
    count: usize,
}

impl Confirmations {
    /// Whether the gateway holds `seq` of `device`.
    pub fn covers(&self, device: &str, seq: u64) -> bool {
        self.marks.get(device).is_some_and(|m| m.covers(seq))
    }

    /// The broker acknowledged spool record `id`, result `seq` of `device`: the id to release
    /// now if the gateway already has it; otherwise it waits for the gateway's mark.
    pub fn on_puback(&mut self, device: &str, seq: u64, id: u64, now_s: u32) -> Option<u64> {
        if self.covers(device, seq) {
            return Some(id);
        }
        self.awaiting
            .entry(device.to_owned())
            .or_default()
            .push_back((seq, id, now_s));
        self.count += 1;
        None
    }

    /// The gateway's marks arrived: the spool ids they release.
    pub fn on_ack(&mut self, ack: Ack) -> Vec<u64> {
        let mut released = Vec::new();
        for mark in ack.devices {
            let device = mark.device.clone();
            let m = match self.marks.get_mut(&device) {
                Some(m) => {
                    m.merge(mark);
                    m
                }
                None => self.marks.entry(device.clone()).or_insert(mark),
            };
            if let Some(waiting) = self.awaiting.get_mut(&device) {
                waiting.retain(|(seq, id, _)| {
                    let done = m.covers(*seq);
                    if done {
                        released.push(*id);
                    }
                    !done
                });
                if waiting.is_empty() {
                    self.awaiting.remove(&device);
                }
            }
        }
        self.count -= released.len();
        released
    }

    /// The connection (re)opened: whatever waited is sent again from the spool, so it is
    /// forgotten here. Returns how many.
    pub fn on_reconnect(&mut self) -> usize {
        self.awaiting.clear();
        std::mem::take(&mut self.count)
    }

    /// Whether the gateway passed over a result: it committed newer numbers of the device and
    /// not this one, which the broker acknowledged at least [`RESEND_AFTER_S`] ago. The broker
    /// will not deliver it any more; it must be sent again.
    pub fn passed_over(&self, now_s: u32) -> bool {
        self.awaiting.iter().any(|(device, waiting)| {
            let Some(mark) = self.marks.get(device) else {
                return false;
            };
            waiting
                .iter()
                .any(|(seq, _, at)| *seq < mark.last && at.saturating_add(RESEND_AFTER_S) <= now_s)
        })
    }

    /// Results the broker has and the gateway has not confirmed.
    pub fn awaiting(&self) -> usize {
        self.count
    }

    pub fn is_full(&self) -> bool {
        self.count >= MAX_AWAITING
    }
}

/// The device and sequence number of a spooled telemetry message (its topic's last level and
/// its `seq`), without parsing the points.
pub fn message_key(topic: &str, payload: &[u8]) -> Option<(String, u64)> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let device = topic.rsplit('/').next()?;
    let seq = serde_json::from_slice::<Seq>(payload).ok()?.seq;
    Some((device.to_owned(), seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (device, through, last, missing, aside) of each device.
    type Mark<'a> = (&'a str, u64, u64, &'a [[u64; 2]], &'a [u64]);

    fn ack(marks: &[Mark<'_>]) -> Ack {
        Ack {
            v: 1,
            site: "s".into(),
            edge: "e".into(),
            devices: marks
                .iter()
                .map(|(d, through, last, missing, aside)| DeviceAck {
                    device: (*d).into(),
                    through: *through,
                    last: *last,
                    missing: missing.to_vec(),
                    aside: aside.to_vec(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_result_is_released_only_when_the_gateway_commits_it() {
        let mut c = Confirmations::default();
        for seq in 1..=5 {
            assert_eq!(c.on_puback("a", seq, 100 + seq, 0), None);
        }
        assert_eq!(c.on_puback("b", 1, 200, 0), None);
        assert_eq!(c.awaiting(), 6);
        // The gateway committed a's 1..=3 and 5; 4 is missing there (the broker lost it).
        let mut released = c.on_ack(ack(&[("a", 3, 5, &[[4, 4]], &[])]));
        released.sort();
        assert_eq!(released, vec![101, 102, 103, 105]);
        assert_eq!(c.awaiting(), 2);
        // a's 4 was passed over (the gateway has 5): once it has waited long enough, it is
        // sent again; b's 1 has no newer number at the gateway, so it just waits.
        assert!(!c.passed_over(RESEND_AFTER_S - 1));
        assert!(c.passed_over(RESEND_AFTER_S));
        // After a reconnect the two are sent again and forgotten here.
        assert_eq!(c.on_reconnect(), 2);
        assert_eq!(c.awaiting(), 0);
        // Once committed, a later PUBACK of the same result releases it at once.
        c.on_ack(ack(&[("a", 5, 5, &[], &[])]));
        assert_eq!(c.on_puback("a", 4, 104, 9), Some(104));
        assert_eq!(c.on_puback("b", 1, 200, 9), None);
        assert!(!c.passed_over(100));
    }

    #[test]
    fn a_result_kept_aside_is_released_and_a_stale_mark_changes_nothing() {
        let mut c = Confirmations::default();
        c.on_ack(ack(&[("a", 10, 10, &[], &[])]));
        assert_eq!(c.on_puback("a", 12, 1, 0), None);
        assert_eq!(c.on_puback("a", 13, 2, 0), None);
        // 12 was refused (kept in the gateway's quarantine): the gateway has it.
        assert_eq!(c.on_ack(ack(&[("a", 10, 10, &[], &[12])])), vec![1]);
        // A retained mark older than what is known moves nothing back.
        assert_eq!(c.on_ack(ack(&[("a", 2, 2, &[], &[])])), Vec::<u64>::new());
        assert!(c.covers("a", 12) && c.covers("a", 10) && !c.covers("a", 13));
        assert_eq!(c.awaiting(), 1);
    }

    #[test]
    fn the_key_of_a_spooled_message_is_its_device_and_number() {
        let payload =
            br#"{"v":1,"site":"s","edge":"e","device":"bf1-power","seq":42,"ts_ms":0,"points":[]}"#;
        assert_eq!(
            message_key("ems/v1/s/data/bf1-power", payload),
            Some(("bf1-power".into(), 42))
        );
        assert_eq!(message_key("ems/v1/s/data/x", b"not json"), None);
    }
}
