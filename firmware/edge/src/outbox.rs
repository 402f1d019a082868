//! The outbox: messages waiting for the broker's PUBACK, as a pure state machine.
//!
//! rumqttc forgets unacknowledged publishes when it reconnects to a fresh session, so the edge
//! keeps its own account: a message leaves the outbox only when its PUBACK arrives. After a
//! disconnect everything in flight goes back to the head of the queue in its original order
//! and is sent again (at least once; the gateway drops duplicates by sequence number).

use std::collections::VecDeque;

/// One MQTT message to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// Its record in the disk spool, if it has one (telemetry does, status does not).
    pub spool_id: Option<u64>,
    /// Its device and sequence number, when already read from it (protocol v1.1 looks them
    /// up when reading the spool; the PUBACK then needs no second parse).
    pub key: Option<(String, u64)>,
}

impl Message {
    /// A poll result as it goes to the broker: the protocol's topic and JSON (the one place
    /// both are made).
    pub fn telemetry(prefix: &str, t: &ems_core::wire::Telemetry, spool_id: Option<u64>) -> Self {
        Message {
            topic: ems_core::wire::topic::data(prefix, &t.site, &t.device),
            payload: serde_json::to_vec(t).expect("telemetry serializes"),
            retain: false,
            spool_id,
            key: None,
        }
    }
}

#[derive(Debug)]
struct InFlight {
    msg: Message,
    /// Packet id the client gave it on the wire; `None` until its Outgoing event is seen.
    pkid: Option<u16>,
}

#[derive(Debug)]
pub struct Outbox {
    queued: VecDeque<Message>,
    in_flight: VecDeque<InFlight>,
    max_in_flight: usize,
}

impl Outbox {
    pub fn new(max_in_flight: usize) -> Self {
        Outbox {
            queued: VecDeque::new(),
            in_flight: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    pub fn push(&mut self, msg: Message) {
        self.queued.push_back(msg);
    }

    /// The next message to hand to the client, if the in-flight window has room.
    pub fn next_to_send(&mut self) -> Option<Message> {
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        let msg = self.queued.pop_front()?;
        self.in_flight.push_back(InFlight {
            msg: msg.clone(),
            pkid: None,
        });
        Some(msg)
    }

    /// The client could not take the last message from `next_to_send`: keep it first in line.
    pub fn unsend_last(&mut self) {
        if let Some(f) = self.in_flight.pop_back() {
            self.queued.push_front(f.msg);
        }
    }

    /// The client wrote a publish with `pkid`; publishes go out in the order they were handed over.
    pub fn on_outgoing(&mut self, pkid: u16) {
        if let Some(f) = self.in_flight.iter_mut().find(|f| f.pkid.is_none()) {
            f.pkid = Some(pkid);
        }
    }

    /// The broker acknowledged `pkid`: that message is delivered.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Message> {
        let i = self.in_flight.iter().position(|f| f.pkid == Some(pkid))?;
        self.in_flight.remove(i).map(|f| f.msg)
    }

    /// The connection dropped: whatever was not acknowledged is sent again, in order.
    pub fn on_disconnect(&mut self) {
        while let Some(f) = self.in_flight.pop_back() {
            self.queued.push_front(f.msg);
        }
    }

    /// Forgets every spooled message, queued or in flight: they are read from the spool again.
    pub fn drop_spooled(&mut self) {
        self.queued.retain(|m| m.spool_id.is_none());
        self.in_flight.retain(|f| f.msg.spool_id.is_none());
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.in_flight.is_empty()
    }

    /// Telemetry held only here, not in the spool (the disk failed when it came).
    pub fn unspooled_telemetry(&self) -> u64 {
        self.queued
            .iter()
            .chain(self.in_flight.iter().map(|f| &f.msg))
            .filter(|m| !m.retain && m.spool_id.is_none())
            .count() as u64
    }

    /// Messages waiting to be handed to the client.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Messages not yet acknowledged (queued and in flight).
    pub fn len(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8) -> Message {
        Message {
            topic: format!("t/{n}"),
            payload: vec![n],
            retain: false,
            spool_id: Some(n.into()),
            key: None,
        }
    }

    #[test]
    fn a_message_leaves_only_on_its_puback() {
        let mut o = Outbox::new(10);
        o.push(msg(1));
        o.push(msg(2));
        assert_eq!(o.next_to_send(), Some(msg(1)));
        assert_eq!(o.next_to_send(), Some(msg(2)));
        o.on_outgoing(7);
        o.on_outgoing(8);
        assert_eq!(o.on_puback(8), Some(msg(2)));
        assert_eq!(o.len(), 1);
        assert_eq!(o.on_puback(99), None);
        assert_eq!(o.on_puback(7), Some(msg(1)));
        assert!(o.is_empty());
    }

    #[test]
    fn disconnect_requeues_in_original_order_ahead_of_new_messages() {
        let mut o = Outbox::new(10);
        for n in 1..=3 {
            o.push(msg(n));
        }
        o.next_to_send();
        o.next_to_send();
        o.on_outgoing(1);
        o.on_disconnect();
        o.push(msg(4));
        let order: Vec<_> = std::iter::from_fn(|| o.next_to_send()).collect();
        assert_eq!(order, vec![msg(1), msg(2), msg(3), msg(4)]);
    }

    #[test]
    fn dropping_spooled_messages_keeps_the_others_in_order() {
        let mut o = Outbox::new(10);
        let status = |n: u8| Message {
            spool_id: None,
            ..msg(n)
        };
        o.push(msg(1));
        o.push(status(2));
        o.push(msg(3));
        o.push(status(4));
        o.next_to_send();
        o.next_to_send();
        o.drop_spooled();
        o.on_disconnect();
        let order: Vec<_> = std::iter::from_fn(|| o.next_to_send()).collect();
        assert_eq!(order, vec![status(2), status(4)]);
    }

    #[test]
    fn window_limits_messages_in_flight() {
        let mut o = Outbox::new(2);
        for n in 1..=3 {
            o.push(msg(n));
        }
        assert!(o.next_to_send().is_some());
        assert!(o.next_to_send().is_some());
        assert_eq!(o.next_to_send(), None);
        o.on_outgoing(1);
        o.on_puback(1);
        assert_eq!(o.next_to_send(), Some(msg(3)));
    }

    #[test]
    fn unsend_keeps_the_message_first_in_line() {
        let mut o = Outbox::new(5);
        o.push(msg(1));
        o.push(msg(2));
        let m = o.next_to_send().unwrap();
        assert_eq!(m, msg(1));
        o.unsend_last();
        assert_eq!(o.next_to_send(), Some(msg(1)));
    }
}
