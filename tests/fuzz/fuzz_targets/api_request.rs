//! Any request to the HTTP API (path, query, token, body) against a gateway's real router and
//! database: never a panic, never a 500, and every refusal in the one JSON error shape.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::Request;
use ems_config::Source;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt as _;

struct Api {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ems-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("gw.db");
        let text = include_str!("../../../gateway/examples/demo.toml")
            .replace(
                "path = \"ems-gateway.db\"",
                &format!("path = {:?}", db.display().to_string()),
            )
            .replace(
                "# operators = { shift_lead = \"change-me\" }",
                "operators = { op = \"secret\" }",
            );
        let config =
            ems_gateway::Config::from_source(&Source::embedded("demo.toml", &text)).unwrap();
        let store = ems_gateway::store::Store::open(&db).unwrap();
        let now: ems_gateway::clock::NowFn = Arc::new(|| 1_767_200_000_000);
        let open_outbox = ems_gateway::runtime::outbox_of(&config.storage);
        let state = ems_gateway::api::AppState {
            reader: Arc::new(store.reader().unwrap()),
            alarms: Arc::new(std::sync::Mutex::new(
                ems_gateway::store::alarm_book::SqliteAlarms::book(&db).unwrap(),
            )),
            node: None,
            config: Arc::new(config),
            upload_errors: Default::default(),
            open_outbox,
            metrics: Arc::new(ems_gateway::metrics::Metrics::default()),
            committed: tokio::sync::broadcast::channel(4).0,
            now,
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        Api {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            router: ems_gateway::api::router(state),
        }
    })
}

const ROUTES: &[&str] = &[
    "/api/v1/units/bf1/indicators?",
    "/api/v1/reports/annual?",
    "/api/v1/reports/compliance?",
    "/api/v1/reports/savings?unit=kiln1&",
    "/api/v1/samples.csv?",
    "/api/v1/completeness?",
    "/api/v1/quarantine?",
    "/api/v1/alarms?",
    "/api/v1/devices/bf1-coke/gaps/",
    "/api/v1/alarms/",
    "/api/v1/quarantine/",
    "/",
];

fuzz_target!(|input: (u8, bool, &str, &str, &[u8])| {
    let (route, post, rest, auth, body) = input;
    let api = api();
    let uri = format!("{}{rest}", ROUTES[route as usize % ROUTES.len()]);
    let mut req = Request::builder()
        .method(if post { "POST" } else { "GET" })
        .uri(uri.as_str());
    if !auth.is_empty() {
        req = req.header("authorization", auth);
    }
    if post {
        req = req.header("content-type", "application/json");
    }
    let Ok(req) = req.body(Body::from(body.to_vec())) else {
        return;
    };
    let router = api.router.clone();
    api.runtime.block_on(async move {
        let res = router.oneshot(req).await.unwrap();
        let status = res.status();
        assert!(status.as_u16() != 500, "{uri}: 500");
        if !status.is_success() {
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{uri}: {status} not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert!(v["error"].is_string(), "{uri}: {v}");
        }
    });
});
