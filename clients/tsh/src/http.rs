//! The proxy's HTTPS web API: a reqwest client whose TLS trust is the cluster CA saved at
//! login (or `--insecure`), and the request/answer types of each route `tsh` calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_types::webapi;
use portcullis_pki::verify;
use rustls::RootCertStore;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{TshError, error_chain};

// The bodies are the proxy's own types: one definition for both ends.
pub use portcullis_types::webapi::{
    AuthorizeRequest, AuthorizeResponse, LeafHostCas, LoginRequest, LoginResponse, NodeInfo, PingProxy, PingResponse,
    PingSsh, SiteInfo,
};

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

/// The verifier of the proxy's HTTPS certificate for `trust`, built from
/// `portcullis_pki::verify`: any certificate with `--insecure`; otherwise the chain to the
/// saved CAs and, for a certificate from a cluster CA, the Proxy role (an auth, node or agent
/// certificate with the right name may not answer for the web API). Every refusal's reason
/// lands in `failure`, so a failed request can say why.
fn proxy_verifier(
    trust: &TlsTrust,
    failure: FailureSlot,
) -> Result<Arc<dyn ServerCertVerifier>, TshError> {
    if trust.insecure {
        return Ok(Arc::new(verify::InsecureAcceptAnyServer::dangerously_new()));
    }
    let record: verify::OnRefusal = Arc::new(move |e: &rustls::Error| {
        let reason = match e {
            rustls::Error::General(s) => s.clone(),
            rustls::Error::Other(o) => o.to_string(),
            e => e.to_string(),
        };
        if let Ok(mut slot) = failure.lock() {
            *slot = Some(reason);
        }
    });
    let roots = root_store(trust);
    let inner: Arc<dyn ServerCertVerifier> = if roots.is_empty() {
        Arc::new(verify::RefuseServer::new("it is not signed by a known certificate authority"))
    } else {
        verify::server_chain(roots).map_err(|e| TshError::Tls(e.to_string()))?
    };
    let role: verify::CertCheck = Arc::new(|cert: &CertificateDer<'_>| {
        if !portcullis_pki::x509::is_cluster_issued(cert.as_ref()) {
            return Ok(());
        }
        verify::check_server_role(cert.as_ref(), portcullis_pki::x509::SystemRole::Proxy.as_str())
            .map_err(|e| rustls::Error::General(e.to_string()))
    });
    Ok(Arc::new(verify::CheckedServerVerifier::new(inner).check_after(role).on_refusal(record)))
}

fn rustls_config(
    trust: &TlsTrust,
    client_cert: Option<ClientCert<'_>>,
    failure: FailureSlot,
) -> Result<rustls::ClientConfig, TshError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = proxy_verifier(trust, failure)?;
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
        let resp = self.send(self.client.get(self.url(webapi::PING_PATH))).await?;
        self.decode("ping", resp).await
    }

    /// `POST /webapi/login`.
    pub async fn login(&self, req: &LoginRequest) -> Result<LoginResponse, TshError> {
        let resp = self
            .send(self.client.post(self.url(webapi::LOGIN_PATH)).json(req))
            .await?;
        self.decode("login", resp).await
    }

    /// `GET /webapi/sites/<cluster>/nodes`.
    pub async fn nodes(&self, cluster: &str) -> Result<Vec<NodeInfo>, TshError> {
        let path = webapi::NODES_PATH.replace("{cluster}", &path_segment(cluster));
        let resp = self.send(self.client.get(self.url(&path))).await?;
        let list: webapi::NodesResponse = self.decode("node list", resp).await?;
        Ok(list.nodes)
    }

    /// `GET /webapi/sites`; `None` when the proxy has no such route.
    pub async fn sites(&self) -> Result<Option<Vec<SiteInfo>>, TshError> {
        let resp = self
            .send(self.client.get(self.url(webapi::SITES_PATH)))
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let sites: SitesAnswer = self.decode("cluster list", resp).await?;
        Ok(Some(match sites {
            SitesAnswer::List(l) => l,
            SitesAnswer::Sites(s) => s.sites,
            SitesAnswer::Clusters { clusters } => clusters,
        }))
    }

    /// `POST /webapi/ssh/authorize`: why a session would be (or was) refused.
    pub async fn authorize(&self, req: &AuthorizeRequest) -> Result<AuthorizeResponse, TshError> {
        let resp = self
            .send(
                self.client
                    .post(self.url(webapi::AUTHORIZE_PATH))
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
    /// Other proxies (Teleport) may send `{"error": {"message": ...}}`.
    #[derive(Deserialize)]
    struct AnyErrorBody {
        error: serde_json::Value,
    }
    let msg = match serde_json::from_slice::<webapi::ErrorBody>(body) {
        Ok(b) => Some(b.error),
        Err(_) => serde_json::from_slice::<AnyErrorBody>(body).ok().map(|b| match b.error {
            serde_json::Value::String(s) => s,
            serde_json::Value::Object(o) => o
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| serde_json::Value::Object(o).to_string()),
            other => other.to_string(),
        }),
    };
    if let Some(msg) = msg.filter(|m| !m.is_empty()) {
        return TshError::Server(msg);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() || text.len() > 300 {
        TshError::Server(format!("the proxy answered {status}"))
    } else {
        TshError::Server(format!("the proxy answered {status}: {text}"))
    }
}

/// `GET /webapi/sites` as tsh reads it: the proxy's object, or the shapes other proxies
/// (Teleport) answer with.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SitesAnswer {
    List(Vec<SiteInfo>),
    Sites(webapi::SitesResponse),
    Clusters { clusters: Vec<SiteInfo> },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate from the cluster CA with the right name and ServerAuth, but for the
    /// auth service: tsh must not take it for the proxy's web certificate.
    #[test]
    fn only_a_proxy_certificate_from_the_cluster_ca_answers_for_the_web_api() {
        use portcullis_pki::x509::{self, TlsCa, TlsCertRequest, SystemRole};
        let ca = TlsCa::generate("root.example.com").unwrap();
        let trust = TlsTrust { insecure: false, ca_pems: vec![ca.cert_pem().to_string()] };
        let failure: FailureSlot = Arc::default();
        let verifier = proxy_verifier(&trust, failure.clone()).unwrap();
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
        use rustls::pki_types::{ServerName, UnixTime};
        let name = ServerName::try_from("proxy.example.com").unwrap();
        let now = UnixTime::now();
        let auth = CertificateDer::from(issue(SystemRole::Auth.as_str()));
        let e = verifier.verify_server_cert(&auth, &[], &name, &[], now).unwrap_err().to_string();
        assert!(e.contains("role Auth, not Proxy"), "{e}");
        assert!(failure.lock().unwrap().as_deref().unwrap_or("").contains("not Proxy"));
        let proxy = CertificateDer::from(issue(SystemRole::Proxy.as_str()));
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
        let a: SitesAnswer =
            serde_json::from_str(r#"[{"name":"leaf","status":"online"}]"#).unwrap();
        let b: SitesAnswer = serde_json::from_str(
            r#"{"sites":[{"name":"leaf","connection":"offline","labels":{"env":"demo"}}]}"#,
        )
        .unwrap();
        assert!(matches!(a, SitesAnswer::List(ref l) if l[0].status == "online"));
        assert!(matches!(b, SitesAnswer::Sites(ref s) if s.sites[0].status == "offline"));
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("leaf.example.com"), "leaf.example.com");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
