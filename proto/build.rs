//! Compiles the wire schemas with protox (pure Rust), so building needs no `protoc` binary.

const SKIP_NONE: &str = "#[serde(skip_serializing_if = \"Option::is_none\")]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=schemas");
    let descriptors = protox::compile(["zinfer/v1/zinfer.proto"], ["schemas"])?;
    prost_build::Config::new()
        // The JSON forms of results and telemetry are these same types, so both encodings always agree.
        .type_attribute(".zinfer.v1", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".zinfer.v1", "#[serde(default)]")
        // A result carries at most one kind of prediction beyond a classification: the others are left out of its
        // JSON rather than written as nulls (a sensor result would carry three per window).
        .field_attribute(".zinfer.v1.Result.values", SKIP_NONE)
        .field_attribute(".zinfer.v1.Result.embedding", SKIP_NONE)
        .field_attribute(".zinfer.v1.Result.anomaly", SKIP_NONE)
        .field_attribute(".zinfer.v1.WindowResult.values", SKIP_NONE)
        .field_attribute(".zinfer.v1.WindowResult.embedding", SKIP_NONE)
        .field_attribute(".zinfer.v1.WindowResult.anomaly", SKIP_NONE)
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
