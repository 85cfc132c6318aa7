//! The identity of the caller of a gRPC method, read from its verified client certificate.

use portcullis_pki::x509::{TlsIdentity, parse_identity};
use tonic::{Request, Status};

/// The caller's identity; `unauthenticated` when it presented no certificate.
pub fn peer_identity<T>(req: &Request<T>) -> Result<TlsIdentity, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required for this call"))?;
    let first = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required for this call"))?;
    let id = parse_identity(first.as_ref())
        .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
    if id.not_after < time_now() {
        return Err(Status::unauthenticated("client certificate has expired"));
    }
    Ok(id)
}

fn time_now() -> i64 {
    portcullis_pki::unix_now() as i64
}
