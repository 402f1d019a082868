//! A plant that closes viewing: the dashboard page still loads (and asks for a token), but the
//! API and metrics answer 401 without a viewer's or operator's token, and a viewer cannot
//! acknowledge alarms.

use std::time::Duration;

use ems_tests::*;

fn status(http: &str, path: &str, token: Option<&str>) -> u16 {
    let mut req = ureq::get(&format!("http://{http}{path}"))
        .config()
        .http_status_as_error(false)
        .build();
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    req.call().unwrap().status().as_u16()
}

#[test]
fn closed_viewing_needs_a_token_for_data_but_not_for_the_page() {
    let dir = TempDir::new("closed-viewing");
    let d = dir.path();
    let broker = Mosquitto::start(d);
    write_gateway_config(d, broker.port);
    let cfg = d.join("gateway.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let operators = format!("operators = {{ shift_lead = \"{OPERATOR_TOKEN}\" }}");
    assert!(text.contains(&operators));
    std::fs::write(
        &cfg,
        text.replace(
            &operators,
            &format!("{operators}\nopen_viewing = false\nviewers = {{ wall = \"view-token\" }}"),
        ),
    )
    .unwrap();
    let (mut gateway, http) = start_gateway_with_token(d, "view-token");

    assert_eq!(status(&http, "/", None), 200, "the page asks for the token");
    assert_eq!(status(&http, "/assets/uplot.min.js", None), 200);
    for path in [
        "/api/v1/units",
        "/api/v1/devices",
        "/metrics",
        "/api/v1/events",
    ] {
        assert_eq!(status(&http, path, None), 401, "{path} without a token");
        assert_eq!(
            status(&http, path, Some("guess")),
            401,
            "{path} with a wrong token"
        );
    }
    assert_eq!(status(&http, "/api/v1/units", Some("view-token")), 200);
    assert_eq!(status(&http, "/api/v1/units", Some(OPERATOR_TOKEN)), 200);
    // A token in the URL only where a browser cannot send a header: the event stream.
    assert_eq!(status(&http, "/api/v1/events?token=view-token", None), 200);
    assert_eq!(
        status(&http, "/api/v1/units?token=view-token", None),
        401,
        "tokens stay out of URLs (and logs) on every other route"
    );
    // A viewer is not an operator.
    let (code, body) = post(&http, "/api/v1/alarms/1/ack", Some("view-token"));
    assert_eq!(code, 401, "{body}");
    assert!(gateway.terminate(Duration::from_secs(20)).success());
}
