//! Compiles the .proto files with protox (pure Rust), so no system `protoc`
//! is needed.
//!
//! The control plane's side of `ward.v1` (the `Identity` server, which
//! holds a watch stream per sidecar) is generated apart, into
//! `OUT_DIR/server/`, with ward's codec (`crate::codec`). Everything else
//! (the `ward.v1` messages and client, the Workload API and the demo
//! service, which run in the sidecar) keeps tonic's prost codec, so the
//! sidecar's code is the same as it was.
const WARD: &str = "ward/v1/ward.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/ward/v1/ward.proto",
        "proto/ward/demo/v1/demo.proto",
        "proto/spiffe/workload.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // ward.v1 imports nothing; the others bring their imports along.
    let mut ward = fds.clone();
    ward.file.retain(|f| f.name.as_deref() == Some(WARD));
    let mut others = fds;
    others.file.retain(|f| f.name.as_deref() != Some(WARD));
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(ward.clone())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(others)?;
    let server = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("server");
    std::fs::create_dir_all(&server)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .extern_path(".ward.v1", "crate::v1")
        .codec_path("crate::codec::Codec")
        .out_dir(server)
        .compile_fds(ward)?;
    Ok(())
}
