//! `fluxlit config [TARGET] [--json] [--strict] [--show-origin]`: the effective settings (secrets
//! redacted), where each value came from, and the warnings catalogue.
//!
//! Exit codes: 0 clean; 1 configuration errors or error-level findings (or any warning with
//! `--strict`); 2 usage errors (clap).

use std::process::ExitCode;

use fluxlit_config::findings::{Level, findings};
use fluxlit_config::schema::KEYS;
use fluxlit_config::{Environment, Origin};
use serde_json::{Value, json};

use super::ConfigCmdArgs;

fn origin_json(o: &Origin) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("display".into(), Value::String(o.to_string()));
    }
    v
}

pub(crate) fn main(args: ConfigCmdArgs, env: Environment) -> ExitCode {
    let opts = match args.config.load_options(env.clone()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fluxlit: {e}");
            return ExitCode::from(1);
        }
    };
    let loaded = match fluxlit_config::load(&opts) {
        Ok(l) => l,
        Err(e) => {
            if args.json {
                let problems: Vec<Value> = e
                    .problems
                    .iter()
                    .map(|p| json!({"key": p.key, "value": p.value, "origin": origin_json(&p.origin), "expected": p.expected, "fix": p.fix}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"errors": problems})).unwrap_or_default()
                );
            } else {
                eprintln!("fluxlit: {e}");
            }
            return ExitCode::from(1);
        }
    };
    let found = findings(&loaded, &env);
    let settings = fluxlit_config::redact::settings_json(&loaded.settings);
    let failed = found.iter().any(|f| f.level == Level::Error || args.strict);
    let s = &loaded.settings;
    let derived_api_base = format!("http://127.0.0.1:{}{}", s.gateway_port, s.api_mount_path);
    // With the OIDC login: the two URLs to register at the provider.
    let oidc_uris = (s.auth_mode == fluxlit_config::AuthMode::Oidc)
        .then(|| (s.oidc_redirect_uri(), s.post_logout_redirect_uri()));

    if args.json {
        let origins: serde_json::Map<String, Value> = KEYS
            .iter()
            .map(|k| (k.name.to_owned(), origin_json(loaded.origin(k.name))))
            .collect();
        let mut computed = json!({"public_mount_path": s.public_mount(), "derived_internal_api_base": derived_api_base});
        if let (Some((redirect, post_logout)), Some(obj)) = (&oidc_uris, computed.as_object_mut()) {
            obj.insert("oidc_redirect_uri".into(), json!(redirect));
            obj.insert("post_logout_redirect_uri".into(), json!(post_logout));
        }
        let out = json!({
            "target": s.target,
            "project_file": loaded.project_file.as_ref().map(|p| p.display().to_string()),
            "binding": {"host": s.gateway_host, "port": s.gateway_port, "log_level": s.log_level},
            "computed": computed,
            "settings": settings,
            "origins": origins,
            "warnings": found,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        let mut text = String::from("FluxLit effective configuration\n");
        text.push_str(&format!(
            "project file: {}\n",
            loaded
                .project_file
                .as_ref()
                .map_or_else(|| "(none)".to_owned(), |p| p.display().to_string())
        ));
        text.push_str(&format!(
            "public_mount_path: {}\n",
            if s.public_mount().is_empty() {
                "(empty)"
            } else {
                s.public_mount()
            }
        ));
        text.push_str(&format!("derived_internal_api_base: {derived_api_base}\n"));
        if let Some((redirect, post_logout)) = &oidc_uris {
            text.push_str(&format!(
                "oidc_redirect_uri (register at the provider): {}\npost_logout_redirect_uri (register at the provider): {}\n",
                redirect.as_deref().unwrap_or("(none)"),
                post_logout.as_deref().unwrap_or("(none)")
            ));
        }
        text.push_str("\nSettings (secrets redacted):\n");
        let width = KEYS.iter().map(|k| k.name.len()).max().unwrap_or(0);
        for k in KEYS {
            let v = settings
                .get(k.name)
                .map_or_else(String::new, Value::to_string);
            if args.show_origin {
                text.push_str(&format!(
                    "  {:width$} = {v}    # {}\n",
                    k.name,
                    loaded.origin(k.name)
                ));
            } else {
                text.push_str(&format!("  {:width$} = {v}\n", k.name));
            }
        }
        text.push_str("\nWarnings:\n");
        if found.is_empty() {
            text.push_str("  (none)\n");
        }
        for f in &found {
            let level = match f.level {
                Level::Warn => "WARN",
                Level::Error => "ERROR",
            };
            text.push_str(&format!(
                "  [{level}] {}: {}\n         Docs: {}\n",
                f.code, f.message, f.doc
            ));
        }
        print!("{text}");
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
