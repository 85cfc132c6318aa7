//! Joining a cluster: on first start a service trades its join token for an identity,
//! which it keeps in its data directory so the token is never needed again.

use std::path::{Path, PathBuf};

use portcullis_config::Common;
use portcullis_pki::x509::{self, AUTH_SERVER_NAME};
use portcullis_pki::{Identity, Secret, ssh};
use portcullis_proto::auth::JoinRequest;
use portcullis_proto::auth::auth_client::AuthClient;

use crate::{ClientTls, RpcError, Trust, connect};

/// Errors of the join step, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("no identity in {dir} and no join token given (set teleport.auth_token or --token)")]
    NoToken { dir: String },
    #[error("no auth server configured (set teleport.auth_servers or --auth-server)")]
    NoAuthServer,
    #[error("joining the cluster at {addr} was refused: {reason}")]
    Refused { addr: String, reason: String },
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error(transparent)]
    Pki(#[from] portcullis_pki::PkiError),
}

/// Where a service keeps its identity.
pub fn identity_path(data_dir: &Path, role: &str) -> PathBuf {
    data_dir.join(format!("{role}-identity.json"))
}

/// Loads the identity kept in `data_dir`, or joins with the token and keeps the result.
/// `role` is `node`, `proxy` or `agent`; `principals` are extra SSH host principals
/// (addresses the service is reached at).
pub async fn join_or_load(common: &Common, role: &str, principals: &[String]) -> Result<Identity, JoinError> {
    // The identity's private keys live in data_dir: it must be private before we read or
    // write anything there (an existing one others can read is refused, saying how to fix it).
    let prepared = portcullis_pki::datadir::prepare(&common.data_dir).map_err(portcullis_pki::PkiError::from)?;
    if !prepared.fixed.is_empty() {
        tracing::warn!(data_dir = %common.data_dir.display(), count = prepared.fixed.len(), "made files in the data directory private (0600/0700)");
    }
    let path = identity_path(&common.data_dir, role);
    if path.exists() {
        let id = Identity::load(&path)?;
        tracing::info!(host_id = %id.name, cluster = %id.cluster_name, "loaded identity from {}", path.display());
        return Ok(id);
    }
    let token = common
        .token
        .clone()
        .ok_or_else(|| JoinError::NoToken { dir: common.data_dir.display().to_string() })?;
    if common.auth_servers.is_empty() {
        return Err(JoinError::NoAuthServer);
    }
    let addr = common.auth_servers.join(",");
    let trust = if !common.ca_pins.is_empty() {
        Trust::Pins(common.ca_pins.clone())
    } else {
        if !common.insecure {
            tracing::warn!("joining without a CA pin: the auth service at {addr} is trusted on first use; set teleport.ca_pin to avoid this");
        }
        Trust::Insecure
    };
    let id = join_any(&common.auth_servers, trust, token, role, &common.nodename, principals).await?;
    id.save(&path)?;
    tracing::info!(host_id = %id.name, cluster = %id.cluster_name, "joined the cluster; identity kept in {}", path.display());
    Ok(id)
}

/// Performs the join call itself, against the auth server at `addr`.
pub async fn join(
    addr: &str,
    trust: Trust,
    token: Secret<String>,
    role: &str,
    nodename: &str,
    principals: &[String],
) -> Result<Identity, JoinError> {
    let tls = ClientTls { trust, identity: None, server_name: AUTH_SERVER_NAME.to_string() };
    let channel = connect(addr, &tls).await?;
    join_with(channel, addr, token, role, nodename, principals).await
}

/// Joins through whichever of `addrs` answers: each server (and each address of a name) is
/// tried in turn until one answers; when none does, the error lists every address and why.
pub async fn join_any(
    addrs: &[String],
    trust: Trust,
    token: Secret<String>,
    role: &str,
    nodename: &str,
    principals: &[String],
) -> Result<Identity, JoinError> {
    let tls = ClientTls { trust, identity: None, server_name: AUTH_SERVER_NAME.to_string() };
    let channel = crate::connect_auth_lazy(addrs, &tls)?;
    join_with(channel, &addrs.join(","), token, role, nodename, principals).await
}

async fn join_with(
    channel: crate::Channel,
    addr: &str,
    token: Secret<String>,
    role: &str,
    nodename: &str,
    principals: &[String],
) -> Result<Identity, JoinError> {
    let tls_key = x509::generate_key()?;
    let ssh_key = ssh::generate_key()?;
    let host_id = uuid_v4()?;
    let mut client = AuthClient::new(channel);
    let resp = client
        .join(JoinRequest {
            token: token.expose().clone(),
            role: role.to_string(),
            host_id: host_id.clone(),
            nodename: nodename.to_string(),
            tls_public_key: x509::public_key_der(&tls_key),
            ssh_public_key: ssh::public_key_line(ssh_key.public_key())?,
            additional_principals: principals.to_vec(),
        })
        .await
        .map_err(|s| match s.code() {
            // Every server failed: the message already names each address and why.
            tonic::Code::Unavailable if s.message().starts_with(crate::failover::UNREACHABLE) => {
                JoinError::Rpc(RpcError::Unreachable(s.message().to_string()))
            }
            _ => JoinError::Refused { addr: addr.to_string(), reason: s.message().to_string() },
        })?
        .into_inner();
    let cas = resp.cas.unwrap_or_default();
    let mut id = Identity::new(
        resp.cluster_name,
        resp.host_id,
        nodename.to_string(),
        role.to_string(),
        resp.tls_cert_pem,
        Secret::new(tls_key.serialize_pem()),
        cas.tls_ca_pem,
        Secret::new(ssh::private_key_openssh(&ssh_key)?),
        resp.ssh_host_cert,
    );
    id.ssh_user_cas = cas.ssh_user_ca;
    id.ssh_host_cas = cas.ssh_host_ca;
    Ok(id)
}

/// A random version-4 UUID string.
pub fn uuid_v4() -> Result<String, portcullis_pki::PkiError> {
    let mut b = portcullis_pki::random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

/// Trace resource attributes for a service: its cluster and host id, when it has joined.
pub fn resource_attributes(common: &Common, role: &str) -> std::collections::BTreeMap<String, String> {
    let mut attrs = std::collections::BTreeMap::new();
    if let Ok(id) = Identity::load(&identity_path(&common.data_dir, role)) {
        attrs.insert("portcullis.cluster".to_string(), id.cluster_name);
        attrs.insert("portcullis.host_id".to_string(), id.name);
    }
    attrs
}
