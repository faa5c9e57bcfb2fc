//! Compiles the wire schemas with protox (pure Rust), so building needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=schemas");
    let descriptors = protox::compile(["zinfer/v1/zinfer.proto"], ["schemas"])?;
    prost_build::Config::new()
        // The JSON forms of results and telemetry are these same types, so both encodings always agree.
        .type_attribute(".zinfer.v1", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".zinfer.v1", "#[serde(default)]")
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
