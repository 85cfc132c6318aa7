//! A request body that can be sent again: the first attempt streams the caller's body and
//! records it; a retry on another server replays the record, then carries on from the
//! caller's body. Nothing waits for the body to end first, so streaming requests still flow.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tonic::Status;
use tonic::body::Body;

/// Largest body kept for a retry: gRPC's default message limit. A longer (streaming)
/// request is sent once, without retry.
const MAX_RECORDED: usize = 4 * 1024 * 1024;

struct Record {
    source: Body,
    /// Frames pulled from `source` so far, while `recording`.
    frames: Vec<Bytes>,
    /// How many frames have been pulled from `source` in all.
    pulled: usize,
    bytes: usize,
    /// False once the body outgrew [`MAX_RECORDED`] or a response arrived: no retry then.
    recording: bool,
    trailers: Option<http::HeaderMap>,
    done: bool,
}

/// The caller's body, shared by the attempts at sending it.
#[derive(Clone)]
pub(crate) struct Replay(Arc<Mutex<Record>>);

impl Replay {
    pub(crate) fn new(source: Body) -> Self {
        Replay(Arc::new(Mutex::new(Record {
            source,
            frames: Vec::new(),
            pulled: 0,
            bytes: 0,
            recording: true,
            trailers: None,
            done: false,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        // A poisoned lock only means another attempt panicked mid-poll; the record is
        // still consistent (every field is updated after the poll returns).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A body for one more attempt, starting from the first frame.
    pub(crate) fn attempt(&self) -> Body {
        Body::new(Attempt { replay: self.clone(), pos: 0, trailers_sent: false })
    }

    /// True while the whole body sent so far is on record, so another attempt can send it.
    pub(crate) fn can_retry(&self) -> bool {
        self.lock().recording
    }

    /// A response arrived: no retry will happen, so stop keeping frames.
    pub(crate) fn commit(&self) {
        let mut r = self.lock();
        r.recording = false;
        r.frames = Vec::new();
    }
}

struct Attempt {
    replay: Replay,
    pos: usize,
    trailers_sent: bool,
}

impl HttpBody for Attempt {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let mut r = this.replay.lock();
        if this.pos < r.pulled {
            // Behind the source: replay from the record (kept for exactly this case).
            return match r.frames.get(this.pos) {
                Some(f) => {
                    this.pos += 1;
                    Poll::Ready(Some(Ok(Frame::data(f.clone()))))
                }
                None => Poll::Ready(Some(Err(Status::unavailable("the request cannot be sent again")))),
            };
        }
        if r.done {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = r.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        match Pin::new(&mut r.source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                r.done = true;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    r.pulled += 1;
                    this.pos += 1;
                    if r.recording {
                        r.bytes += data.len();
                        if r.bytes > MAX_RECORDED {
                            r.recording = false;
                            r.frames = Vec::new();
                        } else {
                            r.frames.push(data.clone());
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    if let Some(t) = frame.trailers_ref() {
                        r.trailers = Some(t.clone());
                        r.done = true;
                        this.trailers_sent = true;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let r = self.replay.lock();
        r.done && self.pos >= r.pulled && self.trailers_sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_second_attempt_sends_the_same_bytes() {
        let source = Body::new(http_body_util::Full::new(Bytes::from_static(b"hello")));
        let replay = Replay::new(source);
        let first = replay.attempt().collect().await.unwrap().to_bytes();
        assert!(replay.can_retry());
        let second = replay.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(first, Bytes::from_static(b"hello"));
        assert_eq!(second, first);
        // An attempt that never read the body (connection refused) leaves it whole.
        let replay = Replay::new(Body::new(http_body_util::Full::new(Bytes::from_static(b"x"))));
        drop(replay.attempt());
        assert_eq!(replay.attempt().collect().await.unwrap().to_bytes(), Bytes::from_static(b"x"));
        replay.commit();
        assert!(!replay.can_retry());
    }
}
