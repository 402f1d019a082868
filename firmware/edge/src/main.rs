//! ems-edge: the edge agent's command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ems_edge::Site;
use tokio_util::sync::CancellationToken;

/// Edge agent for ARM boards: polls meters over Modbus, DL/T 645 and CJ/T 188 and publishes their
/// readings over MQTT.
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
    /// Write a new signing key for this board (protocol v1.2) to OUT, readable by its owner
    /// only, and print the public key to enrol at the gateway. Run it as the agent's user.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print this edge's access rules for the broker: publish only its own devices' data and
    /// its own status, read only its commit marks (Mosquitto's acl_file, or EMQX's acl.conf).
    Acl {
        #[arg(long)]
        config: PathBuf,
        /// mosquitto or emqx.
        #[arg(long, default_value = "mosquitto")]
        format: String,
    },
    /// Print the request plan of every device and exit.
    Plan {
        #[arg(long)]
        config: PathBuf,
    },
    /// Read one device once and print the requests sent and every point decoded, with its
    /// quality (commissioning). Exits with 1 when no point came back good.
    Probe {
        /// tcp://host:port, rtu:///dev/ttyUSB0?baud=9600&parity=even&stop_bits=1,
        /// dlt645:///dev/ttyS1?baud=2400, cjt188:///dev/ttyS2?baud=2400, or rtu+tcp://,
        /// dlt645+tcp:// or cjt188+tcp://host:port (a serial device server).
        #[arg(long)]
        link: ems_edge::link::Link,
        /// Modbus: the unit id.
        #[arg(long, required_unless_present = "address")]
        unit_id: Option<u8>,
        /// DL/T 645 or CJ/T 188: the meter's address (12 or 14 digits).
        #[arg(long, conflicts_with = "unit_id")]
        address: Option<String>,
        /// Profile name (built in, or from --profiles-dir).
        #[arg(long)]
        profile: String,
        #[arg(long)]
        profiles_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// A per-installation multiplier the profile names, NAME=VALUE (`--factor ct=40
        /// --factor pt=100`); one not given is left out of the values shown, and said so.
        #[arg(long = "factor", value_parser = parse_factor)]
        factors: Vec<(String, f64)>,
    },
}

fn parse_factor(s: &str) -> Result<(String, f64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: NAME=VALUE, such as ct=40"))?;
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok((name.trim().to_string(), v)),
        _ => Err(format!("`{s}`: the value must be a number above zero")),
    }
}

/// Errors end the process with one line naming the cause chain (file, line and key for a bad
/// configuration), not a backtrace.
fn main() -> std::process::ExitCode {
    one_malloc_arena();
    ems_process::exit(run())
}

/// An edge agent waits on wires, not on processors: glibc's one malloc arena per thread would
/// multiply its resident memory for nothing on a board with 256 MB. One arena it is.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands back to the system what reading a large site file left free (the blanked copy of its
/// text, each table's parse): about 0.2 MB at 2 885 devices.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `RUST_LOG` as levels per target (`info`, `warn,ems_edge::poller=debug`); the full
/// EnvFilter syntax would bring a regular-expression engine onto the board for nothing.
fn log_filter() -> tracing_subscriber::filter::Targets {
    log_filter_of(std::env::var("RUST_LOG").ok())
}

