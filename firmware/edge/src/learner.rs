//! What a device's answers teach about planning it: registers it refuses (exception 02 on a
//! read that bridged a gap), the request length it takes (exception 03, or long reads ignored
//! while their first half is answered) and, on TCP, what its requests cost (a least-squares fit
//! of answered reads). Pure: fed each poll's [`Reading`], it says which new plan the device
//! needs and why; the link loop only switches to it, logs it and counts it.

use ems_core::plan::{CostFit, PlanError, Span};

use crate::device_plan::{DevicePlan, Reading};
use crate::profile::Table;

/// Polls between looks at whether a device's measured request costs call for another plan.
pub const COST_CHECK_POLLS: u32 = 30;

/// Why a device was planned again.
#[derive(Debug, Clone, PartialEq)]
pub enum Lesson {
    /// Its reads were measured to cost this, and planning for it reads the device at least 5 %
    /// faster.
    MeasuredCost {
        per_request_s: f64,
        per_register_s: f64,
    },
    /// It refused these registers in a bridged read: they are never bridged again.
    RefusedRegisters(Vec<(Table, Span)>),
    /// It takes requests of at most `max` registers, as `shown_by` showed.
    LengthLimit { max: u16, shown_by: &'static str },
}

impl Lesson {
    /// The metric label of the replan (`ems_edge_replans_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Lesson::MeasuredCost { .. } => "measured_cost",
            Lesson::RefusedRegisters(_) => "refused_registers",
            Lesson::LengthLimit { .. } => "length_limit",
        }
    }
}

/// One device's learning so far.
#[derive(Debug, Clone, Default)]
pub struct Learner {
    /// Whether request costs are learned (TCP: a round trip and what a gateway to a serial bus
    /// behind it takes per register); a serial line's costs are its baud rate's.
    learns_cost: bool,
    fit: CostFit,
    polls: u32,
}

impl Learner {
    pub fn new(learns_cost: bool) -> Learner {
        Learner {
            learns_cost,
            ..Learner::default()
        }
    }

    /// Takes one poll's findings against the device's current `plan`; returns each replan it
    /// calls for, in order, each built on the one before (the last is the plan to use), with
    /// the lesson behind it, or the lesson and why it could not be planned.
    pub fn learn(&mut self, plan: &DevicePlan, reading: &Reading) -> Replans {
        let mut out = Vec::new();
        let mut current = plan.clone();
        if self.learns_cost {
            for &(len, seconds) in &reading.timings {
                self.fit.observe(len, seconds);
            }
            self.polls += 1;
            if self.polls.is_multiple_of(COST_CHECK_POLLS) {
                if let Some(p) = plan.for_measured_cost(&self.fit) {
                    let lesson = Lesson::MeasuredCost {
                        per_request_s: p.cost.per_request,
                        per_register_s: p.cost.per_register,
                    };
                    record(&mut out, &mut current, lesson, Ok(p));
                }
            }
        }
        if !reading.refused.is_empty() {
            let base = current.clone();
            let mut refused = base.refused.clone();
            refused.extend(reading.refused.iter().copied());
            let planned = DevicePlan::with_cost(base.device.clone(), refused, base.cost);
            record(
                &mut out,
                &mut current,
                Lesson::RefusedRegisters(reading.refused.clone()),
                planned,
            );
        }
        if let Some((max, shown_by)) = reading.shorter {
            let base = current.clone();
            let mut device = base.device.clone();
            std::sync::Arc::make_mut(&mut device.profile).max_registers = max;
            let planned = DevicePlan::with_cost(device, base.refused.clone(), base.cost);
            record(
                &mut out,
                &mut current,
                Lesson::LengthLimit { max, shown_by },
                planned,
            );
        }
        out
    }
}

type Replans = Vec<Result<(Lesson, DevicePlan), (Lesson, PlanError)>>;

/// Finding exactly which registers of the gaps a refused read bridged the device refuses: each
/// gap is read on its own, and a refused one is halved until the refused registers are found
/// (a span refused whole while both its halves are answered is refused as a whole: a read may
/// not cross a boundary of the device's map there). Pure: the poller asks for the next span to
/// read and says whether the device refused it.
#[derive(Debug, Clone, Default)]
pub struct Bisection {
    nodes: Vec<Node>,
    queue: std::collections::VecDeque<usize>,
    found: Vec<Span>,
}

