//! The edge's polling measured against ems-sim (issue #4's benchmark).
//!
//! 1. Poll-cycle time of one meter of each kind in the demo plant, read with our planner's plan,
//!    with the greedy fixed-gap planner's at gap 0 (no bridging, the usual default) and at its
//!    best gap for that map and link (by the link's cost model, as a user tuning it would pick):
//!    over Modbus TCP, and over RTU at 9 600 baud on the simulator's pseudo-terminal (which
//!    keeps the line's timing). On TCP the cost model is the one the agent fits from its reads
//!    (200 rounds of every plan first); the plan for the assumed 2 ms round trip is shown too.
//!    Every plan avoids the registers the meter refuses (ems-sim answers exception 02 for
//!    unmapped ones), which ours learns on its first polls as the agent does. For RTU, the ratio of the measured cycle to the wire-time lower
//!    bound of our plan (frames and 3.5-character silences at 11 bits a character); the same for
//!    a DL/T 645 and a CJ/T 188 meter on their own 9 600-baud lines.
//! 2. The agent itself (`ems-edge run`, built with the `edge` profile it ships with) polling at
//!    least 10 000 points over TCP into a private Mosquitto: once every second (resident memory,
//!    CPU-seconds per 1 000 points), and as fast as the link allows (points per second); each
//!    run must end with every message acknowledged by the broker.
//!
//! `cargo build --release -p ems-sim && cargo build --profile edge -p ems-edge &&
//! cargo bench -p ems-tests --bench edge_poll`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ems_core::plan::{greedy, CostFit, LinkCost, Span};
use ems_edge::config::Device;
use ems_edge::link::{connect, Link, Meter, Parity, Protocol, SerialLine, Wait};
use ems_edge::poller::{read_device, DevicePlan};
use ems_edge::profile::{Dialect, Table};
use ems_tests::*;

/// Every try waits the device's whole timeout: a bench measures answers, not timeouts.
fn whole_timeout(plan: &DevicePlan) -> Wait {
    Wait::fixed(Duration::from_millis(plan.device.timeout_ms))
}

