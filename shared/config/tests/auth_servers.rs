//! `teleport.auth_servers` and `--auth-server`: several auth servers, from the file or the
//! command line (repeated or comma-separated), each with the default port when it has none.
// Test code: a panic is how a test fails (the workspace denies unwrap/expect elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use portcullis_config::{CommonFlags, FileConfig, NodeSettings};

#[derive(Parser)]
struct Start {
    #[command(flatten)]
    common: CommonFlags,
}

fn flags(args: &[&str]) -> CommonFlags {
    let mut v = vec!["start"];
    v.extend_from_slice(args);
    Start::try_parse_from(v).unwrap_or_else(|e| panic!("{args:?}: {e}")).common
}

fn servers(yaml: &str, args: &[&str]) -> Result<Vec<String>, String> {
    let file = FileConfig::from_yaml(yaml).map_err(|e| e.to_string())?;
    NodeSettings::from_parts(&file, &flags(args)).map(|n| n.common.auth_servers).map_err(|e| e.to_string())
}

#[test]
fn the_file_lists_several_auth_servers() {
    let yaml = "teleport:\n  auth_servers: [auth-a:3025, auth-b, \"10.0.0.7:4025\"]\n";
    assert_eq!(servers(yaml, &[]).unwrap(), vec!["auth-a:3025", "auth-b:3025", "10.0.0.7:4025"]);
    // The single-address key comes first, and an address given twice counts once.
    let yaml = "teleport:\n  auth_server: auth-a\n  auth_servers: [auth-b:3025, auth-a:3025]\n";
    assert_eq!(servers(yaml, &[]).unwrap(), vec!["auth-a:3025", "auth-b:3025"]);
}

#[test]
fn the_flag_repeats_or_takes_commas_and_replaces_the_file() {
    let yaml = "teleport:\n  auth_servers: [file-a:3025]\n";
    assert_eq!(servers(yaml, &["--auth-server", "a:1,b"]).unwrap(), vec!["a:1", "b:3025"]);
    assert_eq!(
        servers(yaml, &["--auth-server=a:1", "--auth-server", "[::1]:2", "--auth-server=c"]).unwrap(),
        vec!["a:1", "[::1]:2", "c:3025"]
    );
    assert_eq!(servers(yaml, &[]).unwrap(), vec!["file-a:3025"]);
}

#[test]
fn bad_addresses_are_named() {
    let e = servers("", &["--auth-server", "a:1,,b"]).unwrap_err();
    assert!(e.contains("--auth-server") && e.contains("empty address"), "{e}");
    let e = servers("teleport:\n  auth_servers: [\"auth a:3025\"]\n", &[]).unwrap_err();
    assert!(e.contains("teleport.auth_servers") && e.contains("\"auth a:3025\" is not a host:port address"), "{e}");
    let e = servers("", &["--auth-server=auth:99999"]).unwrap_err();
    assert!(e.contains("\"auth:99999\" is not a host:port address"), "{e}");
    let e = servers("", &["--auth-server=https://auth:3025"]).unwrap_err();
    assert!(e.contains("is not a host:port address"), "{e}");
}
