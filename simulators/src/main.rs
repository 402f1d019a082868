//! ems-sim: serve a simulated plant over Modbus TCP.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use ems_sim::service::SimOptions;
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
    /// Write the ground truth here: JSON lines, one per unit per simulated hour.
    #[arg(long)]
    truth: Option<PathBuf>,
}

/// Errors end the process with one line naming the cause chain (file, line and key for a bad
/// configuration), not a backtrace.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
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
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Machine-readable for scripts and tests that start us on port 0.
    println!("LISTEN {addr}");
    tracing::info!(%addr, scenario = %scenario.name, meters = scenario.meters.len(), speed = args.speed, "Simulator serving Modbus TCP.");

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let opts = SimOptions {
        scenario,
        clock: SimClock::new(start_ms, args.speed),
        truth: args.truth,
    };
    ems_sim::run(listener, opts, shutdown).await?;
    tracing::info!("Simulator stopped.");
    Ok(())
}

async fn cancel_on_signal(token: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    token.cancel();
}
