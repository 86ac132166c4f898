//! `fluxlit doctor [TARGET] [--json] [--strict] [--warnings-only] [--verbose]`: one
//! PASS/WARN/FAIL row per check (`fluxlit_doctor`).
//!
//! Exit codes (reference §1.6): 1 when a row is FAIL and `--warnings-only` is not given (and
//! when the working directory or the async runtime is unavailable), else 0; 2 for usage errors
//! (clap).

use std::process::ExitCode;

use fluxlit_config::{Environment, LoadOptions};
use fluxlit_doctor::Options;
use fluxlit_doctor::live::LiveOptions;

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
    let options = Options {
        strict: args.strict,
        warnings_only: args.warnings_only,
        verbose: args.verbose,
    };
    let report = match &args.live {
        Some(url) => {
            let live = match live_options(url, &opts) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("fluxlit doctor --live: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime.block_on(fluxlit_doctor::live::check_live(&live))
        }
        None => runtime.block_on(fluxlit_doctor::diagnose_with(&opts, &options)),
    };
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

/// `--live URL`, or (empty) this project's gateway on loopback: `http://127.0.0.1:PORT{root_path}/`
/// from the configuration. The API mount is the configuration's either way.
fn live_options(url: &str, opts: &LoadOptions) -> Result<LiveOptions, String> {
    let loaded = fluxlit_config::load(opts);
    let url = if url.is_empty() {
        let s = &loaded
            .as_ref()
            .map_err(|e| format!("no URL given and the configuration has errors:\n{e}"))?
            .settings;
        format!("http://127.0.0.1:{}{}/", s.gateway_port, s.root_path)
    } else {
        url.to_owned()
    };
    let mut live = LiveOptions::new(url);
    if let Ok(l) = &loaded {
        live.api_mount.clone_from(&l.settings.api_mount_path);
    }
    Ok(live)
}
