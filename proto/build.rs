//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["portcullis/auth/v1/auth.proto", "portcullis/tunnel/v1/tunnel.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    // Tunnel chunks as `Bytes`: decoding slices the received buffer instead of copying it.
    // CertAuthorities is also the JSON shape of CAs in the web API (trusted-cluster
    // validation, login answers): one definition for every side of that exchange.
    let cas_json = "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]";
    tonic_prost_build::configure()
        .bytes(".portcullis.tunnel.v1.Chunk.data")
        .type_attribute(".portcullis.auth.v1.CertAuthorities", cas_json)
        .compile_fds(fds)?;
    // The Auth service again, with default stubs (answering `unimplemented`), so the test
    // doubles of the auth service need not grow a method for every call added later. Only
    // Auth: stubs change how streaming calls (the tunnel's) are declared.
    let auth_only = protox::compile([protos[0]], ["."])?;
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .type_attribute(".portcullis.auth.v1.CertAuthorities", cas_json)
        .compile_fds(auth_only)?;
    Ok(())
}
