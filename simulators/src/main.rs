//! ems-sim: serve a simulated plant over Modbus TCP.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use std::sync::{Arc, Mutex};

use ems_sim::plant::Plant;
use ems_sim::rtu;
use ems_sim::service::SharedPlant;
use ems_sim::{Scenario, SimClock};
use tokio_util::sync::CancellationToken;

/// Simulated plant (blast furnace, converter, cement kiln, aluminium potline) behind Modbus TCP,
/// with a ground-truth file of what really flowed.
#[derive(Parser, Debug)]
#[command(name = "ems-sim", version)]
struct Args {
    /// Built-in scenario name (demo) or path of a scenario TOML file.
    #[arg(long, default_value = "demo")]
    scenario: String,
    /// Modbus TCP listen address; port 0 picks a free port (printed as `LISTEN addr`).
    #[arg(long, default_value = "127.0.0.1:5020")]
    listen: String,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Simulated start time, RFC 3339 (default: now).
    #[arg(long)]
    start: Option<String>,
    /// Override the scenario's random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Write the ground truth here: JSON lines, one per unit per simulated hour, and events.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Add a fault, as a TOML inline table with the fields of a scenario's [[faults]], e.g.
    /// '{ device = "bf1-power", kind = "exception", code = 4, at_h = 1.0, for_h = 0.5 }'.
    #[arg(long = "fault", value_name = "TABLE")]
    faults: Vec<String>,
    /// Serve the control API (inject faults while running, read the clock) here; port 0 picks
    /// a free port (printed as `CONTROL addr`).
    #[arg(long)]
    control: Option<String>,
    /// Also serve Modbus RTU on a new pseudo-terminal (its path printed as `RTU path`).
    #[arg(long)]
    rtu_pty: bool,
    /// Also serve Modbus RTU on this serial port.
    #[arg(long, value_name = "PATH")]
    rtu: Option<PathBuf>,
    /// Also serve RTU framing over TCP here (printed as `RTU-TCP addr`).
    #[arg(long, value_name = "ADDR")]
    rtu_tcp: Option<String>,
    /// Baud rate of the RTU line: sets its timing (and the port's speed).
    #[arg(long, default_value_t = 9600)]
    baud: u32,
    /// Also serve the DL/T 645 meters on a new pseudo-terminal (its path printed as
    /// `DLT645 path`).
    #[arg(long)]
    dlt645_pty: bool,
    /// Also serve the DL/T 645 meters over TCP here, as behind a serial device server
    /// (printed as `DLT645-TCP addr`).
    #[arg(long, value_name = "ADDR")]
    dlt645_tcp: Option<String>,
    /// Baud rate of the DL/T 645 line (the standard's default: 2400).
    #[arg(long, default_value_t = 2400)]
    dlt645_baud: u32,
    /// Also serve the CJ/T 188 meters on a new pseudo-terminal (its path printed as
    /// `CJT188 path`).
    #[arg(long)]
    cjt188_pty: bool,
    /// Also serve the CJ/T 188 meters over TCP here, as behind a serial device server
    /// (printed as `CJT188-TCP addr`).
    #[arg(long, value_name = "ADDR")]
    cjt188_tcp: Option<String>,
    /// Baud rate of the CJ/T 188 line (its usual speed: 2400).
    #[arg(long, default_value_t = 2400)]
    cjt188_baud: u32,
}

