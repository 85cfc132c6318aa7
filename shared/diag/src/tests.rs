//! The diagnostic listener over real sockets: probes, metrics text, unknown paths.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Diag, Heartbeat, Readiness, Unit, latency_buckets, spawn};

/// A minimal HTTP/1.1 GET: status, content type, body.
async fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

async fn start(diag: Diag) -> (SocketAddr, crate::DiagServer) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = spawn(listener, diag);
    (server.addr.unwrap(), server)
}

#[tokio::test]
async fn probes_follow_the_readiness_flag() {
    let diag = Diag::new("waiting for the auth service");
    let (addr, _server) = start(diag.clone()).await;
    assert_eq!(get(addr, "GET", "/healthz").await.0, 200);
    assert_eq!(get(addr, "GET", "/healthz").await.2, "ok\n");
    let (status, _, body) = get(addr, "GET", "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: waiting for the auth service\n"));
    diag.ready.set_ready();
    let (status, _, body) = get(addr, "GET", "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    diag.ready.set_not_ready("the auth service is gone");
    assert_eq!(get(addr, "GET", "/readyz").await.0, 503);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let (addr, _server) = start(Diag::new("x")).await;
    assert_eq!(get(addr, "GET", "/").await.0, 404);
    assert_eq!(get(addr, "GET", "/metricsz").await.0, 404);
    assert_eq!(get(addr, "POST", "/metrics").await.0, 405);
    assert_eq!(get(addr, "HEAD", "/healthz").await.0, 200);
}

#[tokio::test]
async fn metrics_are_openmetrics_text() {
    let diag = Diag::new("x");
    let requests = Family::<[(&'static str, &'static str); 2], Counter>::default();
    diag.metrics.register("portcullis_test_requests", "Requests by outcome", requests.clone());
    let dial = Histogram::new(latency_buckets());
    diag.metrics.register_with_unit("portcullis_test_dial", "Dial time", Unit::Seconds, dial.clone());
    diag.metrics.register_gauge_fn("portcullis_test_answer", "A computed gauge", None, || 42.0);
    requests.get_or_create(&[("rpc", "Ping"), ("outcome", "ok")]).inc();
    requests.get_or_create(&[("rpc", "Ping"), ("outcome", "ok")]).inc();
    dial.observe(0.003);
    let (addr, _server) = start(diag).await;

    let (status, ctype, body) = get(addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(ctype, crate::CONTENT_TYPE);
    assert!(body.contains("# TYPE portcullis_test_requests counter\n"), "{body}");
    assert!(body.contains("portcullis_test_requests_total{rpc=\"Ping\",outcome=\"ok\"} 2\n"), "{body}");
    assert!(body.contains("# TYPE portcullis_test_dial_seconds histogram\n"), "{body}");
    assert!(body.contains("portcullis_test_dial_seconds_count 1\n"), "{body}");
    assert!(body.contains("# HELP portcullis_test_answer A computed gauge.\n"), "{body}");
    assert!(body.contains("portcullis_test_answer 42.0\n"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    // Every line is a comment or `name{labels} value`.
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "value of {line:?}");
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "name of {line:?}");
    }
}

#[test]
fn heartbeats_drive_readiness_and_age() {
    let ready = Readiness::new("waiting for the auth service");
    let hb = Heartbeat::new(ready.clone(), "the auth service", Duration::from_millis(50));
    hb.failed();
    assert_eq!(ready.check(), Err("waiting for the auth service".to_string()), "before any success");
    hb.succeeded();
    assert!(ready.is_ready());
    assert!(hb.age() < Duration::from_millis(50));
    hb.failed();
    assert!(ready.is_ready(), "one failure within the allowed silence keeps it ready");
    std::thread::sleep(Duration::from_millis(80));
    hb.failed();
    let reason = ready.check().unwrap_err();
    assert!(reason.starts_with("no successful heartbeat to the auth service for"), "{reason}");
    assert!(hb.age() >= Duration::from_millis(80));
    hb.succeeded();
    assert!(ready.is_ready());
}
