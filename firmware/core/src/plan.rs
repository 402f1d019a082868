//! The request planner: which register ranges to read so that all due points of one device are
//! covered at the least cost on its link.
//!
//! Exact optimisation, not a greedy pass: dynamic programming over the points sorted by address.
//! `best[j]` is the cheapest way to read the first `j` points; the last request of that plan
//! covers some run `i..j`. A request may bridge gaps (reading registers nobody asked for) when
//! that is cheaper than another round trip, but it never splits a multi-register value, never
//! exceeds the device's register limit and never touches a register the device refuses.

use alloc::vec::Vec;
use core::fmt;

/// The registers one point occupies: `len` registers from zero-based `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u16,
    pub len: u16,
}

impl Span {
    pub fn end(self) -> u32 {
        u32::from(self.start) + u32::from(self.len)
    }
    fn overlaps(self, start: u32, end: u32) -> bool {
        u32::from(self.start) < end && start < self.end()
    }
}

/// What a request costs on a link, in seconds: a fixed part per request and a part per register.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkCost {
    pub per_request: f64,
    pub per_register: f64,
}

impl LinkCost {
    /// Modbus TCP: the round trip dominates; a register costs its two bytes on the wire.
    pub fn tcp(round_trip_s: f64) -> Self {
        // 16 bits at 10 Mbit/s, the slowest plant Ethernet still in service.
        LinkCost {
            per_request: round_trip_s,
            per_register: 16.0 / 10_000_000.0,
        }
    }

    /// Modbus RTU for a read (function 3 or 4) at `baud`, 11 bits a character (8 data, parity or
    /// second stop bit, start and stop): an 8-byte request, a 5-byte response frame around the
    /// data, a 3.5-character silence before each frame, and the device's turnaround time.
    pub fn rtu(baud: u32, turnaround_s: f64) -> Self {
        let char_s = 11.0 / f64::from(baud);
        LinkCost {
            per_request: (8.0 + 5.0 + 2.0 * 3.5) * char_s + turnaround_s,
            per_register: 2.0 * char_s,
        }
    }

    pub fn request(&self, registers: u32) -> f64 {
        self.per_request + self.per_register * f64::from(registers)
    }
}

/// What a device's reads were seen to take: a least-squares line through (registers, seconds)
/// of its answered requests, older ones weighing less, so that the planner works from this
/// device on this network (a Modbus TCP gateway in front of a 9 600-baud bus answers in tens of
/// milliseconds and pays per register) rather than from an assumed round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostFit {
    n: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
}

impl CostFit {
    /// Weight kept by older observations at each new one: about the last 500 count.
    const KEEP: f64 = 1.0 - 1.0 / 500.0;
    /// Observations before the fit is trusted.
    pub const ENOUGH: f64 = 30.0;

    pub fn observe(&mut self, registers: u16, seconds: f64) {
        let x = f64::from(registers);
        for v in [
            &mut self.n,
            &mut self.sx,
            &mut self.sy,
            &mut self.sxx,
            &mut self.sxy,
        ] {
            *v *= Self::KEEP;
        }
        self.n += 1.0;
        self.sx += x;
        self.sy += seconds;
        self.sxx += x * x;
        self.sxy += x * seconds;
    }

    /// The fitted cost, or `None` before [`CostFit::ENOUGH`] observations. Never cheaper per
    /// register than `wire` (what the medium is assumed to take), unless the reads themselves
    /// were faster than that floor allows (a loopback, a gigabit LAN: with the slope at the floor
    /// the cost per request would come out below zero); never below zero per request; when the
    /// reads seen were all about the same length, the per-register part is the wire's.
    pub fn cost(&self, wire: LinkCost) -> Option<LinkCost> {
        if self.n < Self::ENOUGH {
            return None;
        }
        let (mx, my) = (self.sx / self.n, self.sy / self.n);
        let var = self.sxx / self.n - mx * mx;
        let slope = (var >= 4.0).then(|| (self.sxy / self.n - mx * my) / var);
        let floored = slope.unwrap_or(wire.per_register).max(wire.per_register);
        let per_register = if my - floored * mx >= 0.0 {
            floored
        } else {
            // Faster than the floor: the reads' own slope, or, from reads all of one length,
            // nothing per register (the request's round trip is what such a link costs).
            slope.unwrap_or(0.0).max(0.0)
        };
        Some(LinkCost {
            per_request: (my - per_register * mx).max(0.0),
            per_register,
        })
    }
}