/// Errors end the process with one line naming the cause chain (file, line and key for a bad
/// configuration), not a backtrace.
fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let result = runtime.block_on(run());
    // A pseudo-terminal is read through tokio::fs::File, whose reads run on the blocking pool:
    // one left waiting for bytes that no master will send any more must not hold the exit
    // (dropping the runtime would wait for it for ever; seen as a simulator that did not stop
    // on SIGTERM).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    ems_process::exit(result)
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        args.speed > 0.0 && args.speed.is_finite(),
        "--speed must be a positive number"
    );
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some(seed) = args.seed {
        scenario.reseed(seed);
    }
    let start_ms = match &args.start {
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .with_context(|| format!("--start {s}: not an RFC 3339 time"))?
            .timestamp_millis(),
        None => chrono::Utc::now().timestamp_millis(),
    };
    for (i, text) in args.faults.iter().enumerate() {
        #[derive(serde::Deserialize)]
        struct One {
            f: ems_sim::faults::FaultSpec,
        }
        let one: One = toml::from_str(&format!("f = {text}"))
            .with_context(|| format!("--fault #{}: {text}", i + 1))?;
        scenario.faults.push(one.f);
    }
    let clock = SimClock::new(start_ms, args.speed);
    let plant = Plant::new(scenario, start_ms);
    let plant: SharedPlant = Arc::new(Mutex::new(plant));
    let shutdown = CancellationToken::new();
    tokio::spawn(ems_process::cancel_on_signal(shutdown.clone()));
    let mut tasks = tokio::task::JoinSet::new();

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Machine-readable lines for scripts and tests that start us on port 0.
    println!("LISTEN {addr}");
    if let Some(control) = &args.control {
        let l = tokio::net::TcpListener::bind(control)
            .await
            .with_context(|| format!("cannot listen on {control}"))?;
        println!("CONTROL {}", l.local_addr()?);
        let (router, stop) = (
            ems_sim::control::router(plant.clone(), clock),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            axum::serve(l, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("control API failed")
        });
    }
    if args.rtu_pty {
        let pty = rtu::open_pty()?;
        println!("RTU {}", pty.path.display());
        let (p, stop, baud) = (plant.clone(), shutdown.clone(), args.baud);
        tasks.spawn(async move {
            let _keep_open = pty._slave;
            rtu::serve(pty.master, p, clock, baud, stop).await
        });
    }
    if let Some(path) = &args.rtu {
        let port = rtu::open_serial(path, args.baud).await?;
        println!("RTU {}", path.display());
        let (p, stop, baud) = (plant.clone(), shutdown.clone(), args.baud);
        tasks.spawn(async move { rtu::serve(port, p, clock, baud, stop).await });
    }
    if let Some(at) = &args.rtu_tcp {
        let l = tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| format!("cannot listen on {at}"))?;
        println!("RTU-TCP {}", l.local_addr()?);
        let (p, stop, baud) = (plant.clone(), shutdown.clone(), args.baud);
        tasks.spawn(async move { rtu::serve_over_tcp(l, p, clock, baud, stop).await });
    }
    let lines = Lines {
        plant: &plant,
        clock,
        shutdown: &shutdown,
    };
    lines
        .serve::<ems_sim::dlt645::Dlt645>(
            &mut tasks,
            "DLT645",
            args.dlt645_pty,
            args.dlt645_tcp.as_deref(),
            args.dlt645_baud,
        )
        .await?;
    lines
        .serve::<ems_sim::cjt188::Cjt188>(
            &mut tasks,
            "CJT188",
            args.cjt188_pty,
            args.cjt188_tcp.as_deref(),
            args.cjt188_baud,
        )
        .await?;
    {
        let p = plant.lock().expect("plant lock poisoned");
        let s = p.scenario();
        tracing::info!(%addr, scenario = %s.name, meters = s.meters.len(), faults = p.faults().len(), speed = args.speed, "Simulator serving Modbus.");
    }
    ems_sim::run_with(listener, plant, clock, args.truth, shutdown.clone()).await?;
    shutdown.cancel();
    while let Some(t) = tasks.join_next().await {
        t.context("simulator task panicked")??;
    }
    tracing::info!("Simulator stopped.");
    Ok(())
}

/// What every meter line the simulator serves shares.
struct Lines<'a> {
    plant: &'a SharedPlant,
    clock: SimClock,
    shutdown: &'a CancellationToken,
}

impl Lines<'_> {
    /// Serves the meters of protocol `P` on a new pseudo-terminal (printed as `NAME path`) and
    /// over TCP at `tcp` (printed as `NAME-TCP addr`), as asked.
    async fn serve<P: ems_sim::meter_line::LineProtocol>(
        &self,
        tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
        name: &str,
        pty: bool,
        tcp: Option<&str>,
        baud: u32,
    ) -> anyhow::Result<()> {
        let clock = self.clock;
        if pty {
            let pty = rtu::open_pty()?;
            println!("{name} {}", pty.path.display());
            let (p, stop) = (self.plant.clone(), self.shutdown.clone());
            tasks.spawn(async move {
                let _keep_open = pty._slave;
                ems_sim::meter_line::serve::<P, _>(pty.master, p, clock, baud, stop).await
            });
        }
        if let Some(at) = tcp {
            let l = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen on {at}"))?;
            println!("{name}-TCP {}", l.local_addr()?);
            let (p, stop) = (self.plant.clone(), self.shutdown.clone());
            tasks.spawn(async move {
                ems_sim::meter_line::serve_over_tcp::<P>(l, p, clock, baud, stop).await
            });
        }
        Ok(())
    }
}
