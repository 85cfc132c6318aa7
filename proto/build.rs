//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["portcullis/auth/v1/auth.proto", "portcullis/tunnel/v1/tunnel.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    // Tunnel chunks as `Bytes`: decoding slices the received buffer instead of copying it.
    tonic_prost_build::configure().bytes(".portcullis.tunnel.v1.Chunk.data").compile_fds(fds)?;
    Ok(())
}
