//! `trialbridge`: see the `trialbridge` library for the commands.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    trialbridge::main_with_args(std::env::args_os()).await
}
