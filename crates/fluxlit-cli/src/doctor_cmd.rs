//! `fluxlit doctor`.

use std::process::ExitCode;

use fluxlit_config::{Environment, LoadOptions};
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
        None => runtime.block_on(fluxlit_doctor::diagnose(&opts)),
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
