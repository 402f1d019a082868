//! HTTP API v1 (JSON), the dashboard page and live updates. Errors map to statuses in one place.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::alarms::{AckOutcome, AlarmBook, AlarmRow};
use crate::clock::NowFn;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::view::Reader;
use ems_energy::calendar::{buckets, buckets_at_most, local_rfc3339, Period};
use ems_energy::counter::HOUR_MS;
use ems_energy::figures::{point_completeness, unit_figures};
use ems_energy::indicators::Indicator;
use ems_energy::Plant;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub reader: Arc<Reader>,
    /// The uploader's last error per endpoint.
    pub upload_errors: crate::upload::UploadErrors,
    /// Opens the upload's outbox, for its status.
    pub open_outbox: crate::upload::OpenOutbox,
    pub alarms: Arc<std::sync::Mutex<AlarmBook>>,
    /// A gateway slot's member: its role, shown by `/healthz`.
    pub node: Option<Arc<std::sync::Mutex<NodeRole>>>,
    pub metrics: Arc<Metrics>,
    pub committed: broadcast::Sender<()>,
    pub now: NowFn,
    /// Ends the live streams, so that an open dashboard does not hold up a graceful stop.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// What a PostgreSQL gateway is doing, as `/healthz` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeRole {
    /// `standby` until this instance holds its slot (or, without a slot, connects), then
    /// `active`.
    pub role: &'static str,
    pub slot: Option<String>,
    pub instance: Option<String>,
    pub epoch: Option<i64>,
}

/// Every way a request can fail, and its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// No or an unknown operator token.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    /// A request refused before any work: its own status (405, 413, 414, 415, 422...).
    #[error("{1}")]
    Refused(StatusCode, String),
    #[error("internal error: {0}")]
    Internal(#[from] anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Refused(status, _) => *status,
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "API request failed.");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Axum's own extractors answer a bad query, path or body in plain text; these wrap them so
/// that every refusal of every route has the one JSON error shape.
struct Query<T>(T);
struct Path<T>(T);
struct Json<T>(T);

#[axum::async_trait]
impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

#[axum::async_trait]
impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

#[axum::async_trait]
impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(e) => Err(ApiError::Refused(e.status(), e.body_text())),
        }
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The longest request target answered (414 beyond): every parameter of the API fits in far
/// less.
const MAX_URI_BYTES: usize = 8_192;
/// The largest request body read (413 beyond): an operator's declaration is a sentence.
const MAX_BODY_BYTES: usize = 64 * 1024;

async fn bounded_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if len > MAX_URI_BYTES {
        return ApiError::Refused(
            StatusCode::URI_TOO_LONG,
            format!("request target of {len} bytes, at most {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    next.run(req).await
}

/// The live stream: the one route that takes its token in the query.
const EVENTS_PATH: &str = "/api/v1/events";

pub fn router(state: AppState) -> Router {
    // What reading needs: nothing, or a viewer's or operator's token (`open_viewing = false`).
    let reads = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/plant", get(plant))
        .route("/api/v1/completeness", get(completeness))
        .route("/api/v1/units", get(units))
        .route("/api/v1/units/:id/indicators", get(unit_indicators))
        .route("/api/v1/enterprises", get(enterprises))
        .route("/api/v1/enterprises/:id/balance", get(enterprise_balance))
        .route("/api/v1/enterprises/:id/flow", get(enterprise_flow))
        .route("/api/v1/enterprises/:id/cost", get(enterprise_cost))
        .route("/api/v1/enterprises/:id/stocks", get(enterprise_stocks))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/edges", get(edges))
        .route("/api/v1/quality", get(quality_strips))
        .route("/api/v1/devices/:id/gaps/:from/lost", post(declare_lost))
        .route("/api/v1/quarantine", get(quarantine))
        .route("/api/v1/quarantine/totals", get(quarantine_totals))
        .route("/api/v1/quarantine/:id/payload", get(quarantine_payload))
        .route("/api/v1/coefficients", get(coefficients))
        .route("/api/v1/limits", get(limits))
        .route("/api/v1/integrity", get(integrity))
        .route("/api/v1/anomalies", get(anomalies))
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/alarms", get(alarms))
        .route("/api/v1/alarms/:id/ack", post(ack_alarm))
        .route("/api/v1/samples.csv", get(samples_csv))
        .route("/api/v1/reports/:kind", get(report))
        .route("/api/v1/uploads", get(uploads))
        .route(EVENTS_PATH, get(events))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_viewer,
        ));
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/assets/uplot.min.js", get(uplot_js))
        .route("/assets/uplot.min.css", get(uplot_css))
        .route("/assets/uplot-LICENSE.txt", get(uplot_license))
        .route("/assets/echarts.min.js", get(echarts_js))
        .route("/assets/echarts-LICENSE.txt", get(echarts_license))
        .merge(reads)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::Refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route".into(),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(bounded_request))
        .with_state(state)
}

