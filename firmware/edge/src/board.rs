//! The board around the agent: the RS-485 transceiver's direction pin, the run and fault LEDs
//! and the hardware watchdog.
//!
//! Pins are embedded-hal `OutputPin`s: on the board, GPIO lines of the Linux character device
//! (`/dev/gpiochip0:17`, through linux-embedded-hal); in tests, any other implementation. The
//! watchdog is Linux's `/dev/watchdog`: fed while every link completes its cycles and the
//! publisher lives, so a hung agent gets the board reset; closed with the magic 'V' on a clean
//! stop, so a stop is not taken for a hang.

use std::fmt;
use std::future::Future as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An output line, whatever drives it: the object-safe face of any embedded-hal `OutputPin`.
pub trait Line: Send {
    fn set(&mut self, high: bool) -> io::Result<()>;
}

impl<P> Line for P
where
    P: embedded_hal::digital::OutputPin + Send,
{
    fn set(&mut self, high: bool) -> io::Result<()> {
        let r = if high {
            self.set_high()
        } else {
            self.set_low()
        };
        r.map_err(|e| io::Error::other(format!("{e:?}")))
    }
}

/// A GPIO line of a Linux GPIO character device: `/dev/gpiochip0:17`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpioLine {
    pub chip: PathBuf,
    pub offset: u32,
}

impl FromStr for GpioLine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (chip, offset) = s
            .rsplit_once(':')
            .filter(|(c, _)| c.starts_with('/'))
            .ok_or_else(|| format!("`{s}`: expected /dev/gpiochipN:LINE"))?;
        Ok(GpioLine {
            chip: chip.into(),
            offset: offset
                .parse()
                .map_err(|_| format!("`{s}`: the line must be a number"))?,
        })
    }
}

impl fmt::Display for GpioLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.chip.display(), self.offset)
    }
}

impl GpioLine {
    /// Requests the line as an output, low.
    pub fn open(&self) -> anyhow::Result<Box<dyn Line>> {
        use anyhow::Context as _;
        let mut chip = gpio_cdev::Chip::new(&self.chip)
            .with_context(|| format!("cannot open GPIO chip {}", self.chip.display()))?;
        let handle = chip
            .get_line(self.offset)
            .and_then(|l| l.request(gpio_cdev::LineRequestFlags::OUTPUT, 0, "ems-edge"))
            .with_context(|| format!("cannot take GPIO line {self}"))?;
        Ok(Box::new(linux_embedded_hal::CdevPin::new(handle)?))
    }
}

