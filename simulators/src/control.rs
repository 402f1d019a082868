//! The control API: faults injected while the simulator runs, and its clock.
//!
//! `GET /faults` lists every fault with its window; `POST /faults` takes a fault as JSON (the
//! fields of a scenario's `[[faults]]`, with `at_h` counted from now); `GET /meters` tells what
//! each meter shows now; `GET /clock` tells the simulated time.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::clock::SimClock;
use crate::faults::FaultSpec;
use crate::plant::rfc3339;
use crate::service::SharedPlant;

#[derive(Clone)]
struct Ctl {
    plant: SharedPlant,
    clock: SimClock,
}

pub fn router(plant: SharedPlant, clock: SimClock) -> Router {
    Router::new()
        .route("/faults", get(list).post(inject))
        .route("/meters", get(meters))
        .route("/clock", get(clock_now))
        .with_state(Ctl { plant, clock })
}

async fn list(State(c): State<Ctl>) -> Json<Value> {
    let plant = c.plant.lock().expect("plant lock poisoned");
    let now = plant.now_ms();
    Json(Value::Array(
        plant
            .faults()
            .iter()
            .map(|f| {
                json!({
                    "device": f.device,
                    "fault": f.describe(),
                    "from": rfc3339(f.from_ms),
                    "to": rfc3339(f.to_ms),
                    "active": now >= f.from_ms && now < f.to_ms,
                })
            })
            .collect(),
    ))
}

async fn inject(State(c): State<Ctl>, Json(spec): Json<FaultSpec>) -> (StatusCode, Json<Value>) {
    let mut plant = c.plant.lock().expect("plant lock poisoned");
    plant.advance_to(c.clock.now_ms());
    let now = plant.now_ms();
    match plant.add_fault(&spec, now) {
        Ok(()) => {
            tracing::info!(device = %spec.device, kind = ?spec.kind, "Fault injected.");
            (StatusCode::CREATED, Json(json!({ "accepted": spec })))
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))),
    }
}

/// What every meter shows now according to the model: for commissioning, and for tests that
/// compare a Modbus client's decoded values with it.
async fn meters(State(c): State<Ctl>) -> Json<Value> {
    let mut plant = c.plant.lock().expect("plant lock poisoned");
    plant.advance_to(c.clock.now_ms());
    let rows = (0..plant.scenario().meters.len())
        .map(|m| {
            let meter = &plant.scenario().meters[m];
            let r = plant.shown(m);
            json!({
                "device": meter.device,
                "unit_id": meter.unit_id,
                "model": meter.model,
                "counter": r.counter.rem_euclid(meter.model.rollover()),
                "rate_per_h": r.rate_per_h,
                "clock_ms": r.clock_ms,
            })
        })
        .collect();
    Json(Value::Array(rows))
}

async fn clock_now(State(c): State<Ctl>) -> Json<Value> {
    let now = c.clock.now_ms();
    Json(json!({ "now": rfc3339(now), "now_ms": now, "speed": c.clock.speed() }))
}
