//! Polling: the planned requests of every device on one link, decoded into telemetry.
//!
//! One task per link, one transaction at a time on it. A failed request marks only its own
//! points; a failed link marks the points of the devices it could not reach and is
//! reconnected on the next cycle. Polling never waits on the network towards the broker:
//! results go into a channel that the publisher drains.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use ems_core::wire::{PointValue, Telemetry, PROTOCOL_VERSION};
use ems_core::Quality;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::{Backoff, TimeoutFit, Turns};
use crate::config::ClockSource;
pub use crate::device_plan::{decode_point, registers, DevicePlan, Read, Reading};
use crate::learner::{Learner, Lesson};
use crate::link::{connect, Connection, Failure, Link, Peer, Wait};
use crate::log_limit::LogLimit;
use crate::metrics::{DeviceLabel, EdgeMetrics, FailureLabel, LinkLabel, ReplanLabel};
use crate::profile::{PointRole, Profile, Table};
use crate::seq::SeqStore;
use crate::spool::Spool;
use crate::stamp::MeterClock;
use ems_core::plan::Span;

/// Exception 02: illegal data address.
const ILLEGAL_DATA_ADDRESS: u8 = 2;
const ILLEGAL_DATA_VALUE: u8 = 3;

/// Reads one device by its plan, each request's tries waiting as `wait` says.
pub async fn read_device(link: &mut Connection, plan: &DevicePlan, wait: Wait) -> Reading {
    if let Some(meter) = plan.device.meter {
        return read_meter(link, plan, &meter, wait).await;
    }
    let profile = &plan.device.profile;
    let mut values: Vec<Result<f64, Quality>> = vec![Err(Quality::Comm); profile.points.len()];
    // The device stopped answering or the link broke: its remaining reads are skipped, their
    // points marked with the failure that stopped them.
    let mut gave_up: Option<Quality> = None;
    let mut link_failed = false;
    let mut refused = Vec::new();
    let mut shorter = None;
    // No limit may go below the longest single point.
    let longest = profile
        .points
        .iter()
        .map(|p| p.data_type.registers())
        .max()
        .unwrap_or(1);
    let unit = plan.device.unit_id;
    // Finding what a device refuses or how long a request it takes waits its whole timeout.
    let timeout = wait.most;
    let retries = plan.device.retries;
    let mut timings = Vec::with_capacity(plan.reads.len());
    let mut answered_on_retry = Vec::new();
    let mut failures = Vec::new();
    for read in &plan.reads {
        if let Some(q) = gave_up {
            for &i in &read.points {
                values[i] = Err(q);
            }
            continue;
        }
        let asked = std::time::Instant::now();
        match link
            .read_retrying(unit, read.table, read.start, read.len, wait, retries)
            .await
        {
            Ok((regs, first_try)) => {
                let took = asked.elapsed().as_secs_f64();
                if first_try {
                    timings.push((read.len, took));
                } else {
                    answered_on_retry.push(took);
                }
                for &i in &read.points {
                    values[i] = decode_point(&profile.points[i], read, &regs);
                }
                // Answered on a retry after a timeout: the other try's answer may still come,
                // and the next request would wait it out. The bus has better use for that
                // time; the device's other reads wait for the next poll.
                if link.awaits_late_answer(Peer::Unit(unit)) {
                    gave_up = Some(Quality::Timeout);
                }
            }
            Err(Failure::Device(ILLEGAL_DATA_VALUE)) if read.len > longest => {
                // The device (or a gateway in front of it) takes shorter requests than its
                // profile says: halve the limit; the next poll reads with the new plan.
                shorter = Some(((read.len / 2).max(longest), "exception 03"));
                for &i in &read.points {
                    values[i] = Err(Quality::Exception(ILLEGAL_DATA_VALUE));
                }
            }
            Err(Failure::Device(ILLEGAL_DATA_ADDRESS)) if read.points.len() > 1 => {
                // A bridged read touched registers the device refuses: find which, by
                // bisecting the gaps it bridged (never those again; the rest may still be
                // bridged), then read each point on its own now.
                let found =
                    bisect_refused(link, unit, read.table, &plan.bridged(read), timeout).await;
                refused.extend(found.into_iter().map(|s| (read.table, s)));
                for &i in &read.points {
                    if let Some(q) = gave_up {
                        values[i] = Err(q);
                        continue;
                    }
                    let p = &profile.points[i];
                    let single = Read {
                        table: read.table,
                        start: p.address,
                        len: p.data_type.registers(),
                        points: vec![i],
                    };
                    values[i] = match link
                        .read_retrying(unit, single.table, single.start, single.len, wait, retries)
                        .await
                    {
                        Ok((regs, _)) => decode_point(p, &single, &regs),
                        Err(Failure::Device(code)) => Err(Quality::Exception(code)),
                        Err(Failure::Link {
                            quality,
                            error,
                            broken,
                        }) => {
                            failures.push(format!(
                                "{}: {error}",
                                registers(single.table, single.start, single.len)
                            ));
                            (gave_up, link_failed) = (Some(quality), broken);
                            Err(quality)
                        }
                    };
                }
            }
            Err(Failure::Device(code)) => {
                for &i in &read.points {
                    values[i] = Err(Quality::Exception(code));
                }
            }
            Err(Failure::Link {
                quality: Quality::Timeout,
                error,
                broken,
            }) if read.len > longest => {
                // Some devices and serial gateways ignore a request longer than they take
                // instead of answering exception 03. Ask for halves of it from its start, down
                // to the longest point: if one is answered, the length was the trouble, not
                // the device.
                for &i in &read.points {
                    values[i] = Err(Quality::Timeout);
                }
                let mut len = read.len;
                let answered = loop {
                    if len <= longest {
                        break None;
                    }
                    len = (len / 2).max(longest);
                    let part = Read {
                        table: read.table,
                        start: read.start,
                        len,
                        points: read
                            .points
                            .iter()
                            .copied()
                            .filter(|&i| {
                                let p = &profile.points[i];
                                u32::from(p.address) + u32::from(p.data_type.registers())
                                    <= u32::from(read.start) + u32::from(len)
                            })
                            .collect(),
                    };
                    match link
                        .read(unit, part.table, part.start, part.len, Wait::fixed(timeout))
                        .await
                    {
                        Ok(regs) => break Some((part, regs)),
                        Err(Failure::Link {
                            quality: Quality::Timeout,
                            ..
                        }) => continue,
                        Err(_) => break None,
                    }
                };
                match answered {
                    Some((part, regs)) => {
                        shorter = Some((part.len, "timeouts on long reads"));
                        for &i in &part.points {
                            values[i] = decode_point(&profile.points[i], &part, &regs);
                        }
                    }
                    None => {
                        failures.push(format!(
                            "{}: {error}",
                            registers(read.table, read.start, read.len)
                        ));
                        (gave_up, link_failed) = (Some(Quality::Timeout), broken);
                    }
                }
            }
            Err(Failure::Link {
                quality,
                error,
                broken,
            }) => {
                failures.push(format!(
                    "{}: {error}",
                    registers(read.table, read.start, read.len)
                ));
                (gave_up, link_failed) = (Some(quality), broken);
                for &i in &read.points {
                    values[i] = Err(quality);
                }
            }
        }
    }
    reading_of(
        profile,
        values,
        Findings {
            link_failed,
            refused,
            shorter,
            timings,
            answered_on_retry,
            failures,
        },
    )
}

