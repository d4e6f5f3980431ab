//! `/metrics` as a scraper sees it: content negotiation, a body a real parser accepts in the
//! advertised format, and the series operators look for.

mod common;

use common::*;
use openmetrics_parser::{openmetrics, prometheus};

const ROUTES: &str = r#"
[[rule]]
id = "api.any"
methods = ["GET"]
path = "/api/v1/{*rest}"
auth = "user"
"#;

async fn admin(g: &Guard) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(invoke_guard::server::admin::run(
        listener,
        g.state.clone(),
        std::future::pending(),
    ));
    format!("http://{addr}")
}

fn sha256_of(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn metrics_are_negotiated_parse_and_carry_operator_series() {
    let db = copy_fixture("invokeai-6.14.2-rich.db");
    let up = mock(None).await;
    let g = guard(ROUTES, &db.path, &up.url()).await;
    let t = token_for(&manifest("6.14.2"), "alice");
    assert_eq!(
        send("GET", &g.url("/api/v1/x"), Some(&t), None)
            .await
            .status,
        200
    );
    // An upstream that refuses connections: one `connect` error.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = guard(ROUTES, &db.path, &format!("http://{closed}")).await;
    assert_eq!(
        send("GET", &dead.url("/api/v1/x"), Some(&t), None)
            .await
            .status,
        502
    );
    let base = admin(&g).await;
    let url = format!("{base}/metrics");

    // Prometheus 3's scrape header: OpenMetrics, ending in `# EOF`, parsed by a strict parser.
    let om = send_with(
        "GET",
        &url,
        None,
        None,
        &[(
            "accept",
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
        )],
    )
    .await;
    assert_eq!(
        om.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om_text = String::from_utf8(om.body.to_vec()).unwrap();
    assert!(om_text.ends_with("# EOF\n"), "{om_text}");
    let parsed = openmetrics::parse_openmetrics(&om_text)
        .unwrap_or_else(|e| panic!("OpenMetrics parse failed: {e:?}\n{om_text}"));
    let fam = |name: &str| {
        parsed
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in\n{om_text}"))
    };
    assert_eq!(
        fam("invoke_guard_authz_decisions").family_type,
        openmetrics_parser::OpenMetricsType::Counter
    );
    assert_eq!(
        fam("invoke_guard_build").family_type,
        openmetrics_parser::OpenMetricsType::Info
    );
    let checksum = fam("invoke_guard_routes_checksum");
    let sums: Vec<String> = checksum
        .iter_samples()
        .map(|s| {
            s.get_labelset()
                .unwrap()
                .get_label_value("sha256")
                .unwrap()
                .to_owned()
        })
        .collect();
    // Process-wide metrics: the last loaded table's checksum (both guards load ROUTES).
    assert_eq!(sums, vec![sha256_of(ROUTES)]);
    for name in [
        "invoke_guard_routes_last_reload_successful",
        "invoke_guard_routes_last_reload_success_timestamp_seconds",
        "invoke_guard_upgraded_connections",
        "invoke_guard_shadow_rules",
        "invoke_guard_draining",
    ] {
        assert_eq!(
            fam(name).family_type,
            openmetrics_parser::OpenMetricsType::Gauge,
            "{name}"
        );
    }
    let errors = fam("invoke_guard_upstream_errors");
    let connect = errors
        .iter_samples()
        .find(|s| s.get_labelset().unwrap().get_label_value("kind") == Some("connect"))
        .expect("an upstream connect error is counted");
    let openmetrics_parser::OpenMetricsValue::Counter(c) = &connect.value else {
        panic!("not a counter")
    };
    assert!(c.value.as_f64() >= 1.0);

    // No Accept header (curl, promtool): the text format 0.0.4, parsed by the Prometheus parser
    // with the same families and types.
    let plain = send("GET", &url, None, None).await;
    assert_eq!(
        plain.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(plain.body.to_vec()).unwrap();
    assert!(!text.contains("# EOF"), "{text}");
    let parsed = prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("text 0.0.4 parse failed: {e:?}\n{text}"));
    let kind = |name: &str| {
        parsed
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"))
            .family_type
            .clone()
    };
    use openmetrics_parser::PrometheusType as P;
    assert_eq!(kind("invoke_guard_authz_decisions_total"), P::Counter);
    assert_eq!(kind("invoke_guard_upstream_errors_total"), P::Counter);
    assert_eq!(kind("invoke_guard_build_info"), P::Gauge);
    assert_eq!(kind("invoke_guard_request_duration_seconds"), P::Histogram);
    assert_eq!(kind("invoke_guard_upgraded_connections"), P::Gauge);
    assert!(!text.contains(&t), "metrics must never carry tokens");

    // Two guards started, none reloaded: the load at start is not a reload.
    let reloads = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("invoke_guard_routes_reloads_total "))
            .map(str::to_owned)
    };
    assert_eq!(reloads(&text).as_deref(), Some("0"), "{text}");
    g.state.reload_routes().unwrap();
    let after = send("GET", &url, None, None).await;
    let after = String::from_utf8(after.body.to_vec()).unwrap();
    assert_eq!(reloads(&after).as_deref(), Some("1"), "{after}");
}
