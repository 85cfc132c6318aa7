//! Framing both ends build and parse: control frames, heartbeats, the heartbeat interval a
//! `Welcome` announces, and the dial id a `Dial` stream carries in its metadata.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_proto::tunnel::agent_frame::Msg as AgentMsg;
use portcullis_proto::tunnel::proxy_frame::Msg as ProxyMsg;
use portcullis_proto::tunnel::{AgentFrame, Heartbeat, ProxyFrame};
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::{DEFAULT_HEARTBEAT, DIAL_ID_HEADER};

/// A frame that breaks the protocol. The messages reach the other end as gRPC statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the {DIAL_ID_HEADER} metadata is missing or not a number")]
    DialId,
}

impl From<FrameError> for tonic::Status {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::DialId => tonic::Status::invalid_argument(e.to_string()),
        }
    }
}

/// An agent's control frame carrying `msg`.
pub fn agent_frame(msg: AgentMsg) -> AgentFrame {
    AgentFrame { msg: Some(msg) }
}

/// A proxy's control frame carrying `msg`.
pub fn proxy_frame(msg: ProxyMsg) -> ProxyFrame {
    ProxyFrame { msg: Some(msg) }
}

/// A heartbeat stamped with the current time (milliseconds since the Unix epoch; 0 for a clock
/// before it).
pub fn heartbeat_now() -> Heartbeat {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Heartbeat { unix_millis: i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX) }
}

/// `Welcome.heartbeat_seconds` for a proxy beating every `interval`: whole seconds, at least 1.
pub fn heartbeat_seconds(interval: Duration) -> u32 {
    u32::try_from(interval.as_secs().max(1)).unwrap_or(DEFAULT_HEARTBEAT.as_secs() as u32)
}

/// The heartbeat interval a `Welcome` announces; [`DEFAULT_HEARTBEAT`] when it names none (0).
pub fn heartbeat_interval(heartbeat_seconds: u32) -> Duration {
    match heartbeat_seconds {
        0 => DEFAULT_HEARTBEAT,
        s => Duration::from_secs(u64::from(s)),
    }
}

/// Names the dial a `Dial` stream answers, in the stream request's metadata.
pub fn set_dial_id(metadata: &mut MetadataMap, dial_id: u64) {
    metadata.insert(DIAL_ID_HEADER, MetadataValue::from(dial_id));
}

/// The dial a `Dial` stream answers, from its request's metadata.
pub fn dial_id(metadata: &MetadataMap) -> Result<u64, FrameError> {
    metadata
        .get(DIAL_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or(FrameError::DialId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dial_id_round_trips_through_metadata() {
        let mut meta = MetadataMap::new();
        assert_eq!(dial_id(&meta), Err(FrameError::DialId));
        set_dial_id(&mut meta, 987_654);
        assert_eq!(dial_id(&meta), Ok(987_654));
        meta.insert(DIAL_ID_HEADER, MetadataValue::from_static("not-a-number"));
        let status = tonic::Status::from(dial_id(&meta).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "the x-portcullis-dial-id metadata is missing or not a number");
    }

    #[test]
    fn welcome_heartbeats_are_whole_seconds_and_zero_means_the_default() {
        assert_eq!(heartbeat_seconds(Duration::from_millis(200)), 1);
        assert_eq!(heartbeat_seconds(DEFAULT_HEARTBEAT), 5);
        assert_eq!(heartbeat_interval(0), DEFAULT_HEARTBEAT);
        assert_eq!(heartbeat_interval(2), Duration::from_secs(2));
    }

    #[test]
    fn heartbeats_carry_the_time() {
        assert!(heartbeat_now().unix_millis > 1_600_000_000_000);
    }
}