/// Refuses reads without a viewer's or operator's token when viewing is not open. (The page
/// and its assets stay reachable: the page asks for the token.) Server-sent events cannot
/// carry a header from a browser, so `?token=` is accepted there, and only there: a token in
/// a URL ends up in logs and histories.
async fn require_viewer(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let http = &s.config.http;
    if http.open_viewing {
        return next.run(req).await;
    }
    let from_query = (req.uri().path() == EVENTS_PATH)
        .then(|| req.uri().query())
        .flatten()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(str::to_owned)
        });
    let Some(token) = bearer(req.headers()).map(str::to_owned).or(from_query) else {
        return ApiError::Unauthorized(
            "viewing needs a viewer's or operator's bearer token".into(),
        )
        .into_response();
    };
    let known =
        holder(&http.viewers, &token).is_some() || holder(&http.operators, &token).is_some();
    if known {
        next.run(req).await
    } else {
        ApiError::Unauthorized("unknown token".into()).into_response()
    }
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../web/index.html"))
}

/// Vendored uPlot and ECharts (see web/vendor/*/README.md), cached by browsers for a day.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

async fn uplot_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../web/vendor/uplot/uPlot.iife.min.js"),
    )
}

async fn uplot_css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../web/vendor/uplot/uPlot.min.css"),
    )
}

async fn uplot_license() -> Response {
    asset(
        "text/plain; charset=utf-8",
        include_str!("../web/vendor/uplot/LICENSE"),
    )
}

async fn echarts_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../web/vendor/echarts/echarts.min.js"),
    )
}

/// ECharts' licence with its NOTICE, as the Apache License asks.
async fn echarts_license() -> Response {
    asset(
        "text/plain; charset=utf-8",
        concat!(
            include_str!("../web/vendor/echarts/LICENSE"),
            "\n",
            include_str!("../web/vendor/echarts/NOTICE")
        ),
    )
}

#[derive(Deserialize)]
struct CompletenessQuery {
    days: Option<i64>,
}

/// One accounted meter point's completeness per local day.
#[derive(Debug, serde::Serialize)]
struct PointCompleteness {
    device: String,
    point: String,
    /// `start` of each day (plant time) and the share of it covered by good samples: of its
    /// elapsed part today, from the point's first data on; null before that.
    days: Vec<DayCompleteness>,
}

#[derive(Debug, serde::Serialize)]
struct DayCompleteness {
    start: String,
    completeness: Option<f64>,
}

