//! The reference receiver of the provincial upload: it checks each record against the format
//! (docs/upload.md), stores it once by `record_id` (one JSON line per record, fsynced) and
//! acknowledges it. For tests and for commissioning an uploader before the platform is reachable.

use std::collections::HashSet;
use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// Records, one JSON line each; kept across restarts (its ids are not stored twice).
    pub out: PathBuf,
    /// A bearer token the uploader must present.
    pub token: Option<String>,
    /// Every Nth new record is answered with the previous record's id: a duplicate
    /// acknowledgement, which an uploader must not take for this record's.
    pub stale_ack_every: Option<u64>,
    /// Serve HTTPS with this certificate chain and PKCS#8 key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Take only records signed with this gateway key (their `evidence`), as a platform that
    /// enrolled the gateway does.
    pub gateway_key: Option<ems_core::evidence::PublicKey>,
}

struct Book {
    opts: ReceiverOptions,
    seen: HashSet<String>,
    file: std::fs::File,
    stored: u64,
    last: Option<String>,
}

type Shared = Arc<Mutex<Book>>;

/// Serves on `listener` until `shutdown`.
pub async fn run(
    listener: tokio::net::TcpListener,
    opts: ReceiverOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.stale_ack_every.is_none_or(|n| n >= 2),
        "--stale-ack-every must be at least 2"
    );
    let tls = opts.tls.clone();
    let mut seen = HashSet::new();
    let mut last = None;
    if let Ok(f) = std::fs::File::open(&opts.out) {
        for line in std::io::BufReader::new(f).lines() {
            let v: serde_json::Value = serde_json::from_str(&line?)?;
            let id = v["record_id"].as_str().unwrap_or_default().to_owned();
            last = Some(id.clone());
            seen.insert(id);
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.out)?;
    let book = Arc::new(Mutex::new(Book {
        opts,
        stored: seen.len() as u64,
        seen,
        file,
        last,
    }));
    let app = Router::new().route("/", post(receive)).with_state(book);
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await?
        }
        Some((cert, key)) => serve_tls(listener, app, tls_acceptor(&cert, &key)?, shutdown).await?,
    }
    Ok(())
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use anyhow::Context as _;
    let pem = |p: &std::path::Path| -> anyhow::Result<std::io::BufReader<std::fs::File>> {
        Ok(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("{}", p.display()))?,
        ))
    };
    let certs = rustls_pemfile::certs(&mut pem(cert)?)?
        .into_iter()
        .map(tokio_rustls::rustls::Certificate)
        .collect();
    let key = rustls_pemfile::pkcs8_private_keys(&mut pem(key)?)?
        .pop()
        .with_context(|| format!("{}: no PKCS#8 private key", key.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_safe_defaults()
        .with_no_client_auth()
        .with_single_cert(certs, tokio_rustls::rustls::PrivateKey(key))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// HTTPS: each accepted connection's TLS handshake, then HTTP/1.1 with the router.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> axum::response::Response {
    (status, Json(body)).into_response()
}

async fn receive(
    State(book): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let mut b = book.lock().expect("receiver lock");
    if let Some(token) = &b.opts.token {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return answer(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "bad or no token"}),
            );
        }
    }
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("not JSON: {e}")}),
            )
        }
    };
    if let Err(e) = crate::upload::validate(&v) {
        return answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"error": e}),
        );
    }
    if let Some(expected) = &b.opts.gateway_key {
        let refusal = match crate::report::seal::signed_by(&v) {
            Ok(key) if key == *expected => None,
            Ok(key) => Some(format!("signed by key {}, not the gateway's", key.to_hex())),
            Err(why) => Some(why),
        };
        if let Some(why) = refusal {
            return answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": format!("evidence: {why}")}),
            );
        }
    }
    let id = v["record_id"].as_str().expect("validated").to_owned();
    if b.seen.contains(&id) {
        return answer(
            StatusCode::OK,
            serde_json::json!({"ack": id, "duplicate": true}),
        );
    }
    let stored = writeln!(b.file, "{v}").and_then(|_| b.file.sync_data());
    if let Err(e) = stored {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": format!("cannot store: {e}")}),
        );
    }
    b.seen.insert(id.clone());
    b.stored += 1;
    let previous = b.last.replace(id.clone());
    match (b.opts.stale_ack_every, previous) {
        (Some(n), Some(prev)) if b.stored % n == 0 => {
            answer(StatusCode::OK, serde_json::json!({"ack": prev}))
        }
        _ => answer(StatusCode::OK, serde_json::json!({"ack": id})),
    }
}