/// Without `RUST_LOG`: info, but the Modbus library only at error. The edge itself writes one
/// warning a device a minute naming the registers and what went wrong in plain words (and
/// counts every failure in its metrics); the library's own warnings, some with byte dumps,
/// would say the same thing on every poll. `RUST_LOG=info,tokio_modbus=debug` brings them back.
fn log_filter_of(spec: Option<String>) -> tracing_subscriber::filter::Targets {
    let default = || {
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("tokio_modbus", tracing::Level::ERROR)
    };
    match spec {
        None => default(),
        Some(spec) => spec.parse().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={spec:?} is not a list of target=level ({e}); logging at info");
            default()
        }),
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(log_filter())
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .init();
    match Args::parse().command {
        Command::Run { config } => {
            let site = Site::load(&config)?;
            give_back_freed_memory();
            let shutdown = CancellationToken::new();
            tokio::spawn(ems_process::cancel_on_signal(shutdown.clone()));
            ems_edge::run(site, shutdown).await?;
        }
        Command::Acl { config, format } => {
            let access = ems_edge::acl::EdgeAccess::of(&Site::load(&config)?);
            match format.as_str() {
                "mosquitto" => print!("{}", access.mosquitto()),
                "emqx" => print!("{}", access.emqx()),
                other => anyhow::bail!("--format {other}: mosquitto or emqx"),
            }
        }
        Command::Keygen { out } => {
            let public = ems_edge::evidence::keygen(&out)?;
            println!("{public}");
            eprintln!(
                "Wrote {}. Name it in the site file:\n  [evidence]\n  key_file = \"{}\"\nand enrol the public key at the gateway:\n  [evidence.edge_keys]\n  <edge_id> = \"{public}\"",
                out.display(),
                out.display()
            );
        }
        Command::Probe {
            link,
            unit_id,
            address,
            profile,
            profiles_dir,
            timeout_ms,
            factors,
        } => {
            let mut library = ems_edge::profile::Library::built_in();
            if let Some(dir) = &profiles_dir {
                library.load_dir(dir)?;
            }
            let Some(profile) = library.get(&profile).cloned() else {
                let known: Vec<_> = library.names().collect();
                anyhow::bail!("unknown profile `{profile}`; known: {}", known.join(", "));
            };
            anyhow::ensure!(
                link.protocol() == profile.dialect.protocol(),
                "profile `{}` and link {link} speak different protocols",
                profile.name
            );
            let meter = match &address {
                Some(a) => Some(
                    ems_edge::link::Meter::parse(profile.dialect, a)
                        .map_err(|e| anyhow::anyhow!("--address {a}: {e}"))?,
                ),
                None => None,
            };
            let factors: std::collections::BTreeMap<String, f64> = factors.into_iter().collect();
            let named = profile.factor_names();
            if let Some(stray) = factors.keys().find(|f| !named.contains(f.as_str())) {
                anyhow::bail!(
                    "--factor {stray}: profile `{}` names no such factor",
                    profile.name
                );
            }
            let missing: Vec<&str> = named
                .iter()
                .copied()
                .filter(|n| !factors.contains_key(*n))
                .collect();
            if !missing.is_empty() {
                println!(
                    "factors not given, values shown before them: {} (--factor NAME=VALUE)",
                    missing.join(", ")
                );
            }
            let mut all = factors.clone();
            for m in missing {
                all.insert(m.to_string(), 1.0);
            }
            let profile = std::sync::Arc::new(profile.with_factors(&all));
            let device = ems_edge::config::Device {
                id: "probe".into(),
                link: link.clone(),
                unit_id: unit_id.unwrap_or(0),
                meter,
                profile,
                factors,
                clock: ems_edge::config::ClockSource::System,
                timeout_ms,
                min_timeout_ms: timeout_ms,
                retries: 1,
            };
            let plan = ems_edge::poller::DevicePlan::new(device)?;
            let whom = match &address {
                Some(a) => format!("meter {a}"),
                None => format!("unit {}", unit_id.unwrap_or(0)),
            };
            println!("{link} {whom}: {}", plan.summary());
            let profile = &plan.device.profile;
            println!(
                "profile {}: {} (map: {})",
                profile.name, profile.description, profile.datasheet
            );
            for r in &plan.reads {
                println!("request {}", ems_edge::device_plan::describe(&plan, r));
            }
            let mut ctx =
                ems_edge::link::connect(&link, std::time::Duration::from_millis(timeout_ms))
                    .await?;
            // One poll, each try waiting the whole timeout (nothing is known yet of the device).
            let wait = ems_edge::link::Wait::fixed(std::time::Duration::from_millis(timeout_ms));
            let reading = ems_edge::poller::read_device(&mut ctx, &plan, wait).await;
            match reading.device_clock {
                Some(Ok(clock)) => println!(
                    "{:<16} {}",
                    "clock",
                    chrono::DateTime::from_timestamp_millis(clock)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default()
                ),
                Some(Err(q)) => println!("{:<16} {:>18} {:<6} {q}", "clock", "-", ""),
                None => {}
            }
            for (p, def) in reading.points.iter().zip(
                plan.device
                    .profile
                    .points
                    .iter()
                    .filter(|d| d.role != ems_edge::profile::PointRole::Clock),
            ) {
                match p.v {
                    Some(v) => {
                        let shown = format!("{v:.6}");
                        let shown = shown.trim_end_matches('0').trim_end_matches('.');
                        println!("{:<16} {:>18} {:<6} {}", p.id, shown, def.unit, p.q)
                    }
                    None => println!("{:<16} {:>18} {:<6} {}", p.id, "-", def.unit, p.q),
                }
            }
            for failure in &reading.failures {
                println!("failed: {failure}");
            }
            for (table, span) in &reading.refused {
                println!(
                    "refused: {} (exception 02 on a bridged read)",
                    ems_edge::device_plan::registers(*table, span.start, span.len)
                );
            }
            if !reading.points.iter().any(|p| p.q.is_good()) {
                anyhow::bail!("no point of {whom} on {link} came back good");
            }
        }
        Command::Plan { config } => {
            let site = Site::load(&config)?;
            for (link, plans) in ems_edge::plan_site(site.devices)? {
                println!("link {link}");
                for p in plans {
                    let whom = match &p.device.meter {
                        Some(a) => format!("meter {a}"),
                        None => format!("unit {}", p.device.unit_id),
                    };
                    println!("  {} ({whom}): {}", p.device.id, p.summary());
                    if !p.device.factors.is_empty() {
                        let shown: Vec<String> = p
                            .device
                            .factors
                            .iter()
                            .map(|(n, v)| format!("{n} = {v}"))
                            .collect();
                        println!("    factors: {}", shown.join(", "));
                    }
                    for r in &p.reads {
                        println!("    {}", ems_edge::device_plan::describe(&p, r));
                    }
                    for (table, span) in &p.refused {
                        println!(
                            "    never read: {} (refused by the device)",
                            ems_edge::device_plan::registers(*table, span.start, span.len)
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::log_filter_of;
    use tracing::Level;

    #[test]
    fn the_modbus_librarys_warnings_are_left_to_the_edges_own_by_default() {
        let f = log_filter_of(None);
        assert!(!f.would_enable("tokio_modbus::service::tcp", &Level::WARN));
        assert!(f.would_enable("tokio_modbus::service::tcp", &Level::ERROR));
        assert!(f.would_enable("ems_edge::poller", &Level::WARN));
        assert!(f.would_enable("ems_edge::poller", &Level::INFO));
        let asked = log_filter_of(Some("info,tokio_modbus=debug".into()));
        assert!(asked.would_enable("tokio_modbus::codec", &Level::DEBUG));
    }
}
