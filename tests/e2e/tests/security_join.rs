//! Issue 11 item 4 with the real binaries: a join token buys only its holder's own names,
//! and tctl refuses a server whose certificate is not the auth service's, sending it nothing.
// Test code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portcullis_e2e::*;
use portcullis_pki::Identity;
use portcullis_pki::x509::AUTH_SERVER_NAME;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;

/// Starts `portcullis-node` joining with `nodename` and an optional `public_addr`; returns it.
fn start_joining_node(c: &Cluster, dir: &std::path::Path, nodename: &str, public_addr: Option<&str>) -> Proc {
    let token = c.token("node");
    let tag = nodename.replace('.', "_");
    let cfg = dir.join(format!("{tag}.yaml"));
    let mut yaml = format!("version: v3\nssh_service:\n  listen_addr: 127.0.0.1:{}\n", free_port());
    if let Some(a) = public_addr {
        yaml.push_str(&format!("  public_addr: {a}\n"));
    }
    std::fs::write(&cfg, yaml).unwrap();
    Proc::spawn(
        &tag,
        Command::new(bin("portcullis-node"))
            .args(["start", "--insecure"])
            .arg(format!("--token={token}"))
            .arg(format!("--auth-server=127.0.0.1:{}", c.ports.auth))
            .arg("--data-dir")
            .arg(dir.join(&tag))
            .arg(format!("--nodename={nodename}"))
            .arg("-c")
            .arg(&cfg),
        dir.join(format!("{tag}.log")),
    )
}

#[test]
fn a_node_token_buys_no_reserved_name_and_no_other_hosts_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_auth(tmp.path(), "sj.example.com", &[]);

    let mut p = start_joining_node(&c, tmp.path(), AUTH_SERVER_NAME, None);
    let code = p.wait_exit(Duration::from_secs(30)).expect("a node claiming the auth service's name exits");
    assert_ne!(code, 0);
    let log = p.log_text();
    assert!(
        log.contains(&format!("cannot join as node name \"{AUTH_SERVER_NAME}\"")) && log.contains("reserved"),
        "{log}"
    );
    let kept = tmp.path().join(AUTH_SERVER_NAME.replace('.', "_")).join("node-identity.json");
    assert!(!kept.exists(), "no identity was kept");

    // A live node's name cannot be taken, neither as the node name nor as a principal.
    c.start_node("web-1", "env=dev");
    wait_for("web-1 listed", Duration::from_secs(30), || {
        c.tctl(&["nodes", "ls"]).stdout.contains("web-1").then_some(())
    });
    let mut p = start_joining_node(&c, tmp.path(), "web-1", None);
    assert_ne!(p.wait_exit(Duration::from_secs(30)).expect("exits"), 0);
    assert!(p.log_text().contains("is held by live node \"web-1\""), "{}", p.log_text());
    let mut p = start_joining_node(&c, tmp.path(), "web-2", Some("web-1:3022"));
    assert_ne!(p.wait_exit(Duration::from_secs(30)).expect("exits"), 0);
    assert!(
        p.log_text().contains("additional principal \"web-1\": it names live node \"web-1\""),
        "{}",
        p.log_text()
    );
    // The cluster is unharmed.
    c.tctl(&["status"]).ok();
}

#[test]
fn tctl_refuses_a_node_posing_as_the_auth_service_and_sends_it_nothing() {
    portcullis_rpc::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start_auth(tmp.path(), "fake.example.com", &[]);
    // A real node identity, obtained by a real join.
    c.start_node("evil-node", "env=dev");
    let id_path = c.dir.join("evil-node").join("node-identity.json");
    let node = wait_for("node identity", Duration::from_secs(30), || Identity::load(&id_path).ok());

    // A fake auth service presenting the node's certificate (signed by the cluster CA).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let fake_addr = listener.local_addr().unwrap().to_string();
    {
        let mut chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(node.tls_cert_pem.as_bytes()).map(Result::unwrap).collect();
        for pem in &node.tls_ca_pems {
            chain.extend(CertificateDer::pem_slice_iter(pem.as_bytes()).map(Result::unwrap));
        }
        let key = PrivateKeyDer::from_pem_slice(node.tls_key_pem.expose().as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(portcullis_rpc::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let (received, handshakes) = (received.clone(), handshakes.clone());
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                handshakes.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        received.fetch_add(n, Ordering::SeqCst);
                    }
                }
            }
        });
    }

    let password = "n3w-secret-password";
    let run = c.tctl_in(&["--auth-server", &fake_addr, "users", "set-password", "alice"], Some(&format!("{password}\n")));
    eprintln!("tctl against the fake auth service said: {}", run.stderr.trim());
    assert_ne!(run.code, 0, "tctl must refuse the fake auth service: {run:?}");
    assert!(
        run.stderr.contains(&format!("the server at {fake_addr} presented a certificate for role Node, not Auth")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(password) && !run.stdout.contains(password));
    assert!(handshakes.load(Ordering::SeqCst) > 0, "tctl did dial the fake auth service");
    assert_eq!(received.load(Ordering::SeqCst), 0, "tctl sent application data to the fake auth service");

    // The real auth service still works with the same identity.
    c.tctl(&["status"]).ok();
    drop(rt);
}
