//! `fluxlit new NAME [--profile minimal|auth-ready|deploy]` ([`fluxlit::project`]; reference
//! §1.9 messages and exit codes: 1 when the destination exists, 2 for an unknown profile).

use std::process::ExitCode;

use fluxlit::project::{Profile, create};

use super::NewArgs;

pub(crate) fn main(args: &NewArgs) -> ExitCode {
    let profile = match args.profile.parse::<Profile>() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fluxlit new: {e}");
            return ExitCode::from(2);
        }
    };
    match create(&args.name, profile) {
        Ok(()) => {
            let name = args.name.display();
            println!(
                "Created {name}/ ({profile}) — run: cd {name} && python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && fluxlit run"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