/// Reads the registers of `gaps` on their own, halving what the device refuses, until the
/// refused ones are found (see [`crate::learner::Bisection`]). A failure of the link itself ends
/// it: what is left is taken as refused whole, which costs requests but never a bad read.
async fn bisect_refused(
    link: &mut Connection,
    unit: u8,
    table: Table,
    gaps: &[Span],
    timeout: Duration,
) -> Vec<Span> {
    let mut b = crate::learner::Bisection::new(gaps);
    while let Some(span) = b.next() {
        match link
            .read(unit, table, span.start, span.len, Wait::fixed(timeout))
            .await
        {
            Ok(_) => b.record(false),
            Err(Failure::Device(ILLEGAL_DATA_ADDRESS)) => b.record(true),
            Err(_) => {
                while b.next().is_some() {
                    b.record(true);
                }
            }
        }
    }
    b.refused()
}

/// What a poll found besides its values.
struct Findings {
    link_failed: bool,
    refused: Vec<(Table, Span)>,
    shorter: Option<(u16, &'static str)>,
    timings: Vec<(u16, f64)>,
    answered_on_retry: Vec<f64>,
    failures: Vec<String>,
}

/// Reads a DL/T 645 or CJ/T 188 meter: one data identifier a request, each point it answers
/// decoded from its BCD format.
async fn read_meter(
    link: &mut Connection,
    plan: &DevicePlan,
    meter: &crate::link::Meter,
    wait: Wait,
) -> Reading {
    let profile = &plan.device.profile;
    let dialect = profile.dialect;
    let mut values = vec![Err(Quality::Comm); profile.points.len()];
    let mut gave_up: Option<Quality> = None;
    let mut link_failed = false;
    let mut timings = Vec::with_capacity(plan.reads.len());
    let mut answered_on_retry = Vec::new();
    let mut failures = Vec::new();
    let peer = Peer::Meter(*meter);
    for read in &plan.reads {
        let Some(di) = read
            .points
            .first()
            .and_then(|&i| profile.points[i].meter)
            .map(|m| m.di)
        else {
            continue;
        };
        if let Some(q) = gave_up {
            for &i in &read.points {
                values[i] = Err(q);
            }
            continue;
        }
        // An answer owed to an earlier poll's request must not be taken for this one's.
        link.settle(peer).await;
        let ser = link.next_serial();
        let asked = std::time::Instant::now();
        let mut tries = 0;
        let answer = loop {
            let this_try = Wait {
                first: wait.try_number(tries),
                most: wait.most,
            };
            match link.read_meter(meter, di, ser, this_try).await {
                Err(Failure::Link { broken: false, .. }) if tries < plan.device.retries => {
                    tries += 1
                }
                answer => break answer,
            }
        };
        let decoded: Result<Vec<u8>, Quality> = match answer {
            Ok(bytes) => {
                let took = asked.elapsed().as_secs_f64();
                if tries == 0 {
                    timings.push((1, took));
                } else {
                    answered_on_retry.push(took);
                }
                // As for Modbus: a late answer owed ends this poll of the meter.
                if link.awaits_late_answer(peer) {
                    gave_up = Some(Quality::Timeout);
                }
                Ok(bytes)
            }
            Err(Failure::Device(code)) => Err(Quality::Exception(code)),
            Err(Failure::Link {
                quality,
                error,
                broken,
            }) => {
                failures.push(format!("data identifier {}: {error}", dialect.di_text(di)));
                // A meter that does not answer one identifier will not answer the next.
                if quality != Quality::Crc {
                    gave_up = Some(quality);
                }
                link_failed |= broken;
                Err(quality)
            }
        };
        for &i in &read.points {
            let def = &profile.points[i];
            values[i] = match (&decoded, def.meter) {
                (Ok(bytes), Some(point)) => point.decode(bytes).map(|v| v * def.scale + def.offset),
                (Err(q), _) => Err(*q),
                (Ok(_), None) => Err(Quality::Decode),
            };
        }
    }
    reading_of(
        profile,
        values,
        Findings {
            link_failed,
            refused: Vec::new(),
            shorter: None,
            timings,
            answered_on_retry,
            failures,
        },
    )
}

/// A poll's reading from each point's value or failure: the clock point stamps it, the rest
/// are reported.
fn reading_of(profile: &Profile, values: Vec<Result<f64, Quality>>, f: Findings) -> Reading {
    let mut device_clock = None;
    let mut points = Vec::with_capacity(values.len());
    for (def, value) in profile.points.iter().zip(values) {
        if def.role == PointRole::Clock {
            device_clock = Some(value.map(|v| v as i64));
            continue;
        }
        points.push(match value {
            Ok(v) => PointValue {
                id: def.id.clone(),
                v: Some(v),
                q: Quality::Good,
            },
            Err(q) => PointValue {
                id: def.id.clone(),
                v: None,
                q,
            },
        });
    }
    Reading {
        points,
        device_clock,
        link_failed: f.link_failed,
        refused: f.refused,
        shorter: f.shorter,
        timings: f.timings,
        answered_on_retry: f.answered_on_retry,
        failures: f.failures,
    }
}

/// What a link task tells the publisher.
#[derive(Debug)]
pub enum Handoff {
    /// New results are in the spool.
    Spooled,
    /// The spool could not take this result (disk failure): hold it in memory.
    Unspooled(Telemetry),
}

/// Where a link task puts each poll result: the spool, then a word to the publisher.
pub struct LinkContext {
    pub site: String,
    pub edge: String,
    pub interval: Duration,
    /// The most cycles a failing device skips.
    pub max_skip: u64,
    pub metrics: Arc<EdgeMetrics>,
    pub topic_prefix: String,
    pub seq: Arc<Mutex<SeqStore>>,
    /// Signs each result as it is numbered (protocol v1.2), when the board has a key.
    pub signer: Option<Arc<Mutex<crate::evidence::Signer>>>,
    pub spool: Arc<Mutex<Spool>>,
    pub out: mpsc::Sender<Handoff>,
    /// Where this link shows it completes its cycles (the board's watchdog supervisor watches).
    pub heartbeat: (Arc<crate::board::Heartbeats>, usize),
}

/// Polls every device of one link each interval until `shutdown`.
pub async fn run_link(
    link: Link,
    mut plans: Vec<DevicePlan>,
    lc: LinkContext,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut ctx: Option<Connection> = None;
    let mut backoffs: Vec<Backoff> = (0..plans.len() as u64).map(Backoff::new).collect();
    let mut turns = Turns::default();
    let mut fits = vec![TimeoutFit::default(); plans.len()];
    let mut clocks = vec![MeterClock::default(); plans.len()];
    let mut log_limits = vec![LogLimit::default(); plans.len()];
    // What requests cost is learned over TCP; a DL/T 645 meter's plan has nothing to bridge.
    let learns = link.learns_cost() && link.protocol() == crate::link::Protocol::Modbus;
    let mut learners = vec![Learner::new(learns); plans.len()];
    let link_label = LinkLabel {
        link: link.to_string(),
    };
    let mut tick = tokio::time::interval(lc.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        // A connection dropped after one device's failure (a timeout leaves the stream in an
        // unknown state) is made again for the next device; a link that cannot be reached is
        // tried once a cycle.
        let mut unreachable = false;
        let mut batch = Vec::with_capacity(plans.len());
        let cycle = turns.cycle(&mut backoffs);
        let started = std::time::Instant::now();
        let order = cycle
            .healthy
            .iter()
            .map(|&i| (i, false))
            .chain(cycle.retry.map(|i| (i, true)));
        for (i, retry) in order {
            // A backed-off device is tried only in what is left of the cycle's time (or when it
            // was put off too often).
            if retry && !cycle.forced && started.elapsed() >= lc.interval {
                turns.deferred(i);
                continue;
            }
            let (plan, backoff, learner, fit) = (
                &mut plans[i],
                &mut backoffs[i],
                &mut learners[i],
                &mut fits[i],
            );
            if ctx.is_none() && !unreachable {
                match connect(&link, lc.interval.max(Duration::from_secs(1))).await {
                    Ok(c) => ctx = Some(c),
                    Err(e) => {
                        unreachable = true;
                        tracing::warn!(link = %link, error = format!("{e:#}"), "Cannot connect; marking its devices.")
                    }
                }
            }
            let system_ms = chrono::Utc::now().timestamp_millis();
            let label = DeviceLabel {
                device: plan.device.id.clone(),
            };
            let polled = std::time::Instant::now();
            let mut reading = match ctx.as_mut() {
                Some(c) => {
                    lc.metrics.requests.inc_by(plan.reads.len() as u64);
                    let wait = fit.wait(
                        Duration::from_millis(plan.device.min_timeout_ms),
                        Duration::from_millis(plan.device.timeout_ms),
                    );
                    read_device(c, plan, wait).await
                }
                None => unreachable_reading(plan),
            };
            lc.metrics.polls.get_or_create(&label).inc();
            lc.metrics
                .poll_seconds
                .get_or_create(&link_label)
                .observe(polled.elapsed().as_secs_f64());
            for p in reading.points.iter().filter(|p| p.v.is_none()) {
                lc.metrics
                    .point_failures
                    .get_or_create(&FailureLabel {
                        device: label.device.clone(),
                        kind: p.q.to_string(),
                    })
                    .inc();
            }
            if reading.link_failed {
                ctx = None;
            }
            if let Some(first) = reading.failures.first() {
                match log_limits[i].allow(std::time::Instant::now()) {
                    Some(held_back) => tracing::warn!(
                        device = %plan.device.id,
                        failed_requests = reading.failures.len(),
                        held_back,
                        "Poll failed: {first}"
                    ),
                    None => {
                        lc.metrics.log_lines_held_back.inc();
                    }
                }
            }
            let answer_times = reading.timings.iter().map(|t| t.1);
            for seconds in answer_times.chain(reading.answered_on_retry.iter().copied()) {
                fit.answered(Duration::from_secs_f64(seconds));
            }
            let ok = reading.points.iter().any(|p| p.q.is_good());
            let was_backing_off = backoff.backing_off();
            let change = backoff.record(ok, lc.max_skip);
            match (was_backing_off, backoff.backing_off()) {
                (false, true) => lc.metrics.devices_backing_off.inc(),
                (true, false) => lc.metrics.devices_backing_off.dec(),
                _ => 0,
            };
            match change {
                Some(0) => {
                    tracing::info!(device = %plan.device.id, "Device answers again; polled every cycle.")
                }
                Some(skip) if !was_backing_off => {
                    tracing::warn!(device = %plan.device.id, skip_cycles = skip, "Device failing; polled less often until it answers.")
                }
                Some(skip) => {
                    tracing::debug!(device = %plan.device.id, skip_cycles = skip, "Device still failing.")
                }
                None => {}
            }
            for lesson in learner.learn(plan, &reading) {
                match lesson {
                    Ok((lesson, p)) => {
                        log_replan(&plan.device.id, &lesson, plan, &p);
                        lc.metrics
                            .replans
                            .get_or_create(&ReplanLabel {
                                reason: lesson.reason().to_owned(),
                            })
                            .inc();
                        *plan = p;
                    }
                    Err((lesson, e)) => {
                        tracing::error!(device = %plan.device.id, reason = lesson.reason(), error = %e, "Cannot replan.")
                    }
                }
            }
            let (ts_ms, withheld) = match plan.device.clock {
                ClockSource::Device => {
                    let clock = reading.device_clock.unwrap_or(Err(Quality::Comm));
                    crate::stamp::place(&mut clocks[i], clock, &mut reading.points, system_ms)
                }
                ClockSource::System => (system_ms, false),
            };
            if withheld && lc.metrics.unplaced_polls.get_or_create(&label).inc() == 0 {
                tracing::warn!(device = %plan.device.id, "The meter's clock has not been read yet: its polls are sent without their values until it is (stamped by the board's clock, a reading could sit hours off the meter's own).");
            }
            batch.push((plan.device.id.clone(), ts_ms, reading.points));
        }
        // Numbers are on disk before any message carrying them is spooled or can leave: a crash
        // in between leaves a gap (honest), never a number used twice (a silent loss).
        let mut messages: Vec<Telemetry> = {
            let mut seq = lc.seq.lock().expect("sequence store lock poisoned");
            let msgs = batch
                .into_iter()
                .map(|(device, ts_ms, points)| Telemetry {
                    v: PROTOCOL_VERSION,
                    site: lc.site.clone(),
                    edge: lc.edge.clone(),
                    seq: seq.take(&device),
                    device,
                    ts_ms,
                    points,
                    signed: None,
                })
                .collect();
            seq.persist().context("cannot persist sequence numbers")?;
            msgs
        };
        if let Some(signer) = &lc.signer {
            let mut signer = signer.lock().expect("signer lock poisoned");
            for m in &mut messages {
                signer.sign(m);
            }
        }
        let mut unspooled = Vec::new();
        {
            let mut spool = lc.spool.lock().expect("spool lock poisoned");
            for m in messages {
                let msg = crate::outbox::Message::telemetry(&lc.topic_prefix, &m, None);
                if let Err(e) = spool.append(&msg.topic, &msg.payload) {
                    tracing::error!(error = %e, device = %m.device, seq = m.seq, "Cannot spool; handing the result over in memory.");
                    unspooled.push(m);
                }
            }
        }
        for m in unspooled {
            if lc.out.send(Handoff::Unspooled(m)).await.is_err() {
                return Ok(());
            }
        }
        lc.heartbeat.0.beat(lc.heartbeat.1);
        match lc.out.try_send(Handoff::Spooled) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
        }
    }
}

