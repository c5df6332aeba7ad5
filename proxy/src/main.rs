//! The `tollgate` binary: everything lives in the library; see `tollgate::main` (in `cli.rs`).
fn main() -> std::process::ExitCode {
    tollgate::main()
}
