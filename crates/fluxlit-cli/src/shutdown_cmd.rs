//! `fluxlit shutdown`: stops a running `fluxlit run` through its pidfile and waits until the
//! gateway and its sidecars are gone ([`fluxlit::stop`]; reference §1.5 messages and exit
//! codes).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use fluxlit::stop::{StopOptions, stop};
use fluxlit_config::{CliOverrides, Environment, LoadOptions};

use super::ShutdownArgs;

pub(crate) fn main(args: ShutdownArgs, env: Environment) -> ExitCode {
    let wait = match parse_wait(&args.wait) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("fluxlit shutdown: {e}");
            return ExitCode::from(2);
        }
    };
    let pidfile = match resolve_pidfile(
        args.pidfile.as_deref(),
        args.config.clone(),
        env,
        "fluxlit shutdown",
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fluxlit shutdown: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = stop(
        &pidfile,
        StopOptions {
            wait,
            force: args.force,
        },
    );
    println!("{outcome}");
    ExitCode::from(outcome.exit_code())
}

/// `--wait SECONDS`: a finite number ≥ 0, at most a day.
fn parse_wait(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.0..=86_400.0).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            format!("--wait {text:?}: expected seconds, a number from 0 to 86400 (e.g. 5 or 0.5)")
        })
}

/// `--pidfile`, else the `pidfile` setting as `fluxlit run` reads it (`FLUXLIT_PIDFILE`,
/// `.env`, the project file, default `.fluxlit.pid`), relative to the working directory.
/// A configuration with errors does not stop the command (`fluxlit shutdown`, `fluxlit
/// reload`, named by `command` in messages): its problems are printed and `FLUXLIT_PIDFILE` or
/// the default is used.
pub(crate) fn resolve_pidfile(
    pidfile: Option<&std::path::Path>,
    config: Option<PathBuf>,
    env: Environment,
    command: &str,
) -> Result<PathBuf, String> {
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
    if let Some(p) = pidfile {
        return Ok(cwd.join(p));
    }
    let fallback = env
        .get("FLUXLIT_PIDFILE")
        .filter(|v| !v.trim().is_empty())
        .unwrap_or(".fluxlit.pid")
        .to_owned();
    let mut opts = LoadOptions::new(&cwd, env, CliOverrides::default());
    opts.config_file = config;
    match fluxlit_config::load(&opts) {
        Ok(loaded) => Ok(cwd.join(&loaded.settings.pidfile)),
        Err(e) => {
            eprintln!(
                "{command}: the configuration has errors, using the pidfile {fallback}:\n{e}"
            );
            Ok(cwd.join(fallback))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_accepts_seconds_and_refuses_the_rest() {
        assert_eq!(parse_wait("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_wait("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["", "-1", "NaN", "inf", "1e9", "5s"] {
            let e = parse_wait(bad).unwrap_err();
            assert!(e.contains("--wait") && e.contains("seconds"), "{bad}: {e}");
        }
    }
}