/// Says what a device's new plan is and what showed it was needed.
fn log_replan(device: &str, lesson: &Lesson, was: &DevicePlan, plan: &DevicePlan) {
    let (was, plan) = (was.summary(), plan.summary());
    match lesson {
        Lesson::MeasuredCost {
            per_request_s,
            per_register_s,
        } => tracing::info!(
            device,
            per_request_ms = (per_request_s * 1e6).round() / 1e3,
            per_register_us = (per_register_s * 1e8).round() / 1e2,
            %was,
            %plan,
            "Request costs measured; replanned."
        ),
        Lesson::RefusedRegisters(refused) => {
            tracing::warn!(device, ?refused, %plan, "Device refuses registers a read bridged; replanned without them.")
        }
        Lesson::LengthLimit { max, shown_by } => {
            tracing::warn!(device, max_registers = max, shown_by, %plan, "Device refuses long requests; length limit lowered and replanned.")
        }
    }
}

fn unreachable_reading(plan: &DevicePlan) -> Reading {
    let points = plan
        .device
        .profile
        .points
        .iter()
        .filter(|p| p.role != PointRole::Clock)
        .map(|p| PointValue {
            id: p.id.clone(),
            v: None,
            q: Quality::Comm,
        })
        .collect();
    Reading {
        points,
        device_clock: None,
        link_failed: true,
        refused: Vec::new(),
        shorter: None,
        timings: Vec::new(),
        answered_on_retry: Vec::new(),
        failures: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Device;
    use crate::profile::Library;
    use crate::profile::Table;
    use ems_core::plan::Span;

    fn device() -> Device {
        Device {
            id: "m".into(),
            link: Link::Tcp("127.0.0.1:1".into()),
            unit_id: 1,
            meter: None,
            profile: Library::built_in()
                .get("ems-sim-totalizer")
                .unwrap()
                .clone(),
            clock: ClockSource::Device,
            timeout_ms: 100,
            min_timeout_ms: 100,
            retries: 1,
            factors: Default::default(),
        }
    }

    #[test]
    fn the_totalizer_is_one_request() {
        let plan = DevicePlan::new(device()).unwrap();
        assert_eq!(
            plan.summary(),
            "1 requests touching 10 registers for 3 points"
        );
    }

    #[test]
    fn the_plan_follows_the_link_a_slow_serial_line_bridges_less() {
        let mut d = device();
        d.profile = Library::built_in().get("sdm630").unwrap().clone();
        let tcp = DevicePlan::new(d.clone()).unwrap();
        d.link = "rtu:///dev/ttyS0?baud=9600".parse().unwrap();
        let rtu = DevicePlan::new(d).unwrap();
        // SDM630: 0x00, 0x06, 0x34, 0x48, 0x4A. Over TCP one read covers them all; at 9600
        // baud a request costs what 10 registers do, so the 0x08..0x34 gap is not worth it.
        assert_eq!(
            tcp.summary(),
            "1 requests touching 76 registers for 5 points"
        );
        assert_eq!(
            rtu.summary(),
            "3 requests touching 14 registers for 5 points"
        );
    }

    #[test]
    fn a_refused_gap_is_never_bridged_again() {
        let mut d = device();
        d.profile = Library::built_in()
            .get("ems-sim-water-meter")
            .unwrap()
            .clone();
        let plan = DevicePlan::new(d.clone()).unwrap();
        // flow (0x1000, 2) and total (0x1010, 2) bridged into one read, the clock apart.
        let bridged = plan.reads.iter().find(|r| r.start == 0x1000).unwrap();
        assert_eq!(bridged.len, 0x12);
        assert_eq!(
            plan.bridged(bridged),
            vec![Span {
                start: 0x1002,
                len: 0x0E
            }]
        );
        let refused = vec![(
            Table::Holding,
            Span {
                start: 0x1002,
                len: 0x0E,
            },
        )];
        let cost = d.link.cost();
        let replanned = DevicePlan::with_cost(d, refused, cost).unwrap();
        assert!(replanned
            .reads
            .iter()
            .all(|r| u32::from(r.start) + u32::from(r.len) <= 0x1002 || r.start >= 0x1010));
        assert_eq!(replanned.reads.len(), 3);
    }

    #[test]
    fn decoding_applies_offset_within_the_request_and_scale() {
        let plan = DevicePlan::new(device()).unwrap();
        let read = &plan.reads[0];
        let mut regs = vec![0u16; 10];
        regs[7] = 1234; // total, u64 at address 4, low word last
        let total = &plan.device.profile.points[1];
        assert_eq!(decode_point(total, read, &regs), Ok(1.234));
        assert_eq!(decode_point(total, read, &regs[..6]), Err(Quality::Decode));
    }
}
