//! Bodies of the fuzz targets: each feeds bytes to a parser a Portcullis server or client runs on untrusted input.
//!
//! The libFuzzer binaries in `fuzz_targets/` are one-line wrappers around these functions, and
//! `tests/seeds.rs` replays the seed corpus through them as plain tests, so CI checks the
//! targets without libFuzzer instrumentation. A target "finds" something when it panics: the
//! parsers must turn every input into a value or an error. Besides "does not panic", some
//! targets assert properties the servers rely on (what tctl accepts, auth accepts too).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;

use futures::executor::block_on;
use http_body_util::StreamBody;
use portcullis_proto::Bytes;
use portcullis_proto::tunnel::{AgentFrame, Chunk, ProxyFrame};
use portcullis_proxy::web::JSON_LIMIT;
use portcullis_proxy::web::clusters::leaf_name;
use portcullis_proxy::web::handlers::login_tls_public_key;
use portcullis_types::labels::{validate_selector, value_matches};
use portcullis_types::webapi::{LoginRequest, ValidateRequest};
use portcullis_types::{
    LabelValues, Labels, Resource, RoleMapping, Traits, expand_template, format_labels, map_roles,
    match_labels, parse_labels_arg, parse_yaml_documents, validate_role_map,
};
use tonic::codec::{Codec, Streaming};

/// The targets by name, for the seed replay and the scripts.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("resource_yaml", resource_yaml),
    ("resource_json", resource_json),
    ("role_map", role_map),
    ("labels", labels),
    ("validate_body", validate_body),
    ("login_body", login_body),
    ("tunnel_frames", tunnel_frames),
];

/// Every file named, or inside a directory named, sorted; unreadable paths are an error.
pub fn input_files(paths: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>, String> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| format!("cannot list {}: {e}", path.display()))?;
            let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// `main` of a target built without libFuzzer: runs `body` over the files (or directories of
/// files) named on the command line, as libFuzzer does when given files, so a finding
/// reproduces with a plain build. A panic is the finding; it names the file first.
pub fn replay_args(body: fn(&[u8])) -> std::process::ExitCode {
    let paths: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    let files = match input_files(&paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    for file in &files {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("cannot read {}: {e}", file.display());
                return std::process::ExitCode::from(2);
            }
        };
        eprintln!("running {}", file.display());
        body(&data);
    }
    eprintln!("{} input(s), no finding", files.len());
    std::process::ExitCode::SUCCESS
}

/// `tctl create FILE`: YAML documents to resources. Every resource tctl accepts is sent to
/// auth as JSON, so it must decode there to the same resource.
pub fn resource_yaml(data: &[u8]) {
    // tctl reads the file with read_to_string, which refuses anything but UTF-8.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(resources) = parse_yaml_documents(text) else { return };
    for r in resources {
        let json = match serde_json::to_string(&r) {
            Ok(j) => j,
            Err(e) => panic!("tctl accepted a {} it cannot encode: {e}", r.kind()),
        };
        match decode_like_auth(&json) {
            Ok(back) => assert_eq!(back, r, "the resource changed on its way to auth"),
            Err(e) => panic!("tctl accepted a {} that auth refuses: {e}\n{json}", r.kind()),
        }
    }
}

/// Auth's `UpsertResource`: a JSON resource (from any admin client). What auth accepts,
/// `tctl get` prints as YAML, and that YAML must create the same resource again.
pub fn resource_json(data: &[u8]) {
    // The JSON arrives in a protobuf string field, which is UTF-8 by construction.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(r) = decode_like_auth(text) else { return };
    let yaml = match r.to_yaml() {
        Ok(y) => y,
        Err(e) => panic!("auth accepted a {} that tctl get cannot print: {e}", r.kind()),
    };
    match parse_yaml_documents(&yaml) {
        Ok(back) => assert_eq!(back, vec![r], "tctl get | tctl create changed the resource:\n{yaml}"),
        Err(e) => panic!("tctl get printed YAML that tctl create refuses: {e}\n{yaml}"),
    }
}

/// What `services/auth/src/resources.rs` (`upsert_resource`) does with the JSON text.
fn decode_like_auth(json: &str) -> Result<Resource, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Resource::from_json_value(value).map_err(|e| e.to_string())
}