/// Completeness of every meter point the accounting uses, per day of the last `days` (7).
async fn completeness(
    State(s): State<AppState>,
    Query(q): Query<CompletenessQuery>,
) -> ApiResult<Vec<PointCompleteness>> {
    let days = q.days.unwrap_or(7);
    if !(1..=92).contains(&days) {
        return Err(ApiError::BadRequest("`days` from 1 to 92".into()));
    }
    let now = (s.now)();
    let periods = buckets(
        Period::Day,
        now - (days - 1) * 24 * HOUR_MS,
        now,
        &s.config.plant.calendar,
    );
    let (Some(first), Some(last)) = (periods.first().copied(), periods.last().copied()) else {
        return Ok(Json(Vec::new()));
    };
    let points = s.config.plant.read_points();
    let (reader, tz, earliest) = (
        s.reader.clone(),
        s.config.plant.utc_offset(),
        s.config.earliest_ms,
    );
    let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<PointCompleteness>> {
        let mut out = Vec::with_capacity(points.len());
        for (device, point) in points {
            let slots = reader.point_slots(&device, &point, first.0, last.1)?;
            let days = periods
                .iter()
                .map(|&day| DayCompleteness {
                    start: local_rfc3339(day.0, tz),
                    completeness: point_completeness(&slots, day, earliest, now),
                })
                .collect();
            out.push(PointCompleteness {
                device,
                point,
                days,
            });
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(rows))
}

/// `ok`, or 503 `stalled` while a storing batch has taken longer than `[ingest]
/// stall_after_s` (what a poisoned message or a dead disk would do): a supervisor restarts on
/// it, and the message that caused it is the batch's.
async fn healthz(State(s): State<AppState>) -> Response {
    let busy = s.metrics.writer.busy_for();
    let limit = Duration::from_secs(s.config.ingest.stall_after_s);
    if busy > limit {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "stalled",
                "writer_busy_s": busy.as_secs_f64(),
                "error": format!("the ingest writer has been on one batch for {} s", busy.as_secs()),
            })),
        )
            .into_response();
    }
    let mut body = serde_json::json!({ "status": "ok" });
    if let Some(node) = &s.node {
        let role = serde_json::to_value(&*node.lock().expect("node role lock"))
            .expect("a role serialises");
        if let (Some(body), serde_json::Value::Object(role)) = (body.as_object_mut(), role) {
            body.extend(role);
        }
    }
    axum::Json(body).into_response()
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let reader = s.reader.clone();
    match tokio::task::spawn_blocking(move || reader.sequence_totals()).await {
        Ok(Ok((missing, lost))) => {
            s.metrics.sequence_missing.set(missing);
            s.metrics.sequence_lost.set(lost);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Cannot read the ledger's totals for the metrics.")
        }
        Err(e) => tracing::warn!(error = %e, "Cannot read the ledger's totals for the metrics."),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn units(State(s): State<AppState>) -> ApiResult<Vec<ems_energy::model::Unit>> {
    Ok(Json(s.config.plant.units.clone()))
}

/// Each enterprise as the API shows it: id, name, credit code, whether boundary meters draw
/// its figure, and its sites with their workshops and units.
fn enterprise_json(plant: &Plant, e: &ems_energy::model::EnterpriseConfig) -> serde_json::Value {
    let units_of = |workshop: &str| -> Vec<&str> {
        plant
            .units
            .iter()
            .filter(|u| u.workshop.as_deref() == Some(workshop))
            .map(|u| u.id.as_str())
            .collect()
    };
    let key = e.key().map(str::to_owned);
    let sites: Vec<_> = e
        .sites
        .iter()
        .map(|site| {
            let workshops: Vec<_> = site
                .workshops
                .iter()
                .map(
                    |w| serde_json::json!({ "id": w.id, "name": w.name, "units": units_of(&w.id) }),
                )
                .collect();
            serde_json::json!({ "id": site.id, "name": site.name, "workshops": workshops })
        })
        .collect();
    serde_json::json!({
        "id": key,
        "name": e.name,
        "code": e.code,
        // Whether boundary meters are declared: the enterprise's figure is drawn from them.
        "boundary": plant.boundary.iter().any(|b| b.enterprise == key),
        "units": plant.units.iter().filter(|u| u.enterprise == key).map(|u| &u.id).collect::<Vec<_>>(),
        "sites": sites,
    })
}

/// The hierarchy: the enterprises (a group's several, or one), their sites, workshops and the
/// units in each. `enterprise` and `sites` repeat the only enterprise's, for older clients.
async fn plant(State(s): State<AppState>) -> ApiResult<serde_json::Value> {
    let plant = &s.config.plant;
    let enterprises: Vec<_> = plant
        .enterprises
        .iter()
        .map(|e| enterprise_json(plant, e))
        .collect();
    let sole = plant.sole_enterprise().map(|e| enterprise_json(plant, e));
    Ok(Json(serde_json::json!({
        "sites": sole.as_ref().map(|e| e["sites"].clone()).unwrap_or_else(|| serde_json::json!([])),
        "enterprise": sole,
        "enterprises": enterprises,
        "units_outside_workshops": plant.units.iter().filter(|u| u.workshop.is_none()).map(|u| &u.id).collect::<Vec<_>>(),
    })))
}

/// The enterprises the gateway accounts for (see `/api/v1/plant`).
async fn enterprises(State(s): State<AppState>) -> ApiResult<Vec<serde_json::Value>> {
    let plant = &s.config.plant;
    Ok(Json(
        plant
            .enterprises
            .iter()
            .map(|e| enterprise_json(plant, e))
            .collect(),
    ))
}

#[derive(Deserialize)]
struct IndicatorQuery {
    period: Option<Period>,
    from: Option<String>,
    to: Option<String>,
    /// The periods of the `within` period that holds `from`, from its start (a month's or a
    /// year's days so far): a page asks for them beside the month or year itself, at once.
    within: Option<Period>,
}

fn parse_time(name: &str, value: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|e| ApiError::BadRequest(format!("`{name}` is not an RFC 3339 time: {e}")))
}