/// Median seconds of a cycle of each plan over `n` rounds (one unmeasured first), the plans
/// taking turns so that drift and neighbours' load fall on all alike. Panics if a point does not
/// read good: a fast cycle of failures must not pass for a fast cycle.
async fn cycles(
    conn: &mut ems_edge::link::Connection,
    plans: &[&DevicePlan],
    n: usize,
) -> Vec<f64> {
    let mut times = vec![Vec::with_capacity(n); plans.len()];
    for round in 0..=n {
        for (k, plan) in plans.iter().enumerate() {
            let t = Instant::now();
            let r = read_device(conn, plan, whole_timeout(plan)).await;
            let dt = t.elapsed().as_secs_f64();
            if let Some(bad) = r.points.iter().find(|p| !p.q.is_good()) {
                panic!("{}: {} read {}", plan.device.id, bad.id, bad.q);
            }
            if round > 0 {
                times[k].push(dt);
            }
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// What the agent learns of a device on TCP: the request costs fitted from `rounds` of reads
/// with each of `plans` (reads of many lengths).
async fn fit_cost(
    conn: &mut ems_edge::link::Connection,
    plans: &[&DevicePlan],
    rounds: usize,
) -> CostFit {
    let mut fit = CostFit::default();
    for _ in 0..rounds {
        for plan in plans {
            for (len, seconds) in read_device(conn, plan, whole_timeout(plan)).await.timings {
                fit.observe(len, seconds);
            }
        }
    }
    fit
}

/// The registers `device` refuses, learned as the agent learns them on its first polls
/// (exception 02 on a bridged read) with its plan for `cost`.
async fn refused_by(
    conn: &mut ems_edge::link::Connection,
    device: &Device,
    cost: LinkCost,
) -> Vec<(Table, Span)> {
    let mut refused = Vec::new();
    loop {
        let plan = DevicePlan::with_cost(device.clone(), refused.clone(), cost).unwrap();
        let learned = read_device(conn, &plan, whole_timeout(&plan)).await.refused;
        if learned.is_empty() {
            return refused;
        }
        refused.extend(learned);
    }
}

/// One row per plan: requests, registers and the measured cycle. Every plan avoids the
/// registers the device refuses: ours learns them; a user tuning the greedy planner would pick
/// the best gap whose requests the device answers.
fn plans(
    device: &Device,
    cost: LinkCost,
    refused: &[(Table, Span)],
) -> Vec<(String, DevicePlan, f64)> {
    let max = device.profile.max_registers;
    let by_gap = |gap: u32| {
        DevicePlan::planned_by(device.clone(), Vec::new(), |spans, _| {
            Ok(greedy(spans, gap, max))
        })
        .unwrap()
    };
    let answered = |p: &DevicePlan| {
        p.reads.iter().all(|r| {
            refused.iter().all(|(t, s)| {
                *t != r.table
                    || s.end() <= u32::from(r.start)
                    || u32::from(r.start) + u32::from(r.len) <= u32::from(s.start)
            })
        })
    };
    let modelled =
        |p: &DevicePlan| -> f64 { p.reads.iter().map(|r| cost.request(u32::from(r.len))).sum() };
    let (best_gap, best) = (0..=u32::from(max))
        .map(|g| (g, by_gap(g)))
        .filter(|(_, p)| answered(p))
        .min_by(|a, b| modelled(&a.1).total_cmp(&modelled(&b.1)))
        .unwrap();
    let ours = DevicePlan::with_cost(device.clone(), refused.to_vec(), cost).unwrap();
    vec![
        ("ours".into(), ours.clone(), modelled(&ours)),
        (
            format!("greedy best (gap {best_gap})"),
            best.clone(),
            modelled(&best),
        ),
        {
            let gap0 = by_gap(0);
            let m = modelled(&gap0);
            ("greedy gap 0".into(), gap0, m)
        },
    ]
}

/// A meter of its own protocol (DL/T 645 or CJ/T 188) on the simulator's 9 600-baud
/// pseudo-terminal: the median of 5 poll cycles against the wire-time lower bound of its reads
/// (one data identifier a request, each request and reply with its preamble, 11 bits a
/// character; the reply as long as the simulated meter's). Returns the ratio.
async fn meter_cycle(dir: &std::path::Path, protocol: Protocol) -> f64 {
    let (model, flow, unit_id, address, profile, line) = match protocol {
        Protocol::Dlt645 => (
            "dlt645-meter",
            "power",
            43,
            "000000000043",
            "ems-sim-dlt645",
            "DLT645",
        ),
        _ => (
            "cjt188-water-meter",
            "water",
            45,
            "00000000000045",
            "ems-sim-cjt188-water",
            "CJT188",
        ),
    };
    let scenario = dir.join(format!("{model}.toml"));
    std::fs::write(
        &scenario,
        format!("name = \"{model}\"\ndescription = \"One meter\"\nseed = 1\n\n[[units]]\nid = \"kiln1\"\nname = \"kiln\"\nkind = \"kiln\"\ncapacity_t_per_h = 208.0\n\n[[meters]]\ndevice = \"kiln1-meter\"\nunit_id = {unit_id}\nunit = \"kiln1\"\nflow = \"{flow}\"\nmodel = \"{model}\"\ninitial = 3083.5\n"),
    )
    .unwrap();
    let flag = format!("--{}", line.to_lowercase());
    let sim = Proc::start(
        &bin("ems-sim"),
        &[
            "--scenario",
            scenario.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            &format!("{flag}-pty"),
            &format!("{flag}-baud"),
            "9600",
        ],
        dir,
    );
    let pty = sim.wait_line(&format!("{line} "), Duration::from_secs(10));
    let link = Link::Serial(
        protocol,
        SerialLine {
            path: pty.into(),
            baud: 9_600,
            parity: Parity::None,
            stop_bits: 2,
            turnaround_ms: 0,
            de: None,
        },
    );
    let profile = ems_edge::profile::Library::built_in()
        .get(profile)
        .unwrap()
        .clone();
    let dialect = profile.dialect;
    let device = Device {
        id: "kiln1-meter".into(),
        link: link.clone(),
        unit_id: 0,
        meter: Some(Meter::parse(dialect, address).unwrap()),
        profile,
        clock: ems_edge::config::ClockSource::Device,
        timeout_ms: 2_000,
        min_timeout_ms: 2_000,
        retries: 0,
        factors: Default::default(),
    };
    let plan = DevicePlan::new(device).unwrap();
    let mut conn = connect(&link, Duration::from_secs(2)).await.unwrap();
    let cycle = cycles(&mut conn, &[&plan], 5).await[0];
    // What the simulated meter answers to each read: its reply's value bytes.
    let reading = ems_sim::meter::Reading {
        clock_ms: 0,
        counter: 1.0,
        rate_per_h: 1.0,
    };
    let bytes: usize = plan
        .reads
        .iter()
        .filter_map(|r| plan.device.profile.points[r.points[0]].meter)
        .map(|p| match dialect {
            Dialect::Dlt645(edition) => {
                let model = ems_sim::meter::MeterModel::Dlt645Meter;
                let value = model.dlt645_value(p.di, reading).unwrap().len();
                ems_core::dlt645::read_exchange_bytes(edition, value)
            }
            _ => {
                let model = ems_sim::meter::MeterModel::Cjt188WaterMeter;
                let value = model.cjt188_value(p.di as u16, reading).unwrap().len();
                ems_core::cjt188::read_exchange_bytes(value)
            }
        })
        .sum();
    let wire = bytes as f64 * 11.0 / 9_600.0;
    let name = match protocol {
        Protocol::Dlt645 => "kiln1-power (DL/T 645)",
        _ => "kiln1-water (CJ/T 188)",
    };
    println!(
        "{:<24} {:<5} {} identifiers, wire-time lower bound {:.3} ms: measured {:.3} ms, {:.3}x",
        name,
        if protocol == Protocol::Dlt645 {
            "645"
        } else {
            "188"
        },
        plan.reads.len(),
        wire * 1e3,
        cycle * 1e3,
        cycle / wire
    );
    drop(sim);
    cycle / wire
}

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU seconds of `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat (utime, stime), counted from the state field (3).
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    ticks as f64 / hz
}

/// Runs `ems-edge run` on `devices` (id, profile, unit id) for `secs` at `poll_ms`; returns
/// points polled, seconds, CPU seconds and the peak resident set (kB).
fn run_agent(
    dir: &std::path::Path,
    sim_addr: &str,
    mqtt_port: u16,
    devices: &[(String, String, u8, usize)],
    poll_ms: u64,
    secs: u64,
    key_file: Option<&std::path::Path>,
) -> (u64, f64, f64, u64) {
    let name = format!(
        "edge-{poll_ms}{}",
        if key_file.is_some() { "-signed" } else { "" }
    );
    let data = dir.join(&name);
    let mut toml = format!(
        "site = \"bench\"\nedge_id = \"{name}\"\ndata_dir = \"{}\"\npoll_interval_ms = {poll_ms}\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\n\n",
        data.display()
    );
    if let Some(key) = key_file {
        toml.push_str(&format!("[evidence]\nkey_file = \"{}\"\n\n", key.display()));
    }
    for (id, profile, unit, _) in devices {
        toml.push_str(&format!(
            "[[devices]]\nid = \"{id}\"\nlink = \"tcp://{sim_addr}\"\nunit_id = {unit}\nprofile = \"{profile}\"\n\n"
        ));
    }
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml).unwrap();
    // The agent as it ships to the boards.
    let program = workspace().join("target/edge/ems-edge");
    assert!(
        program.exists(),
        "{} is missing: cargo build --profile edge -p ems-edge",
        program.display()
    );
    let mut edge = Proc::start(
        &program,
        &["run", "--config", config.to_str().unwrap()],
        dir,
    );
    let pid = edge.pid();
    let started = Instant::now();
    let cpu0 = cpu_seconds(pid);
    let mut peak_rss = 0;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(500));
        peak_rss = peak_rss.max(proc_status(pid, "VmRSS:"));
    }
    let cpu = cpu_seconds(pid) - cpu0;
    let elapsed = started.elapsed().as_secs_f64();
    peak_rss = peak_rss.max(proc_status(pid, "VmHWM:"));
    // Polled is not enough: everything read must have reached the broker.
    stop_edge_all_delivered(&mut edge, Duration::from_secs(30));
    let seq = ems_edge::seq::SeqStore::read(&data).unwrap();
    let points: u64 = devices
        .iter()
        .map(|(id, _, _, n)| seq.get(id).copied().unwrap_or(0) * *n as u64)
        .sum();
    (points, elapsed, cpu, peak_rss)
}

fn main() {
    let dir = TempDir::new("edge-poll");
    let d = dir.path();
    let (sim, sim_addr) = start_sim_with(
        d,
        &[],
        &["--rtu-pty", "--baud", "9600", "--rtu-tcp", "127.0.0.1:0"],
    );
    let pty = sim.wait_line("RTU ", Duration::from_secs(10));
    let rtu_tcp = sim.wait_line("RTU-TCP ", Duration::from_secs(10));
    let site = ems_edge::Site::load(&workspace().join("firmware/edge/examples/demo.toml")).unwrap();
    // One meter of each kind.
    let mut kinds: BTreeMap<String, Device> = BTreeMap::new();
    for dev in &site.devices {
        kinds
            .entry(dev.profile.name.clone())
            .or_insert_with(|| dev.clone());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // 1. Cycles, TCP and RTU.
    let links = [
        (Link::Tcp(sim_addr.clone()), 1_000),
        (
            // A pseudo-terminal has no parity: 8N2 keeps the 11 bits a character.
            Link::Serial(
                Protocol::Modbus,
                SerialLine {
                    path: pty.clone().into(),
                    baud: 9_600,
                    parity: Parity::None,
                    stop_bits: 2,
                    turnaround_ms: 0,
                    de: None,
                },
            ),
            5,
        ),
        // A serial device server in transparent mode: the same 9 600-baud line behind TCP.
        (Link::Server(Protocol::Modbus, rtu_tcp), 5),
    ];
    println!(
        "{:<24} {:<5} {:<30} {:>4} {:>5} {:>10} {:>10} {:>8}",
        "meter", "link", "planner", "req", "regs", "model ms", "cycle ms", "vs ours"
    );
    let mut worst_vs_best: f64 = 0.0;
    let mut worst_vs_wire: f64 = 0.0;
    for (link, n) in &links {
        let kind = match link {
            Link::Tcp(_) => "TCP",
            Link::Server(..) => "R/TCP",
            _ => "RTU",
        };
        let mut conn = rt
            .block_on(connect(link, Duration::from_secs(2)))
            .expect("connect to ems-sim");
        for (name, dev) in &kinds {
            let mut dev = dev.clone();
            dev.link = link.clone();
            dev.timeout_ms = 2_000;
            let refused = rt.block_on(refused_by(&mut conn, &dev, link.cost()));
            let mut rows = plans(&dev, link.cost(), &refused);
            if let Link::Tcp(_) = link {
                // As the agent does on TCP: plan for the costs measured on this link, and pick
                // the greedy planner's best gap by them too.
                let refs: Vec<&DevicePlan> = rows.iter().map(|r| &r.1).collect();
                let fit = rt.block_on(fit_cost(&mut conn, &refs, 200));
                let learned = fit.cost(link.cost()).expect("enough reads to fit");
                let assumed = rows.remove(0);
                rows = plans(&dev, learned, &refused);
                rows[0].0 = format!(
                    "ours ({:.0} us + {:.2} us/reg)",
                    learned.per_request * 1e6,
                    learned.per_register * 1e6
                );
                let model: f64 = assumed
                    .1
                    .reads
                    .iter()
                    .map(|r| learned.request(u32::from(r.len)))
                    .sum();
                rows.push(("ours, 2 ms assumed".into(), assumed.1, model));
            }
            let plan_refs: Vec<&DevicePlan> = rows.iter().map(|r| &r.1).collect();
            let measured = rt.block_on(cycles(&mut conn, &plan_refs, *n));
            let ours_cycle = measured[0];
            worst_vs_best = worst_vs_best.max(ours_cycle / measured[1]);
            for ((planner, plan, model), c) in rows.iter().zip(&measured) {
                let regs: u32 = plan.reads.iter().map(|r| u32::from(r.len)).sum();
                println!(
                    "{:<24} {:<5} {:<30} {:>4} {:>5} {:>10.3} {:>10.3} {:>7.2}x",
                    name,
                    kind,
                    planner,
                    plan.reads.len(),
                    regs,
                    model * 1e3,
                    c * 1e3,
                    c / ours_cycle
                );
            }
            if let Link::Serial(..) | Link::Server(..) = link {
                let ours = &rows[0].1;
                let wire_cost = LinkCost::rtu(9_600, 0.0);
                let wire: f64 = ours
                    .reads
                    .iter()
                    .map(|r| wire_cost.request(u32::from(r.len)))
                    .sum();
                worst_vs_wire = worst_vs_wire.max(ours_cycle / wire);
                println!(
                    "{:<24} {kind:<5} wire-time lower bound {:.3} ms: measured {:.3}x",
                    name,
                    wire * 1e3,
                    ours_cycle / wire
                );
            }
        }
    }
    for protocol in [Protocol::Dlt645, Protocol::Cjt188] {
        worst_vs_wire = worst_vs_wire.max(rt.block_on(meter_cycle(d, protocol)));
    }
    println!(
        "measured: ours / greedy at its best gap, worst {worst_vs_best:.3}x; serial cycle (RTU, RTU over TCP, DL/T 645, CJ/T 188) / wire-time lower bound, worst {worst_vs_wire:.3}x"
    );

    // 2. The agent with 10 000 points.
    let broker = Mosquitto::start(d);
    let mut devices = Vec::new();
    let mut total = 0;
    'fill: for k in 0.. {
        for dev in &site.devices {
            let n = dev
                .profile
                .points
                .iter()
                .filter(|p| p.role != ems_edge::profile::PointRole::Clock)
                .count();
            devices.push((
                format!("{}-{k}", dev.id),
                dev.profile.name.clone(),
                dev.unit_id,
                n,
            ));
            total += n;
            if total >= 10_000 {
                break 'fill;
            }
        }
    }
    // Protocol v1.2: the same agent signing every message (Ed25519, chained per device).
    let key = d.join("edge.key");
    ems_edge::evidence::keygen(&key).unwrap();
    for (poll_ms, what) in [(1_000, "every second"), (10, "as fast as the link allows")] {
        let mut unsigned_cpu = 0.0;
        for key_file in [None, Some(key.as_path())] {
            let (points, secs, cpu, rss) =
                run_agent(d, &sim_addr, broker.port, &devices, poll_ms, 30, key_file);
            let per_1000 = cpu / (points as f64 / 1000.0);
            let signed = match key_file {
                None => {
                    unsigned_cpu = per_1000;
                    String::new()
                }
                Some(_) => format!(
                    ", signed: {:+.1} % CPU",
                    100.0 * (per_1000 / unsigned_cpu - 1.0)
                ),
            };
            println!(
                "ems-edge, {} devices, {total} points, polled {what}{signed}: {:.0} points/s, {per_1000:.3} CPU-s per 1000 points, peak RSS {:.1} MB",
                devices.len(),
                points as f64 / secs,
                rss as f64 / 1024.0
            );
        }
    }
}
