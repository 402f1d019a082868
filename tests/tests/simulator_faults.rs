//! Every fault ems-sim can inject, observed the way a Modbus master sees it. Faults are posted
//! to the control API while the simulator runs (360x: a simulated hour is ten real seconds).

use std::time::{Duration, Instant};

use ems_core::{decode, DataType, WordOrder};
use ems_tests::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::client::{tcp, Context, Reader};
use tokio_modbus::{ExceptionCode, Slave};

struct Sim {
    _dir: TempDir,
    _proc: Proc,
    modbus: std::net::SocketAddr,
    rtu_tcp: String,
    control: String,
}

fn start() -> Sim {
    let dir = TempDir::new("sim-faults");
    let proc = Proc::start(
        &bin("ems-sim"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--rtu-tcp",
            "127.0.0.1:0",
            "--speed",
            "360",
            "--baud",
            "115200",
        ],
        dir.path(),
    );
    let modbus = proc
        .wait_line("LISTEN ", Duration::from_secs(10))
        .parse()
        .unwrap();
    let control = proc.wait_line("CONTROL ", Duration::from_secs(5));
    let rtu_tcp = proc.wait_line("RTU-TCP ", Duration::from_secs(5));
    Sim {
        _dir: dir,
        _proc: proc,
        modbus,
        rtu_tcp,
        control,
    }
}

impl Sim {
    fn inject(&self, fault: Value) {
        let resp = ureq::post(&format!("http://{}/faults", self.control)).send_json(&fault);
        assert!(resp.is_ok(), "injecting {fault}: {resp:?}");
    }

    async fn client(&self, unit: u8) -> Context {
        tcp::connect_slave(self.modbus, Slave(unit)).await.unwrap()
    }
}

/// bf1-coke: a belt scale, unit 12, total at holding 2 (u32 in 0.01 t).
const COKE: u8 = 12;

async fn coke_total(ctx: &mut Context) -> f64 {
    let regs = tokio::time::timeout(Duration::from_secs(2), ctx.read_holding_registers(2, 2))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    decode(&regs, DataType::U32, WordOrder::ABCD).unwrap() * 0.01
}

type Read = Result<Result<Vec<u16>, ExceptionCode>, tokio_modbus::Error>;