/// Most periods one request may ask for.
const MAX_PERIODS: u64 = 10_000;

/// A figures query's period and range (default: the last 24 hours), checked.
fn period_range(
    s: &AppState,
    q: &IndicatorQuery,
    default: Period,
) -> Result<(Period, i64, i64), ApiError> {
    let period = q.period.unwrap_or(default);
    let to = match &q.to {
        Some(t) => parse_time("to", t)?,
        None => (s.now)(),
    };
    let from = match &q.from {
        Some(f) => parse_time("from", f)?,
        None => to - 24 * HOUR_MS,
    };
    let from = match q.within {
        Some(within) => buckets(within, from, from + 1, &s.config.plant.calendar)[0].0,
        None => from,
    };
    if from >= to {
        return Err(ApiError::BadRequest("`from` must be before `to`".into()));
    }
    // Counted before any is built: a thousand years of quarters is refused on arithmetic.
    if buckets_at_most(period, from, to, &s.config.plant.calendar) > MAX_PERIODS {
        return Err(ApiError::BadRequest(format!(
            "more than {MAX_PERIODS} periods; narrow the range"
        )));
    }
    Ok((period, from, to))
}

async fn unit_indicators(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<IndicatorQuery>,
) -> ApiResult<Vec<Indicator>> {
    let unit = s
        .config
        .plant
        .unit(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no unit `{id}`")))?
        .clone();
    let (period, from, to) = period_range(&s, &q, Period::Hour)?;
    let periods = buckets(period, from, to, &s.config.plant.calendar);
    let (plant, reader) = (s.config.plant.clone(), s.reader.clone());
    let result =
        tokio::task::spawn_blocking(move || unit_figures(&plant, &*reader, &unit, &periods))
            .await
            .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(result))
}

/// The enterprise from its boundary and its energy balance table, per period (default: days
/// over the last 24 hours).
async fn enterprise_balance(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<IndicatorQuery>,
) -> ApiResult<Vec<ems_energy::balance::Balance>> {
    Ok(Json(balances(&s, &id, &q).await?))
}

/// One enterprise's plant, by its id or credit code.
fn enterprise_plant(s: &AppState, id: &str) -> Result<ems_energy::model::Plant, ApiError> {
    s.config.plant.of_enterprise(id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no enterprise `{id}` (its `id` or credit `code` in [enterprise] or [[enterprises]])"
        ))
    })
}

