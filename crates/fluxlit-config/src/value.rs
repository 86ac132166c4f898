//! Turning a raw value from any source into a typed JSON value for the merge.

use crate::schema::Kind;
use serde_json::Value;

/// A value as one source gave it, before it is checked against its key's [`Kind`].
#[derive(Debug, Clone)]
pub(crate) enum Raw {
    /// Text from the environment or the command line.
    Text(String),
    /// A typed value from a TOML file.
    Toml(toml::Value),
}

impl Raw {
    /// The value as it would be shown back to the user in an error message.
    pub(crate) fn display(&self) -> String {
        match self {
            Raw::Text(s) => s.clone(),
            Raw::Toml(toml::Value::String(s)) => s.clone(),
            Raw::Toml(v) => v.to_string(),
        }
    }
}

/// Parses a boolean the way FluxLit for Python's settings (pydantic) do: `1/0`, `true/false`,
/// `t/f`, `yes/no`, `y/n`, `on/off`, any case, surrounding whitespace ignored.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// The tracing level for a level name: tracing's own (`error`, `warn`, `info`, `debug`, `trace`,
/// `off`) and Uvicorn's (`critical` logs what `error` does, `warning` is `warn`), any case.
fn level_word(word: &str) -> Option<&'static str> {
    Some(match word.trim().to_ascii_lowercase().as_str() {
        "critical" | "error" => "error",
        "warning" | "warn" => "warn",
        "info" => "info",
        "debug" => "debug",
        "trace" => "trace",
        "off" => "off",
        _ => return None,
    })
}

/// Parses `log_level` into a tracing filter (`tracing_subscriber::EnvFilter` syntax): a level
/// name, or comma-separated directives `LEVEL` or `TARGET=LEVEL`, where each level may be
/// tracing's or Uvicorn's name (see `level_word`: `warning` → `warn`, `critical` → `error`).
/// Directives with span filters (`target[span{field}]=level`) are passed through as written.
///
/// `None` for anything else, in particular a bare word that is not a level: `EnvFilter` would
/// read it as a *target* and log nothing but that target (why `warning` once silenced every line).
///
/// ```
/// use fluxlit_config::value::parse_log_level;
/// assert_eq!(parse_log_level("WARNING").as_deref(), Some("warn"));
/// assert_eq!(parse_log_level("critical").as_deref(), Some("error"));
/// assert_eq!(parse_log_level("info, fluxlit_gateway=Trace").as_deref(), Some("info,fluxlit_gateway=trace"));
/// assert_eq!(parse_log_level("verbose"), None);
/// ```
pub fn parse_log_level(text: &str) -> Option<String> {
    let mut out = Vec::new();
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.contains('[') {
            out.push(directive.to_owned());
        } else if let Some((target, level)) = directive.rsplit_once('=') {
            let target = target.trim();
            if target.is_empty()
                || !target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
            {
                return None;
            }
            out.push(format!("{target}={}", level_word(level)?));
        } else {
            out.push(level_word(directive)?.to_owned());
        }
    }
    (!out.is_empty()).then(|| out.join(","))
}

/// Parses a duration in seconds: a non-negative finite number (`2.5`) or a humantime string
/// (`30s`, `5m`, `250ms`, `1h 30m`). Returns the number of seconds.
pub fn parse_seconds(text: &str) -> Option<f64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(n) = t.parse::<f64>() {
        return (n.is_finite() && n >= 0.0).then_some(n);
    }
    humantime::parse_duration(t).ok().map(|d| d.as_secs_f64())
}

/// Parses a list: a JSON array of strings, or comma-separated text (items trimmed, empty items
/// dropped). Empty text is the empty list.
pub fn parse_list(text: &str) -> Option<Vec<String>> {
    let t = text.trim();
    if t.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(t).ok();
    }
    Some(
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// Parses a size in bytes: a whole number, or a number (decimals allowed) with a unit: `B`,
/// `KB`/`MB`/`GB` (powers of 1000) or `KiB`/`MiB`/`GiB` (powers of 1024), any case, optional
/// space (`64MiB`, `10 MB`, `1.5GiB`).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    let v = f * mult as f64;
    (v.is_finite() && v >= 0.0 && v <= u64::MAX as f64 && v.fract() == 0.0).then_some(v as u64)
}

fn text_of(raw: &Raw) -> Option<&str> {
    match raw {
        Raw::Text(s) | Raw::Toml(toml::Value::String(s)) => Some(s),
        Raw::Toml(_) => None,
    }
}

fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Checks `raw` against `kind`; `Value::Null` means "unset" (only for optional kinds).
pub(crate) fn convert(kind: Kind, raw: &Raw) -> Result<Value, ()> {
    match (kind, raw) {
        (Kind::Text, Raw::Text(s)) | (Kind::Text, Raw::Toml(toml::Value::String(s))) => {
            Ok(Value::String(s.clone()))
        }
        (Kind::OptText, Raw::Text(s)) | (Kind::OptText, Raw::Toml(toml::Value::String(s))) => {
            if s.trim().is_empty() {
                Ok(Value::Null)
            } else {
                Ok(Value::String(s.clone()))
            }
        }
        (Kind::Bool, Raw::Toml(toml::Value::Boolean(b))) => Ok(Value::Bool(*b)),
        (Kind::Bool, Raw::Text(s)) | (Kind::Bool, Raw::Toml(toml::Value::String(s))) => {
            parse_bool(s).map(Value::Bool).ok_or(())
        }
        (Kind::Port, Raw::Toml(toml::Value::Integer(i))) => {
            u16::try_from(*i).map(Value::from).map_err(|_| ())
        }
        (Kind::Port, Raw::Text(s)) | (Kind::Port, Raw::Toml(toml::Value::String(s))) => {
            s.trim().parse::<u16>().map(Value::from).map_err(|_| ())
        }
        (Kind::Seconds, Raw::Toml(toml::Value::Integer(i))) if *i >= 0 => {
            Ok(Value::from(*i as f64))
        }
        (Kind::Seconds, Raw::Toml(toml::Value::Float(f))) if f.is_finite() && *f >= 0.0 => {
            Ok(Value::from(*f))
        }
        (Kind::Seconds, Raw::Text(s)) | (Kind::Seconds, Raw::Toml(toml::Value::String(s))) => {
            parse_seconds(s).map(Value::from).ok_or(())
        }
        (Kind::List, Raw::Toml(toml::Value::Array(items))) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(Value::String(s.clone())),
                _ => Err(()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (Kind::Count, Raw::Toml(toml::Value::Integer(i))) => {
            u64::try_from(*i).map(Value::from).map_err(|_| ())
        }
        (Kind::Count, r) => text_of(r)
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map(Value::from)
            .ok_or(()),
        (Kind::CountOrAuto, Raw::Toml(toml::Value::Integer(i))) if *i >= 1 => Ok(Value::from(*i)),
        (Kind::CountOrAuto, r) => {
            let t = text_of(r).ok_or(())?.trim();
            if t.eq_ignore_ascii_case("auto") {
                Ok(Value::String("auto".to_owned()))
            } else {
                match t.parse::<u64>() {
                    Ok(n) if n >= 1 => Ok(Value::from(n)),
                    _ => Err(()),
                }
            }
        }
        (Kind::Bytes | Kind::OptBytes, Raw::Toml(toml::Value::Integer(i))) => {
            u64::try_from(*i).map(Value::from).map_err(|_| ())
        }
        (Kind::OptBytes, r) if text_of(r).is_some_and(|t| t.trim().is_empty()) => Ok(Value::Null),
        (Kind::Bytes | Kind::OptBytes, r) => {
            text_of(r).and_then(parse_bytes).map(Value::from).ok_or(())
        }
        (Kind::OptSeconds, r) if text_of(r).is_some_and(|t| t.trim().is_empty()) => Ok(Value::Null),
        (Kind::OptSeconds, r) => convert(Kind::Seconds, r),
        (Kind::Object, Raw::Toml(t @ toml::Value::Table(_))) => Ok(toml_to_json(t)),
        (Kind::Object, r) => {
            let t = text_of(r).ok_or(())?.trim();
            if t.is_empty() {
                return Ok(Value::Object(serde_json::Map::new()));
            }
            match serde_json::from_str::<Value>(t) {
                Ok(v @ Value::Object(_)) => Ok(v),
                _ => Err(()),
            }
        }
        (Kind::Choice(words), r) => {
            let t = text_of(r).ok_or(())?.trim().to_ascii_lowercase();
            words
                .iter()
                .find(|w| **w == t)
                .map(|w| Value::String((*w).to_owned()))
                .ok_or(())
        }
        (Kind::List, Raw::Text(s)) | (Kind::List, Raw::Toml(toml::Value::String(s))) => {
            parse_list(s)
                .map(|v| Value::Array(v.into_iter().map(Value::String).collect()))
                .ok_or(())
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn booleans() {
        // pydantic's words, any case.
        for t in ["1", "TRUE", "Yes", "on", " true ", "t", "T", "y", "Y", "ON"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for t in ["0", "false", "NO", "Off", "f", "F", "n", "N"] {
            assert_eq!(parse_bool(t), Some(false), "{t}");
        }
        for t in ["", "2", "enabled", "tr", "nope", "yess"] {
            assert_eq!(parse_bool(t), None, "{t}");
        }
    }

    #[test]
    fn log_levels_take_uvicorn_and_tracing_names() {
        for (given, want) in [
            ("critical", "error"),
            ("ERROR", "error"),
            ("warning", "warn"),
            ("Warn", "warn"),
            ("info", "info"),
            ("debug", "debug"),
            ("trace", "trace"),
            ("off", "off"),
            (" warning , hyper=critical", "warn,hyper=error"),
            (
                "fluxlit_gateway::proxy=debug",
                "fluxlit_gateway::proxy=debug",
            ),
            ("info,fluxlit[req{id}]=debug", "info,fluxlit[req{id}]=debug"),
        ] {
            assert_eq!(parse_log_level(given).as_deref(), Some(want), "{given}");
        }
        for bad in [
            "",
            " , ",
            "verbose",
            "fluxlit_gateway",
            "x=loud",
            "=info",
            "a b=info",
        ] {
            assert_eq!(parse_log_level(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("2.5"), Some(2.5));
        assert_eq!(parse_seconds("30s"), Some(30.0));
        assert_eq!(parse_seconds("5m"), Some(300.0));
        assert_eq!(parse_seconds("250ms"), Some(0.25));
        assert_eq!(parse_seconds("-1"), None);
        assert_eq!(parse_seconds("NaN"), None);
        assert_eq!(parse_seconds("inf"), None);
        assert_eq!(parse_seconds("soon"), None);
    }

    #[test]
    fn lists() {
        assert_eq!(
            parse_list(r#"["a", "b"]"#),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse_list("a, b,,c"),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(parse_list(""), Some(vec![]));
        assert_eq!(parse_list("[1, 2]"), None);
        assert_eq!(parse_list("[\"unterminated"), None);
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("10 MB"), Some(10_000_000));
        assert_eq!(parse_bytes("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_bytes("2kib"), Some(2048));
        assert_eq!(parse_bytes("0"), Some(0));
        for bad in [
            "",
            "MiB",
            "-1",
            "1.3B",
            "10 XB",
            "99999999999999999999",
            "18446744073709551615GiB",
        ] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn objects_choices_and_optionals() {
        assert!(convert(Kind::Object, &Raw::Text("{\"layout\": \"wide\"}".into())).is_ok());
        assert!(convert(Kind::Object, &Raw::Text("[1]".into())).is_err());
        assert_eq!(
            convert(Kind::Object, &Raw::Text(String::new())),
            Ok(Value::Object(serde_json::Map::new()))
        );
        let choice = Kind::Choice(&["exit", "restart"]);
        assert_eq!(
            convert(choice, &Raw::Text("Restart".into())),
            Ok(Value::from("restart"))
        );
        assert!(convert(choice, &Raw::Text("sometimes".into())).is_err());
        assert_eq!(
            convert(Kind::OptSeconds, &Raw::Text(String::new())),
            Ok(Value::Null)
        );
        assert_eq!(
            convert(Kind::OptBytes, &Raw::Text("1KiB".into())),
            Ok(Value::from(1024u64))
        );
        assert!(convert(Kind::Count, &Raw::Text("-1".into())).is_err());
        assert!(convert(Kind::Count, &Raw::Toml(toml::Value::Integer(-1))).is_err());
    }

    #[test]
    fn counts_or_auto() {
        let k = Kind::CountOrAuto;
        assert_eq!(
            convert(k, &Raw::Text(" AUTO ".into())),
            Ok(Value::from("auto"))
        );
        assert_eq!(convert(k, &Raw::Text("3".into())), Ok(Value::from(3u64)));
        assert_eq!(
            convert(k, &Raw::Toml(toml::Value::Integer(2))),
            Ok(Value::from(2i64))
        );
        assert_eq!(
            convert(k, &Raw::Toml(toml::Value::String("auto".into()))),
            Ok(Value::from("auto"))
        );
        for bad in ["0", "-1", "", "two", "1.5", "autox"] {
            assert!(convert(k, &Raw::Text(bad.into())).is_err(), "{bad:?}");
        }
        assert!(convert(k, &Raw::Toml(toml::Value::Integer(0))).is_err());
        assert!(convert(k, &Raw::Toml(toml::Value::Boolean(true))).is_err());
    }

    #[test]
    fn toml_types_are_checked() {
        assert!(convert(Kind::Port, &Raw::Toml(toml::Value::Integer(70000))).is_err());
        assert!(convert(Kind::Port, &Raw::Toml(toml::Value::Boolean(true))).is_err());
        assert_eq!(
            convert(Kind::Port, &Raw::Toml(toml::Value::Integer(9000))),
            Ok(Value::from(9000u16))
        );
        assert!(convert(Kind::Seconds, &Raw::Toml(toml::Value::Integer(-3))).is_err());
        assert!(convert(Kind::Text, &Raw::Toml(toml::Value::Integer(3))).is_err());
    }

    proptest! {
        #[test]
        fn conversion_never_panics(s in ".*") {
            for kind in [Kind::Text, Kind::OptText, Kind::Bool, Kind::Port, Kind::Count, Kind::Bytes, Kind::OptBytes, Kind::Seconds, Kind::OptSeconds, Kind::List, Kind::Object, Kind::Choice(&["a"])] {
                let _ = convert(kind, &Raw::Text(s.clone()));
            }
        }
    }
}
