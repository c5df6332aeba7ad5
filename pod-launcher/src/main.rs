//! The `tollgate-launch` binary: everything lives in the library; see `tollgate_launch::cli`.
fn main() -> std::process::ExitCode {
    tollgate_launch::cli::main()
}
