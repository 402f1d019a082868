//! The simulated clock: real time scaled by `speed` from a chosen start.

use std::time::Instant;

/// Simulated time in milliseconds since the Unix epoch, running `speed` times faster than real
/// time. Copies share the same origin, so every part of a demo reads the same clock.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    origin: Instant,
    start_ms: i64,
    speed: f64,
}

impl SimClock {
    pub fn new(start_ms: i64, speed: f64) -> Self {
        SimClock {
            origin: Instant::now(),
            start_ms,
            speed,
        }
    }

    /// Real time, unscaled: what a plant runs on.
    pub fn real_time() -> Self {
        SimClock::new(chrono::Utc::now().timestamp_millis(), 1.0)
    }

    pub fn now_ms(&self) -> i64 {
        self.start_ms + (self.origin.elapsed().as_secs_f64() * self.speed * 1000.0) as i64
    }

    pub fn speed(&self) -> f64 {
        self.speed
    }

    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }
}