/// The enterprise's balance for each period the query asks for (days by default).
async fn balances(
    s: &AppState,
    id: &str,
    q: &IndicatorQuery,
) -> Result<Vec<ems_energy::balance::Balance>, ApiError> {
    let plant = enterprise_plant(s, id)?;
    let (period, from, to) = period_range(s, q, Period::Day)?;
    let periods = buckets(period, from, to, &s.config.plant.calendar);
    let reader = s.reader.clone();
    tokio::task::spawn_blocking(move || {
        ems_energy::balance::enterprise_balance(&plant, &*reader, &periods)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?
    .map_err(ApiError::from)
}

/// The enterprise's stock meters' levels (yards, bunkers, gas holders) at the start of the
/// range and the end of each period, from their raw readings.
async fn enterprise_stocks(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<IndicatorQuery>,
) -> ApiResult<Vec<crate::stock::StockLevels>> {
    let plant = enterprise_plant(&s, &id)?;
    let (period, from, to) = period_range(&s, &q, Period::Day)?;
    let periods = buckets(period, from, to, &s.config.plant.calendar);
    let (reader, now) = (s.reader.clone(), (s.now)());
    let levels = tokio::task::spawn_blocking(move || {
        crate::stock::stock_levels(&plant, &**reader, &periods, now)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(levels))
}

/// What the enterprise's energy cost in each period, on its `[enterprise.tariff]`.
async fn enterprise_cost(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<IndicatorQuery>,
) -> ApiResult<Vec<ems_energy::cost::Cost>> {
    let plant = enterprise_plant(&s, &id)?;
    let tariff = plant.enterprises[0].tariff.clone().ok_or_else(|| {
        ApiError::NotFound(format!(
            "enterprise `{id}` has no tariff (its `tariff` table in the configuration)"
        ))
    })?;
    let (period, from, to) = period_range(&s, &q, Period::Day)?;
    let periods = buckets(period, from, to, &s.config.plant.calendar);
    let reader = s.reader.clone();
    let result = tokio::task::spawn_blocking(move || {
        ems_energy::cost::enterprise_cost(
            &plant,
            &tariff,
            &*reader,
            &periods,
            period == Period::Month,
        )
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(result))
}

#[derive(Deserialize)]
struct FlowQuery {
    #[serde(flatten)]
    range: IndicatorQuery,
    /// The plant's `[accounting] electricity` basis unless asked.
    basis: Option<ems_energy::coefficients::ElectricityBasis>,
}

/// The energy-flow chart of each period: every link a figure of that period's balance.
async fn enterprise_flow(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<FlowQuery>,
) -> ApiResult<Vec<ems_energy::flow::EnergyFlow>> {
    let basis = q.basis.unwrap_or(s.config.plant.electricity);
    let balances = balances(&s, &id, &q.range).await?;
    Ok(Json(
        balances
            .iter()
            .map(|b| ems_energy::flow::energy_flow(b, basis))
            .collect(),
    ))
}

async fn edges(State(s): State<AppState>) -> ApiResult<Vec<crate::view::EdgeRow>> {
    let reader = s.reader.clone();
    let rows = tokio::task::spawn_blocking(move || reader.edges())
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(rows))
}

async fn devices(State(s): State<AppState>) -> ApiResult<Vec<crate::view::DeviceRow>> {
    let reader = s.reader.clone();
    let rows = tokio::task::spawn_blocking(move || reader.devices())
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(rows))
}

#[derive(Deserialize)]
struct StripQuery {
    hours: Option<i64>,
    to: Option<String>,
}

/// Most hours a quality strip covers: a week.
const MAX_STRIP_HOURS: i64 = 168;

/// Each device's quality hour by hour over the `hours` (24) before `to` (now), the hour holding
/// `to` last: messages, good and bad samples by code, coverage and estimation.
async fn quality_strips(
    State(s): State<AppState>,
    Query(q): Query<StripQuery>,
) -> ApiResult<Vec<crate::strip::DeviceStrip>> {
    let n = q.hours.unwrap_or(24);
    if !(1..=MAX_STRIP_HOURS).contains(&n) {
        return Err(ApiError::BadRequest(format!(
            "`hours` must be 1 to {MAX_STRIP_HOURS}"
        )));
    }
    let to = match &q.to {
        Some(t) => parse_time("to", t)?,
        None => (s.now)(),
    };
    let cal = &s.config.plant.calendar;
    let hours = buckets(Period::Hour, to - (n - 1) * HOUR_MS, to, cal);
    let (plant, reader) = (s.config.plant.clone(), s.reader.clone());
    let strips = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let (Some(first), Some(last)) = (hours.first(), hours.last()) else {
            return Ok(Vec::new());
        };
        let (from, until) = (first.0, last.1);
        let mut out = Vec::new();
        for d in reader.devices()? {
            let messages = reader.message_qualities(&d.id, from, until)?;
            let (mut points, mut first) = (Vec::new(), None::<i64>);
            for f in plant.flows().filter(|f| f.device == d.id) {
                points.push(reader.point_slots(&d.id, &f.point, from, until)?);
                if let Some(t) = reader.first_slot(&d.id, &f.point)? {
                    first = Some(first.map_or(t, |f| f.min(t)));
                }
            }
            out.push(crate::strip::strip(
                &d.id, &hours, &messages, &points, first,
            ));
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(strips))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<i64>,
}

async fn quarantine(
    State(s): State<AppState>,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Vec<crate::view::QuarantineRow>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let reader = s.reader.clone();
    let rows = tokio::task::spawn_blocking(move || reader.quarantine(limit))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(rows))
}

/// Refusals by reason since the database was made (retention deletes entries, not counts).
async fn quarantine_totals(
    State(s): State<AppState>,
) -> ApiResult<Vec<crate::view::QuarantineTotal>> {
    let reader = s.reader.clone();
    let rows = tokio::task::spawn_blocking(move || reader.quarantine_totals())
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(rows))
}

