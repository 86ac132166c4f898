//! The outcome of one tool run: named checks, a one-line summary and a JSON object.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// One named check made during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked, e.g. `readyz 200 after the drops`.
    pub what: String,
    /// Whether it held.
    pub ok: bool,
    /// What was observed (status codes, times, counts).
    pub detail: String,
}

/// The outcome of one tool run.
///
/// A report passes when at least one check was made and every check held.
#[derive(Debug, Clone)]
pub struct Report {
    /// The tool's name, e.g. `soak-http`.
    pub name: String,
    /// The checks, in the order they were made.
    pub checks: Vec<Check>,
    /// Short human summary of the measurements (counts, percentiles in ms).
    pub summary: String,
    /// Measurements for the JSON object (numbers in the units their key names: `_ms`, `_s`).
    pub data: Map<String, Value>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl Report {
    /// An empty report for the tool `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            checks: Vec::new(),
            summary: String::new(),
            data: Map::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// Records a check and returns `ok`.
    pub fn check(&mut self, what: impl Into<String>, ok: bool, detail: impl Into<String>) -> bool {
        self.checks.push(Check {
            what: what.into(),
            ok,
            detail: detail.into(),
        });
        ok
    }

    /// Records a failed check (something that could not be done at all).
    pub fn fail(&mut self, what: impl Into<String>, detail: impl Into<String>) {
        self.check(what, false, detail);
    }

    /// Stores a measurement for the JSON object.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.data.insert(key.to_owned(), value.into());
    }

    /// Whether at least one check was made and all held.
    pub fn pass(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// `name: PASS summary` or `name: FAIL what (detail); … | summary`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{}: {}",
            self.name,
            if self.pass() { "PASS" } else { "FAIL" }
        );
        if !self.pass() {
            let failed: Vec<String> = self
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{} ({})", c.what, c.detail))
                .collect();
            if failed.is_empty() {
                line.push_str(" no check was made");
            } else {
                line.push(' ');
                line.push_str(&failed.join("; "));
            }
            if !self.summary.is_empty() {
                line.push_str(" |");
            }
        }
        if !self.summary.is_empty() {
            line.push(' ');
            line.push_str(&self.summary);
        }
        line.push_str(&format!(" [{:.1} s]", self.elapsed.as_secs_f64()));
        line
    }

    /// The report as one JSON object: `name`, `result` (`PASS`/`FAIL`), `pass`, `summary`,
    /// `elapsed_s`, `checks` and the measurements.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("name".into(), json!(self.name));
        obj.insert(
            "result".into(),
            json!(if self.pass() { "PASS" } else { "FAIL" }),
        );
        obj.insert("pass".into(), json!(self.pass()));
        obj.insert("summary".into(), json!(self.summary));
        obj.insert(
            "elapsed_s".into(),
            json!(round3(self.elapsed.as_secs_f64())),
        );
        obj.insert(
            "checks".into(),
            Value::Array(
                self.checks
                    .iter()
                    .map(|c| json!({"what": c.what, "ok": c.ok, "detail": c.detail}))
                    .collect(),
            ),
        );
        for (k, v) in &self.data {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj)
    }

    /// The line, or the JSON object on one line when `json` is set.
    pub fn render(&self, json: bool) -> String {
        if json {
            self.to_json().to_string()
        } else {
            self.line()
        }
    }
}

/// Rounds to three decimals (milliseconds of seconds, microseconds of milliseconds).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Milliseconds of a duration, rounded to three decimals.
pub fn ms(d: Duration) -> f64 {
    round3(d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_needs_a_check_and_all_checks() {
        let mut r = Report::new("t");
        assert!(!r.pass(), "no check, no pass");
        r.check("a", true, "1");
        assert!(r.pass());
        r.summary = "n=1".into();
        assert!(r.line().starts_with("t: PASS n=1"), "{}", r.line());
        r.check("b", false, "got 503");
        assert!(!r.pass());
        assert!(
            r.line().starts_with("t: FAIL b (got 503) | n=1"),
            "{}",
            r.line()
        );
        let v = r.to_json();
        assert_eq!(v["result"], "FAIL");
        assert_eq!(v["checks"][1]["ok"], false);
    }
}