#[derive(Debug, Clone)]
struct Node {
    span: Span,
    parent: Option<usize>,
    /// Halves not yet settled.
    pending: u8,
    /// A refused register was found below it.
    found_below: bool,
}

impl Bisection {
    pub fn new(gaps: &[Span]) -> Bisection {
        let mut b = Bisection::default();
        for &span in gaps {
            b.push(span, None);
        }
        b
    }

    fn push(&mut self, span: Span, parent: Option<usize>) {
        self.nodes.push(Node {
            span,
            parent,
            pending: 0,
            found_below: false,
        });
        self.queue.push_back(self.nodes.len() - 1);
    }

    /// The span to read next, if any is left.
    pub fn next(&self) -> Option<Span> {
        self.queue.front().map(|&i| self.nodes[i].span)
    }

    /// What reading the span [`Bisection::next`] gave: refused (exception 02) or answered.
    pub fn record(&mut self, refused: bool) {
        let Some(i) = self.queue.pop_front() else {
            return;
        };
        let span = self.nodes[i].span;
        if !refused {
            self.settle(i, false);
        } else if span.len == 1 {
            self.found.push(span);
            self.settle(i, true);
        } else {
            let half = span.len / 2;
            self.nodes[i].pending = 2;
            self.push(
                Span {
                    start: span.start,
                    len: half,
                },
                Some(i),
            );
            self.push(
                Span {
                    start: span.start + half,
                    len: span.len - half,
                },
                Some(i),
            );
        }
    }

    fn settle(&mut self, mut i: usize, mut found: bool) {
        while let Some(p) = self.nodes[i].parent {
            let parent = &mut self.nodes[p];
            parent.pending -= 1;
            parent.found_below |= found;
            if parent.pending > 0 {
                return;
            }
            if !parent.found_below {
                // Refused whole, both halves answered.
                self.found.push(parent.span);
            }
            found = true;
            i = p;
        }
    }

    /// The refused spans found, merged, once nothing is left to read.
    pub fn refused(&self) -> Vec<Span> {
        let mut spans = self.found.clone();
        spans.sort_by_key(|s| s.start);
        let mut out: Vec<Span> = Vec::new();
        for s in spans {
            match out.last_mut() {
                Some(last) if u32::from(last.start) + u32::from(last.len) >= u32::from(s.start) => {
                    let end = (u32::from(last.start) + u32::from(last.len))
                        .max(u32::from(s.start) + u32::from(s.len));
                    last.len = (end - u32::from(last.start)) as u16;
                }
                _ => out.push(s),
            }
        }
        out
    }
}

