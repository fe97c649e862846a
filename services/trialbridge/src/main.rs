//! `trialbridge`: see the `trialbridge` library for the commands.

// mimalloc instead of glibc's malloc: allocation and free were a fifth of the CPU of a
// PostgreSQL history page and an eighth of the gateway's per message (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    trialbridge::main_with_args(std::env::args_os()).await
}
