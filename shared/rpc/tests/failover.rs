//! One auth channel over several auth servers: calls spread over the live ones, a killed or
//! silent server is left within 2 s without a failed call, a server that comes back is used
//! again, a name with several addresses counts as several servers, and when nothing answers
//! the error names every address and why.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use portcullis_pki::x509::{self, AUTH_SERVER_NAME, TlsCa, TlsCertRequest, SystemRole};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{StatusRequest, StatusResponse, UpsertResourceRequest, UpsertResourceResponse};
use portcullis_rpc::failover::{Failover, Resolve};
use portcullis_rpc::{Channel, ClientTls, RpcError, Trust};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A CA and an auth server certificate made by it.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    let ca = TlsCa::generate("c.example.com").unwrap();
    let key = x509::generate_key().unwrap();
    let cert = ca
        .issue(&TlsCertRequest {
            public_key_der: x509::public_key_der(&key),
            name: "auth".into(),
            system_roles: vec![SystemRole::Auth.into()],
            dns_names: vec![AUTH_SERVER_NAME.into()],
            ttl: Duration::from_secs(600),
            ..Default::default()
        })
        .unwrap();
    let ca_pem = ca.cert_pem().to_string();
    let cas = std::slice::from_ref(&ca_pem);
    let cfg = portcullis_rpc::server::rustls_server_config(&cert, &key.serialize_pem(), cas, cas).unwrap();
    Pki { ca_pem, server: Arc::new(cfg) }
}

fn client_tls(p: &Pki) -> ClientTls {
    ClientTls { trust: Trust::Cas(vec![p.ca_pem.clone()]), identity: None, server_name: AUTH_SERVER_NAME.into() }
}

/// A socket that stops reading and writing when frozen, like a process that hangs or a
/// network that drops everything: the peer sees silence, not a closed connection.
struct Gate<S> {
    inner: S,
    frozen: Arc<AtomicBool>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Gate<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An in-process auth server answering `Status` (with its name as the cluster name) and
/// `UpsertResource` (echoing the resource back), whose connections a test can kill or freeze.
struct TestAuth {
    name: &'static str,
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    frozen: Arc<AtomicBool>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

type RespBody = StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>>;

async fn answer(name: &'static str, req: http::Request<hyper::body::Incoming>) -> http::Response<RespBody> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let msg = body.get(5..).unwrap_or_default();
    let reply = match path.as_str() {
        "/portcullis.auth.v1.Auth/Status" => {
            StatusResponse { cluster_name: name.into(), ..Default::default() }.encode_to_vec()
        }
        "/portcullis.auth.v1.Auth/UpsertResource" => {
            let r = UpsertResourceRequest::decode(msg).unwrap_or_default();
            UpsertResourceResponse { kind: name.into(), name: r.resource_json, created: true }.encode_to_vec()
        }
        _ => Vec::new(),
    };
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
    framed.extend_from_slice(&reply);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![Ok(Frame::data(Bytes::from(framed))), Ok(Frame::trailers(trailers))];
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(tokio_stream::iter(frames)))
        .unwrap()
}

impl TestAuth {
    async fn start(name: &'static str, bind: SocketAddr, pki: &Pki) -> TestAuth {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let frozen = Arc::new(AtomicBool::new(false));
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
        let accept = tokio::spawn({
            let (calls, frozen, tasks) = (calls.clone(), frozen.clone(), tasks.clone());
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, calls, frozen) = (acceptor.clone(), calls.clone(), frozen.clone());
                    let conn = tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(Gate { inner: tcp, frozen }).await else { return };
                        let svc = hyper::service::service_fn(move |req| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            async move { Ok::<_, std::convert::Infallible>(answer(name, req).await) }
                        });
                        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    });
                    tasks.lock().unwrap().push(conn.abort_handle());
                }
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        TestAuth { name, addr, calls, frozen, tasks }
    }

    /// Like `kill -9`: the port refuses connections and open ones are closed.
    fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Like a hung process: open connections go silent, new ones are accepted and never answered.
    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// One `Status` call: which server answered, and how long it took.
async fn status(c: &mut AuthClient<Channel>) -> (Result<String, tonic::Status>, Duration) {
    let t = Instant::now();
    let r = c.status(StatusRequest {}).await.map(|r| r.into_inner().cluster_name);
    (r, t.elapsed())
}