async fn read(ctx: &mut Context, timeout: Duration) -> Option<Read> {
    tokio::time::timeout(timeout, ctx.read_holding_registers(2, 2))
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn exceptions_slow_silent_and_offline_devices() {
    let sim = start();
    for (device, unit, code, expected) in [
        ("bf1-pci", 13, 2, ExceptionCode::IllegalDataAddress),
        ("bf1-power", 14, 4, ExceptionCode::ServerDeviceFailure),
        ("bf1-bfg-stoves", 15, 6, ExceptionCode::ServerDeviceBusy),
    ] {
        sim.inject(json!({"device": device, "kind": "exception", "code": code, "for_h": 1.0}));
        let mut ctx = sim.client(unit).await;
        let got = tokio::time::timeout(
            Duration::from_secs(2),
            ctx.read_holding_registers(0xF000, 4),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, Err(expected), "{device}");
    }

    sim.inject(json!({"device": "bf1-coke", "kind": "slow", "delay_ms": 700, "for_h": 1.0}));
    let mut ctx = sim.client(COKE).await;
    let t = Instant::now();
    assert!(matches!(
        read(&mut ctx, Duration::from_secs(3)).await,
        Some(Ok(Ok(_)))
    ));
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "slow answer after {:?}",
        t.elapsed()
    );

    sim.inject(json!({"device": "bf1-trt", "kind": "no_response", "for_h": 0.05}));
    let mut ctx = sim.client(17).await;
    assert!(
        read(&mut ctx, Duration::from_millis(800)).await.is_none(),
        "no answer at all"
    );
    // 0.05 h is 0.5 real seconds: afterwards the device answers again (on a new connection,
    // as a master does after a timeout).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut ctx = sim.client(17).await;
    assert!(
        matches!(
            read(&mut ctx, Duration::from_secs(2)).await,
            Some(Ok(Ok(_)))
        ),
        "recovers by itself"
    );

    sim.inject(json!({"device": "bf1-water", "kind": "offline", "delay_ms": 300, "for_h": 1.0}));
    let mut ctx = sim.client(18).await;
    let t = Instant::now();
    let got = ctx.read_holding_registers(0x1010, 2).await.unwrap();
    assert_eq!(
        got,
        Err(ExceptionCode::GatewayTargetDevice),
        "the gateway answers for a dead meter"
    );
    assert!(t.elapsed() >= Duration::from_millis(300));

    // Other meters on the same address are not touched by any of it.
    let mut ctx = sim.client(11).await;
    assert!(matches!(
        read(&mut ctx, Duration::from_secs(2)).await,
        Some(Ok(Ok(_)))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_connections() {
    let sim = start();
    let mut ctx = sim.client(COKE).await;
    coke_total(&mut ctx).await;
    sim.inject(json!({"device": "bf1-coke", "kind": "drop_connection", "for_h": 0.05}));
    let got = read(&mut ctx, Duration::from_secs(2)).await;
    assert!(
        matches!(got, Some(Err(_))),
        "the connection is closed under the master: {got:?}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut ctx = sim.client(COKE).await;
    assert!(
        coke_total(&mut ctx).await > 0.0,
        "a new connection works once the fault is over"
    );
}

fn rtu_request(unit: u8, function: u8, addr: u16, count: u16) -> Vec<u8> {
    let mut f = vec![unit, function];
    f.extend_from_slice(&addr.to_be_bytes());
    f.extend_from_slice(&count.to_be_bytes());
    let crc = crc16(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Sends one raw RTU frame over RTU-over-TCP and collects what comes back within `wait`.
async fn rtu_exchange(addr: &str, frame: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(frame).await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 256];
    while let Ok(Ok(n)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        s.read(&mut buf),
    )
    .await
    {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn rtu_frames_good_corrupt_and_truncated() {
    let sim = start();
    let req = rtu_request(COKE, 3, 2, 2);
    let good = rtu_exchange(&sim.rtu_tcp, &req, Duration::from_millis(500)).await;
    assert_eq!(
        good.len(),
        9,
        "address, function, byte count, 4 data bytes, CRC: {good:?}"
    );
    assert_eq!(crc16(&good[..7]).to_le_bytes(), [good[7], good[8]]);
    // Garbage before a frame (line noise) is skipped.
    let mut noisy = vec![0xFF, 0x00, 0x13];
    noisy.extend_from_slice(&req);
    assert_eq!(
        rtu_exchange(&sim.rtu_tcp, &noisy, Duration::from_millis(500))
            .await
            .len(),
        9
    );
    // A unit id nobody has stays silent on RS-485.
    assert!(rtu_exchange(
        &sim.rtu_tcp,
        &rtu_request(99, 3, 0, 2),
        Duration::from_millis(300)
    )
    .await
    .is_empty());

    sim.inject(json!({"device": "bf1-coke", "kind": "corrupt_frame", "for_h": 1.0}));
    let bad = rtu_exchange(&sim.rtu_tcp, &req, Duration::from_millis(500)).await;
    assert_eq!(bad.len(), 9);
    assert_ne!(crc16(&bad[..7]).to_le_bytes(), [bad[7], bad[8]], "bad CRC");

    sim.inject(
        json!({"device": "bf1-pci", "kind": "corrupt_frame", "truncate": true, "for_h": 1.0}),
    );
    let cut = rtu_exchange(
        &sim.rtu_tcp,
        &rtu_request(13, 3, 2, 2),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(cut.len(), 6, "truncated frame: {cut:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_roll_over_get_replaced_freeze_and_spike() {
    let sim = start();
    let mut ctx = sim.client(COKE).await;

    // Rollover in 0.02 h (0.2 real s): the belt scale's u32 wraps at 42 949 672.96 t.
    sim.inject(json!({"device": "bf1-coke", "kind": "rollover", "at_h": 0.02}));
    let before = coke_total(&mut ctx).await;
    assert!(
        before > 42_949_000.0,
        "set just below the rollover: {before}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = coke_total(&mut ctx).await;
    assert!(after < 100.0, "wrapped to zero: {after}");

    sim.inject(json!({"device": "bf1-coke", "kind": "replace", "reading": 5.0}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let swapped = coke_total(&mut ctx).await;
    assert!((5.0..10.0).contains(&swapped), "new meter: {swapped}");

    sim.inject(json!({"device": "bf1-coke", "kind": "freeze", "for_h": 0.2}));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frozen = coke_total(&mut ctx).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // 4.8 simulated minutes, ~3 t of coke
    assert_eq!(coke_total(&mut ctx).await, frozen, "frozen");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(coke_total(&mut ctx).await > frozen + 5.0, "catches up");

    let base = coke_total(&mut ctx).await;
    sim.inject(json!({"device": "bf1-coke", "kind": "spike", "magnitude": 10000.0, "for_h": 0.05}));
    assert!(coke_total(&mut ctx).await > base + 9_999.0, "spike");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(coke_total(&mut ctx).await < base + 100.0, "spike over");

    let faults = get_json(&sim.control, "/faults");
    assert_eq!(
        faults.as_array().unwrap().len(),
        4,
        "the control API lists them: {faults}"
    );
}
