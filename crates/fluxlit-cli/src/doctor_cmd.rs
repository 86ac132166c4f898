//! `fluxlit doctor [TARGET] [--json] [--strict] [--warnings-only] [--verbose]`: one
//! PASS/WARN/FAIL row per check (`fluxlit_doctor`).
//!
//! Exit codes (reference §1.6): 1 when a row is FAIL and `--warnings-only` is not given (and
//! when the working directory or the async runtime is unavailable), else 0; 2 for usage errors
//! (clap).

use std::process::ExitCode;

use fluxlit_config::Environment;
use fluxlit_doctor::Options;

use crate::DoctorArgs;

pub(crate) fn main(args: DoctorArgs, env: Environment) -> ExitCode {
    let opts = match args.config.load_options(env) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fluxlit: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fluxlit: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let options = Options {
        strict: args.strict,
        warnings_only: args.warnings_only,
        verbose: args.verbose,
    };
    let report = runtime.block_on(fluxlit_doctor::diagnose_with(&opts, &options));
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
