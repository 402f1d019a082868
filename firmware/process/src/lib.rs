//! Process glue shared by ems-edge, ems-gateway and ems-sim: shutdown is a
//! [`CancellationToken`] that SIGTERM or Ctrl-C cancels, and a failure ends the process with one
//! line naming the cause chain (file, line and key for a bad configuration), not a backtrace.

pub mod key_file;

use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGTERM or Ctrl-C.
pub async fn cancel_on_signal(token: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    token.cancel();
}

/// The exit of a program whose work returned `result`: success, or `error: <chain>` on stderr.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
