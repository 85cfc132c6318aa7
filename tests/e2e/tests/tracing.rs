//! Issue 5, end to end: one trace per `tsh ssh --cluster=leaf` hop, from tsh through the
//! root proxy and the tunnel agent to the leaf node, collected by an in-test OTLP receiver.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use portcullis_e2e::otlp::{Receiver, Span};
use portcullis_e2e::*;

const PASSWORD: &str = "trace-password";
const ROOT: &str = "root.trace.example.com";
const LEAF: &str = "leaf.trace.example.com";

fn find<'a>(spans: &'a [Span], trace: &str, service: &str, name: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.trace_id == trace && s.service == service && s.name == name)
}

#[test]
fn one_trace_follows_a_leaf_session_and_refusals_carry_the_reason() {
    let receiver = Receiver::start();
    set_child_env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut root = Cluster::start_auth(dir, ROOT, &[]);
    root.start_proxy();
    let mut leaf = Cluster::start_auth_with(dir, LEAF, &[], &["--insecure"]);
    leaf.start_node("leafnode", "env=leaf");
    leaf.start_agent();
    let visitor = unix_login("visitor");
    leaf.create(
        "visitor.yaml",
        &format!("kind: role\nversion: v7\nmetadata:\n  name: visitor\nspec:\n  allow:\n    logins: [{visitor}]\n    node_labels: {{'*': '*'}}\n"),
        false,
    )
    .ok();
    root.tctl(&["users", "add", "tracer", "--roles=access", &format!("--logins={visitor},nobody-allowed")]).ok();
    root.tctl_in(&["users", "set-password", "tracer"], Some(&format!("{PASSWORD}\n"))).ok();
    let out = root.tctl(&["tokens", "add", "--type=trusted_cluster", "--format=json"]).ok();
    let token: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    let tc = format!(
        "kind: trusted_cluster\nversion: v2\nmetadata:\n  name: {ROOT}\nspec:\n  token: {}\n  tunnel_addr: {}\n  web_proxy_addr: {}\n  role_map:\n    - remote: access\n      local: [visitor]\n",
        token["token"].as_str().unwrap(),
        root.tunnel_addr(),
        root.web_addr()
    );
    leaf.create("tc.yaml", &tc, false).ok();
    let tsh = Tsh::new(dir, "tracer");
    tsh.login(&root.web_addr(), "tracer", PASSWORD, &[]).ok();
    let target = format!("{visitor}@leafnode");
    wait_for("a session to the leaf", Duration::from_secs(40), || {
        let r = tsh.run(&["ssh", &format!("--cluster={LEAF}"), &target, "true"]);
        (r.code == 0).then_some(())
    });

    // The session whose trace we follow.
    let ok = tsh.run(&["ssh", "--trace", &format!("--cluster={LEAF}"), &target, "echo", "traced"]).ok();
    assert_eq!(ok.stdout, "traced\n");
    // tsh flushed its spans before exiting; the services export in batches (5 s).
    let (trace, spans) = wait_for("the whole trace at the receiver", Duration::from_secs(30), || {
        let spans = receiver.spans();
        let tsh_span = spans
            .iter()
            .filter(|s| s.service == "tsh" && s.name == "tsh.ssh" && s.status_code != 2)
            .last()?
            .clone();
        let t = tsh_span.trace_id.clone();
        let complete = ["proxy.route", "tunnel.dial"].iter().all(|n| find(&spans, &t, "portcullis-proxy", n).is_some())
            && find(&spans, &t, "portcullis-tunnel-agent", "agent.dial").is_some()
            && find(&spans, &t, "portcullis-node", "node.session").is_some();
        complete.then_some((t, spans))
    });
    let tsh_ssh = find(&spans, &trace, "tsh", "tsh.ssh").unwrap();
    let route = find(&spans, &trace, "portcullis-proxy", "proxy.route").unwrap();
    let tunnel = find(&spans, &trace, "portcullis-proxy", "tunnel.dial").unwrap();
    let agent = find(&spans, &trace, "portcullis-tunnel-agent", "agent.dial").unwrap();
    let session = find(&spans, &trace, "portcullis-node", "node.session").unwrap();
    assert_eq!(route.parent_span_id, tsh_ssh.span_id, "proxy.route continues tsh.ssh");
    assert_eq!(tunnel.parent_span_id, route.span_id, "tunnel.dial is inside proxy.route");
    assert_eq!(agent.parent_span_id, tunnel.span_id, "agent.dial continues tunnel.dial");
    assert_eq!(session.parent_span_id, agent.span_id, "node.session continues agent.dial");
    assert_eq!(tsh_ssh.attributes.get("cluster").map(String::as_str), Some(LEAF));
    assert_eq!(route.attributes.get("user").map(String::as_str), Some("tracer"));
    assert_eq!(session.attributes.get("login"), Some(&visitor));
    assert_eq!(session.attributes.get("exit_code").map(String::as_str), Some("0"));
    assert!(session.attributes.get("roles").is_some_and(|r| r.contains("visitor")), "{session:?}");

    // A refused session: its trace carries the reason on the failing spans.
    let denied = tsh.run(&["ssh", "--trace", &format!("--cluster={LEAF}"), "nobody-allowed@leafnode", "true"]);
    assert_ne!(denied.code, 0);
    let failing = wait_for("the refused session's trace", Duration::from_secs(30), || {
        let spans = receiver.spans();
        let t = spans.iter().filter(|s| s.name == "tsh.ssh" && s.status_code == 2).last()?.trace_id.clone();
        let node = spans.iter().find(|s| s.trace_id == t && s.name == "node.auth" && s.status_code == 2)?.clone();
        Some((spans.iter().find(|s| s.trace_id == t && s.name == "tsh.ssh").cloned()?, node))
    });
    assert!(failing.0.status_message.contains("nobody-allowed"), "tsh span: {:?}", failing.0);
    assert!(failing.1.status_message.contains("nobody-allowed"), "node span: {:?}", failing.1);

    // A collector that is not there: the session still runs and tsh says its spans may be
    // lost, instead of failing or hanging on the exporter's retries.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    set_child_env("OTEL_EXPORTER_OTLP_ENDPOINT", &gone);
    let lost = tsh.run(&["ssh", "--trace", &format!("--cluster={LEAF}"), &target, "echo", "untraced"]).ok();
    assert_eq!(lost.stdout, "untraced\n");
    assert!(
        lost.stderr.contains("traces were not exported") || lost.stderr.contains("flushing traces failed"),
        "tsh did not say its spans were lost: {}",
        lost.stderr
    );
    let _ = &mut root;
}
