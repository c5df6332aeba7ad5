//! `tollgate-init`: parse args → validate the config → run the subcommand → exit code
//! (the codes are listed in `error.rs` and the README).

use std::process::ExitCode;

use clap::Parser;
use tollgate_init::cli::{Args, Command};
use tollgate_init::config::Config;
use tollgate_init::error::EXIT_USAGE;
use tollgate_init::{commands, host, verify};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors; everything else is a usage error.
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    if let Some(Command::Probe(probe)) = &args.command {
        return ExitCode::from(verify::probe::child_main(probe));
    }
    let result = Config::from_args(&args, host::kernel_has_ipv6).and_then(|cfg| {
        for w in &cfg.warnings {
            eprintln!("tollgate-init: warning: {w}");
        }
        match args.command {
            None | Some(Command::Install) => commands::install(&cfg),
            Some(Command::Uninstall) => commands::uninstall(&cfg),
            Some(Command::Verify) => commands::verify(&cfg),
            Some(Command::Probe(_)) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-init: error: {e} (exit code {})", e.exit_code());
            ExitCode::from(e.exit_code())
        }
    }
}