/// Keeps one replan; the next lesson is planned on the plan it made.
fn record(
    out: &mut Replans,
    current: &mut DevicePlan,
    lesson: Lesson,
    planned: Result<DevicePlan, PlanError>,
) {
    match planned {
        Ok(p) => {
            *current = p.clone();
            out.push(Ok((lesson, p)));
        }
        Err(e) => out.push(Err((lesson, e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClockSource, Device};
    use crate::link::Link;
    use crate::profile::Library;

    fn plan(link: Link) -> DevicePlan {
        DevicePlan::new(Device {
            id: "m".into(),
            link,
            unit_id: 1,
            meter: None,
            profile: Library::built_in().get("ems-sim-dtsu666").unwrap().clone(),
            clock: ClockSource::Device,
            timeout_ms: 100,
            min_timeout_ms: 100,
            retries: 1,
            factors: Default::default(),
        })
        .unwrap()
    }

    fn reading() -> Reading {
        Reading {
            points: Vec::new(),
            device_clock: None,
            link_failed: false,
            refused: Vec::new(),
            shorter: None,
            timings: Vec::new(),
            answered_on_retry: Vec::new(),
            failures: Vec::new(),
        }
    }

    #[test]
    fn refused_registers_and_a_length_limit_are_learned_one_after_the_other() {
        let p = plan(Link::Tcp("127.0.0.1:1".into()));
        let bridged = p.reads.iter().find(|r| !p.bridged(r).is_empty()).cloned();
        let Some(read) = bridged else {
            panic!("the profile's plan bridges a gap: {}", p.summary())
        };
        let gap = p.bridged(&read);
        let found = Reading {
            refused: gap.iter().map(|s| (read.table, *s)).collect(),
            shorter: Some((8, "exception 03")),
            ..reading()
        };
        let mut learner = Learner::new(false);
        let lessons = learner.learn(&p, &found);
        assert_eq!(lessons.len(), 2, "{lessons:?}");
        let (first, after_refusal) = lessons[0].as_ref().unwrap();
        assert_eq!(first.reason(), "refused_registers");
        assert!(after_refusal.refused.len() == gap.len());
        let (second, last) = lessons[1].as_ref().unwrap();
        assert_eq!(
            *second,
            Lesson::LengthLimit {
                max: 8,
                shown_by: "exception 03"
            }
        );
        assert_eq!(
            last.refused, after_refusal.refused,
            "the second builds on the first"
        );
        assert!(last.reads.iter().all(|r| r.len <= 8));
        for r in &last.reads {
            for (t, s) in &last.refused {
                let (a, b) = (u32::from(s.start), u32::from(s.start) + u32::from(s.len));
                let (c, d) = (u32::from(r.start), u32::from(r.start) + u32::from(r.len));
                assert!(
                    *t != r.table || b <= c || d <= a,
                    "a refused span is read again"
                );
            }
        }
        assert!(
            learner.learn(last, &reading()).is_empty(),
            "nothing new, nothing learned"
        );
    }

    /// Runs a bisection against a device that refuses what `refuses` says of a span.
    fn bisect(gaps: &[Span], refuses: impl Fn(Span) -> bool) -> (Vec<Span>, usize) {
        let mut b = Bisection::new(gaps);
        let mut reads = 0;
        while let Some(span) = b.next() {
            reads += 1;
            b.record(refuses(span));
        }
        (b.refused(), reads)
    }

    #[test]
    fn a_bisection_finds_exactly_the_refused_registers() {
        let span = |start, len| Span { start, len };
        let holds = |s: Span, a: u16, b: u16| s.start < b && a < s.start + s.len;
        // Registers 105..=107 of the gap 100..120 are unmapped, the rest answer.
        let (found, reads) = bisect(&[span(100, 20)], |s| holds(s, 105, 108));
        assert_eq!(found, vec![span(105, 3)]);
        assert!(
            reads <= 12,
            "{reads} reads to find three registers in twenty"
        );
        // Two gaps, one clean, one refused throughout.
        let (found, _) = bisect(&[span(10, 4), span(50, 6)], |s| holds(s, 50, 56));
        assert_eq!(found, vec![span(50, 6)]);
        // A read may not cross 204 (two blocks of the device's map meet there): the gap is
        // refused whole, each half answered.
        let (found, reads) = bisect(&[span(200, 8)], |s| {
            holds(s, 203, 205) && s.len > 1 && s.start < 204 && s.start + s.len > 204
        });
        assert_eq!(found, vec![span(200, 8)]);
        assert_eq!(reads, 3);
        assert_eq!(bisect(&[], |_| true).0, vec![]);
    }

    #[test]
    fn request_costs_are_looked_at_every_thirty_polls_on_tcp_only() {
        // A gateway to a serial bus behind TCP: 5 ms a request and 2 ms a register, far from
        // the model's assumption, so the measured plan reads far fewer registers.
        let p = plan(Link::Tcp("127.0.0.1:1".into()));
        let slow = Reading {
            timings: p
                .reads
                .iter()
                .map(|r| (r.len, 0.005 + 0.002 * f64::from(r.len)))
                .collect(),
            ..reading()
        };
        let mut tcp = Learner::new(true);
        let mut serial = Learner::new(false);
        for poll in 1..COST_CHECK_POLLS {
            assert!(tcp.learn(&p, &slow).is_empty(), "poll {poll}");
            assert!(serial.learn(&p, &slow).is_empty());
        }
        let lessons = tcp.learn(&p, &slow);
        assert!(
            serial.learn(&p, &slow).is_empty(),
            "a serial line's costs are its baud rate's"
        );
        match lessons.as_slice() {
            [Ok((Lesson::MeasuredCost { per_register_s, .. }, better))] => {
                assert!((per_register_s - 0.002).abs() < 1e-4, "{per_register_s}");
                let regs = |p: &DevicePlan| p.reads.iter().map(|r| u32::from(r.len)).sum::<u32>();
                assert!(
                    regs(better) < regs(&p),
                    "{} -> {}",
                    p.summary(),
                    better.summary()
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
