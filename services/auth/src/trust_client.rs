//! Leaf side of establishing trust: the HTTPS call to the root proxy's
//! `/webapi/trustedclusters/validate`, with Teleport's error texts (scripts and guides match
//! them).

use std::sync::Arc;
use std::time::Duration;

use portcullis_types::TrustedCluster;
use portcullis_types::webapi::{self, CertAuthorities, ErrorBody, Secret, ValidateRequest, ValidateResponse};

use crate::error::AuthError;
use crate::state::AuthState;
use crate::trust::{ClusterCas, TOKEN_REJECTED};

/// The exact text for a root proxy whose HTTPS certificate cannot be verified.
pub const MISCONFIGURED_TLS: &str = "the trusted cluster uses misconfigured HTTP/TLS certificate";

fn tls_config(state: &AuthState) -> Result<rustls::ClientConfig, AuthError> {
    let provider = portcullis_rpc::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Internal(e.to_string()))?;
    let cfg = if state.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(portcullis_pki::verify::InsecureAcceptAnyServer::dangerously_new()))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &state.trusted_cluster_ca_file {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| AuthError::io(format!("reading trusted_cluster_ca_file {}", path.display()), e))?;
            for der in portcullis_pki::x509::pem_to_ders(&pem)? {
                roots
                    .add(rustls_pki_types::CertificateDer::from(der))
                    .map_err(|e| AuthError::bad(format!("{}: bad CA certificate: {e}", path.display())))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(cfg)
}

fn chain(e: &dyn std::error::Error) -> String {
    portcullis_rpc::client::error_chain(e)
}

impl AuthState {
    /// Asks the root named by `tc` to trust us; returns the root's CAs.
    pub async fn establish_trust(&self, tc: &TrustedCluster) -> Result<ClusterCas, AuthError> {
        let addr = tc.web_proxy_addr();
        if tc.spec.token.trim().is_empty() {
            return Err(AuthError::bad(format!(
                "trusted_cluster {:?}: spec.token is required to establish trust (tctl tokens add --type=trusted_cluster on the root)",
                tc.metadata.name
            )));
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(self)?)
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| AuthError::Internal(format!("HTTPS client: {e}")))?;
        let own = self.own_cas()?;
        let body = ValidateRequest {
            token: Secret::new(tc.spec.token.clone()),
            cluster_name: self.cluster_name.clone(),
            cas: CertAuthorities { tls_ca_pem: own.tls_ca_pem, ssh_user_ca: own.ssh_user_ca, ssh_host_ca: own.ssh_host_ca },
        };
        let url = format!("https://{addr}{}", webapi::VALIDATE_PATH);
        tracing::debug!(%url, "asking the root cluster to trust this cluster");
        let resp = client.post(&url).json(&body).send().await.map_err(|e| {
            let text = chain(&e);
            if text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("invalid peer") {
                tracing::warn!(%addr, error = %text, "root proxy HTTPS certificate not trusted");
                AuthError::denied(MISCONFIGURED_TLS)
            } else {
                AuthError::bad(format!("cannot reach the root cluster's proxy at {addr} (web_proxy_addr): {text}"))
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            let msg = resp.json::<ErrorBody>().await.map(|b| b.error).unwrap_or_else(|_| status.to_string());
            tracing::warn!(%addr, %status, reason = %msg, "the root cluster refused to trust this cluster");
            // Only the root's token refusal becomes the fixed `TOKEN_REJECTED` text; other refusals
            // (a name already used, a token bound to another leaf) keep their reason.
            if msg.contains(TOKEN_REJECTED) || (status.as_u16() == 401 && msg.contains("token")) {
                return Err(AuthError::denied(TOKEN_REJECTED));
            }
            return Err(AuthError::denied(msg));
        }
        let answer: ValidateResponse = resp
            .json()
            .await
            .map_err(|e| AuthError::bad(format!("the root proxy at {addr} sent an unreadable answer: {e}")))?;
        if answer.cluster_name != tc.metadata.name {
            return Err(AuthError::bad(format!(
                "the cluster at {addr} is named {:?}, not {:?}: metadata.name must be the root cluster's name",
                answer.cluster_name, tc.metadata.name
            )));
        }
        let cas = answer.cas;
        Ok(ClusterCas { tls: cas.tls_ca_pem, ssh_user: cas.ssh_user_ca, ssh_host: cas.ssh_host_ca, active: true })
    }

    /// `tctl create` of a trusted_cluster: establish trust first when it is new (or was
    /// removed), then store it. Toggling `enabled` or editing the role map needs no token.
    pub async fn upsert_trusted_cluster(&self, tc: TrustedCluster, create_only: bool) -> Result<bool, AuthError> {
        tc.validate()?;
        let name = tc.metadata.name.clone();
        if name == self.cluster_name {
            return Err(AuthError::bad(format!("{name:?} is this cluster's own name: a trusted_cluster names the root cluster")));
        }
        let exists = self.get_trusted_cluster(&name)?.is_some();
        if exists && create_only {
            return Err(AuthError::AlreadyExists(format!("trusted_cluster {name:?} already exists; use -f to overwrite")));
        }
        let cas = if self.trusted_cas(&name)?.is_none() { Some(self.establish_trust(&tc).await?) } else { None };
        self.store_trusted_cluster(&tc, cas)?;
        self.audit.emit(
            "trusted_cluster.create",
            serde_json::json!({"success": true, "cluster": name, "side": "leaf", "enabled": tc.spec.enabled}),
        );
        Ok(!exists)
    }
}
