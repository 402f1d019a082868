//! ems-edge: the edge agent's command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ems_edge::Site;
use tokio_util::sync::CancellationToken;

/// Edge agent for ARM boards: polls meters over Modbus and publishes their readings over MQTT.
#[derive(Parser, Debug)]
#[command(name = "ems-edge", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Poll and publish until SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the request plan of every device and exit.
    Plan {
        #[arg(long)]
        config: PathBuf,
    },
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
    match Args::parse().command {
        Command::Run { config } => {
            let site = Site::load(&config)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(ems_edge::cancel_on_signal(shutdown.clone()));
            ems_edge::run(site, shutdown).await?;
        }
        Command::Plan { config } => {
            let site = Site::load(&config)?;
            for (link, plans) in ems_edge::plan_site(&site)? {
                println!("link {link}");
                for p in plans {
                    println!(
                        "  {} (unit {}): {}",
                        p.device.id,
                        p.device.unit_id,
                        p.summary()
                    );
                    for r in &p.reads {
                        let ids: Vec<_> = r
                            .points
                            .iter()
                            .map(|&i| p.device.profile.points[i].id.as_str())
                            .collect();
                        println!(
                            "    {:?} {}..{} ({} registers): {}",
                            r.table,
                            r.start,
                            r.start + r.len,
                            r.len,
                            ids.join(", ")
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
