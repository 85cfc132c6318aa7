//! Calls to the auth service under the proxy's one timeout, and which failures mean that no
//! auth server answered (so the access cache answers instead).

use std::time::Duration;

use tonic::Status;

/// How long any call to the auth service may take before the caller gives up.
pub const AUTH_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Awaits an auth call with [`AUTH_CALL_TIMEOUT`], unwrapping the response.
pub async fn auth_call<T>(
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(AUTH_CALL_TIMEOUT, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::unavailable(format!(
            "no answer within {}s",
            AUTH_CALL_TIMEOUT.as_secs()
        ))),
    }
}

/// Whether `status` says no auth server could be reached (or none answered in time), so the
/// access cache's answer stands in for auth's. `Unknown` is what a connection broken mid-call
/// gives; auth itself never answers with it (its errors map to definite codes).
pub fn auth_unreachable(status: &Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown)
}
