//! ems-gateway: the collector's command line.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
#[cfg(feature = "demo")]
use ems_gateway::demo::DemoOptions;
use ems_gateway::Config;
use tokio_util::sync::CancellationToken;

/// Collector of the energy management centre: MQTT ingest, energy accounting against the
/// national standards, storage, HTTP API and dashboard.
#[derive(Parser, Debug)]
#[command(name = "ems-gateway", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway with a configuration file (production).
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Copy the database while the gateway may be running (SQLite online backup), and check the copy.
    Backup {
        #[arg(long)]
        config: PathBuf,
        /// The new file to write; never overwritten.
        #[arg(long)]
        to: PathBuf,
    },
    /// Compact settled raw history now (the gateway does it hourly): each device's UTC days
    /// `[storage] compact_after_h` behind its newest poll into lossless blocks.
    Compact {
        #[arg(long)]
        config: PathBuf,
    },
    /// How raw history is stored, as JSON: rows and blocks, their points and bytes, and the
    /// bytes a stored point costs.
    Stats {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check the record as an auditor would: every rollup recomputed from the raw samples, and
    /// every signed message's stored readings, signature and chain link checked against the
    /// edges' evidence with the keys enrolled in `[evidence]`; with `--report`, a JSON report
    /// this gateway made: its signature, the files it was drawn with, and every figure drawn
    /// again from the record. Prints the outcome as JSON; exits with an error when anything
    /// differs.
    Verify {
        #[arg(long)]
        config: PathBuf,
        /// A JSON report (`ems-gateway report ...` or `/api/v1/reports/...`) to check.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The report to check, named without `--report`: `verify R.json --db copy.db`.
        #[arg(value_name = "REPORT", conflicts_with = "report")]
        report_file: Option<PathBuf>,
        /// The gateway's public key the report must be signed with (as `ems-gateway keygen`
        /// printed it); default: the public half of `[evidence] report_key_file`, if set.
        #[arg(long)]
        gateway_key: Option<String>,
        /// Check this copy of the record (a SQLite file `ems-gateway backup` wrote, handed to
        /// the verifier) instead of the configured storage; it is opened read-only.
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Write a new signing key for this gateway's reports to OUT, readable by its owner only,
    /// and print its public key (what a verifier checks reports against). Name the file in
    /// `[evidence] report_key_file`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Enrol an edge's public key (as `ems-edge keygen` printed it): written into the
    /// configuration's `[evidence.edge_keys]`, its comments and layout kept, and logged in the
    /// audit log with who and why. Another key already enrolled for the edge is replaced only
    /// with `--replace`. The gateway takes the key at its next start.
    Enrol {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        edge: String,
        /// The edge's public key, 64 hexadecimal digits.
        #[arg(long)]
        key: String,
        /// Who enrols it (logged).
        #[arg(long)]
        by: String,
        /// Why (logged): the board commissioned, its key replaced after a repair, ...
        #[arg(long)]
        reason: String,
        #[arg(long)]
        replace: bool,
    },
    /// Declare who changed the configuration or its coefficient or limit files, and why, before
    /// the gateway is restarted to take them: each file changed since it was last logged gets
    /// an audit entry with its new SHA-256, the one before, who and why. (A change no one
    /// declared is logged at the gateway's start, as found by the gateway.)
    DeclareChange {
        #[arg(long)]
        config: PathBuf,
        /// Who changed the files (logged).
        #[arg(long)]
        by: String,
        /// Why (logged): the limit standard's new edition, a meter added, ...
        #[arg(long)]
        reason: String,
    },
    /// Write raw samples of a range as CSV (device, seq, point, time, value, quality).
    Export {
        #[arg(long)]
        config: PathBuf,
        /// RFC 3339 start (inclusive).
        #[arg(long)]
        from: String,
        /// RFC 3339 end (exclusive).
        #[arg(long)]
        to: String,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Reports for the authority from the stored figures (JSON or CSV, to stdout or a file).
    Report {
        #[command(subcommand)]
        kind: ReportKind,
    },
    /// The reference receiver of the provincial upload: checks, stores once and acknowledges
    /// each record (for tests and commissioning; see docs/upload.md).
    Receive {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
        /// Records, one JSON line each (appended; ids already there are not stored again).
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        token: Option<String>,
        /// Answer every Nth new record with the previous record's id (a duplicate
        /// acknowledgement), to test an uploader.
        #[arg(long)]
        stale_ack_every: Option<u64>,
        /// Serve HTTPS with this certificate chain (PEM)...
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// ...and this PKCS#8 private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Take only records signed with this gateway public key (as `ems-gateway keygen`
        /// printed it); others are refused with the reason.
        #[arg(long)]
        gateway_key: Option<String>,
    },
    /// Run a simulated plant, an edge agent, an embedded broker and the gateway in one process.
    #[cfg(feature = "demo")]
    Demo {
        /// Dashboard and API address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        /// Keep the demo's data here (default: a fresh temporary directory).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Bearer token of the demo operator "demo" (default: random, printed at start).
        #[arg(long)]
        operator_token: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ReportKind {
    /// Annual energy utilisation report of the enterprise: energy by carrier, each unit's
    /// output and unit energy against its limits, water, months, data quality.
    Annual {
        #[arg(long)]
        config: PathBuf,
        /// Calendar year (plant local time).
        #[arg(long)]
        year: i32,
        /// The enterprise (id or credit code), where the gateway serves several.
        #[arg(long)]
        enterprise: Option<String>,
        #[command(flatten)]
        output: ReportOutput,
    },
    /// Monthly compliance report: per unit and day, the level reached and every exceedance.
    Compliance {
        #[arg(long)]
        config: PathBuf,
        /// The month, YYYY-MM (plant local time).
        #[arg(long)]
        month: String,
        /// The enterprise (id or credit code), where the gateway serves several.
        #[arg(long)]
        enterprise: Option<String>,
        #[command(flatten)]
        output: ReportOutput,
    },
    /// Energy-savings verification of one unit: monthly baseline regressed on output (R²,
    /// CV(RMSE), NMBE against ASHRAE Guideline 14), CUSUM, savings by the product method.
    Savings {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        unit: String,
        /// First and last month of the baseline period, YYYY-MM.
        #[arg(long, required = true, num_args = 2, value_names = ["FROM", "TO"])]
        baseline: Vec<String>,
        /// A relevant variable besides output, as DEVICE/POINT: its monthly increase enters
        /// the regression (repeatable).
        #[arg(long = "variable", value_name = "DEVICE/POINT")]
        variables: Vec<String>,
        /// First and last month of the reporting period, YYYY-MM.
        #[arg(long, required = true, num_args = 2, value_names = ["FROM", "TO"])]
        reporting: Vec<String>,
        #[command(flatten)]
        output: ReportOutput,
    },
}

#[derive(clap::Args, Debug)]
struct ReportOutput {
    /// json, csv (one row per figure) or pdf (in Chinese).
    #[arg(long, default_value = "json")]
    format: ems_gateway::report::Format,
    /// For PDF: the CJK font to embed, FILE or FILE:INDEX for a collection (default: the
    /// first of Debian's Noto CJK, WenQuanYi or AR PL fonts found).
    #[arg(long)]
    font: Option<String>,
    /// Write here instead of stdout (never over an existing file).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ReportOutput {
    /// The font a PDF needs, found before the long part of a report (none for other formats).
    fn font(&self) -> anyhow::Result<Option<krilla::text::Font>> {
        Ok(match self.format {
            ems_gateway::report::Format::Pdf => {
                Some(ems_gateway::report::pdf::load_font(self.font.as_deref())?.1)
            }
            _ => None,
        })
    }

    /// Writes `report` in the chosen format, to `--out` (never over a file) or stdout.
    fn write(&self, bytes: &[u8]) -> anyhow::Result<()> {
        match &self.out {
            Some(path) => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?
                .write_all(bytes)?,
            None => std::io::stdout().lock().write_all(bytes)?,
        }
        Ok(())
    }
}

/// A progress bar on the terminal for a long report (nothing when stderr is not one).
fn progress_bar(what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Errors end the process with one line naming the cause chain (file, line and key for a bad
/// configuration), not a backtrace.
fn main() -> std::process::ExitCode {
    ems_process::exit(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rumqttd=off".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let shutdown = CancellationToken::new();
    tokio::spawn(ems_process::cancel_on_signal(shutdown.clone()));
    // The embedded broker (demo only) reports every client disconnect as an error; its log is
    // off unless RUST_LOG asks for it.
    match Args::parse().command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let listen = config.http.listen.clone();
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            // Machine-readable for scripts and tests that use port 0.
            println!("HTTP {}", listener.local_addr()?);
            let now = Arc::new(|| chrono::Utc::now().timestamp_millis());
            ems_gateway::serve(config, listener, now, None, shutdown).await?;
            tracing::info!("Gateway stopped.");
        }
        Command::Backup { config, to } => {
            let config = Config::load(&config)?;
            sqlite_only(
                &config,
                "backup",
                "use PostgreSQL's own (pg_basebackup, or Patroni's replicas)",
            )?;
            let messages = ems_gateway::store::Store::backup(&config.storage.path, &to)?;
            println!("Backup {}: {messages} messages, integrity ok", to.display());
        }
        Command::Compact { config } => {
            let config = Config::load(&config)?;
            sqlite_only(
                &config,
                "compact",
                "raw history stays rows in day partitions, dropped whole by retention",
            )?;
            anyhow::ensure!(
                config.storage.compact_after_h > 0,
                "compaction is off ([storage] compact_after_h = 0)"
            );
            // Migrate first: the store's schema is the gateway's to set up.
            drop(ems_gateway::store::Store::open(&config.storage.path)?);
            let started = std::time::Instant::now();
            let done = ems_gateway::store::Compactor::open(&config.storage.path)?
                .compact(config.storage.history_settle_ms(), &|| false)?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "compacted": done,
                    "seconds": seconds,
                    "points_per_s": done.points as f64 / seconds.max(1e-9),
                })
            );
        }
        Command::Stats { config } => {
            let config = Config::load(&config)?;
            sqlite_only(
                &config,
                "stats",
                "ask PostgreSQL (pg_total_relation_size of the messages partitions)",
            )?;
            drop(ems_gateway::store::Store::open(&config.storage.path)?);
            let stats = ems_gateway::store::history_stats(&config.storage.path)?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
        }
        Command::Verify {
            config,
            report,
            report_file,
            gateway_key,
            db,
        } => {
            let config = Config::load(&config)?;
            let report = match report.or(report_file) {
                Some(path) => Some(
                    std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => None,
            };
            let expected = match gateway_key {
                Some(hex) => Some(
                    ems_core::evidence::PublicKey::from_hex(hex.trim())
                        .map_err(|e| anyhow::anyhow!("--gateway-key: {e}"))?,
                ),
                None => config.report_public_key(),
            };
            // Off the runtime: PostgreSQL's client blocks.
            let (out, report_findings) = tokio::task::spawn_blocking(move || {
                let reader = match &db {
                    Some(copy) => ems_gateway::store::Store::read_copy(copy)?,
                    None => ems_gateway::runtime::open_reader(&config)?,
                };
                let out = ems_gateway::view::audit(&reader, &config)?;
                let report_findings = match &report {
                    Some(bytes) => Some(ems_gateway::report::seal::check(
                        bytes,
                        &config.report_inputs(&reader, 0),
                        &config.digests,
                        expected.as_ref(),
                    )?),
                    None => None,
                };
                anyhow::Ok((out, report_findings))
            })
            .await??;
            let mut shown = serde_json::to_value(&out)?;
            if let Some(r) = &report_findings {
                shown["report"] = serde_json::json!({ "findings": r });
            }
            println!("{}", serde_json::to_string_pretty(&shown)?);
            let findings = out.mismatches.len()
                + out.evidence.as_ref().map_or(0, |e| e.findings.len())
                + out.audit.as_ref().map_or(0, |a| a.findings.len())
                + report_findings.as_ref().map_or(0, Vec::len);
            anyhow::ensure!(
                findings == 0,
                "the record does not hold: {findings} findings (listed above)"
            );
        }
        Command::Keygen { out } => {
            let public = ems_process::key_file::keygen(&out)?;
            println!("{public}");
            eprintln!(
                "Wrote {}. Name it in the gateway's configuration:\n  [evidence]\n  report_key_file = \"{}\"\nand give verifiers the public key above.",
                out.display(),
                out.display()
            );
        }
        Command::Enrol {
            config,
            edge,
            key,
            by,
            reason,
            replace,
        } => enrol(&config, &edge, &key, &by, &reason, replace).await?,
        Command::DeclareChange { config, by, reason } => {
            declare_change(&config, by, reason).await?
        }
        Command::Export {
            config,
            from,
            to,
            device,
        } => {
            let config = Config::load(&config)?;
            let time = |name: &str, t: &str| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.timestamp_millis())
                    .with_context(|| format!("--{name} {t}: not an RFC 3339 time"))
            };
            let (from, to) = (time("from", &from)?, time("to", &to)?);
            // Off the runtime: PostgreSQL's client blocks.
            let n = tokio::task::spawn_blocking(move || {
                ems_gateway::runtime::open_reader(&config)?.export_csv(
                    device.as_deref(),
                    from,
                    to,
                    &mut std::io::stdout().lock(),
                )
            })
            .await??;
            tracing::info!(rows = n, "Exported.");
        }
        Command::Report { kind } => tokio::task::spawn_blocking(move || report(kind)).await??,
        Command::Receive {
            listen,
            out,
            token,
            stale_ack_every,
            tls_cert,
            tls_key,
            gateway_key,
        } => {
            let gateway_key = gateway_key
                .map(|hex| ems_core::evidence::PublicKey::from_hex(hex.trim()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--gateway-key: {e}"))?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("RECEIVER {}", listener.local_addr()?);
            let opts = ems_gateway::receiver::ReceiverOptions {
                out,
                token,
                stale_ack_every,
                tls: tls_cert.zip(tls_key),
                gateway_key,
            };
            ems_gateway::receiver::run(listener, opts, shutdown).await?;
        }
        #[cfg(feature = "demo")]
        Command::Demo {
            http,
            speed,
            data,
            operator_token,
        } => {
            ems_gateway::demo::run(
                DemoOptions {
                    http,
                    speed,
                    data_dir: data,
                    operator_token,
                },
                shutdown,
            )
            .await?;
        }
    }
    Ok(())
}

/// `ems-gateway enrol`: the configuration rewritten with the key (checked to load before it
/// replaces the file), then the act logged.
async fn enrol(
    path: &std::path::Path,
    edge: &str,
    key: &str,
    by: &str,
    reason: &str,
    replace: bool,
) -> anyhow::Result<()> {
    let key = ems_core::evidence::PublicKey::from_hex(key.trim())
        .map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    who_and_why(by, reason, "enrols the key")?;
    let config = Config::load(path)?;
    if !ems_gateway::config::matches_any(&config.ingest.edges, edge) {
        tracing::warn!(%edge, "The edge is not in [ingest] edges: its messages are refused until it is.");
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (new_text, previous) = ems_gateway::enrol::with_edge_key(&text, edge, &key, replace)?;
    if new_text == text {
        println!("Edge {edge} is already enrolled with this key.");
        return Ok(());
    }
    // A new file beside the old, with its permissions, checked to load, then renamed over it.
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".enrolling");
    let next = path.with_file_name(name);
    std::fs::write(&next, &new_text).with_context(|| format!("cannot write {}", next.display()))?;
    std::fs::set_permissions(&next, std::fs::metadata(path)?.permissions())?;
    if let Err(e) = Config::load(&next) {
        let _ = std::fs::remove_file(&next);
        anyhow::bail!("the configuration with the key would not load: {e}");
    }
    std::fs::rename(&next, path).with_context(|| format!("cannot replace {}", path.display()))?;
    let entry = ems_gateway::audit::Entry::enrol_edge(
        edge,
        &key.to_hex(),
        previous.as_deref(),
        by,
        reason,
        chrono::Utc::now().timestamp_millis(),
    );
    // Off the runtime: PostgreSQL's client blocks.
    tokio::task::spawn_blocking(move || {
        ems_gateway::runtime::open_reader(&config)?.log_act(&entry)
    })
    .await??;
    println!(
        "Enrolled edge {edge}{}; restart the gateway to take it.",
        if previous.is_some() {
            " (its key replaced)"
        } else {
            ""
        }
    );
    Ok(())
}

/// An operator's act is logged with who did it and why: both must be given.
fn who_and_why(by: &str, reason: &str, act: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !by.trim().is_empty() && !reason.trim().is_empty(),
        "--by and --reason name who {act} and why"
    );
    Ok(())
}

/// Logs the configuration's and data files' changes in the audit log with who and why.
async fn declare_change(path: &std::path::Path, by: String, reason: String) -> anyhow::Result<()> {
    who_and_why(&by, &reason, "changed the files")?;
    // A configuration that would not load is refused here, not at the next start.
    let config = Config::load(path)?;
    let declared = ems_gateway::audit::Declared { by, reason };
    let now_ms = chrono::Utc::now().timestamp_millis();
    // Off the runtime: PostgreSQL's client blocks.
    let logged = tokio::task::spawn_blocking(move || {
        ems_gateway::runtime::open_reader(&config)?.note_files(
            &config.digests,
            Some(&declared),
            now_ms,
        )
    })
    .await??;
    if logged == 0 {
        println!(
            "No configuration or data file changed since it was last logged: nothing declared."
        );
    } else {
        println!(
            "{logged} changed file(s) logged in the audit log; restart the gateway to take them."
        );
    }
    Ok(())
}

/// A command of SQLite's file refused on the postgres backend (it would make an empty file of
/// the configured path and act on that), saying what to do instead.
fn sqlite_only(config: &Config, command: &str, instead: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.storage.backend == ems_gateway::config::Backend::Sqlite,
        "`ems-gateway {command}` works on the SQLite backend; this configuration's is PostgreSQL: {instead}"
    );
    Ok(())
}

fn report(kind: ReportKind) -> anyhow::Result<()> {
    use ems_gateway::report::{self, Request};
    let months = |v: &[String]| -> anyhow::Result<_> {
        Ok((report::parse_month(&v[0])?, report::parse_month(&v[1])?))
    };
    let (config, request, output) = match kind {
        ReportKind::Annual {
            config,
            year,
            enterprise,
            output,
        } => (config, Request::Annual { year, enterprise }, output),
        ReportKind::Compliance {
            config,
            month,
            enterprise,
            output,
        } => (
            config,
            Request::Compliance {
                month: report::parse_month(&month)?,
                enterprise,
            },
            output,
        ),
        ReportKind::Savings {
            config,
            unit,
            baseline,
            reporting,
            variables,
            output,
        } => (
            config,
            Request::Savings {
                unit,
                baseline: months(&baseline)?,
                reporting: months(&reporting)?,
                variables: report::parse_variables(&variables)?,
            },
            output,
        ),
    };
    let config = Config::load(&config)?;
    // The font is looked for before the long part of a report.
    let font = output.font()?;
    let reader = ems_gateway::runtime::open_reader(&config)?;
    let inputs = report::Inputs {
        plant: &config.plant,
        reader: &reader,
        now_ms: chrono::Utc::now().timestamp_millis(),
        earliest_ms: config.earliest_ms,
    };
    let bar = progress_bar(&request.name());
    let sealer = config.sealer();
    let bytes = report::make(
        &inputs,
        &request,
        output.format,
        &|| font.clone().context("a font for the PDF"),
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
        Some(&sealer.seal()),
    )?;
    bar.finish_and_clear();
    output.write(&bytes)
}
