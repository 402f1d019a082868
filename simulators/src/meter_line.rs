//! A line of meters that speak a protocol of their own rather than Modbus (DL/T 645, CJ/T 188),
//! on a serial line (a real port or a pseudo-terminal) or over TCP as behind a serial device
//! server: one loop for both, each protocol's framing in its own module (the edge's is
//! ems-core's; two implementations of each standard check each other).
//!
//! The same faults as on Modbus: no answer (offline, no response), late (slow: the reply is
//! queued until due and the line goes on, as on a real bus), a corrupt or cut-short frame, and
//! the protocol's error reply in place of an exception.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::clock::SimClock;
use crate::faults::FaultKind;
use crate::meter::{MeterModel, Reading};
use crate::service::SharedPlant;

/// One protocol's meter side: taking requests off the line and framing the replies.
pub trait LineProtocol: Send + 'static {
    type Request: Send;
    /// What the line is called in logs.
    const NAME: &'static str;
    /// Bytes of a request on the wire, its preamble included (its time on the line).
    const REQUEST_BYTES: usize;
    /// Takes the next request off the front of `buf`, dropping what cannot start one (wake-up
    /// bytes, noise, frames of other kinds). `None` when more bytes are needed.
    fn take_request(buf: &mut Vec<u8>) -> Option<Self::Request>;
    /// Whether the meter at `unit_id` of `model` is the one asked (or everyone is).
    fn addressed_to(req: &Self::Request, unit_id: u8, model: MeterModel) -> bool;
    /// The value bytes the meter answers, or the error code of its error reply.
    fn value(req: &Self::Request, model: MeterModel, shown: Reading) -> Result<Vec<u8>, u8>;
    /// The reply frame, preamble included.
    fn reply(
        req: &Self::Request,
        unit_id: u8,
        model: MeterModel,
        value: Result<Vec<u8>, u8>,
    ) -> Vec<u8>;
}

/// Serves the meters of protocol `P` on `stream` until `shutdown` or the stream ends.
pub async fn serve<P: LineProtocol, S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    plant: SharedPlant,
    clock: SimClock,
    baud: u32,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let ct = crate::rtu::char_time(baud);
    // Late replies (the `slow` fault), with when each is due: as on a real bus a slow meter
    // does not hold the line, and the other meters go on being answered meanwhile.
    let mut late: Vec<(tokio::time::Instant, Vec<u8>)> = Vec::new();
    loop {
        while let Some(req) = P::take_request(&mut buf) {
            let (reply, delay) = {
                let mut p = plant.lock().expect("plant lock poisoned");
                p.advance_to(clock.now_ms());
                let meter = p
                    .scenario()
                    .meters
                    .iter()
                    .position(|m| P::addressed_to(&req, m.unit_id, m.model));
                let Some(m) = meter else { continue }; // nobody with that address on the line
                let asked = p.ask(m);
                let (unit_id, model) = {
                    let spec = &p.scenario().meters[m];
                    (spec.unit_id, spec.model)
                };
                let mut value = P::value(&req, model, p.shown(m));
                let (mut silent, mut delay, mut corrupt) = (false, Duration::ZERO, None);
                for fault in p.active_faults(m) {
                    match fault.kind {
                        FaultKind::NoResponse | FaultKind::Offline { .. } => silent = true,
                        FaultKind::Slow { delay_ms } => {
                            delay = delay.max(Duration::from_millis(delay_ms))
                        }
                        FaultKind::Exception(code) => value = Err(code),
                        FaultKind::CorruptFrame { truncate, every }
                            if asked.is_multiple_of(u64::from(every)) =>
                        {
                            corrupt = Some(truncate);
                        }
                        _ => {}
                    }
                }
                if silent {
                    continue;
                }
                let mut out = P::reply(&req, unit_id, model, value);
                match corrupt {
                    Some(true) => out.truncate(out.len() - 4),
                    Some(false) => {
                        let cs = out.len() - 2;
                        out[cs] ^= 0xFF;
                    }
                    None => {}
                }
                (out, delay)
            };
            // The request and the reply take their time on the wire.
            let wire = ct.mul_f64((P::REQUEST_BYTES + reply.len()) as f64);
            if !delay.is_zero() {
                late.push((tokio::time::Instant::now() + wire + delay, reply));
                continue;
            }
            tokio::time::sleep(wire).await;
            crate::rtu::send_due(&mut stream, &mut late).await?;
            stream.write_all(&reply).await?;
            stream.flush().await?;
        }
        let next_late = late.iter().map(|l| l.0).min();
        let n = tokio::select! {
            n = stream.read(&mut chunk) => n?,
            () = crate::rtu::until_due(next_late) => {
                crate::rtu::send_due(&mut stream, &mut late).await?;
                continue;
            }
            () = shutdown.cancelled() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        // Noise without a frame in it cannot fill memory.
        if buf.len() > 4_096 {
            buf.drain(..buf.len() - 256);
        }
    }
}

/// Serves the meters of protocol `P` over TCP at `listener`, each connection as one line (a
/// serial device server).
pub async fn serve_over_tcp<P: LineProtocol>(
    listener: tokio::net::TcpListener,
    plant: SharedPlant,
    clock: SimClock,
    baud: u32,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::rtu::serve_connections(listener, shutdown, P::NAME, move |sock, stop| {
        serve::<P, _>(sock, plant.clone(), clock, baud, stop)
    })
    .await
}
