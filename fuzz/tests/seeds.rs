//! Replays the checked-in seed corpus (fuzz/seeds/<target>/) and any local corpus
//! (fuzz/corpus/<target>/, fuzz/artifacts/<target>/) through every target body, without libFuzzer.

use std::path::Path;

use portcullis_fuzz::TARGETS;

/// Every file of `dir`, sorted, or nothing when it does not exist.
fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    if !dir.is_dir() {
        return Vec::new();
    }
    let files = portcullis_fuzz::input_files(&[dir.to_path_buf()]).unwrap_or_else(|e| panic!("{e}"));
    files
        .into_iter()
        .filter_map(|p| match std::fs::read(&p) {
            Ok(data) => Some((p.display().to_string(), data)),
            // A fuzzer running meanwhile replaces corpus files as it reduces them.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("cannot read {}: {e}", p.display()),
        })
        .collect()
}

#[test]
fn every_target_has_seeds_and_survives_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, body) in TARGETS {
        let seeds = inputs(&root.join("seeds").join(name));
        assert!(!seeds.is_empty(), "fuzz/seeds/{name}/ has no seed files");
        let mut all = seeds;
        for extra in ["corpus", "artifacts"] {
            all.extend(inputs(&root.join(extra).join(name)));
        }
        for (path, data) in &all {
            // A panic names the input, so `cargo fuzz run <target> <path>` reproduces it.
            let outcome = std::panic::catch_unwind(|| body(data));
            assert!(outcome.is_ok(), "target {name} panicked on {path}");
        }
    }
}

#[test]
fn degenerate_inputs_do_not_panic() {
    let deep_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_yaml = format!("{}x", "- ".repeat(10_000));
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0xff; 64],
        deep_json.into_bytes(),
        deep_yaml.into_bytes(),
        // A gRPC frame header announcing 4 GiB, then nothing.
        vec![0, 0, 0xff, 0xff, 0xff, 0xff],
        b"a: &a [*a, *a]\nb: *a\n".to_vec(),
    ];
    for (name, body) in TARGETS {
        for data in &cases {
            let outcome = std::panic::catch_unwind(|| body(data));
            assert!(outcome.is_ok(), "target {name} panicked on {:?}", String::from_utf8_lossy(data));
        }
    }
}

/// The seeds meant to be valid still are, so the fuzzers start from inputs that reach deep
/// into each parser rather than from ones refused at the first byte.
#[test]
fn well_formed_seeds_still_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    for p in ["resource_yaml/role.yaml", "resource_yaml/trusted_cluster.yaml", "resource_yaml/multi.yaml"] {
        let text = String::from_utf8(read(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        portcullis_types::parse_yaml_documents(&text).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    for p in ["resource_json/role.json", "resource_json/user.json", "resource_json/node.json"] {
        let value: serde_json::Value = serde_json::from_slice(&read(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        portcullis_types::Resource::from_json_value(value).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    let body: portcullis_types::webapi::ValidateRequest =
        serde_json::from_slice(&read("validate_body/full.json")).unwrap_or_else(|e| panic!("validate_body: {e}"));
    let leaf = portcullis_proxy::web::clusters::leaf_name(&body);
    assert_eq!(leaf.map_err(|e| e.message).as_deref(), Ok("leaf.example.com"));
    let login: portcullis_types::webapi::LoginRequest =
        serde_json::from_slice(&read("login_body/full.json")).unwrap_or_else(|e| panic!("login_body: {e}"));
    assert!(portcullis_proxy::web::handlers::login_tls_public_key(&login).is_ok());
}
