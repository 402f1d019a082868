//! How many Modbus TCP requests per second one ems-sim process serves.
//!
//! `cargo bench -p ems-sim --bench modbus_throughput [-- SECONDS CONNECTIONS]`
//!
//! Starts the real `ems-sim` binary (demo scenario, 30 meters) as its own process and runs
//! CONNECTIONS clients (default 16), each sending requests back to back for SECONDS (default 5),
//! cycling over every meter's counter registers. Clients and server share the machine, so the
//! figure is a lower bound of what the server alone can do.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_modbus::client::{tcp, Reader};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::Slave;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let seconds: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let connections: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(16);

    let mut sim = Command::new(env!("CARGO_BIN_EXE_ems-sim"))
        .args(["--listen", "127.0.0.1:0", "--speed", "60"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ems-sim");
    let mut line = String::new();
    BufReader::new(sim.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("LISTEN ")
        .expect("LISTEN line")
        .parse()
        .unwrap();

    // The demo's meters: unit ids and their counter registers (holding unless noted).
    let targets: Vec<(u8, bool, u16, u16)> = vec![
        (11, false, 0, 4),
        (12, false, 0, 4),
        (14, false, 0x401E, 12),
        (15, false, 0, 8),
        (18, false, 0x1010, 2),
        (25, true, 0x0046, 6),
        (43, false, 0x2000, 0x46),
        (51, false, 0xF000, 4),
    ];
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for c in 0..connections {
            let (targets, done, failed) = (targets.clone(), done.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                let mut ctx = tcp::connect(addr).await.expect("connect");
                let mut k = c;
                while tokio::time::Instant::now() < deadline {
                    let (unit, input, start, count) = targets[k % targets.len()];
                    k += 1;
                    ctx.set_slave(Slave(unit));
                    let r = if input {
                        ctx.read_input_registers(start, count).await
                    } else {
                        ctx.read_holding_registers(start, count).await
                    };
                    match r {
                        Ok(Ok(_)) => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let _ = sim.kill();
    let _ = sim.wait();
    println!(
        "ems-sim served {n} requests in {elapsed:.1} s over {connections} connections: {:.0} requests/s ({} failed)",
        n as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
}
