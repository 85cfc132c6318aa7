//! A tiny OTLP/gRPC trace sink for benchmarks: accepts every export, counts the spans, keeps nothing.
// Benchmark code: a panic is how it fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};

/// Listens for OTLP trace exports and discards them, so tracing can be switched on in a
/// benchmark without a real collector; prints the span count when stopped.
#[derive(Parser)]
#[command(name = "otlp-sink")]
struct Args {
    /// Address to listen on (port 0: any free port; the bound address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

#[derive(Clone, Default)]
struct Counter {
    spans: Arc<AtomicU64>,
    exports: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = req
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|rs| rs.scope_spans.iter())
            .map(|ss| ss.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        self.exports.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("no local address")?;
    // The benchmark script reads this line to learn the port.
    println!("listening on {addr}");
    let counter = Counter::default();
    // Like a real collector (Go sets TCP_NODELAY by default), so tsh's flush is not
    // held up by Nagle and delayed ACKs here.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(counter.clone()))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("OTLP server failed")?;
    println!(
        "received {} spans in {} exports",
        counter.spans.load(Ordering::Relaxed),
        counter.exports.load(Ordering::Relaxed)
    );
    Ok(())
}
