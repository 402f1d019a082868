//! The Modbus TCP face of the plant, and the task that writes the truth file.

use std::future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::clock::SimClock;
use crate::meter::Table;
use crate::plant::Plant;
use crate::scenario::Scenario;

/// Serves every meter of the plant on one address, each under its unit id.
#[derive(Clone)]
struct SimService {
    plant: Arc<Mutex<Plant>>,
    clock: SimClock,
}

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let mut plant = self.plant.lock().expect("plant lock poisoned");
        plant.advance_to(self.clock.now_ms());
        let res = match req.request {
            Request::ReadHoldingRegisters(addr, count) => plant
                .read(req.slave, Table::Holding, addr, count)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(addr, count) => plant
                .read(req.slave, Table::Input, addr, count)
                .map(Response::ReadInputRegisters),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        future::ready(res)
    }
}

pub struct SimOptions {
    pub scenario: Scenario,
    pub clock: SimClock,
    pub truth: Option<PathBuf>,
}

/// Runs the simulator on `listener` until `shutdown` is cancelled, then closes the truth
/// interval in progress and flushes the truth file.
pub async fn run(
    listener: TcpListener,
    opts: SimOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let plant = Arc::new(Mutex::new(Plant::new(opts.scenario, opts.clock.start_ms())));
    let service = SimService {
        plant: plant.clone(),
        clock: opts.clock,
    };
    let server = Server::new(listener);
    let on_connected = move |stream, addr: SocketAddr| {
        let service = service.clone();
        async move { accept_tcp_connection(stream, addr, move |_| Ok(Some(service.clone()))) }
    };
    let on_error = |e| tracing::debug!(error = %e, "Modbus connection ended with an error.");
    let serve = server.serve_until(&on_connected, on_error, shutdown.clone().cancelled_owned());

    let truth = write_truth(plant, opts.clock, opts.truth, shutdown.clone());
    let (served, written) = tokio::join!(serve, truth);
    served.context("Modbus server failed")?;
    written
}

async fn write_truth(
    plant: Arc<Mutex<Plant>>,
    clock: SimClock,
    path: Option<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut file = match &path {
        Some(p) => Some(
            tokio::fs::File::create(p)
                .await
                .with_context(|| format!("cannot create truth file {}", p.display()))?,
        ),
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            () = shutdown.cancelled() => true,
        };
        let records = {
            let mut plant = plant.lock().expect("plant lock poisoned");
            plant.advance_to(clock.now_ms());
            if stopping {
                plant.close_interval();
            }
            plant.take_closed()
        };
        if let Some(f) = file.as_mut() {
            let mut buf = Vec::new();
            for r in &records {
                serde_json::to_writer(&mut buf, r)?;
                buf.push(b'\n');
            }
            f.write_all(&buf).await?;
            f.flush().await?;
        }
        if stopping {
            if let Some(f) = file.as_mut() {
                f.sync_all().await?;
            }
            return Ok(());
        }
    }
}
