//! Compiles the gRPC contract with a vendored `protoc`, so a fresh machine needs no system
//! protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Sorted maps: deterministic encodings (the SigV4 payload hash of our own client) and
        // encryption contexts that are already in canonical order.
        .btree_map(".")
        .file_descriptor_set_path(out.join("p11kms_descriptor.bin"))
        .compile_protos(&["proto/p11kms/v1/kms.proto"], &["proto"])?;
    Ok(())
}
