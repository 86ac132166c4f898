//! `fluxlit revoke`: ends login sessions (`auth_mode = oidc`) on every gateway sharing the
//! `redis` session store ([`fluxlit::revoke`]).

use std::process::ExitCode;

use fluxlit::revoke::{Target, revoke};
use fluxlit_config::Environment;

use super::RevokeArgs;

pub(crate) fn main(args: RevokeArgs, env: Environment) -> ExitCode {
    let target = match (args.user, args.session, args.all) {
        (Some(u), None, false) if !u.trim().is_empty() => Target::User(u),
        (None, Some(s), false) if !s.trim().is_empty() => Target::Session(s),
        (None, None, true) => Target::All,
        _ => {
            eprintln!("fluxlit revoke: give exactly one of --user SUB, --session SID or --all");
            return ExitCode::from(2);
        }
    };
    let loaded = match args
        .config
        .load_options(env)
        .and_then(|o| fluxlit_config::load(&o).map_err(|e| e.to_string()))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fluxlit revoke: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fluxlit revoke: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(revoke(&loaded.settings, &target)) {
        Ok(n) => {
            let what = match &target {
                Target::User(u) => format!("of user {u:?}"),
                Target::Session(s) => format!("with id {s:?}"),
                Target::All => "in the store".to_owned(),
            };
            println!(
                "Revoked {n} session{} {what}; every gateway sharing the store closes their WebSockets.",
                if n == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fluxlit revoke: {e}");
            ExitCode::from(1)
        }
    }
}
