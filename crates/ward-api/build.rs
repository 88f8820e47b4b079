//! Compiles the .proto files with protox (pure Rust), so no system `protoc`
//! is needed.
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
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