/// A half-duplex RS-485 transceiver whose driver is enabled by a pin: high while a frame goes
/// out, low again once its last character has left the wire (its length at the line's
/// character time after the write began), so that the answer can come in.
pub struct DirectionControlled<T> {
    inner: T,
    pin: Box<dyn Line>,
    char_time: Duration,
    /// Since when the driver is on, and how many bytes went out since.
    sending: Option<(Instant, u32)>,
    release: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> DirectionControlled<T> {
    pub fn new(inner: T, mut pin: Box<dyn Line>, char_time: Duration) -> io::Result<Self> {
        pin.set(false)?;
        Ok(DirectionControlled {
            inner,
            pin,
            char_time,
            sending: None,
            release: None,
        })
    }
}

impl<T> fmt::Debug for DirectionControlled<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectionControlled")
            .field("sending", &self.sending)
            .finish()
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DirectionControlled<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.sending.is_none() {
            this.pin.set(true)?;
            this.sending = Some((Instant::now(), 0));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if let Some((_, bytes)) = &mut this.sending {
            *bytes += n as u32;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        if let Some((since, bytes)) = this.sending {
            let sleep = this.release.get_or_insert_with(|| {
                // The UART still shifts out what the kernel took: wait for the last stop bit.
                let done = since + this.char_time * bytes;
                Box::pin(tokio::time::sleep_until(done.into()))
            });
            ready!(sleep.as_mut().poll(cx));
            this.release = None;
            this.sending = None;
            this.pin.set(false)?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DirectionControlled<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The hardware watchdog: the board resets if it is not fed within its timeout.
pub trait Watchdog: Send {
    fn feed(&mut self) -> io::Result<()>;
    /// A clean stop: disarm, so that stopping is not taken for a hang.
    fn disarm(&mut self) -> io::Result<()>;
}

/// Linux's watchdog device (`/dev/watchdog`): any write feeds it; 'V' before closing disarms it.
pub struct LinuxWatchdog(std::fs::File);

impl LinuxWatchdog {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open watchdog {}", path.display()))?;
        Ok(LinuxWatchdog(f))
    }
}

impl Watchdog for LinuxWatchdog {
    fn feed(&mut self) -> io::Result<()> {
        self.0.write_all(b"\0")?;
        self.0.flush()
    }
    fn disarm(&mut self) -> io::Result<()> {
        self.0.write_all(b"V")?;
        self.0.flush()
    }
}

/// Signs of life: each link stamps the end of every poll cycle; the publisher stamps its loop.
#[derive(Debug, Default)]
pub struct Heartbeats {
    beats: Vec<AtomicI64>,
}

impl Heartbeats {
    /// `n` parties, all alive now.
    pub fn new(n: usize) -> Arc<Self> {
        let now = now_ms();
        Arc::new(Heartbeats {
            beats: (0..n).map(|_| AtomicI64::new(now)).collect(),
        })
    }
    pub fn beat(&self, who: usize) {
        self.beats[who].store(now_ms(), Ordering::Relaxed);
    }
    /// Whether every party beat within `within`.
    pub fn all_alive(&self, within: Duration) -> bool {
        let oldest = now_ms() - within.as_millis() as i64;
        self.beats
            .iter()
            .all(|b| b.load(Ordering::Relaxed) >= oldest)
    }
}

fn now_ms() -> i64 {
    // Monotonic: a clock step on the board must not look like a hang.
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as i64
}

/// The board's outputs, checked.
#[derive(Debug, Clone)]
pub struct BoardSpec {
    pub run_led: Option<GpioLine>,
    pub fault_led: Option<GpioLine>,
    pub watchdog: Option<PathBuf>,
    pub hang_after: Duration,
}

/// The board's outputs and what drives them.
pub struct Board {
    pub run_led: Option<Box<dyn Line>>,
    pub fault_led: Option<Box<dyn Line>>,
    pub watchdog: Option<Box<dyn Watchdog>>,
}

/// What the supervisor shows on the board each tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Every link and the publisher made progress lately.
    pub alive: bool,
    /// A device is failing, or the broker is out of reach.
    pub fault: bool,
}

impl Board {
    /// One supervision tick: feed the watchdog only while alive, blink the run LED while
    /// alive (steady off when not), light the fault LED on a fault.
    pub fn show(&mut self, health: Health, tick: u64) -> io::Result<()> {
        if health.alive {
            if let Some(w) = &mut self.watchdog {
                w.feed()?;
            }
        }
        if let Some(led) = &mut self.run_led {
            led.set(health.alive && tick.is_multiple_of(2))?;
        }
        if let Some(led) = &mut self.fault_led {
            led.set(health.fault)?;
        }
        Ok(())
    }

    /// A clean stop: LEDs off, watchdog disarmed.
    pub fn stop(&mut self) -> io::Result<()> {
        for led in [&mut self.run_led, &mut self.fault_led]
            .into_iter()
            .flatten()
        {
            led.set(false)?;
        }
        if let Some(w) = &mut self.watchdog {
            w.disarm()?;
        }
        Ok(())
    }
}

impl Board {
    /// Takes the lines and the watchdog `spec` names.
    pub fn open(spec: &BoardSpec) -> anyhow::Result<Board> {
        let watchdog: Option<Box<dyn Watchdog>> = match &spec.watchdog {
            Some(path) => Some(Box::new(LinuxWatchdog::open(path)?)),
            None => None,
        };
        Ok(Board {
            run_led: spec.run_led.as_ref().map(GpioLine::open).transpose()?,
            fault_led: spec.fault_led.as_ref().map(GpioLine::open).transpose()?,
            watchdog,
        })
    }
}

/// Shows the agent's health on the board every second until `shutdown`; then stops it cleanly.
pub async fn supervise(
    mut board: Board,
    beats: Arc<Heartbeats>,
    hang_after: Duration,
    metrics: Arc<crate::metrics::EdgeMetrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut was_alive = true;
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let health = Health {
            alive: beats.all_alive(hang_after),
            fault: metrics.devices_backing_off.get() > 0 || metrics.broker_connected.get() == 0,
        };
        if was_alive && !health.alive {
            tracing::error!(
                hang_after_s = hang_after.as_secs(),
                "A link or the publisher has stalled; no longer feeding the watchdog."
            );
        }
        was_alive = health.alive;
        if let Err(e) = board.show(health, n) {
            tracing::warn!(error = %e, "Board output failed.");
        }
    }
    board.stop()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A host pin: records every level it is set to, with the time.
    #[derive(Clone, Default)]
    struct RecordingPin(Arc<Mutex<Vec<(Instant, bool)>>>);

    impl embedded_hal::digital::ErrorType for RecordingPin {
        type Error = core::convert::Infallible;
    }
    impl embedded_hal::digital::OutputPin for RecordingPin {
        fn set_low(&mut self) -> Result<(), Self::Error> {
            self.0.lock().unwrap().push((Instant::now(), false));
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Self::Error> {
            self.0.lock().unwrap().push((Instant::now(), true));
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct HostWatchdog(Arc<Mutex<Vec<&'static str>>>);
    impl Watchdog for HostWatchdog {
        fn feed(&mut self) -> io::Result<()> {
            self.0.lock().unwrap().push("feed");
            Ok(())
        }
        fn disarm(&mut self) -> io::Result<()> {
            self.0.lock().unwrap().push("disarm");
            Ok(())
        }
    }

    #[test]
    fn gpio_lines_parse() {
        let l: GpioLine = "/dev/gpiochip0:17".parse().unwrap();
        assert_eq!((l.chip.to_str(), l.offset), (Some("/dev/gpiochip0"), 17));
        assert_eq!(l.to_string(), "/dev/gpiochip0:17");
        for bad in ["gpiochip0:17", "/dev/gpiochip0", "/dev/gpiochip0:x"] {
            assert!(bad.parse::<GpioLine>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_driver_is_on_for_the_frame_and_off_once_its_last_character_left() {
        // A real serial pair (pseudo-terminals): what goes out on one end arrives on the other.
        let (a, mut b) = serial2_tokio::SerialPort::pair().unwrap();
        let pin = RecordingPin::default();
        let char_time = Duration::from_secs_f64(11.0 / 9_600.0);
        let mut port = DirectionControlled::new(a, Box::new(pin.clone()), char_time).unwrap();
        let frame = [0x0B, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC4, 0xA7];
        let t0 = Instant::now();
        port.write_all(&frame).await.unwrap();
        port.flush().await.unwrap();
        let mut got = [0u8; 8];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, frame);
        let log = pin.0.lock().unwrap().clone();
        let levels: Vec<bool> = log.iter().map(|(_, l)| *l).collect();
        assert_eq!(levels, [false, true, false], "off, on for the frame, off");
        let on = log[2].0 - log[1].0;
        // Eight characters at 9600 8E1: 9.17 ms on the wire; the driver must not drop earlier.
        assert!(on >= char_time * 8, "driver on for {on:?}");
        assert!(
            log[2].0 - t0 < Duration::from_millis(50),
            "and released soon after"
        );
        // The answer is read with the driver off.
        b.write_all(&[1, 2, 3]).await.unwrap();
        let mut answer = [0u8; 3];
        port.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [1, 2, 3]);
        assert_eq!(
            pin.0.lock().unwrap().len(),
            3,
            "reading leaves the pin alone"
        );
    }

    #[test]
    fn the_watchdog_is_fed_only_while_every_party_is_alive_and_disarmed_on_a_clean_stop() {
        let dog = HostWatchdog::default();
        let (run, fault) = (RecordingPin::default(), RecordingPin::default());
        let mut board = Board {
            run_led: Some(Box::new(run.clone())),
            fault_led: Some(Box::new(fault.clone())),
            watchdog: Some(Box::new(dog.clone())),
        };
        let beats = Heartbeats::new(2);
        let within = Duration::from_millis(50);
        let health = |fault| Health {
            alive: beats.all_alive(within),
            fault,
        };
        board.show(health(false), 0).unwrap();
        board.show(health(true), 1).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        beats.beat(0); // the other party (a link) hangs
        board.show(health(false), 2).unwrap();
        board.show(health(false), 3).unwrap();
        assert_eq!(
            *dog.0.lock().unwrap(),
            ["feed", "feed"],
            "no food for a hung agent"
        );
        beats.beat(1);
        board.show(health(false), 4).unwrap();
        board.stop().unwrap();
        assert_eq!(*dog.0.lock().unwrap(), ["feed", "feed", "feed", "disarm"]);
        let levels = |p: &RecordingPin| -> Vec<bool> {
            p.0.lock().unwrap().iter().map(|(_, l)| *l).collect()
        };
        // Run LED: blinks while alive, steady off while hung, off at the stop.
        assert_eq!(levels(&run), [true, false, false, false, true, false]);
        assert_eq!(levels(&fault), [false, true, false, false, false, false]);
    }
}
