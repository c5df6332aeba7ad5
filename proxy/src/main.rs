//! The `tollgate` binary: everything lives in the library; see `tollgate::main` (in `cli.rs`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tollgate::main()
}
