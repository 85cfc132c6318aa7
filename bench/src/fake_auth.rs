//! One in-process stand-in for the auth services of all simulated leaves (the shared fake
//! auth): it answers `ListTrustedClusters` with the root as the one target, which is all an
//! idle agent asks, and accepts pings, node listings and audit events.

use std::net::SocketAddr;

use portcullis_fake_auth::{FakeAuth, Running, ServerTls, reply};
use portcullis_pki::x509::TlsCa;
use portcullis_proto::auth::*;

use crate::BenchError;

/// A running fake auth: its address and the CA its certificate chains to.
pub struct FakeAuthHandle {
    pub addr: SocketAddr,
    pub ca_pem: String,
    running: Running,
}

impl FakeAuthHandle {
    /// Stops serving and waits for the server task.
    pub async fn stop(self) {
        self.running.stop().await;
    }
}

fn fake_error(e: portcullis_fake_auth::FakeAuthError) -> BenchError {
    BenchError::Other(format!("the fake leaf auth: {e}"))
}

/// Starts the fake auth on a free loopback port. Its certificate names the auth server;
/// clients may present certificates of any of `client_ca_pems` (each simulated leaf's CA)
/// or none.
pub async fn start(target: TrustedClusterTarget, client_ca_pems: &[String]) -> Result<FakeAuthHandle, BenchError> {
    let ca = TlsCa::generate("bench-fake-leaf-auth")?;
    let tls = ServerTls::issue(&ca, client_ca_pems).map_err(fake_error)?;
    let running = FakeAuth::new()
        // Thousands of agents over a long run: count their calls, keep no requests.
        .count_only()
        .list_trusted_clusters(reply(ListTrustedClustersResponse { clusters: vec![target] }))
        .ping(reply(PingResponse::default()))
        .list_nodes(reply(ListNodesResponse::default()))
        .emit_audit_event(reply(Empty::default()))
        .tls(tls)
        .start()
        .await
        .map_err(fake_error)?;
    Ok(FakeAuthHandle { addr: running.addr, ca_pem: ca.cert_pem().to_string(), running })
}