/// Calls without pause for `run` after `dead` went down at `t0`: every call must succeed,
/// only `live` may answer, and the first success must come within 2 s of `t0`.
async fn calls_keep_succeeding(c: &mut AuthClient<Channel>, t0: Instant, run: Duration, live: &str) {
    let mut first_ok = None;
    let mut n = 0;
    while t0.elapsed() < run {
        let (r, took) = status(c).await;
        n += 1;
        let who = r.unwrap_or_else(|s| panic!("call {n} after the failure failed after {took:?}: {}", s.message()));
        assert_eq!(who, live, "call {n} was answered by a server that is down");
        first_ok.get_or_insert(t0.elapsed());
        assert!(took < Duration::from_secs(2), "call {n} took {took:?}");
    }
    let first_ok = first_ok.unwrap();
    eprintln!("after the failure: first success at {first_ok:?}, {n} calls");
    assert!(first_ok < Duration::from_secs(2), "first successful call {first_ok:?} after the failure");
    assert!(n > 10, "only {n} calls in {run:?}");
}

fn two(a: &TestAuth, b: &TestAuth) -> Vec<String> {
    vec![a.addr.to_string(), b.addr.to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_both_servers_and_a_killed_one_is_left_within_2s() {
    let p = pki();
    let a = TestAuth::start("a", "127.0.0.1:0".parse().unwrap(), &p).await;
    let b = TestAuth::start("b", "127.0.0.1:0".parse().unwrap(), &p).await;
    let mut c = AuthClient::new(portcullis_rpc::connect_auth_lazy(&two(&a, &b), &client_tls(&p)).unwrap());
    for _ in 0..20 {
        status(&mut c).await.0.unwrap();
    }
    assert!(a.calls() >= 5 && b.calls() >= 5, "calls not spread: a {} b {}", a.calls(), b.calls());

    let t0 = Instant::now();
    b.kill();
    calls_keep_succeeding(&mut c, t0, Duration::from_secs(3), a.name).await;

    // b comes back on its port: the background probe finds it and calls reach it again.
    let b2 = TestAuth::start("b", b.addr, &p).await;
    let back = Instant::now();
    while b2.calls() == 0 {
        status(&mut c).await.0.unwrap();
        assert!(back.elapsed() < Duration::from_secs(10), "the restarted server never got a call");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_left_within_2s_and_the_request_is_sent_again_intact() {
    let p = pki();
    let a = TestAuth::start("a", "127.0.0.1:0".parse().unwrap(), &p).await;
    let b = TestAuth::start("b", "127.0.0.1:0".parse().unwrap(), &p).await;
    let mut c = AuthClient::new(portcullis_rpc::connect_auth_lazy(&two(&a, &b), &client_tls(&p)).unwrap());
    for _ in 0..4 {
        status(&mut c).await.0.unwrap();
    }
    assert!(a.calls() > 0 && b.calls() > 0);

    let t0 = Instant::now();
    b.freeze();
    // Writes too: a call that b swallowed is sent to a, body and all.
    for i in 0..4 {
        let json = format!("{{\"kind\":\"role\",\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(100_000));
        let started = Instant::now();
        let r = c.upsert_resource(UpsertResourceRequest { resource_json: json.clone(), create_only: false }).await;
        let r = r.unwrap_or_else(|s| panic!("upsert {i} failed: {}", s.message())).into_inner();
        assert_eq!((r.kind.as_str(), r.name == json), ("a", true), "upsert {i}");
        eprintln!("upsert {i} took {:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(2), "upsert {i} took {:?}", started.elapsed());
    }
    calls_keep_succeeding(&mut c, t0, Duration::from_secs(3), a.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_never_answers_costs_one_connect_timeout() {
    let p = pki();
    let a = TestAuth::start("a", "127.0.0.1:0".parse().unwrap(), &p).await;
    // Accepts connections and never says a word.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap().to_string();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    let mut c =
        AuthClient::new(portcullis_rpc::connect_auth_lazy(&[mute_addr, a.addr.to_string()], &client_tls(&p)).unwrap());
    let t0 = Instant::now();
    calls_keep_succeeding(&mut c, t0, Duration::from_secs(2), a.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_server_fails_the_error_lists_each_address_and_why() {
    let p = pki();
    let a = TestAuth::start("a", "127.0.0.1:0".parse().unwrap(), &p).await;
    let b = TestAuth::start("b", "127.0.0.1:0".parse().unwrap(), &p).await;
    let addrs = two(&a, &b);
    let mut c = AuthClient::new(portcullis_rpc::connect_auth_lazy(&addrs, &client_tls(&p)).unwrap());
    status(&mut c).await.0.unwrap();
    a.kill();
    b.freeze();
    let t0 = Instant::now();
    let (r, _) = status(&mut c).await;
    let s = r.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
    let msg = s.message();
    eprintln!("all down: {msg}");
    assert!(msg.starts_with("the auth service is unreachable: tried "), "{msg}");
    assert!(msg.contains(&format!("{} (connection refused)", addrs[0])), "{msg}");
    assert!(msg.contains(&addrs[1]) && msg.contains("timed out after 1s") || msg.contains("keep-alive"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(4), "all-down error took {:?}", t0.elapsed());
    // Later calls fail fast while both stay down, with the same list.
    let (r, took) = status(&mut c).await;
    assert!(r.unwrap_err().message().contains(&format!("{} (connection refused)", addrs[0])));
    assert!(took < Duration::from_millis(500), "{took:?}");

    // A one-shot client (tctl) finds out before its first call; bad names are named too.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let addrs = vec![free.clone(), b.addr.to_string(), "no-such-host.invalid:3025".to_string()];
    let e = portcullis_rpc::connect_auth(&addrs, &client_tls(&p)).await.unwrap_err();
    let RpcError::Unreachable(msg) = &e else { panic!("{e:?}") };
    eprintln!("connect_auth: {msg}");
    assert!(msg.starts_with("the auth service is unreachable: tried "), "{msg}");
    assert!(msg.contains(&format!("{free} (connection refused)")), "{msg}");
    assert!(msg.contains(&format!("{} (timed out after 1s)", b.addr)), "{msg}");
    assert!(msg.contains("no-such-host.invalid:3025 (cannot resolve no-such-host.invalid"), "{msg}");
}

/// Resolves `auth.test` to the addresses given; anything else is unknown.
struct Fixed(Vec<SocketAddr>);

impl Resolve for Fixed {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
        let r = if host == "auth.test" {
            Ok(self.0.iter().map(|a| SocketAddr::new(a.ip(), port)).collect())
        } else {
            Err(std::io::Error::other("unknown host"))
        };
        Box::pin(async move { r })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_several_addresses_counts_as_several_servers() {
    let p = pki();
    let a = TestAuth::start("a", "127.0.0.1:0".parse().unwrap(), &p).await;
    // Same port on another loopback address, as DNS would give for one name.
    let b = TestAuth::start("b", SocketAddr::new("127.0.0.2".parse().unwrap(), a.addr.port()), &p).await;
    let port = a.addr.port();
    let f = Failover::with_resolver(&[format!("auth.test:{port}")], &client_tls(&p), Arc::new(Fixed(vec![a.addr, b.addr])))
        .unwrap();
    let mut c = AuthClient::new(Channel::failover(f));
    for _ in 0..10 {
        status(&mut c).await.0.unwrap();
    }
    assert!(a.calls() >= 3 && b.calls() >= 3, "calls not spread: a {} b {}", a.calls(), b.calls());
    let t0 = Instant::now();
    a.kill();
    calls_keep_succeeding(&mut c, t0, Duration::from_secs(2), b.name).await;
    b.kill();
    let msg = status(&mut c).await.0.unwrap_err().message().to_string();
    for addr in [a.addr, b.addr] {
        assert!(msg.contains(&format!("auth.test:{port} at {addr} (")), "{msg}");
    }

    // The real resolver: `localhost` works as an auth address.
    let l = TestAuth::start("l", "127.0.0.1:0".parse().unwrap(), &p).await;
    let mut c = AuthClient::new(
        portcullis_rpc::connect_auth_lazy(&[format!("localhost:{}", l.addr.port())], &client_tls(&p)).unwrap(),
    );
    assert_eq!(status(&mut c).await.0.unwrap(), "l");
}
