//! The all-in-one binary for process-level tests (same entry point as `services/trialbridge`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    trialbridge::main_with_args(std::env::args_os()).await
}
