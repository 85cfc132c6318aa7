//! The proxy's HTTPS web API: a reqwest client whose TLS trust is the cluster CA saved at
//! login (or `--insecure`), and the request/answer types of each route `tsh` calls.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{TshError, error_chain};

/// How to decide whether the proxy's HTTPS certificate is genuine.
#[derive(Debug, Clone, Default)]
pub struct TlsTrust {
    /// Accept any certificate (`--insecure`).
    pub insecure: bool,
    /// CA certificates (PEM) the proxy's certificate may chain to.
    pub ca_pems: Vec<String>,
}

/// A TLS client certificate and its key, both PEM.
pub struct ClientCert<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// Why the last certificate check failed, kept so a handshake error can be explained.
type FailureSlot = Arc<Mutex<Option<String>>>;

#[derive(Debug)]
struct ProxyVerifier {
    insecure: bool,
    inner: Option<Arc<WebPkiServerVerifier>>,
    failure: FailureSlot,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ProxyVerifier {
    fn record(&self, reason: String) {
        if let Ok(mut slot) = self.failure.lock() {
            *slot = Some(reason);
        }
    }
}

impl ServerCertVerifier for ProxyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(inner) = &self.inner else {
            let reason = "it is not signed by a known certificate authority".to_string();
            self.record(reason.clone());
            return Err(rustls::Error::General(reason));
        };
        let verified = inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .inspect_err(|e| self.record(e.to_string()))?;
        // A certificate from a cluster CA is a service's identity: only a proxy's may answer
        // for the web API (an auth, node or agent certificate with the right name may not).
        if portcullis_pki::x509::is_cluster_issued(end_entity.as_ref())
            && let Err(e) = portcullis_rpc::verify::check_server_role(
                end_entity.as_ref(),
                portcullis_pki::x509::system_role::PROXY,
            )
        {
            let reason = e.to_string();
            self.record(reason.clone());
            return Err(rustls::Error::General(reason));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Trust anchors: the saved cluster CAs plus any `SSL_CERT_FILE` bundle (there are no
/// system roots: the workspace has no native-certs crate).
fn root_store(trust: &TlsTrust) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let mut pems = trust.ca_pems.clone();
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        match std::fs::read_to_string(&file) {
            Ok(text) => pems.push(text),
            Err(e) => tracing::warn!(file = ?file, error = %e, "cannot read SSL_CERT_FILE"),
        }
    }
    for pem in &pems {
        for der in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
            if let Err(e) = roots.add(der) {
                tracing::debug!(error = %e, "skipping an unusable CA certificate");
            }
        }
    }
    roots
}

/// The verifier of the proxy's HTTPS certificate for `trust`.
fn proxy_verifier(
    trust: &TlsTrust,
    failure: FailureSlot,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<ProxyVerifier>, TshError> {
    let roots = root_store(trust);
    let inner = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TshError::Tls(e.to_string()))?,
        )
    };
    Ok(Arc::new(ProxyVerifier { insecure: trust.insecure, inner, failure, provider }))
}

