//! Requests, registers and modelled poll-cycle time per device: our planner (exact, dynamic
//! programming over the link's cost model) against a greedy fixed-gap planner of the Telegraf
//! kind at every gap setting, on the shipped profiles and on synthetic plant maps.
//!
//! `cargo bench -p ems-edge --bench planner_vs_greedy`
//!
//! Links: Modbus TCP with a 2 ms round trip, and RTU at 9 600 baud with a 5 ms turnaround.
//! "gap 0" is the greedy planner that never bridges a gap (one request per contiguous run, what
//! tools do by default); "best greedy" is the greedy planner at the gap setting that happens to
//! suit that map and link best, which a user would have to find by hand per device.

use ems_core::plan::{greedy, plan, plan_cost, LinkCost, PlannedRequest, Span};
use ems_edge::profile::{Library, Table};

fn registers(reqs: &[PlannedRequest]) -> u32 {
    reqs.iter().map(|r| u32::from(r.len)).sum()
}

/// Synthetic maps seen on plant meters: clusters of values with gaps of various widths.
fn synthetic() -> Vec<(String, Vec<Span>)> {
    let mut maps = Vec::new();
    // A power analyser: 60 float32 values in four blocks, gaps of 6 to 40 registers.
    let mut analyser = Vec::new();
    for (block, base) in [0u16, 46, 140, 400].iter().enumerate() {
        for i in 0..15u16 {
            analyser.push(Span {
                start: base + i * 2 + if i % 5 == 4 { 6 * block as u16 } else { 0 },
                len: 2,
            });
        }
    }
    maps.push((
        "synthetic power analyser (60 values, 4 blocks)".into(),
        analyser,
    ));
    // A flow computer: 24 values every 10 registers (u32 with 8-register gaps between).
    maps.push((
        "synthetic flow computer (24 values, every 10 registers)".into(),
        (0..24u16)
            .map(|i| Span {
                start: i * 10,
                len: 2,
            })
            .collect(),
    ));
    // A PLC data block read sparsely: 40 single registers scattered over 1 000.
    let mut plc: Vec<Span> = (0..40u32)
        .map(|i| Span {
            start: ((i * 7919) % 1000) as u16,
            len: 1,
        })
        .collect();
    plc.sort_by_key(|s| s.start);
    plc.dedup_by_key(|s| s.start);
    maps.push(("synthetic PLC block (40 scattered registers)".into(), plc));
    // Dense: 50 consecutive float32 values.
    maps.push((
        "synthetic dense block (50 consecutive float32)".into(),
        (0..50u16)
            .map(|i| Span {
                start: i * 2,
                len: 2,
            })
            .collect(),
    ));
    maps
}

fn main() {
    let links = [
        ("TCP 2 ms", LinkCost::tcp(0.002)),
        ("RTU 9600", LinkCost::rtu(9_600, 0.005)),
    ];
    let gaps = [0u32, 1, 2, 4, 8, 16, 32, 64, 125];
    let lib = Library::built_in();
    let mut maps: Vec<(String, Vec<Span>, u16)> = Vec::new();
    for name in lib.names() {
        let p = lib.get(name).unwrap();
        for table in [Table::Holding, Table::Input] {
            let spans: Vec<Span> = p
                .points
                .iter()
                .filter(|d| d.table == table)
                .map(|d| Span {
                    start: d.address,
                    len: d.data_type.registers(),
                })
                .collect();
            if !spans.is_empty() {
                maps.push((format!("{name} ({table:?})"), spans, p.max_registers));
            }
        }
    }
    for (name, spans) in synthetic() {
        maps.push((name, spans, 125));
    }
    println!(
        "{:<58} {:<9} {:>18} {:>26} {:>9} {:>12} {:>9}",
        "map",
        "link",
        "ours req/reg/ms",
        "best greedy gap req/reg/ms",
        "vs best",
        "gap 0 ms",
        "vs gap 0"
    );
    let mut worst_vs_greedy: f64 = 0.0;
    let mut best_vs_gap0: f64 = 1.0;
    for (name, spans, max) in &maps {
        for (link, cost) in links {
            let ours = plan(spans, cost, *max, &[]).expect("plannable");
            let t_ours = plan_cost(&ours, cost);
            let (best_gap, best) = gaps
                .iter()
                .map(|&g| (g, greedy(spans, g, *max)))
                .min_by(|a, b| plan_cost(&a.1, cost).total_cmp(&plan_cost(&b.1, cost)))
                .unwrap();
            let t_best = plan_cost(&best, cost);
            let t_gap0 = plan_cost(&greedy(spans, 0, *max), cost);
            worst_vs_greedy = worst_vs_greedy.max(t_ours / t_best);
            best_vs_gap0 = best_vs_gap0.min(t_ours / t_gap0);
            println!(
                "{:<58} {:<9} {:>4}/{:>4}/{:>8.2} {:>5} {:>4}/{:>4}/{:>8.2} {:>8.3}x {:>12.2} {:>8.3}x",
                name,
                link,
                ours.len(),
                registers(&ours),
                t_ours * 1e3,
                best_gap,
                best.len(),
                registers(&best),
                t_best * 1e3,
                t_ours / t_best,
                t_gap0 * 1e3,
                t_ours / t_gap0
            );
        }
    }
    println!(
        "worst ours/best-greedy: {worst_vs_greedy:.3}x (at most 1: never worse); best ours/gap-0: {best_vs_gap0:.3}x"
    );
}
