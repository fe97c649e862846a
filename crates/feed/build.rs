//! Compiles `proto/trialbridge/v1/changes.proto` with `protox` (pure Rust, no `protoc`).
fn main() {
    let root = "../../proto";
    let file = format!("{root}/trialbridge/v1/changes.proto");
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([&file], [root]).expect("changes.proto compiles");
    tonic_build::configure()
        .compile_fds(fds)
        .expect("code generation for changes.proto");
}