/// One read request of the plan and the points (indices into the planner's input) it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRequest {
    pub start: u16,
    pub len: u16,
    pub points: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// A point is longer than the device will return in one request.
    PointTooLong { index: usize, len: u16, max: u16 },
    /// A point lies on registers the device refuses.
    PointForbidden { index: usize },
    /// A point runs past register 65535.
    PointOutOfRange { index: usize },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::PointTooLong { index, len, max } => {
                write!(
                    f,
                    "point #{index} spans {len} registers, the device allows {max}"
                )
            }
            PlanError::PointForbidden { index } => {
                write!(f, "point #{index} lies on registers the device refuses")
            }
            PlanError::PointOutOfRange { index } => {
                write!(f, "point #{index} runs past register 65535")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PlanError {}

/// Plans the cheapest set of requests covering `points`.
///
/// `forbidden` lists register ranges the device answered with exception 02 (learned at run
/// time); no request may include them. Requests come out in address order.
pub fn plan(
    points: &[Span],
    cost: LinkCost,
    max_registers: u16,
    forbidden: &[Span],
) -> Result<Vec<PlannedRequest>, PlanError> {
    for (index, p) in points.iter().enumerate() {
        if p.end() > 65_536 {
            return Err(PlanError::PointOutOfRange { index });
        }
        if p.len > max_registers {
            return Err(PlanError::PointTooLong {
                index,
                len: p.len,
                max: max_registers,
            });
        }
        if forbidden
            .iter()
            .any(|f| f.overlaps(u32::from(p.start), p.end()))
        {
            return Err(PlanError::PointForbidden { index });
        }
    }
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].start, points[i].end()));

    let n = order.len();
    // best[j]: least cost to read sorted points 0..j; from[j]: where the last request starts.
    let mut best = alloc::vec![f64::INFINITY; n + 1];
    let mut from = alloc::vec![0usize; n + 1];
    best[0] = 0.0;
    for j in 1..=n {
        let mut end = 0u32;
        for i in (0..j).rev() {
            let p = points[order[i]];
            end = end.max(p.end());
            let start = u32::from(p.start);
            // Moving `i` left only widens the request, so the first violation ends the search.
            if end - start > u32::from(max_registers)
                || forbidden.iter().any(|f| f.overlaps(start, end))
            {
                break;
            }
            let c = best[i] + cost.request(end - start);
            if c < best[j] {
                best[j] = c;
                from[j] = i;
            }
        }
    }

    let mut requests = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = from[j];
        let run = &order[i..j];
        let start = points[run[0]].start;
        let end = run
            .iter()
            .map(|&k| points[k].end())
            .max()
            .unwrap_or(u32::from(start));
        let mut served: Vec<usize> = run.to_vec();
        served.sort_unstable();
        requests.push(PlannedRequest {
            start,
            len: (end - u32::from(start)) as u16,
            points: served,
        });
        j = i;
    }
    requests.reverse();
    Ok(requests)
}