fn rustls_config(
    trust: &TlsTrust,
    client_cert: Option<ClientCert<'_>>,
    failure: FailureSlot,
) -> Result<rustls::ClientConfig, TshError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = proxy_verifier(trust, failure, provider.clone())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TshError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(cc) => {
            let certs: Result<Vec<CertificateDer<'static>>, _> =
                CertificateDer::pem_slice_iter(cc.cert_pem.as_bytes()).collect();
            let certs = certs.map_err(|e| TshError::Tls(format!("bad client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(cc.key_pem.as_bytes())
                .map_err(|e| TshError::Tls(format!("bad client key: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TshError::Tls(format!("bad client certificate: {e}")))?
        }
    };
    Ok(config)
}

/// A client of one proxy's web API.
pub struct WebClient {
    addr: String,
    client: reqwest::Client,
    failure: FailureSlot,
}

impl WebClient {
    /// `addr` is the proxy's `host:port`.
    pub fn new(
        addr: &str,
        trust: &TlsTrust,
        client_cert: Option<ClientCert<'_>>,
    ) -> Result<Self, TshError> {
        let failure: FailureSlot = Arc::new(Mutex::new(None));
        let tls = rustls_config(trust, client_cert, failure.clone())?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| TshError::Tls(error_chain(&e)))?;
        Ok(WebClient {
            addr: addr.to_string(),
            client,
            failure,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Turns a transport error into what the user should read.
    fn transport_error(&self, e: reqwest::Error) -> TshError {
        let recorded = self.failure.lock().ok().and_then(|mut s| s.take());
        if let Some(reason) = recorded {
            return TshError::UntrustedTls { reason };
        }
        TshError::Unreachable {
            addr: self.addr.clone(),
            reason: transport_reason(&e),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, TshError> {
        req.send().await.map_err(|e| self.transport_error(e))
    }

    /// Reads a JSON answer, or the proxy's `{"error": ...}` message.
    async fn decode<T: DeserializeOwned>(
        &self,
        what: &str,
        resp: reqwest::Response,
    ) -> Result<T, TshError> {
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            return Err(server_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| TshError::BadResponse {
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    /// `GET /webapi/ping`.
    pub async fn ping(&self) -> Result<PingResponse, TshError> {
        let resp = self.send(self.client.get(self.url("/webapi/ping"))).await?;
        self.decode("ping", resp).await
    }

    /// `POST /webapi/login`.
    pub async fn login(&self, req: &LoginRequest) -> Result<LoginResponse, TshError> {
        let resp = self
            .send(self.client.post(self.url("/webapi/login")).json(req))
            .await?;
        self.decode("login", resp).await
    }

    /// `GET /webapi/sites/<cluster>/nodes`.
    pub async fn nodes(&self, cluster: &str) -> Result<Vec<NodeInfo>, TshError> {
        let path = format!("/webapi/sites/{}/nodes", path_segment(cluster));
        let resp = self.send(self.client.get(self.url(&path))).await?;
        let list: NodesResponse = self.decode("node list", resp).await?;
        Ok(list.nodes)
    }

    /// `GET /webapi/sites`; `None` when the proxy has no such route.
    pub async fn sites(&self) -> Result<Option<Vec<SiteInfo>>, TshError> {
        let resp = self
            .send(self.client.get(self.url("/webapi/sites")))
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let sites: SitesResponse = self.decode("cluster list", resp).await?;
        Ok(Some(match sites {
            SitesResponse::List(l) => l,
            SitesResponse::Sites { sites } => sites,
            SitesResponse::Clusters { clusters } => clusters,
        }))
    }

    /// `POST /webapi/ssh/authorize`: why a session would be (or was) refused.
    pub async fn authorize(&self, req: &AuthorizeRequest) -> Result<AuthorizeResponse, TshError> {
        let resp = self
            .send(
                self.client
                    .post(self.url("/webapi/ssh/authorize"))
                    .json(req),
            )
            .await?;
        self.decode("ssh authorization", resp).await
    }
}

/// The useful part of a reqwest error: its causes without the URL and hyper's wrappers
/// (`dns error: failed to lookup address ...`, `tcp connect error: Connection refused ...`).
fn transport_reason(e: &reqwest::Error) -> String {
    use std::error::Error;
    if e.is_timeout() {
        return "no answer in time".into();
    }
    match e.source() {
        Some(src) => {
            let chain = error_chain(src);
            let trimmed = chain
                .strip_prefix("client error (Connect): ")
                .unwrap_or(&chain);
            trimmed.to_string()
        }
        None => error_chain(e),
    }
}

/// Percent-encodes characters that would change the URL's structure.
fn path_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn server_error(status: reqwest::StatusCode, body: &[u8]) -> TshError {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: serde_json::Value,
    }
    if let Ok(b) = serde_json::from_slice::<ErrorBody>(body) {
        let msg = match b.error {
            serde_json::Value::String(s) => s,
            serde_json::Value::Object(o) => o
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| serde_json::Value::Object(o).to_string()),
            other => other.to_string(),
        };
        if !msg.is_empty() {
            return TshError::Server(msg);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.len() > 300 {
        TshError::Server(format!("the proxy answered {status}"))
    } else {
        TshError::Server(format!("the proxy answered {status}: {text}"))
    }
}

/// `GET /webapi/ping` answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PingResponse {
    pub cluster_name: String,
    #[serde(default)]
    pub server_version: String,
    #[serde(default)]
    pub proxy: PingProxy,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PingProxy {
    #[serde(default)]
    pub ssh: PingSsh,
    #[serde(default)]
    pub tls_routing_enabled: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PingSsh {
    #[serde(default)]
    pub public_addr: String,
    #[serde(default)]
    pub ssh_public_addr: String,
    #[serde(default)]
    pub ssh_tunnel_public_addr: String,
}

/// `POST /webapi/login` body.
#[derive(Debug, Serialize)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    pub ssh_pub_key: String,
    /// Base64 of the DER SubjectPublicKeyInfo.
    pub tls_pub_key: String,
    pub ttl_seconds: u64,
    /// Cluster the certificates route to; empty for the root.
    pub cluster: String,
}

/// `POST /webapi/login` answer.
#[derive(Debug, Deserialize)]
pub struct LoginResponse {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub cluster_name: String,
    pub ssh_cert: String,
    pub tls_cert_pem: String,
    #[serde(default)]
    pub cas: LoginCas,
    /// Host CAs of the leaf clusters, each to be trusted for its own leaf's hosts only.
    #[serde(default)]
    pub leaf_host_cas: Vec<LeafHostCas>,
}

/// One leaf's SSH host CAs in the login answer.
#[derive(Debug, Default, Deserialize)]
pub struct LeafHostCas {
    pub cluster_name: String,
    #[serde(default)]
    pub ssh_host_ca: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginCas {
    #[serde(default)]
    pub tls_ca_pem: Vec<String>,
    #[serde(default)]
    pub ssh_user_ca: Vec<String>,
    #[serde(default)]
    pub ssh_host_ca: Vec<String>,
}

/// A node as the web API lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub tunnel: bool,
}

#[derive(Debug, Deserialize)]
struct NodesResponse {
    #[serde(default)]
    nodes: Vec<NodeInfo>,
}

/// A cluster as `GET /webapi/sites` may list it (field names as Teleport's web API or ours).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SiteInfo {
    pub name: String,
    #[serde(default, alias = "connection")]
    pub status: String,
    #[serde(default, alias = "type")]
    pub cluster_type: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SitesResponse {
    List(Vec<SiteInfo>),
    Sites { sites: Vec<SiteInfo> },
    Clusters { clusters: Vec<SiteInfo> },
}

/// `POST /webapi/ssh/authorize` body.
#[derive(Debug, Serialize)]
pub struct AuthorizeRequest {
    pub ssh_cert: String,
    pub login: String,
    pub node: String,
    pub cluster: String,
}

/// `POST /webapi/ssh/authorize` answer.
#[derive(Debug, Deserialize)]
pub struct AuthorizeResponse {
    #[serde(default)]
    pub allowed: bool,
    #[serde(default)]
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate from the cluster CA with the right name and ServerAuth, but for the
    /// auth service: tsh must not take it for the proxy's web certificate.
    #[test]
    fn only_a_proxy_certificate_from_the_cluster_ca_answers_for_the_web_api() {
        use portcullis_pki::x509::{self, TlsCa, TlsCertRequest, system_role};
        let ca = TlsCa::generate("root.example.com").unwrap();
        let trust = TlsTrust { insecure: false, ca_pems: vec![ca.cert_pem().to_string()] };
        let failure: FailureSlot = Arc::default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = proxy_verifier(&trust, failure.clone(), provider).unwrap();
        let issue = |role: &str| {
            let key = x509::generate_key().unwrap();
            let pem = ca
                .issue(&TlsCertRequest {
                    public_key_der: x509::public_key_der(&key),
                    name: "server".into(),
                    system_roles: vec![role.into()],
                    dns_names: vec!["proxy.example.com".into()],
                    ttl: std::time::Duration::from_secs(3600),
                    ..Default::default()
                })
                .unwrap();
            x509::pem_to_ders(&pem).unwrap().remove(0)
        };
        let name = ServerName::try_from("proxy.example.com").unwrap();
        let now = UnixTime::now();
        let auth = CertificateDer::from(issue(system_role::AUTH));
        let e = verifier.verify_server_cert(&auth, &[], &name, &[], now).unwrap_err().to_string();
        assert!(e.contains("role Auth, not Proxy"), "{e}");
        assert!(failure.lock().unwrap().as_deref().unwrap_or("").contains("not Proxy"));
        let proxy = CertificateDer::from(issue(system_role::PROXY));
        verifier.verify_server_cert(&proxy, &[], &name, &[], now).unwrap();
    }

    #[test]
    fn server_errors_show_the_message() {
        let e = server_error(
            reqwest::StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid username or password"}"#,
        );
        assert_eq!(e.to_string(), "invalid username or password");
        let e = server_error(reqwest::StatusCode::BAD_GATEWAY, b"");
        assert_eq!(e.to_string(), "the proxy answered 502 Bad Gateway");
    }

    #[test]
    fn sites_accept_list_or_object() {
        let a: SitesResponse =
            serde_json::from_str(r#"[{"name":"leaf","status":"online"}]"#).unwrap();
        let b: SitesResponse = serde_json::from_str(
            r#"{"sites":[{"name":"leaf","connection":"offline","labels":{"env":"demo"}}]}"#,
        )
        .unwrap();
        assert!(matches!(a, SitesResponse::List(ref l) if l[0].status == "online"));
        assert!(matches!(b, SitesResponse::Sites { ref sites } if sites[0].status == "offline"));
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("leaf.example.com"), "leaf.example.com");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
