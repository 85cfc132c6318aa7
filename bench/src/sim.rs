//! Simulated leaf clusters: each has its own TLS and SSH CAs, is trusted by the root through
//! the root proxy's `/webapi/trustedclusters/validate` (as a real leaf auth does), and runs
//! the real tunnel agent library with its own Agent identity, all on one tokio runtime.

use std::sync::Arc;
use std::time::Duration;

use portcullis_pki::x509::{AUTH_SERVER_NAME, TlsCa, TlsCertRequest, generate_key, public_key_der, SystemRole};
use portcullis_pki::{Identity, Secret, ssh::SshCa};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_rpc::{ClientTls, Trust, connect_lazy};
use portcullis_types::webapi;

use crate::BenchError;

/// Agent certificates outlive any benchmark run.
const CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// One simulated leaf: its public CAs (for the root) and its agent's identity.
pub struct SimLeaf {
    pub name: String,
    pub tls_ca_pem: String,
    ssh_user_ca: String,
    ssh_host_ca: String,
    pub agent: Identity,
}

/// Makes `count` leaves named `<prefix>-0001`...: fresh CAs and an Agent certificate
/// issued by each leaf's own CA (O = leaf name, OU = Agent), as a real join would give.
pub fn make_leaves(prefix: &str, count: usize) -> Result<Vec<SimLeaf>, BenchError> {
    (1..=count)
        .map(|i| {
            let name = format!("{prefix}-{i:04}");
            let tls = TlsCa::generate(&name)?;
            let user = SshCa::generate()?;
            let host = SshCa::generate()?;
            let key = generate_key()?;
            let agent_id = uuid::Uuid::new_v4().to_string();
            let cert = tls.issue(&TlsCertRequest {
                public_key_der: public_key_der(&key),
                name: agent_id.clone(),
                system_roles: vec![SystemRole::Agent.into()],
                ttl: CERT_TTL,
                ..Default::default()
            })?;
            let agent = Identity::new(
                name.clone(),
                agent_id,
                format!("{name}-agent"),
                SystemRole::Agent.into(),
                cert,
                Secret::new(key.serialize_pem()),
                vec![tls.cert_pem().to_string()],
                Secret::new(String::new()),
                String::new(),
            );
            Ok(SimLeaf {
                name,
                tls_ca_pem: tls.cert_pem().to_string(),
                ssh_user_ca: user.public_line()?,
                ssh_host_ca: host.public_line()?,
                agent,
            })
        })
        .collect()
}

/// An HTTPS client that accepts the root proxy's self-signed certificate (a leaf auth
/// started with `--insecure` does the same).
fn https_client() -> Result<reqwest::Client, BenchError> {
    let cfg = rustls::ClientConfig::builder_with_provider(portcullis_rpc::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::Other(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(portcullis_pki::verify::InsecureAcceptAnyServer::dangerously_new()))
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BenchError::Other(format!("HTTPS client: {e}")))
}

/// What the root answered: its name and TLS CA.
#[derive(Debug, Clone)]
pub struct RootCas {
    pub cluster_name: String,
    pub tls_ca_pems: Vec<String>,
}

/// Asks the root to trust every leaf, `parallel` requests at a time, each with its own
/// `trusted_cluster` token (`tokens[i]` for `leaves[i]`: a token registers one name).
pub async fn establish_trust(
    leaves: &[SimLeaf],
    web_addr: &str,
    tokens: &[String],
    parallel: usize,
) -> Result<RootCas, BenchError> {
    use futures::StreamExt;
    let client = https_client()?;
    let url = format!("https://{web_addr}/webapi/trustedclusters/validate");
    if tokens.len() < leaves.len() {
        return Err(BenchError::Other(format!("{} tokens for {} simulated leaves", tokens.len(), leaves.len())));
    }
    let answers: Vec<Result<RootCas, BenchError>> = futures::stream::iter(leaves.iter().zip(tokens))
        .map(|(leaf, token)| validate_one(&client, &url, token, leaf))
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut root = None;
    for a in answers {
        root = Some(a?);
    }
    root.ok_or_else(|| BenchError::Other("no simulated leaf to trust".into()))
}

async fn validate_one(client: &reqwest::Client, url: &str, token: &str, leaf: &SimLeaf) -> Result<RootCas, BenchError> {
    let fail = |reason: String| BenchError::Trust { leaf: leaf.name.clone(), reason };
    // The body a real leaf auth sends: the web API's own type.
    let body = webapi::ValidateRequest {
        token: Secret::new(token.to_string()),
        cluster_name: leaf.name.clone(),
        cas: webapi::CertAuthorities {
            tls_ca_pem: vec![leaf.tls_ca_pem.clone()],
            ssh_user_ca: vec![leaf.ssh_user_ca.clone()],
            ssh_host_ca: vec![leaf.ssh_host_ca.clone()],
        },
    };
    let resp = client.post(url).json(&body).send().await.map_err(|e| fail(portcullis_rpc::client::error_chain(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(fail(format!("HTTP {status}: {text}")));
    }
    let answer: webapi::ValidateResponse = resp.json().await.map_err(|e| fail(format!("unreadable answer: {e}")))?;
    if answer.cas.tls_ca_pem.is_empty() {
        return Err(fail("the answer carries no root TLS CA".into()));
    }
    Ok(RootCas { cluster_name: answer.cluster_name, tls_ca_pems: answer.cas.tls_ca_pem })
}

/// The running simulated agents; [`Agents::stop`] ends them all.
pub struct Agents {
    stop_tx: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Default for Agents {
    fn default() -> Self {
        Agents { stop_tx: tokio::sync::watch::channel(false).0, tasks: tokio::task::JoinSet::new() }
    }
}

impl Agents {
    /// Starts the agent of `leaf` against the fake leaf auth at `auth_addr`. Must run
    /// inside the runtime (the lazy channel spawns its worker there).
    pub fn spawn(&mut self, leaf: &SimLeaf, auth_addr: &str, auth_ca_pem: &str) -> Result<(), BenchError> {
        let tls = ClientTls {
            trust: Trust::Cas(vec![auth_ca_pem.to_string()]),
            identity: Some((leaf.agent.tls_cert_pem.clone(), leaf.agent.tls_key_pem.clone())),
            server_name: AUTH_SERVER_NAME.to_string(),
        };
        let auth = AuthClient::new(connect_lazy(auth_addr, &tls)?);
        let mut stop = self.stop_tx.subscribe();
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let fut = portcullis_tunnel_agent::run_with_identity(leaf.agent.clone(), auth, auth_addr.to_string(), shutdown);
        let name = leaf.name.clone();
        self.tasks.spawn(async move {
            if let Err(e) = fut.await {
                tracing::error!(leaf = %name, "simulated tunnel agent failed: {e}");
            }
        });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// How many agent tasks ended on their own (they should run until stopped).
    pub fn finished(&mut self) -> usize {
        let mut n = 0;
        while let Some(r) = self.tasks.try_join_next() {
            if let Err(e) = r {
                tracing::error!("a simulated tunnel agent task panicked: {e}");
            }
            n += 1;
        }
        n
    }

    /// Stops every agent (closing its tunnels) and waits up to `grace` for them.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.stop_tx.send(true);
        let _ = tokio::time::timeout(grace, async { while self.tasks.join_next().await.is_some() {} }).await;
        self.tasks.abort_all();
    }
}