/// The kept bytes of one quarantined payload, as received.
async fn quarantine_payload(
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let reader = s.reader.clone();
    let payload = tokio::task::spawn_blocking(move || reader.quarantine_payload(id))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??
        .ok_or_else(|| ApiError::NotFound(format!("no quarantine entry {id}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        payload,
    )
        .into_response())
}

async fn coefficients(State(s): State<AppState>) -> ApiResult<serde_json::Value> {
    let c = &s.config.plant.coefficients;
    Ok(Json(serde_json::json!({
        "version": c.version,
        "kj_per_kgce": c.kj_per_kgce,
        "electricity_basis": s.config.plant.electricity,
        "carriers": c.all().collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
struct ExportQuery {
    device: Option<String>,
    from: String,
    to: String,
}

/// Raw samples of any range as CSV (one device, or all), streamed: however long the range,
/// the gateway holds a few chunks of it at a time.
async fn samples_csv(
    State(s): State<AppState>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let (from, to) = (parse_time("from", &q.from)?, parse_time("to", &q.to)?);
    if from >= to {
        return Err(ApiError::BadRequest("`from` must be before `to`".into()));
    }
    let reader = s.reader.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let written = reader
            .export_csv(q.device.as_deref(), from, to, &mut out)
            .and_then(|_| Ok(std::io::Write::flush(&mut out)?));
        if let Err(e) = written {
            // The status is sent: the client sees the body end in an error, never a short file
            // that looks whole.
            tracing::warn!(error = %e, "Export stopped.");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

const CHUNK: usize = 64 * 1024;

/// Hands what is written to the response body in chunks; fails once the client has gone.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

/// Each upload endpoint: records made, confirmed, pending, the last confirmed, the last error.
async fn uploads(State(s): State<AppState>) -> ApiResult<Vec<crate::upload::EndpointStatus>> {
    let Some(cfg) = s.config.upload.clone() else {
        return Ok(Json(Vec::new()));
    };
    let (open, errors) = (s.open_outbox.clone(), s.upload_errors.clone());
    let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut outbox = open()?;
        let errors = errors.lock().expect("errors lock").clone();
        cfg.endpoints
            .iter()
            .map(|e| {
                let (records, confirmed, last) = outbox.status(&e.id)?;
                Ok(crate::upload::EndpointStatus {
                    id: e.id.clone(),
                    url: e.url.clone(),
                    records,
                    confirmed,
                    pending: records - confirmed,
                    last_confirmed: last,
                    last_error: errors.get(&e.id).cloned(),
                })
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(rows))
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    year: Option<i32>,
    /// Annual and compliance: the enterprise (id or credit code), where there are several.
    enterprise: Option<String>,
    month: Option<String>,
    format: Option<String>,
    /// Savings: the unit, each period as `YYYY-MM..YYYY-MM`, and relevant variables besides
    /// output as `DEVICE/POINT,DEVICE/POINT`.
    unit: Option<String>,
    baseline: Option<String>,
    reporting: Option<String>,
    variables: Option<String>,
}

/// A report's error: a parameter it cannot answer is the caller's (400), the rest the gateway's.
fn report_error(e: anyhow::Error) -> ApiError {
    match e.downcast_ref::<crate::report::InvalidRequest>() {
        Some(bad) => ApiError::BadRequest(bad.0.clone()),
        None => ApiError::Internal(e),
    }
}

/// `YYYY-MM..YYYY-MM` of a query parameter.
fn month_range(
    name: &str,
    v: Option<&str>,
) -> Result<(crate::report::Month, crate::report::Month), ApiError> {
    let bad = |e: String| ApiError::BadRequest(format!("`{name}`: {e}"));
    let v = v.ok_or_else(|| bad("is required, as YYYY-MM..YYYY-MM".into()))?;
    let (a, b) = v
        .split_once("..")
        .ok_or_else(|| bad("write YYYY-MM..YYYY-MM".into()))?;
    let month = |m| crate::report::parse_month(m).map_err(report_error);
    Ok((month(a)?, month(b)?))
}

/// The report a query asks for: `annual?year=YYYY`, `compliance?month=YYYY-MM` (each with
/// `&enterprise=ID` where the gateway serves several) or
/// `savings?unit=ID&baseline=YYYY-MM..YYYY-MM&reporting=YYYY-MM..YYYY-MM[&variables=D/P,...]`.
fn report_request(kind: &str, q: &ReportQuery) -> Result<crate::report::Request, ApiError> {
    use crate::report::Request;
    let required = |v: &Option<String>, what: &str| {
        v.clone()
            .ok_or_else(|| ApiError::BadRequest(format!("`{what}` is required")))
    };
    Ok(match kind {
        "annual" => Request::Annual {
            year: q
                .year
                .ok_or_else(|| ApiError::BadRequest("`year` is required".into()))?,
            enterprise: q.enterprise.clone(),
        },
        "compliance" => Request::Compliance {
            month: crate::report::parse_month(&required(&q.month, "month")?)
                .map_err(report_error)?,
            enterprise: q.enterprise.clone(),
        },
        "savings" => Request::Savings {
            unit: required(&q.unit, "unit")?,
            baseline: month_range("baseline", q.baseline.as_deref())?,
            reporting: month_range("reporting", q.reporting.as_deref())?,
            variables: match &q.variables {
                Some(v) => crate::report::parse_variables(&v.split(',').collect::<Vec<_>>())
                    .map_err(report_error)?,
                None => Vec::new(),
            },
        },
        other => {
            return Err(ApiError::NotFound(format!(
                "no report `{other}`: annual, compliance or savings"
            )))
        }
    })
}

/// Any report as `format=json` (default), `csv` (one row per figure) or `pdf`: the same
/// documents as `ems-gateway report`, through the same [`crate::report::make`].
async fn report(
    State(s): State<AppState>,
    Path(kind): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    use crate::report::{make, pdf, Format, Inputs};
    let asked = q.format.clone().unwrap_or_else(|| "json".into());
    let format = Format::parse(&asked).ok_or_else(|| {
        ApiError::BadRequest(format!("unknown format `{asked}`: json, csv or pdf"))
    })?;
    let request = report_request(&kind, &q)?;
    let (config, reader, now_ms) = (s.config.clone(), s.reader.clone(), (s.now)());
    let name = request.name();
    let body = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let inputs = Inputs {
            plant: &config.plant,
            reader: &reader,
            now_ms,
            earliest_ms: config.earliest_ms,
        };
        let font = || -> anyhow::Result<krilla::text::Font> { Ok(pdf::load_font(None)?.1) };
        let sealer = config.sealer();
        make(
            &inputs,
            &request,
            format,
            &font,
            |_, _| {},
            Some(&sealer.seal()),
        )
        .map_err(report_error)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    let content_type = format.content_type();
    let format = format.extension();
    let disposition = format!("attachment; filename=\"{name}.{format}\"");
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

async fn anomalies(
    State(s): State<AppState>,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Vec<crate::view::AnomalyRow>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let reader = s.reader.clone();
    let rows = tokio::task::spawn_blocking(move || reader.anomalies(limit))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(rows))
}

/// The operator audit log, newest first.
async fn audit_log(
    State(s): State<AppState>,
    Query(q): Query<LimitQuery>,
) -> ApiResult<Vec<crate::audit::AuditRow>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let reader = s.reader.clone();
    let rows = tokio::task::spawn_blocking(move || reader.audit(limit))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(rows))
}

/// Recomputes every rollup from the raw samples and checks every signed message against its
/// evidence; reports any difference.
async fn integrity(State(s): State<AppState>) -> ApiResult<crate::view::Integrity> {
    let (reader, config) = (s.reader.clone(), s.config.clone());
    let out = tokio::task::spawn_blocking(move || crate::view::audit(&reader, &config))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(out))
}

async fn limits(State(s): State<AppState>) -> ApiResult<serde_json::Value> {
    let l = &s.config.plant.limits;
    Ok(Json(serde_json::json!({
        "version": l.version,
        "limits": l.limits().collect::<Vec<_>>(),
        "water_quotas": l.quotas().collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
struct AlarmQuery {
    /// Only alarms still open or not yet acknowledged.
    #[serde(default)]
    pending: bool,
    limit: Option<i64>,
}

async fn alarms(
    State(s): State<AppState>,
    Query(q): Query<AlarmQuery>,
) -> ApiResult<Vec<AlarmRow>> {
    let limit = q.limit.unwrap_or(200).clamp(1, 10_000);
    let book = s.alarms.clone();
    let rows = tokio::task::spawn_blocking(move || {
        book.lock()
            .expect("alarm book lock poisoned")
            .list(q.pending, limit)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    Ok(Json(rows))
}

/// The operator whose bearer token the request carries.
fn operator(s: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let operators = &s.config.http.operators;
    if operators.is_empty() {
        return Err(ApiError::Forbidden(
            "no operators are configured ([http.operators]); nothing can be changed through the API".into(),
        ));
    }
    let token = bearer(headers)
        .ok_or_else(|| ApiError::Unauthorized("an operator's bearer token is required".into()))?;
    holder(operators, token).ok_or_else(|| ApiError::Unauthorized("unknown operator token".into()))
}

/// The token of an `Authorization: Bearer` header (the scheme is case-insensitive, RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whose `token` it is among `tokens` (name -> token), compared in constant time.
fn holder(tokens: &std::collections::BTreeMap<String, String>, token: &str) -> Option<String> {
    tokens
        .iter()
        .find(|(_, t)| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                t.as_bytes(),
                token.as_bytes(),
            ))
        })
        .map(|(name, _)| name.clone())
}

async fn ack_alarm(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> ApiResult<AlarmRow> {
    let by = operator(&s, &headers)?;
    let (book, now_ms) = (s.alarms.clone(), (s.now)());
    let outcome = tokio::task::spawn_blocking(move || {
        book.lock()
            .expect("alarm book lock poisoned")
            .ack(id, &by, now_ms)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;
    match outcome {
        AckOutcome::Acked(row) => {
            tracing::info!(
                id,
                by = row.acked_by.as_deref().unwrap_or(""),
                "Alarm acknowledged."
            );
            let _ = s.committed.send(());
            Ok(Json(row))
        }
        AckOutcome::AlreadyAcked(row) => Err(ApiError::Conflict(format!(
            "alarm {id} was already acknowledged by {} at {}",
            row.acked_by.unwrap_or_default(),
            row.acked.unwrap_or_default()
        ))),
        AckOutcome::NotFound => Err(ApiError::NotFound(format!("no alarm {id}"))),
    }
}

#[derive(Deserialize)]
struct LostBody {
    reason: String,
}

/// An operator declares a device's open gap (by its first number) lost, with a reason: the
/// numbers stop counting as missing and the declaration is kept with the ledger.
async fn declare_lost(
    State(s): State<AppState>,
    Path((device, from)): Path<(String, i64)>,
    headers: HeaderMap,
    Json(body): Json<LostBody>,
) -> ApiResult<crate::view::LostRange> {
    let by = operator(&s, &headers)?;
    let reason = body.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(ApiError::BadRequest(
            "a reason is required: the declaration is part of the record".into(),
        ));
    }
    let (reader, now_ms) = (s.reader.clone(), (s.now)());
    let dev = device.clone();
    let outcome =
        tokio::task::spawn_blocking(move || reader.declare_lost(&dev, from, &by, &reason, now_ms))
            .await
            .map_err(|e| ApiError::Internal(e.into()))??;
    match outcome {
        crate::view::DeclareOutcome::Declared(range) => {
            tracing::warn!(
                device,
                from = range.from_seq,
                to = range.to_seq,
                by = range.declared_by,
                reason = range.reason,
                "Sequence numbers declared lost."
            );
            let _ = s.committed.send(());
            Ok(Json(range))
        }
        crate::view::DeclareOutcome::NoSuchGap => Err(ApiError::NotFound(format!(
            "device {device} has no open gap starting at {from}"
        ))),
    }
}

/// Server-sent events: `update` after new data is committed, at most once a second.
async fn events(
    State(s): State<AppState>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let rx = s.committed.subscribe();
    let stream = futures::stream::unfold((rx, s.shutdown), |(mut rx, stop)| async move {
        tokio::select! {
            r = rx.recv() => if let Err(broadcast::error::RecvError::Closed) = r {
                return None;
            },
            () = stop.cancelled() => return None,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Fold everything that committed meanwhile into this one event.
        while let Ok(()) | Err(broadcast::error::TryRecvError::Lagged(_)) = rx.try_recv() {}
        Some((Ok(Event::default().event("update").data("{}")), (rx, stop)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
