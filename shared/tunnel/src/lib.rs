//! The reverse-tunnel wire protocol, defined once for both ends (the root proxy's tunnel server
//! and the leaf's tunnel agent): its constants, the framing both build and parse, and
//! [`ChunkStream`], the byte stream a `Dial` stream carries. See docs/tunnel-protocol.md.
#![forbid(unsafe_code)]

pub mod frame;
pub mod stream;

use std::time::Duration;

pub use frame::{
    FrameError, agent_frame, dial_id, heartbeat_interval, heartbeat_now, heartbeat_seconds, proxy_frame,
    set_dial_id,
};
pub use stream::{ChunkItem, ChunkReader, ChunkStream, ChunkWriter, DialStream};

/// The gRPC metadata naming the `DialRequest` a `Dial` stream answers (its `dial_id`).
pub const DIAL_ID_HEADER: &str = "x-portcullis-dial-id";

/// Largest payload of one `Chunk`. Both ends accept HTTP/2 frames larger than this, so a chunk
/// travels as one frame.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// Chunks queued towards the other end of one `Dial` stream; HTTP/2 flow control does the rest.
pub const CHUNK_QUEUE: usize = 16;

/// Heartbeat interval of a control stream when the proxy's `Welcome` names none (and the
/// proxy's default).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// Heartbeat intervals without a word from the other side before a tunnel counts as dead and is
/// dropped (by either side).
pub const MISSED_HEARTBEATS: u32 = 3;

/// How long a tunnel with heartbeats every `heartbeat` may stay silent before it is dropped:
/// [`MISSED_HEARTBEATS`] intervals.
pub fn dead_after(heartbeat: Duration) -> Duration {
    heartbeat.saturating_mul(MISSED_HEARTBEATS)
}

/// The host name of a `DialRequest` that stands for the leaf's own auth service; only dials the
/// root proxy makes for itself (`for_proxy`) may use it.
pub const AUTH_HOST: &str = "@auth";

/// The audit event written for a dial through the tunnel (on the leaf for every dial, on the
/// root for a reserved target the proxy refuses).
pub const DIAL_EVENT: &str = "tunnel.dial";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_is_dead_after_three_heartbeats() {
        assert_eq!(dead_after(DEFAULT_HEARTBEAT), Duration::from_secs(15));
        assert_eq!(dead_after(Duration::from_secs(1)), Duration::from_secs(3));
        assert_eq!(dead_after(Duration::MAX), Duration::MAX);
    }
}
