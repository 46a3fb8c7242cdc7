//! The `custos` binary: a thin layer over the library (see `cli`).

mod cli;

/// mimalloc: the backup pipeline allocates many small buffers across
/// threads, where glibc's allocator spent over a quarter of the CPU time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
