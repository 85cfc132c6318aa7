//! Helpers for the services' diagnostic listeners: plain HTTP GETs, and a strict parser of
//! the Prometheus / OpenMetrics text `/metrics` answers with.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use crate::wait_for;

/// One answer of a diagnostic listener.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET path` on the diagnostic listener at 127.0.0.1:`port` (plain HTTP/1.1); `None` while
/// nothing listens or the answer is unreadable.
pub fn diag_get(port: u16, path: &str) -> Option<HttpAnswer> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    Some(HttpAnswer { status, content_type, body: body.to_string() })
}

/// Waits until `/readyz` on `port` answers 200.
pub fn wait_ready(port: u16, timeout: Duration) {
    wait_for(&format!("/readyz on port {port} to answer 200"), timeout, || {
        diag_get(port, "/readyz").filter(|a| a.status == 200).map(|_| ())
    });
}

/// One sample of a metrics scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus / OpenMetrics text, panicking with the line at fault on anything
/// malformed: every line is `# TYPE|HELP|UNIT ...`, `# EOF` (last), or
/// `name{label="value",..} value` of a declared family.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for line in text.lines() {
        assert!(!eof, "text after # EOF: {line:?}");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, arg) =
                (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(valid_name(name), "metric name in {line:?}");
            match kind {
                "TYPE" => {
                    let known =
                        ["counter", "gauge", "histogram", "summary", "info", "stateset", "gaugehistogram", "unknown"];
                    assert!(known.contains(&arg), "type in {line:?}");
                    families.insert(name.to_string(), arg.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(_) => {
                let close = line.rfind('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (&line[..close + 1], line[close + 1..].trim_start())
            }
            None => line.split_once(' ').unwrap_or_else(|| panic!("no value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(&l[..l.len() - 1], line)),
            None => (series, BTreeMap::new()),
        };
        assert!(valid_name(name), "metric name in {line:?}");
        let family_known = families.keys().any(|f| {
            name == f
                || ["_total", "_bucket", "_count", "_sum", "_created", "_info"]
                    .iter()
                    .any(|s| name == format!("{f}{s}"))
        });
        assert!(family_known, "sample of an undeclared family (no # TYPE): {line:?}");
        let value = rest.split(' ').next().unwrap_or("");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line:?}"));
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    samples
}

fn parse_labels(s: &str, line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name in {line:?}"
        );
        assert_eq!(chars.next(), Some('"'), "label value must be quoted in {line:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape in {line:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        out.insert(key, value);
        match chars.next() {
            Some(',') | None => {}
            Some(c) => panic!("unexpected {c:?} after a label in {line:?}"),
        }
    }
    out
}

/// Sum of the samples named `name` whose labels include all of `labels` (0 when none).
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// Scrapes `/metrics` on `port`, checks the format, and returns the samples.
pub fn scrape(port: u16) -> Vec<Sample> {
    let a = diag_get(port, "/metrics").unwrap_or_else(|| panic!("no answer from /metrics on port {port}"));
    assert_eq!(a.status, 200, "/metrics on port {port}: {}", a.body);
    assert!(
        a.content_type.starts_with("application/openmetrics-text") || a.content_type.starts_with("text/plain"),
        "content type {:?}",
        a.content_type
    );
    assert!(a.body.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF: {}", a.body);
    parse_metrics(&a.body)
}
