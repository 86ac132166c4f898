//! `fluxlit reload`: asks a running `fluxlit run` for a rolling restart of its Streamlit workers
//! (SIGHUP through its pidfile, found as `fluxlit shutdown` finds it; [`fluxlit::stop::reload`],
//! docs/scaling.md "Rolling restarts").

use std::process::ExitCode;

use fluxlit_config::Environment;

use super::ReloadArgs;

pub(crate) fn main(args: ReloadArgs, env: Environment) -> ExitCode {
    let pidfile = match super::shutdown_cmd::resolve_pidfile(
        args.pidfile.as_deref(),
        args.config,
        env,
        "fluxlit reload",
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fluxlit reload: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = fluxlit::stop::reload(&pidfile);
    if outcome.exit_code() == 0 {
        println!("{outcome}");
    } else {
        eprintln!("fluxlit reload: {outcome}");
    }
    ExitCode::from(outcome.exit_code())
}
