//! The Modbus faces of the plant (TCP here, RTU in [`crate::rtu`]) and the truth writer.
//!
//! [`answer`] decides what the plant says to one request, faults included; the transports only
//! carry it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::clock::SimClock;
use crate::faults::FaultKind;
use crate::meter::Table;
use crate::plant::Plant;
use crate::scenario::Scenario;

pub type SharedPlant = Arc<Mutex<Plant>>;

/// What the plant does with one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `None`: no answer at all.
    pub response: Option<Result<Response, ExceptionCode>>,
    /// Wait this long (real time) before answering.
    pub delay: Duration,
    /// Close the connection instead of answering.
    pub drop_connection: bool,
    /// RTU: spoil the frame (`Some(true)`: cut it short, `Some(false)`: bad CRC).
    pub corrupt: Option<bool>,
}

/// Advances the plant to now and answers a request for `slave`, faults included.
pub fn answer(plant: &Mutex<Plant>, clock: &SimClock, slave: u8, request: &Request<'_>) -> Answer {
    let mut plant = plant.lock().expect("plant lock poisoned");
    plant.advance_to(clock.now_ms());
    let mut a = Answer {
        response: None,
        delay: Duration::ZERO,
        drop_connection: false,
        corrupt: None,
    };
    let read = |table, addr, count| {
        let regs = plant.read(slave, table, addr, count);
        match table {
            Table::Holding => regs.map(Response::ReadHoldingRegisters),
            Table::Input => regs.map(Response::ReadInputRegisters),
        }
    };
    let normal = match *request {
        Request::ReadHoldingRegisters(addr, count) => read(Table::Holding, addr, count),
        Request::ReadInputRegisters(addr, count) => read(Table::Input, addr, count),
        _ => Err(ExceptionCode::IllegalFunction),
    };
    a.response = Some(normal);
    let Some(m) = plant.meter_at(slave) else {
        return a;
    };
    let asked = plant.ask(m);
    for fault in plant.active_faults(m) {
        match fault.kind {
            FaultKind::DropConnection => a.drop_connection = true,
            FaultKind::NoResponse => a.response = None,
            FaultKind::Offline { delay_ms } => {
                a.delay = a.delay.max(Duration::from_millis(delay_ms));
                a.response = a.response.map(|_| Err(ExceptionCode::GatewayTargetDevice));
            }
            FaultKind::Exception(code) => {
                a.response = a.response.map(|_| Err(ExceptionCode::new(code)));
            }
            FaultKind::Slow { delay_ms } => a.delay = a.delay.max(Duration::from_millis(delay_ms)),
            FaultKind::CorruptFrame { truncate, every } => {
                if asked.is_multiple_of(u64::from(every)) {
                    a.corrupt = Some(truncate);
                }
            }
            FaultKind::ShortRequests { registers, silent } => {
                if let Request::ReadHoldingRegisters(_, n) | Request::ReadInputRegisters(_, n) =
                    *request
                {
                    if n > registers && silent {
                        a.response = None;
                    } else if n > registers {
                        a.response = a.response.map(|_| Err(ExceptionCode::IllegalDataValue));
                    }
                }
            }
            FaultKind::RefuseRegisters { from, to } => {
                if let Request::ReadHoldingRegisters(addr, n)
                | Request::ReadInputRegisters(addr, n) = *request
                {
                    let end = u32::from(addr) + u32::from(n);
                    if u32::from(addr) <= u32::from(to) && end > u32::from(from) {
                        a.response = Some(Err(ExceptionCode::IllegalDataAddress));
                    }
                }
            }
            FaultKind::SerialGateway { baud } => {
                if let Request::ReadHoldingRegisters(_, n) | Request::ReadInputRegisters(_, n) =
                    *request
                {
                    // An 8-byte request, a 5-byte frame around the data, a 3.5-character
                    // silence before each.
                    let chars = 8.0 + 5.0 + 2.0 * f64::from(n) + 7.0;
                    let wire = Duration::from_secs_f64(chars * 11.0 / f64::from(baud));
                    a.delay = a.delay.max(wire);
                }
            }
            FaultKind::Rollover
            | FaultKind::Replace { .. }
            | FaultKind::Freeze
            | FaultKind::Spike { .. } => {}
        }
    }
    a
}

/// One TCP connection's service: answers requests, and can end its connection.
#[derive(Clone)]
struct TcpService {
    plant: SharedPlant,
    clock: SimClock,
    hang_up: Arc<AtomicBool>,
}

type AnswerFuture = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for TcpService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = AnswerFuture;

    fn call(&self, req: Self::Request) -> Self::Future {
        let a = answer(&self.plant, &self.clock, req.slave, &req.request);
        let hang_up = self.hang_up.clone();
        Box::pin(async move {
            if !a.delay.is_zero() {
                tokio::time::sleep(a.delay).await;
            }
            if a.drop_connection {
                hang_up.store(true, Ordering::SeqCst);
                return Ok(None);
            }
            match a.response {
                None => Ok(None),
                Some(r) => r.map(Some),
            }
        })
    }
}

/// A TCP stream that reads as closed once its service decides to hang up.
struct HangUpStream {
    inner: TcpStream,
    hang_up: Arc<AtomicBool>,
}

impl AsyncRead for HangUpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.hang_up.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HangUpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves Modbus TCP on `listener` until `shutdown`.
pub async fn serve_tcp(
    listener: TcpListener,
    plant: SharedPlant,
    clock: SimClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server = Server::new(listener);
    let on_connected = move |stream: TcpStream, _addr: SocketAddr| {
        let hang_up = Arc::new(AtomicBool::new(false));
        let service = TcpService {
            plant: plant.clone(),
            clock,
            hang_up: hang_up.clone(),
        };
        async move {
            Ok(Some((
                service,
                HangUpStream {
                    inner: stream,
                    hang_up,
                },
            )))
        }
    };
    let on_error = |e| tracing::debug!(error = %e, "Modbus connection ended with an error.");
    server
        .serve_until(&on_connected, on_error, shutdown.cancelled_owned())
        .await
        .context("Modbus TCP server failed")?;
    Ok(())
}

pub struct SimOptions {
    pub scenario: Scenario,
    pub clock: SimClock,
    pub truth: Option<PathBuf>,
}

/// Runs the simulator's Modbus TCP server on `listener` until `shutdown` is cancelled, then
/// closes the truth interval in progress and flushes the truth file.
pub async fn run(
    listener: TcpListener,
    opts: SimOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let plant = Arc::new(Mutex::new(Plant::new(opts.scenario, opts.clock.start_ms())));
    run_with(listener, plant, opts.clock, opts.truth, shutdown).await
}

/// [`run`] with a plant the caller shares (with the control API, an RTU server, ...).
pub async fn run_with(
    listener: TcpListener,
    plant: SharedPlant,
    clock: SimClock,
    truth: Option<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let serve = serve_tcp(listener, plant.clone(), clock, shutdown.clone());
    let written = write_truth(plant, clock, truth, shutdown.clone());
    let (served, written) = tokio::join!(serve, written);
    served?;
    written
}

async fn write_truth(
    plant: SharedPlant,
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
        let lines = {
            let mut plant = plant.lock().expect("plant lock poisoned");
            plant.advance_to(clock.now_ms());
            if stopping {
                plant.close_interval();
            }
            plant.take_closed()
        };
        if let Some(f) = file.as_mut() {
            let mut buf = Vec::new();
            for l in &lines {
                serde_json::to_writer(&mut buf, l)?;
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
