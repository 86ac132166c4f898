//! `fluxlit doctor`.

use std::process::ExitCode;

use fluxlit_config::Environment;

use super::DoctorArgs;

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
    let report = runtime.block_on(fluxlit_doctor::diagnose(&opts));
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
