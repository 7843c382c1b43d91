//! Compiles the SPIFFE Workload API definition with protox (pure Rust, no `protoc` binary) and
//! generates the tonic server; clients come from the `spiffe` crate and py-spiffe in tests.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/workload.proto");
    let descriptors = protox::compile(["proto/workload.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(false).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