/// The fixed-gap planner of common collectors (Telegraf's Modbus input and the like), kept as
/// the yardstick for [`plan`]: in address order, extend the current request over gaps of at
/// most `gap` registers while it stays within `max_registers`.
pub fn greedy(points: &[Span], gap: u32, max_registers: u16) -> Vec<PlannedRequest> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].start, points[i].len));
    let mut out: Vec<PlannedRequest> = Vec::new();
    for i in order {
        let p = points[i];
        if let Some(last) = out.last_mut() {
            let end = u32::from(last.start) + u32::from(last.len);
            let new_end = end.max(p.end());
            if u32::from(p.start) <= end + gap
                && new_end - u32::from(last.start) <= u32::from(max_registers)
            {
                last.len = (new_end - u32::from(last.start)) as u16;
                last.points.push(i);
                continue;
            }
        }
        out.push(PlannedRequest {
            start: p.start,
            len: p.len,
            points: alloc::vec![i],
        });
    }
    out
}

/// Total modelled time of a plan on a link.
pub fn plan_cost(requests: &[PlannedRequest], cost: LinkCost) -> f64 {
    requests
        .iter()
        .map(|r| cost.request(u32::from(r.len)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: u16, len: u16) -> Span {
        Span { start, len }
    }

    #[test]
    fn contiguous_points_become_one_request() {
        let pts = [span(0, 4), span(4, 4), span(8, 2)];
        let plan = plan(&pts, LinkCost::tcp(0.002), 125, &[]).unwrap();
        assert_eq!(
            plan,
            [PlannedRequest {
                start: 0,
                len: 10,
                points: alloc::vec![0, 1, 2]
            }]
        );
    }

    #[test]
    fn measured_costs_are_fitted_and_change_the_plan() {
        // A Modbus TCP gateway in front of a 9 600-baud bus: 20 ms a request, 2.3 ms a register.
        let truth = LinkCost::rtu(9_600, 0.0);
        let truth = LinkCost {
            per_request: 0.020,
            per_register: truth.per_register,
        };
        let wire = LinkCost::tcp(0.002);
        let mut fit = CostFit::default();
        for k in 0..(CostFit::ENOUGH as u16 - 1) {
            fit.observe(2 + k % 40, truth.request(u32::from(2 + k % 40)));
        }
        assert_eq!(fit.cost(wire), None, "too few reads to go by");
        for k in 0..400u16 {
            let len = 2 + (k * 7) % 60;
            // Jitter of +-0.5 ms.
            let jitter = f64::from(k % 11) / 10_000.0 - 0.0005;
            fit.observe(len, truth.request(u32::from(len)) + jitter);
        }
        let got = fit.cost(wire).unwrap();
        assert!(
            (got.per_request - truth.per_request).abs() < 0.001,
            "{got:?}"
        );
        assert!(
            (got.per_register / truth.per_register - 1.0).abs() < 0.02,
            "{got:?}"
        );

        // Two points 40 registers apart: one request at an assumed 2 ms round trip, two at the
        // measured cost.
        let pts = [span(0, 2), span(42, 2)];
        assert_eq!(plan(&pts, wire, 125, &[]).unwrap().len(), 1);
        assert_eq!(plan(&pts, got, 125, &[]).unwrap().len(), 2);

        // A link faster than the assumed wire (a loopback: 8 us a request, 0.3 us a register,
        // below the 10 Mbit/s floor of 1.6 us): the floor would leave nothing for the request
        // itself, and a plan with a request per point; the reads' own slope is taken instead.
        let fast = LinkCost {
            per_request: 8e-6,
            per_register: 0.3e-6,
        };
        let mut fit_fast = CostFit::default();
        for k in 0..400u16 {
            let len = 2 + (k * 7) % 60;
            fit_fast.observe(len, fast.request(u32::from(len)));
        }
        let got = fit_fast.cost(wire).unwrap();
        assert!((got.per_request - 8e-6).abs() < 1e-7, "{got:?}");
        assert!((got.per_register - 0.3e-6).abs() < 1e-8, "{got:?}");
        assert_eq!(
            plan(&[span(0, 2), span(10, 2)], got, 125, &[])
                .unwrap()
                .len(),
            1
        );

        // ... and from reads all of one length on such a link, the time is the request's.
        let mut fast_same = CostFit::default();
        for _ in 0..100 {
            fast_same.observe(10, 9e-6);
        }
        let got = fast_same.cost(wire).unwrap();
        assert_eq!(got.per_register, 0.0);
        assert!((got.per_request - 9e-6).abs() < 1e-9, "{got:?}");

        // Reads all of one length say nothing about the cost per register: the wire's is kept.
        let mut same = CostFit::default();
        for _ in 0..100 {
            same.observe(10, 0.003);
        }
        let c = same.cost(wire).unwrap();
        assert_eq!(c.per_register, wire.per_register);
        assert!((c.request(10) - 0.003).abs() < 1e-9);
    }

    #[test]
    fn tcp_bridges_wide_gaps_rtu_does_not() {
        let pts = [span(0, 2), span(60, 2)];
        let tcp = plan(&pts, LinkCost::tcp(0.002), 125, &[]).unwrap();
        assert_eq!(
            tcp.len(),
            1,
            "one round trip beats reading 58 spare registers on TCP"
        );
        let rtu = plan(&pts, LinkCost::rtu(9_600, 0.005), 125, &[]).unwrap();
        assert_eq!(
            rtu.len(),
            2,
            "58 spare registers at 9600 baud cost more than a request"
        );
    }

    #[test]
    fn never_exceeds_the_device_limit_nor_splits_a_value() {
        let pts: Vec<Span> = (0..40).map(|k| span(k * 4, 4)).collect();
        let plan = plan(&pts, LinkCost::tcp(0.002), 30, &[]).unwrap();
        for r in &plan {
            assert!(r.len <= 30, "{r:?}");
            for &p in &r.points {
                assert!(
                    pts[p].start >= r.start
                        && pts[p].end() <= u32::from(r.start) + u32::from(r.len)
                );
            }
        }
        let served: usize = plan.iter().map(|r| r.points.len()).sum();
        assert_eq!(served, 40);
        assert_eq!(plan.len(), 6, "160 registers at 28 (7 values) per request");
    }

    #[test]
    fn refused_registers_are_never_bridged() {
        let pts = [span(0, 2), span(10, 2)];
        let plan = plan(&pts, LinkCost::tcp(0.002), 125, &[span(5, 1)]).unwrap();
        assert_eq!(plan.len(), 2);
        let err = super::plan(&pts, LinkCost::tcp(0.002), 125, &[span(11, 1)]).unwrap_err();
        assert_eq!(err, PlanError::PointForbidden { index: 1 });
    }

    #[test]
    fn overlapping_points_share_a_request() {
        // A u32 and its low word read as u16 (meters sometimes expose both).
        let pts = [span(10, 2), span(11, 1), span(3, 1)];
        let plan = plan(&pts, LinkCost::tcp(0.002), 125, &[]).unwrap();
        assert_eq!(
            plan,
            [PlannedRequest {
                start: 3,
                len: 9,
                points: alloc::vec![0, 1, 2]
            }]
        );
    }

    #[test]
    fn dp_is_never_worse_than_any_split_on_a_small_case() {
        // Exhaustive check over every way to cut 8 sorted points into consecutive runs.
        let pts = [
            span(0, 2),
            span(3, 2),
            span(20, 1),
            span(22, 2),
            span(40, 4),
            span(47, 1),
            span(90, 2),
            span(93, 2),
        ];
        let cost = LinkCost::rtu(9_600, 0.004);
        let ours = plan_cost(&plan(&pts, cost, 125, &[]).unwrap(), cost);
        for cuts in 0u32..(1 << 7) {
            let mut total = 0.0;
            let mut first = 0;
            for k in 0..8 {
                if k == 7 || cuts & (1 << k) != 0 {
                    total += cost.request(pts[k].end() - u32::from(pts[first].start));
                    first = k + 1;
                }
            }
            assert!(ours <= total + 1e-12, "cuts {cuts:b}: {total} < {ours}");
        }
    }
}
