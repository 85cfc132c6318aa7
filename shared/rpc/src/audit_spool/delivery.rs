//! The audit spool's delivery task: reads events oldest first, sends them one at a time, and moves the cursor only once auth acknowledged.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tonic::Code;

use super::disk::{self, Cursor};
use super::{AuditSender, CORRUPT, REFUSED, Shared, SpoolError};

/// How often an idle delivery task looks at the disk without being woken (a safety net:
/// every write wakes it).
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// One line read from a segment: bytes `start..end` of segment `seq`.
struct Pending {
    seq: u64,
    start: u64,
    end: u64,
    line: Vec<u8>,
}

/// An open segment, positioned where the last read stopped, so consecutive events do not
/// reopen the file.
struct Reader {
    seq: u64,
    pos: u64,
    file: BufReader<File>,
}

/// Delivers until `stop` turns true or its sender is gone.
pub(super) async fn run(shared: Arc<Shared>, sender: Arc<dyn AuditSender>, mut stop: watch::Receiver<bool>) {
    let mut reader: Option<Reader> = None;
    let mut retry = shared.opts.retry_min;
    let mut outage = false;
    loop {
        if *stop.borrow() {
            return;
        }
        match next_line(&shared, &mut reader) {
            Ok(Some(p)) => {
                if !deliver(&shared, sender.as_ref(), p, &mut stop, &mut retry, &mut outage).await {
                    return;
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_RECHECK) => {}
                    _ = stop.changed() => return,
                }
            }
            Err(e) => {
                reader = None;
                tracing::error!("audit spool: {e}; retrying in {retry:?}");
                if !pause(&mut stop, &mut retry, shared.opts.retry_max).await {
                    return;
                }
            }
        }
    }
}

/// Sends `p` until auth acknowledges or refuses it for good; false when the spool stopped.
async fn deliver(
    shared: &Shared,
    sender: &dyn AuditSender,
    p: Pending,
    stop: &mut watch::Receiver<bool>,
    retry: &mut Duration,
    outage: &mut bool,
) -> bool {
    let (json, id, kind) = match parse(&p.line) {
        Ok(parsed) => parsed,
        Err(reason) => {
            tracing::warn!(segment = p.seq, offset = p.start, "audit spool: skipping an unreadable line ({reason})");
            shared.dropped.get_or_create(&CORRUPT).inc();
            advance(shared, &p);
            return true;
        }
    };
    loop {
        let call = tokio::time::timeout(shared.opts.send_timeout, sender.send(json.clone()));
        let outcome = tokio::select! {
            r = call => r,
            _ = stop.changed() => return false,
        };
        let reason = match outcome {
            Ok(Ok(())) => {
                if *outage {
                    tracing::info!("auth acknowledges audit events again; delivering the ones kept on disk");
                    *outage = false;
                }
                *retry = shared.opts.retry_min;
                advance(shared, &p);
                return true;
            }
            Ok(Err(status)) if matches!(status.code(), Code::PermissionDenied | Code::InvalidArgument) => {
                // Retrying cannot help: the same event would be refused forever and hold
                // up every event behind it.
                tracing::error!(id = %id, event = %kind, "auth refused an audit event for good; dropped it: {}", status.message());
                shared.dropped.get_or_create(&REFUSED).inc();
                advance(shared, &p);
                return true;
            }
            Ok(Err(status)) => status.message().to_string(),
            Err(_) => format!("no answer in {:?}", shared.opts.send_timeout),
        };
        if !*outage {
            tracing::warn!(
                queued = shared.lock().queued,
                "cannot deliver audit events to auth ({reason}); keeping them on disk and retrying"
            );
            *outage = true;
        } else {
            tracing::debug!(id = %id, "audit event still not delivered: {reason}");
        }
        if !pause(stop, retry, shared.opts.retry_max).await {
            return false;
        }
    }
}

/// Sleeps `retry` (then doubles it, up to `max`); false when the spool stopped meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, retry: &mut Duration, max: Duration) -> bool {
    let wait = *retry;
    *retry = (*retry * 2).min(max);
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.changed() => false,
    }
}

/// The event's JSON text, id and type; why not when the line is no event.
fn parse(line: &[u8]) -> Result<(String, String, String), String> {
    let body = line.strip_suffix(b"\n").ok_or("no line end: a write cut short by a crash")?;
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let id = v.get("id").and_then(Value::as_str).ok_or("no id")?.to_string();
    let kind = v.get("event").and_then(Value::as_str).unwrap_or("?").to_string();
    // serde_json accepted it, so it is UTF-8.
    let text = String::from_utf8(body.to_vec()).map_err(|e| format!("not UTF-8: {e}"))?;
    Ok((text, id, kind))
}

/// Moves the cursor past `p`, unless the cap dropped its segment meanwhile.
fn advance(shared: &Shared, p: &Pending) {
    let mut st = shared.lock();
    if st.cursor != (Cursor { seq: p.seq, offset: p.start }) {
        return;
    }
    st.cursor.offset = p.end;
    st.delivered_in_cursor += 1;
    st.queued = st.queued.saturating_sub(1);
    shared.set_queued(&st);
    shared.save_cursor(&st);
}

/// The next line to deliver, or none when everything written was delivered. Finished
/// segments are removed on the way.
fn next_line(shared: &Shared, reader: &mut Option<Reader>) -> Result<Option<Pending>, SpoolError> {
    loop {
        let (cursor, end) = {
            let mut st = shared.lock();
            let cursor = st.cursor;
            let Some(seg) = st.segments.iter().find(|s| s.seq >= cursor.seq).copied() else {
                return Ok(None);
            };
            if seg.seq != cursor.seq {
                st.cursor = Cursor { seq: seg.seq, offset: 0 };
                st.delivered_in_cursor = 0;
                continue;
            }
            if cursor.offset < seg.bytes {
                (cursor, seg.bytes)
            } else if seg.seq == st.active().seq {
                return Ok(None);
            } else {
                // Every line of a closed segment was delivered: the file goes.
                st.segments.retain(|s| s.seq != seg.seq);
                shared.remove_segment(&mut st, seg);
                continue;
            }
        };
        let path = disk::segment_path(&shared.dir, cursor.seq);
        let positioned = matches!(reader, Some(r) if r.seq == cursor.seq && r.pos == cursor.offset);
        if !positioned {
            let mut f = match File::open(&path) {
                Ok(f) => f,
                // Dropped by the cap since the lock was released: look again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SpoolError::io("opening", &path, e)),
            };
            f.seek(SeekFrom::Start(cursor.offset)).map_err(|e| SpoolError::io("reading", &path, e))?;
            *reader = Some(Reader { seq: cursor.seq, pos: cursor.offset, file: BufReader::new(f) });
        }
        let Some(r) = reader.as_mut() else { continue };
        let mut line = Vec::new();
        let read = (&mut r.file).take(end - cursor.offset).read_until(b'\n', &mut line);
        if let Err(e) = read {
            *reader = None;
            return Err(SpoolError::io("reading", &path, e));
        }
        if line.is_empty() {
            // The file is shorter than recorded (lost in a power cut before its fsync):
            // nothing left to read in it.
            *reader = None;
            tracing::warn!(segment = cursor.seq, "audit spool: {} ends early; skipping the rest", path.display());
            return Ok(Some(Pending { seq: cursor.seq, start: cursor.offset, end, line }));
        }
        r.pos += line.len() as u64;
        return Ok(Some(Pending { seq: cursor.seq, start: cursor.offset, end: r.pos, line }));
    }
}
