//! Compiles proto/ with protox (pure Rust, no protoc) into prost types.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a build script compiled in
    // one checkout can be reused for another (a git worktree sharing the target directory).
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files =
        ["hermes/v1/envelope.proto", "hermes/v1/publish.proto", "hermes/v1/events.proto", "hermes/v1/cluster.proto"];
    let fds = protox::compile(files, [&root])?;
    println!("cargo:rerun-if-changed={}", root.display());
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
