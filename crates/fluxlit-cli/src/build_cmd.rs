//! `fluxlit build [TARGET] [-o DIR] [-f]`: writes the project's container image files, a
//! `Dockerfile` and a `.dockerignore` ([`fluxlit::scaffold`]; reference §1.8 messages and exit
//! codes).
//!
//! The target, port and API mount come from the configuration as `fluxlit run` resolves it
//! (TARGET, `FLUXLIT_*`, `.env`, the project file); a gateway port of 0 becomes 8000.
//!
//! Exit codes: 0 written; 1 a file exists without `--force`, configuration errors, or an I/O
//! error; 2 usage errors (clap).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use fluxlit::scaffold::{ImageSpec, ScaffoldError, write_container_files};
use fluxlit_config::{CliOverrides, Environment, LoadOptions};

/// The container port when the configuration's `gateway_port` is 0 (pick a free one), which
/// means nothing for a published port: FluxLit's default.
const DEFAULT_CONTAINER_PORT: u16 = 8000;

/// `fluxlit build` options (FluxLit for Python reference §1.8).
#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The target the image runs (`CMD ["fluxlit", "run", TARGET]`): a Streamlit script or a FluxLit-for-Python app as module:attr, relative to the project directory [env: FLUXLIT_TARGET; file: target; default: app.py].
    target: Option<String>,
    /// Directory to write Dockerfile and .dockerignore into; created with its parents.
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    output: PathBuf,
    /// Overwrite an existing Dockerfile or .dockerignore.
    #[arg(short, long)]
    force: bool,
    /// Config file to read instead of ./fluxlit.toml or ./pyproject.toml [env: FLUXLIT_CONFIG].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

pub(crate) fn main(args: BuildArgs, env: Environment) -> ExitCode {
    let spec = match image_spec(&args, env) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fluxlit build: {e}");
            return ExitCode::from(1);
        }
    };
    match write_container_files(&args.output, &spec, args.force) {
        Ok(_) => {
            let dir = args.output.display();
            println!("Wrote {dir}/Dockerfile and {dir}/.dockerignore");
            ExitCode::SUCCESS
        }
        // The reference's message, alone on stderr.
        Err(e @ ScaffoldError::Exists { .. }) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("fluxlit build: {e}");
            ExitCode::from(1)
        }
    }
}

/// The target, port and API mount as `fluxlit run` would resolve them in this directory.
fn image_spec(args: &BuildArgs, env: Environment) -> Result<ImageSpec, String> {
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
    let mut cli = CliOverrides::default();
    if let Some(t) = &args.target {
        cli.set("target", t.clone(), "TARGET");
    }
    let mut opts = LoadOptions::new(&cwd, env, cli);
    opts.config_file = args.config.clone();
    let loaded = fluxlit_config::load(&opts).map_err(|e| e.to_string())?;
    let s = &loaded.settings;
    let port = match s.gateway_port {
        0 => DEFAULT_CONTAINER_PORT,
        p => p,
    };
    ImageSpec::new(s.target.clone(), port, s.api_mount_path.clone()).map_err(|e| e.to_string())
}