/// `role_map` rules of a trusted cluster, applied to a root user's roles as the leaf does at
/// every login. Input lines: `@ROLE` is one of the user's roles; any other line is a rule,
/// `REMOTE<TAB>LOCAL<TAB>LOCAL...`.
pub fn role_map(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut rules = Vec::new();
    let mut roles = Vec::new();
    for line in text.split('\n') {
        if let Some(role) = line.strip_prefix('@') {
            roles.push(role.to_string());
        } else {
            let mut fields = line.split('\t');
            let remote = fields.next().unwrap_or_default();
            rules.push(RoleMapping::new(remote, fields.map(str::to_string).collect()));
        }
    }
    let valid = validate_role_map(&rules);
    let mapped = map_roles(&rules, &roles);
    if valid.is_ok() {
        // A map that passed `tctl create` must never fail a login later.
        let mapped = match mapped {
            Ok(m) => m,
            Err(e) => panic!("a validated role map failed at login: {e}"),
        };
        assert!(mapped.iter().all(|r| !r.is_empty()), "mapped to an empty role name: {mapped:?}");
    }
}

/// Label selectors (`node_labels`, `cluster_labels`) with trait templates, matched against a
/// resource's labels, and the `--labels k=v,...` syntax. Input lines: `s KEY=V1,V2` adds a
/// selector key, `l KEY=VALUE` a resource label, `t NAME=V1,V2` a user trait; any other line is
/// parsed as a `--labels` argument.
pub fn labels(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut selector = Labels::new();
    let mut resource = BTreeMap::new();
    let mut traits = Traits::new();
    let split = |rest: &str| -> (String, Vec<String>) {
        let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
        (k.to_string(), v.split(',').map(str::to_string).collect())
    };
    for line in text.split('\n') {
        if let Some(rest) = line.strip_prefix("s ") {
            let (k, v) = split(rest);
            selector.insert(k, LabelValues(v));
        } else if let Some(rest) = line.strip_prefix("l ") {
            let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
            resource.insert(k.to_string(), v.to_string());
        } else if let Some(rest) = line.strip_prefix("t ") {
            let (k, v) = split(rest);
            traits.insert(k, v);
        } else if let Ok(parsed) = parse_labels_arg(line) {
            // What `--labels` accepts, printed as tables print it, reads back the same.
            let again = parse_labels_arg(&format_labels(&parsed));
            assert_eq!(again.ok().as_ref(), Some(&parsed), "labels changed when printed and read back");
        }
    }
    let _ = validate_selector(&selector, "spec.allow.node_labels");
    let _ = match_labels(&selector, &resource, &traits);
    for values in selector.values() {
        for pattern in values.values() {
            for expanded in expand_template(pattern, &traits).unwrap_or_default() {
                for value in resource.values() {
                    let _ = value_matches(&expanded, value);
                }
            }
        }
    }
}

/// `POST /webapi/trustedclusters/validate` on the root proxy (no client certificate: anyone
/// can send it): the JSON body as the web server decodes it, the route's own checks, then the
/// cluster-name rule auth applies to the name.
pub fn validate_body(data: &[u8]) {
    // The web server refuses larger bodies before decoding them (web::body).
    if data.len() > JSON_LIMIT {
        return;
    }
    let Ok(body) = serde_json::from_slice::<ValidateRequest>(data) else { return };
    if let Ok(leaf) = leaf_name(&body) {
        let _ = portcullis_types::validate_cluster_name(&leaf);
    }
}

/// `POST /webapi/login` on the proxy (unauthenticated): the JSON body and the route's checks.
pub fn login_body(data: &[u8]) {
    if data.len() > JSON_LIMIT {
        return;
    }
    let Ok(body) = serde_json::from_slice::<LoginRequest>(data) else { return };
    let _ = login_tls_public_key(&body);
}

/// The reverse tunnel's gRPC streams: length-prefixed protobuf messages, decoded by tonic as
/// the proxy decodes an agent's `Control` and `Dial` streams and the agent the proxy's. The
/// first byte picks the stream and how the rest is cut into HTTP/2 DATA frames (messages
/// split across frames, several messages in one frame).
pub fn tunnel_frames(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let piece = usize::from(first >> 2) + 1;
    match first & 3 {
        0 => decode_all::<AgentFrame>(rest, piece, true),
        1 => decode_all::<Chunk>(rest, piece, true),
        2 => decode_all::<ProxyFrame>(rest, piece, false),
        _ => decode_all::<Chunk>(rest, piece, false),
    }
}

/// Reads every message of a stream made of `data` until its end or the first error.
fn decode_all<M>(data: &[u8], piece: usize, server: bool)
where
    M: prost::Message + Default + Send + 'static,
{
    let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> =
        data.chunks(piece).map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c)))).collect();
    let body = StreamBody::new(futures::stream::iter(frames));
    let decoder = tonic_prost::ProstCodec::<M, M>::default().decoder();
    // No compression and the default message limit: what the tunnel server and client use.
    let mut stream: Streaming<M> = if server {
        Streaming::new_request(decoder, body, None, None)
    } else {
        Streaming::new_response(decoder, body, http::StatusCode::OK, None, None)
    };
    block_on(async {
        while let Ok(Some(_)) = stream.message().await {}
    });
}
