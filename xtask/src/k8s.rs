//! `cargo xtask k8s`: the Kubernetes manifests of `examples/kubernetes/` (docs/deployment.md,
//! "Kubernetes"), checked as a cluster and FluxLit would read them:
//!
//! 1. `kustomization.yaml` lists every other YAML file of the directory, and nothing else.
//! 2. Schema: PyPI's `kubernetes-validate` (pinned in
//!    `examples/kubernetes/requirements-validate.txt`, in a venv of its own,
//!    `<target dir>/k8s-validate-venv`) validates every listed manifest in strict mode
//!    (`--strict`: unknown fields fail) against each of [`KUBERNETES_VERSIONS`], from the schemas
//!    it bundles (no network). A resource it has no schema for (a misspelt `kind` or
//!    `apiVersion`) is only a warning to it, and a failure here.
//! 3. The validator itself: copies of the Deployment with a misspelt field and with a misspelt
//!    kind must fail step 2, so a validator that stopped checking cannot pass silently.
//! 4. Invariants across the files ([`check`]): the Deployment's `FLUXLIT_*` environment is loaded
//!    by FluxLit's own settings loader (no warnings allowed), and the probes, ports, shutdown
//!    timing, writable paths, body caps, selectors and names agree with it and with each other.
//!
//! The YAML is read by the venv's PyYAML (`yaml.safe_load_all`) and handed over as JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use fluxlit_config::{CliOverrides, Environment, LoadOptions, Settings};
use fluxlit_gateway::Route;
use serde_json::Value;

use crate::{Failed, Result, pinned_venv, project_root, render, target_dir};

/// The Kubernetes versions the manifests are validated against: the oldest they support (the
/// preStop `sleep` action is on by default from 1.30) and the newest `kubernetes-validate`
/// 1.37.0 bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// The manifests' directory, relative to the project root.
const DIR: &str = "examples/kubernetes";

/// Seconds FluxLit gives tunnels whose upstream has not closed after the sidecars stopped
/// (docs/operations.md, "Shutdown", step 4).
const TUNNEL_CUT_S: f64 = 1.0;

/// Seconds `terminationGracePeriodSeconds` must leave beyond FluxLit's worst-case stop.
const MIN_GRACE_MARGIN_S: f64 = 3.0;

/// The kinds [`check`] expects among the resources, one of each.
const KINDS: [&str; 5] = [
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "Ingress",
    "HorizontalPodAutoscaler",
];

/// Reads YAML files (paths as arguments) and prints `[[path, [document, ...]], ...]` as JSON.
const YAML_TO_JSON: &str = "import json, sys, yaml\n\
out = []\n\
for p in sys.argv[1:]:\n    \
    with open(p) as f:\n        \
        out.append([p, [d for d in yaml.safe_load_all(f) if d is not None]])\n\
json.dump(out, sys.stdout)\n";

pub(crate) fn run() -> Result {
    let root = project_root();
    let dir = root.join(DIR);
    let work = target_dir(&root).join("k8s-validate-venv");
    let python = pinned_venv(&work, &dir.join("requirements-validate.txt"))?;

    let kustomization = single_doc(&python, &dir.join("kustomization.yaml"))?;
    let files = listed_resources(&kustomization, &dir)?;
    validate(&python, &files)?;
    eprintln!(
        "xtask k8s: {} manifests pass strict validation against Kubernetes {}",
        files.len(),
        KUBERNETES_VERSIONS.join(", ")
    );
    validator_rejects_broken_manifests(&python, &dir, &work)?;

    let resources = yaml_docs(&python, &files)?;
    let cwd = work.join("empty-project");
    if cwd.exists() {
        std::fs::remove_dir_all(&cwd)
            .map_err(|e| Failed(format!("cannot clear {}: {e}", cwd.display())))?;
    }
    std::fs::create_dir_all(&cwd)
        .map_err(|e| Failed(format!("cannot create {}: {e}", cwd.display())))?;
    let problems = check(
        &Manifests {
            kustomization,
            resources,
        },
        &cwd,
    );
    if !problems.is_empty() {
        return Err(Failed(format!(
            "{DIR}: the manifests disagree with FluxLit or with each other:\n  {}",
            problems.join("\n  ")
        )));
    }
    eprintln!("xtask k8s: cross-file invariants hold");
    Ok(())
}

/// The manifests as parsed YAML: the kustomization and each listed file's documents.
struct Manifests {
    kustomization: Value,
    /// `(file name, document)`, one entry per document.
    resources: Vec<(String, Value)>,
}

/// Runs the venv's PyYAML on `files`; returns `(file name, document)` per document.
fn yaml_docs(python: &Path, files: &[PathBuf]) -> Result<Vec<(String, Value)>> {
    let mut cmd = Command::new(python);
    cmd.args(["-c", YAML_TO_JSON]).args(files);
    let out = cmd
        .output()
        .map_err(|e| Failed(format!("cannot run {}: {e}", render(&cmd))))?;
    if !out.status.success() {
        return Err(Failed(format!(
            "{} failed ({}): {}",
            render(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let parsed: Vec<(String, Vec<Value>)> = serde_json::from_slice(&out.stdout)
        .map_err(|e| Failed(format!("cannot read the JSON of {}: {e}", render(&cmd))))?;
    Ok(parsed
        .into_iter()
        .flat_map(|(path, docs)| {
            let name = Path::new(&path)
                .file_name()
                .map_or_else(|| path.clone(), |n| n.to_string_lossy().into_owned());
            docs.into_iter().map(move |d| (name.clone(), d))
        })
        .collect())
}

fn single_doc(python: &Path, file: &Path) -> Result<Value> {
    let mut docs = yaml_docs(python, &[file.to_path_buf()])?;
    match (docs.pop(), docs.is_empty()) {
        (Some((_, doc)), true) => Ok(doc),
        _ => Err(Failed(format!(
            "{}: expected exactly one YAML document",
            file.display()
        ))),
    }
}

/// The files `resources` of the kustomization lists, which must be exactly the directory's
/// other `.yaml` files.
fn listed_resources(kustomization: &Value, dir: &Path) -> Result<Vec<PathBuf>> {
    let listed: Vec<String> = kustomization
        .get("resources")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Failed(format!("cannot read {}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    present.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    if sorted != present || listed.is_empty() {
        return Err(Failed(format!(
            "{}/kustomization.yaml: `resources` lists {listed:?}, but the directory holds \
             {present:?}; list every manifest (and only those), so that `kubectl apply -k` \
             applies what `cargo xtask k8s` validates",
            dir.display()
        )));
    }
    Ok(listed.iter().map(|f| dir.join(f)).collect())
}

/// Strict schema validation of `files` against every version of [`KUBERNETES_VERSIONS`]: the
/// validator must exit 0 and report every resource as passed (a `WARN`, which it gives for a
/// resource it has no schema for, fails).
fn validate(python: &Path, files: &[PathBuf]) -> Result {
    let mut cmd = Command::new(python.with_file_name("kubernetes-validate"));
    cmd.arg("--strict");
    for v in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", v]);
    }
    cmd.args(files);
    eprintln!("xtask: $ {}", render(&cmd));
    let out = cmd
        .output()
        .map_err(|e| Failed(format!("cannot run {}: {e}", render(&cmd))))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stdout}{stderr}");
    let not_passed: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("INFO "))
        .collect();
    if !out.status.success() || !not_passed.is_empty() || !stderr.trim().is_empty() {
        return Err(Failed(format!(
            "kubernetes-validate --strict ({}) did not pass every manifest:\n  {}",
            out.status,
            if not_passed.is_empty() {
                stderr.trim().to_owned()
            } else {
                not_passed.join("\n  ")
            }
        )));
    }
    Ok(())
}

/// Step 3 of the module doc: the validator must reject a misspelt field and a misspelt kind.
fn validator_rejects_broken_manifests(python: &Path, dir: &Path, work: &Path) -> Result {
    let source = dir.join("deployment.yaml");
    let text = std::fs::read_to_string(&source)
        .map_err(|e| Failed(format!("cannot read {}: {e}", source.display())))?;
    let cases = [
        (
            "misspelt-field.yaml",
            "terminationGracePeriodSeconds:",
            "terminationGracePeriodSecond:",
        ),
        (
            "misspelt-kind.yaml",
            "kind: Deployment\n",
            "kind: Deploymnet\n",
        ),
    ];
    let broken_dir = work.join("broken");
    std::fs::create_dir_all(&broken_dir)
        .map_err(|e| Failed(format!("cannot create {}: {e}", broken_dir.display())))?;
    for (name, from, to) in cases {
        if !text.contains(from) {
            return Err(Failed(format!(
                "{}: no `{}` to break for the validator's self-test",
                source.display(),
                from.trim()
            )));
        }
        let path = broken_dir.join(name);
        std::fs::write(&path, text.replacen(from, to, 1))
            .map_err(|e| Failed(format!("cannot write {}: {e}", path.display())))?;
        match validate(python, std::slice::from_ref(&path)) {
            Err(_) => eprintln!(
                "xtask k8s: as expected, {} (`{}` as `{}`) fails validation",
                path.display(),
                from.trim(),
                to.trim()
            ),
            Ok(()) => {
                return Err(Failed(format!(
                    "the validator passed {}, a Deployment with `{}` misspelt as `{}`: it no \
                     longer checks strictly",
                    path.display(),
                    from.trim(),
                    to.trim()
                )));
            }
        }
    }
    Ok(())
}

/// Problems found so far, each naming the file, the field, what it holds and what it should.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, file: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{file}: {msg}"));
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn u64_at(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}

/// Whether every `key: value` of the selector's map is among `labels`.
fn selects(selector: Option<&Value>, labels: Option<&Value>) -> bool {
    match (
        selector.and_then(Value::as_object),
        labels.and_then(Value::as_object),
    ) {
        (Some(sel), Some(labels)) if !sel.is_empty() => {
            sel.iter().all(|(k, v)| labels.get(k) == Some(v))
        }
        _ => false,
    }
}

/// A port reference (a number, or the name of one of the container's ports) resolved to the
/// container port number.
fn resolve_port(port: Option<&Value>, container: &Value) -> Option<u64> {
    match port? {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => container
            .get("ports")?
            .as_array()?
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|p| u64_at(p, "/containerPort")),
        _ => None,
    }
}

/// nginx's size syntax (`client_max_body_size`, ingress-nginx's `proxy-body-size`): bytes, or
/// a number with `k`, `m` or `g` (binary units, any case).
fn nginx_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, ' '),
    };
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        ' ' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The image's repository name: without a `:tag` (after the last `/`) or `@digest`.
fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match (image.rfind(':'), image.rfind('/')) {
        (Some(colon), slash) if slash.is_none_or(|s| colon > s) => &image[..colon],
        _ => image,
    }
}

/// Every disagreement between the manifests, and between them and FluxLit's settings as loaded
/// from the Deployment's environment (in `cwd`, an empty directory, so no project file or
/// `.env` adds to them). Empty when all holds.
fn check(m: &Manifests, cwd: &Path) -> Vec<String> {
    let mut p = Problems::default();
    check_kustomization_shape(&m.kustomization, &mut p);
    let mut by_kind = std::collections::BTreeMap::<&str, Vec<(&str, &Value)>>::new();
    for (file, doc) in &m.resources {
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        by_kind.entry(kind).or_default().push((file.as_str(), doc));
    }
    let mut one = |kind: &str| match by_kind.get(kind).map(Vec::as_slice) {
        Some([only]) => Some(*only),
        found => {
            p.add(
                "kustomization.yaml",
                format!(
                    "expected exactly one {kind} among the resources, found {}",
                    found.map_or(0, <[_]>::len)
                ),
            );
            None
        }
    };
    let [deploy, service, pdb, ingress, hpa] = KINDS.map(&mut one);
    let Some((dfile, deploy)) = deploy else {
        return p.0;
    };
    let pod_labels = deploy.pointer("/spec/template/metadata/labels");
    if !selects(deploy.pointer("/spec/selector/matchLabels"), pod_labels) {
        p.add(
            dfile,
            "spec.selector.matchLabels must be among spec.template.metadata.labels",
        );
    }
    let containers = deploy
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let [container] = containers else {
        p.add(
            dfile,
            format!(
                "expected one container (FluxLit runs Streamlit and the API itself), found {}",
                containers.len()
            ),
        );
        return p.0;
    };
    let env = container_env(dfile, container, &mut p);
    let settings = match fluxlit_config::load(&LoadOptions::new(
        cwd,
        Environment::from_pairs(env.iter().cloned()),
        CliOverrides::default(),
    )) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                p.add(
                    dfile,
                    format!(
                        "FluxLit warns about the container's environment: {} ({})",
                        w.message, w.code
                    ),
                );
            }
            loaded.settings
        }
        Err(e) => {
            p.add(
                dfile,
                format!("the container's environment is not a valid FluxLit configuration: {e}"),
            );
            return p.0;
        }
    };
    let gateway_port = u64::from(settings.gateway_port);

    check_gateway(dfile, &settings, &mut p);
    check_probes(dfile, container, &settings, &mut p);
    check_shutdown(dfile, deploy, container, &settings, &mut p);
    check_security(dfile, deploy, container, &mut p);
    check_writable_paths(dfile, deploy, container, &env, &settings, &mut p);
    if let Some(image) = container.get("image").and_then(Value::as_str) {
        let name = image_name(image);
        let named = m
            .kustomization
            .get("images")
            .and_then(Value::as_array)
            .is_some_and(|imgs| {
                imgs.iter()
                    .any(|i| i.get("name").and_then(Value::as_str) == Some(name))
            });
        if !named {
            p.add(
                "kustomization.yaml",
                format!(
                    "`images` has no entry named `{name}`, the Deployment's image, so it \
                     cannot point it at a registry"
                ),
            );
        }
    } else {
        p.add(dfile, "the container has no image");
    }
    if let Some((file, pdb)) = pdb
        && !selects(pdb.pointer("/spec/selector/matchLabels"), pod_labels)
    {
        p.add(
            file,
            "spec.selector.matchLabels does not select the Deployment's pods",
        );
    }
    if let Some((file, hpa)) = hpa {
        check_hpa(file, hpa, dfile, deploy, &mut p);
    }
    if let Some((sfile, service)) = service {
        check_service(sfile, service, container, pod_labels, gateway_port, &mut p);
        if let Some((ifile, ingress)) = ingress {
            check_ingress(ifile, ingress, sfile, service, &settings, &mut p);
        }
    }
    p.0
}

fn check_kustomization_shape(k: &Value, p: &mut Problems) {
    let file = "kustomization.yaml";
    if str_at(k, "/apiVersion") != Some("kustomize.config.k8s.io/v1beta1")
        || str_at(k, "/kind") != Some("Kustomization")
    {
        p.add(
            file,
            "expected apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization",
        );
    }
    // kubernetes-validate has no schema for kustomizations: at least the keys are known ones.
    let known = ["apiVersion", "kind", "resources", "images"];
    for key in k.as_object().into_iter().flat_map(|o| o.keys()) {
        if !known.contains(&key.as_str()) {
            p.add(
                file,
                format!("unexpected key `{key}` (this check knows {known:?})"),
            );
        }
    }
    for img in k
        .get("images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if img.get("name").and_then(Value::as_str).is_none()
            || img.get("newName").and_then(Value::as_str).is_none()
        {
            p.add(
                file,
                format!("an `images` entry needs `name` and `newName`: {img}"),
            );
        }
    }
}

/// The container's `name: value` environment; a `FLUXLIT_*` variable from `valueFrom` cannot be
/// checked and is a problem.
fn container_env(file: &str, container: &Value, p: &mut Problems) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for e in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = e.get("name").and_then(Value::as_str).unwrap_or("");
        match e.get("value") {
            Some(Value::String(v)) => env.push((name.to_owned(), v.clone())),
            _ if name.starts_with("FLUXLIT_") => p.add(
                file,
                format!("env {name} needs a literal string `value`, so that it can be checked"),
            ),
            _ => {}
        }
    }
    env
}

fn check_gateway(file: &str, s: &Settings, p: &mut Problems) {
    if !matches!(s.gateway_host.as_str(), "0.0.0.0" | "::") {
        p.add(
            file,
            format!(
                "FLUXLIT_GATEWAY_HOST is {:?}: the gateway must listen on the pod's address \
                 (0.0.0.0) for the probes, the Service and the ingress",
                s.gateway_host
            ),
        );
    }
    if !s.trust_proxy || s.forwarded_allow_ips.is_empty() {
        p.add(
            file,
            "FLUXLIT_TRUST_PROXY must be on and FLUXLIT_FORWARDED_ALLOW_IPS list the ingress \
             controller's addresses (the pod CIDR): otherwise the API sees the ingress's \
             scheme and address, not the client's",
        );
    }
    if s.gateway_max_proxy_request_body_bytes == 0 || s.gateway_max_api_request_body_bytes == 0 {
        p.add(
            file,
            "FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES and \
             FLUXLIT_GATEWAY_MAX_API_REQUEST_BODY_BYTES must be set (0 is no limit); the \
             ingress's proxy-body-size is the larger",
        );
    }
}

fn check_probes(file: &str, container: &Value, s: &Settings, p: &mut Problems) {
    let port = u64::from(s.gateway_port);
    let Some(declared) = resolve_port(Some(&Value::from("http")), container)
        .or_else(|| u64_at(container, "/ports/0/containerPort"))
    else {
        p.add(file, "the container declares no port");
        return;
    };
    if declared != port {
        p.add(
            file,
            format!(
                "containerPort is {declared}, FLUXLIT_GATEWAY_PORT is {port}: they must be equal"
            ),
        );
    }
    let api = s.api_mount_path.as_str();
    let root = s.public_mount();
    for (probe, want, name) in [
        ("startupProbe", Route::Readyz, "readyz"),
        ("readinessProbe", Route::Readyz, "readyz"),
        ("livenessProbe", Route::Healthz, "healthz"),
    ] {
        let Some(get) = container.get(probe).and_then(|p| p.get("httpGet")) else {
            p.add(file, format!("{probe} must be an httpGet probe"));
            continue;
        };
        let path = get.get("path").and_then(Value::as_str).unwrap_or("/");
        let bare = path.split('?').next().unwrap_or(path);
        let routed = fluxlit_gateway::routing::route(bare, root, api);
        if routed.as_ref() != Ok(&want) {
            p.add(
                file,
                format!(
                    "{probe}.httpGet.path is {path:?}, which the gateway routes as {routed:?}, \
                     not to {name} ({root}{api}/{name} with the settings of the environment)"
                ),
            );
        }
        match resolve_port(get.get("port"), container) {
            Some(n) if n == port => {}
            other => p.add(
                file,
                format!(
                    "{probe}.httpGet.port resolves to {other:?}, not the gateway's port {port}"
                ),
            ),
        }
    }
    if let Some(startup) = container.get("startupProbe") {
        let delay = u64_at(startup, "/initialDelaySeconds").unwrap_or(0);
        let period = u64_at(startup, "/periodSeconds").unwrap_or(10);
        let failures = u64_at(startup, "/failureThreshold").unwrap_or(3);
        let window = delay + period * failures;
        let start = s.sidecar_start_timeout_s.as_secs_f64();
        if (window as f64) <= start {
            p.add(
                file,
                format!(
                    "startupProbe allows {window} s (initialDelaySeconds + periodSeconds × \
                     failureThreshold), not more than FLUXLIT_SIDECAR_START_TIMEOUT_S ({start} s): \
                     the kubelet would kill a slow start before FluxLit reports why"
                ),
            );
        }
    }
}

/// The preStop hook's wait in seconds: the `sleep` action or `exec: [sleep, N]`; `Err` names
/// what else it does.
fn prestop_sleep(container: &Value) -> std::result::Result<f64, String> {
    let Some(hook) = container.pointer("/lifecycle/preStop") else {
        return Err(
            "no lifecycle.preStop: the pod would stop serving before the ingress and \
                    kube-proxy forget it"
                .to_owned(),
        );
    };
    if let Some(secs) = u64_at(hook, "/sleep/seconds") {
        return Ok(secs as f64);
    }
    if let Some(cmd) = hook.pointer("/exec/command").and_then(Value::as_array) {
        let words: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
        if let [prog, secs] = words.as_slice()
            && matches!(*prog, "sleep" | "/bin/sleep" | "/usr/bin/sleep")
            && let Ok(secs) = secs.parse::<f64>()
        {
            return Ok(secs);
        }
    }
    Err(format!(
        "lifecycle.preStop is {hook}: it must only wait (the `sleep` action), since FluxLit \
         starts its stop on the kubelet's SIGTERM; a hook that signals or stops FluxLit would \
         close the listener while the ingress still routes to the pod"
    ))
}

fn check_shutdown(file: &str, deploy: &Value, container: &Value, s: &Settings, p: &mut Problems) {
    let sleep = match prestop_sleep(container) {
        Ok(secs) => secs,
        Err(msg) => {
            p.add(file, msg);
            0.0
        }
    };
    let graceful = s.graceful_shutdown_timeout_s.as_secs_f64();
    let stop = s.sidecar_stop_timeout_s.as_secs_f64();
    let needed = sleep + graceful + 2.0 * stop + TUNNEL_CUT_S + MIN_GRACE_MARGIN_S;
    match u64_at(deploy, "/spec/template/spec/terminationGracePeriodSeconds") {
        Some(t) if t as f64 >= needed => {}
        t => p.add(
            file,
            format!(
                "terminationGracePeriodSeconds is {t:?}; FluxLit's worst-case stop needs at \
                 least {needed} s: preStop {sleep} s + FLUXLIT_GRACEFUL_SHUTDOWN_TIMEOUT_S \
                 {graceful} s + 2 × FLUXLIT_SIDECAR_STOP_TIMEOUT_S {stop} s + {TUNNEL_CUT_S} s \
                 for the last tunnels + {MIN_GRACE_MARGIN_S} s margin"
            ),
        ),
    }
}

fn check_security(file: &str, deploy: &Value, container: &Value, p: &mut Problems) {
    let pod = deploy.pointer("/spec/template/spec/securityContext");
    let ctr = container.get("securityContext");
    // The container's value, else the pod's (Kubernetes' precedence).
    let eff = |pointer: &str| {
        ctr.and_then(|c| c.pointer(pointer))
            .or_else(|| pod.and_then(|c| c.pointer(pointer)))
    };
    let expect = |what: &str, ok: bool, p: &mut Problems| {
        if !ok {
            p.add(file, format!("securityContext: expected {what}"));
        }
    };
    expect(
        "runAsNonRoot: true",
        eff("/runAsNonRoot") == Some(&Value::Bool(true)),
        p,
    );
    expect(
        "runAsUser: 1000 (the image's user)",
        eff("/runAsUser").and_then(Value::as_u64) == Some(1000),
        p,
    );
    expect(
        "seccompProfile.type: RuntimeDefault",
        eff("/seccompProfile/type").and_then(Value::as_str) == Some("RuntimeDefault"),
        p,
    );
    let c = |pointer: &str| ctr.and_then(|c| c.pointer(pointer));
    expect(
        "readOnlyRootFilesystem: true on the container",
        c("/readOnlyRootFilesystem") == Some(&Value::Bool(true)),
        p,
    );
    expect(
        "allowPrivilegeEscalation: false on the container",
        c("/allowPrivilegeEscalation") == Some(&Value::Bool(false)),
        p,
    );
    expect(
        "capabilities.drop: [ALL] on the container",
        c("/capabilities/drop")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "ALL")),
        p,
    );
}

/// The pidfile, HOME and /tmp must be on writable emptyDir mounts (the root is read-only).
fn check_writable_paths(
    file: &str,
    deploy: &Value,
    container: &Value,
    env: &[(String, String)],
    s: &Settings,
    p: &mut Problems,
) {
    let empty_dirs: Vec<&str> = deploy
        .pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("emptyDir").is_some())
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    let writable: Vec<&str> = container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("readOnly") != Some(&Value::Bool(true)))
        .filter(|m| {
            m.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| empty_dirs.contains(&n))
        })
        .filter_map(|m| m.get("mountPath").and_then(Value::as_str))
        .collect();
    let on_writable = |path: &str| {
        let path = Path::new(path);
        path.is_absolute() && writable.iter().any(|m| path.starts_with(m))
    };
    let mut need = |what: &str, path: &str| {
        if !on_writable(path) {
            p.add(
                file,
                format!(
                    "{what} ({path:?}) is not under a writable emptyDir mount ({writable:?}): \
                     with readOnlyRootFilesystem it cannot be written"
                ),
            );
        }
    };
    if !s.no_pidfile {
        need(
            "the pidfile (FLUXLIT_PIDFILE, relative to the read-only working directory unless absolute)",
            &s.pidfile,
        );
    }
    let home = env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map_or("", |(_, v)| v.as_str());
    need("HOME (Streamlit's ~/.streamlit, ~/.cache)", home);
    need("the temporary directory", "/tmp");
}

fn check_hpa(file: &str, hpa: &Value, dfile: &str, deploy: &Value, p: &mut Problems) {
    let target = (
        str_at(hpa, "/spec/scaleTargetRef/apiVersion"),
        str_at(hpa, "/spec/scaleTargetRef/kind"),
        str_at(hpa, "/spec/scaleTargetRef/name"),
    );
    let name = str_at(deploy, "/metadata/name");
    if target != (Some("apps/v1"), Some("Deployment"), name) {
        p.add(
            file,
            format!("spec.scaleTargetRef is {target:?}, not the Deployment (apps/v1, {name:?})"),
        );
    }
    if u64_at(hpa, "/spec/minReplicas").unwrap_or(1) < 2 {
        p.add(
            file,
            "spec.minReplicas must be at least 2: with one replica every rolling deploy, drain \
             or crash leaves no pod to reconnect to",
        );
    }
    if deploy.pointer("/spec/replicas").is_some() {
        p.add(
            dfile,
            "spec.replicas is set while the HorizontalPodAutoscaler owns the count: every \
             `kubectl apply` would reset it",
        );
    }
}

fn check_service(
    file: &str,
    service: &Value,
    container: &Value,
    pod_labels: Option<&Value>,
    gateway_port: u64,
    p: &mut Problems,
) {
    if !selects(service.pointer("/spec/selector"), pod_labels) {
        p.add(file, "spec.selector does not select the Deployment's pods");
    }
    let ports = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if ports.is_empty() {
        p.add(file, "spec.ports is empty");
    }
    for port in ports {
        let target = port.get("targetPort").or_else(|| port.get("port"));
        match resolve_port(target, container) {
            Some(n) if n == gateway_port => {}
            other => p.add(
                file,
                format!(
                    "targetPort {} resolves to container port {other:?}, not the gateway's \
                     port {gateway_port} (FLUXLIT_GATEWAY_PORT)",
                    target.map_or_else(|| "(none)".to_owned(), Value::to_string)
                ),
            ),
        }
    }
}

fn check_ingress(
    file: &str,
    ingress: &Value,
    sfile: &str,
    service: &Value,
    s: &Settings,
    p: &mut Problems,
) {
    let service_name = str_at(service, "/metadata/name");
    let ports = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let backends: Vec<&Value> = ingress
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|r| {
            r.pointer("/http/paths")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|path| path.pointer("/backend/service"))
        .collect();
    if backends.is_empty() {
        p.add(file, "no rule has a service backend");
    }
    for b in backends {
        if b.get("name").and_then(Value::as_str) != service_name {
            p.add(
                file,
                format!(
                    "a backend names service {}, not {sfile}'s {service_name:?}",
                    b["name"]
                ),
            );
        }
        let by_name = b.pointer("/port/name").is_some_and(|n| {
            ports
                .iter()
                .any(|sp| sp.get("name").is_some_and(|m| m == n))
        });
        let by_number = b.pointer("/port/number").is_some_and(|n| {
            ports
                .iter()
                .any(|sp| sp.get("port").is_some_and(|m| m == n))
        });
        if !by_name && !by_number {
            p.add(
                file,
                format!(
                    "a backend's port {} is not one of {sfile}'s ports",
                    b["port"]
                ),
            );
        }
    }
    let annotation = |key: &str| {
        ingress
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(format!("nginx.ingress.kubernetes.io/{key}")))
            .and_then(Value::as_str)
    };
    if annotation("affinity") != Some("cookie") {
        p.add(
            file,
            "nginx.ingress.kubernetes.io/affinity must be \"cookie\": a Streamlit session lives \
             in one replica's memory",
        );
    }
    let upstream_read = s.gateway_upstream_read_timeout_s.as_secs_f64();
    for key in ["proxy-read-timeout", "proxy-send-timeout"] {
        match annotation(key).and_then(|v| v.parse::<u64>().ok()) {
            Some(secs) if secs as f64 > upstream_read => {}
            other => p.add(
                file,
                format!(
                    "nginx.ingress.kubernetes.io/{key} is {other:?}: WebSocket tunnels and slow \
                     API responses need more than FluxLit's upstream read timeout \
                     ({upstream_read} s), in seconds"
                ),
            ),
        }
    }
    let cap = s
        .gateway_max_proxy_request_body_bytes
        .max(s.gateway_max_api_request_body_bytes);
    let size = annotation("proxy-body-size");
    if size.and_then(nginx_size) != Some(cap) {
        p.add(
            file,
            format!(
                "nginx.ingress.kubernetes.io/proxy-body-size is {size:?}; it must equal FluxLit's \
                 larger body cap, {cap} bytes (FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES, \
                 FLUXLIT_GATEWAY_MAX_API_REQUEST_BODY_BYTES)"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    /// A small but complete set of manifests that passes [`check`].
    fn fixture() -> Manifests {
        let labels = json!({"app.kubernetes.io/name": "demo"});
        let deploy = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "demo"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 35,
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}
                        },
                        "containers": [{
                            "name": "fluxlit", "image": "demo:1",
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "env": [
                                {"name": "FLUXLIT_GATEWAY_HOST", "value": "0.0.0.0"},
                                {"name": "FLUXLIT_GATEWAY_PORT", "value": "8000"},
                                {"name": "FLUXLIT_TRUST_PROXY", "value": "true"},
                                {"name": "FLUXLIT_FORWARDED_ALLOW_IPS", "value": "10.244.0.0/16"},
                                {"name": "FLUXLIT_GRACEFUL_SHUTDOWN_TIMEOUT_S", "value": "10"},
                                {"name": "FLUXLIT_SIDECAR_STOP_TIMEOUT_S", "value": "5"},
                                {"name": "FLUXLIT_GATEWAY_MAX_PROXY_REQUEST_BODY_BYTES", "value": "220200960"},
                                {"name": "FLUXLIT_GATEWAY_MAX_API_REQUEST_BODY_BYTES", "value": "10485760"},
                                {"name": "FLUXLIT_PIDFILE", "value": "/tmp/fluxlit.pid"},
                                {"name": "HOME", "value": "/home/fluxlit"}
                            ],
                            "startupProbe": {"httpGet": {"path": "/api/readyz", "port": "http"},
                                             "periodSeconds": 2, "failureThreshold": 35},
                            "readinessProbe": {"httpGet": {"path": "/api/readyz", "port": "http"}},
                            "livenessProbe": {"httpGet": {"path": "/api/healthz", "port": 8000}},
                            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
                            "securityContext": {
                                "readOnlyRootFilesystem": true,
                                "allowPrivilegeEscalation": false,
                                "capabilities": {"drop": ["ALL"]}
                            },
                            "volumeMounts": [
                                {"name": "tmp", "mountPath": "/tmp"},
                                {"name": "home", "mountPath": "/home/fluxlit"}
                            ]
                        }],
                        "volumes": [
                            {"name": "tmp", "emptyDir": {}},
                            {"name": "home", "emptyDir": {}}
                        ]
                    }
                }
            }
        });
        let service = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "demo"},
            "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        });
        let pdb = json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "demo"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}}
        });
        let ingress = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "demo", "annotations": {
                "nginx.ingress.kubernetes.io/affinity": "cookie",
                "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
                "nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
                "nginx.ingress.kubernetes.io/proxy-body-size": "210m"
            }},
            "spec": {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "demo", "port": {"name": "http"}}}}]}}]}
        });
        let hpa = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "demo"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo"},
                     "minReplicas": 2, "maxReplicas": 4}
        });
        Manifests {
            kustomization: json!({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": ["deployment.yaml"],
                "images": [{"name": "demo", "newName": "registry.example.com/demo"}]
            }),
            resources: vec![
                ("deployment.yaml".into(), deploy),
                ("service.yaml".into(), service),
                ("pdb.yaml".into(), pdb),
                ("ingress.yaml".into(), ingress),
                ("hpa.yaml".into(), hpa),
            ],
        }
    }

    fn empty_dir() -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xtask-k8s-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn problems_after(change: impl FnOnce(&mut Manifests)) -> Vec<String> {
        let mut m = fixture();
        change(&mut m);
        let dir = empty_dir();
        let problems = check(&m, &dir);
        std::fs::remove_dir_all(&dir).unwrap();
        problems
    }

    fn deployment(m: &mut Manifests) -> &mut Value {
        &mut m.resources[0].1
    }

    fn container(m: &mut Manifests) -> &mut Value {
        deployment(m)
            .pointer_mut("/spec/template/spec/containers/0")
            .unwrap()
    }

    fn set_env(m: &mut Manifests, name: &str, value: &str) {
        let env = container(m)
            .get_mut("env")
            .and_then(Value::as_array_mut)
            .unwrap();
        env.retain(|e| e["name"] != name);
        env.push(json!({"name": name, "value": value}));
    }

    #[track_caller]
    fn assert_problem(problems: &[String], needle: &str) {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected a problem containing {needle:?}, got {problems:#?}"
        );
    }

    #[test]
    fn the_fixture_passes() {
        assert_eq!(problems_after(|_| {}), Vec::<String>::new());
    }

    #[test]
    fn a_probe_off_the_gateways_health_route_fails() {
        let problems = problems_after(|m| {
            container(m)["readinessProbe"]["httpGet"]["path"] = json!("/api/ready");
        });
        assert_problem(&problems, "readinessProbe.httpGet.path is \"/api/ready\"");
    }

    #[test]
    fn probes_follow_the_api_mount_of_the_environment() {
        let moved = |m: &mut Manifests| set_env(m, "FLUXLIT_API_MOUNT_PATH", "/backend");
        let problems = problems_after(moved);
        assert_problem(&problems, "livenessProbe.httpGet.path is \"/api/healthz\"");
        let fixed = problems_after(|m| {
            moved(m);
            let c = container(m);
            c["livenessProbe"]["httpGet"]["path"] = json!("/backend/healthz");
            c["readinessProbe"]["httpGet"]["path"] = json!("/backend/readyz");
            c["startupProbe"]["httpGet"]["path"] = json!("/backend/readyz");
        });
        assert_eq!(fixed, Vec::<String>::new());
    }

    #[test]
    fn a_grace_period_within_fluxlits_stop_fails() {
        // 5 s sleep + 10 s + 2 × 5 s + 1 s + 3 s margin = 29 s.
        let problems = problems_after(|m| {
            deployment(m)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(28);
        });
        assert_problem(&problems, "terminationGracePeriodSeconds is Some(28)");
        let longer_drain =
            problems_after(|m| set_env(m, "FLUXLIT_GRACEFUL_SHUTDOWN_TIMEOUT_S", "20"));
        assert_problem(&longer_drain, "needs at least 39 s");
        assert_eq!(
            problems_after(|m| {
                deployment(m)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] =
                    json!(29);
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_prestop_hook_that_does_more_than_wait_fails() {
        let problems = problems_after(|m| {
            container(m)["lifecycle"]["preStop"] =
                json!({"exec": {"command": ["fluxlit", "shutdown"]}});
        });
        assert_problem(&problems, "it must only wait");
        let exec_sleep = problems_after(|m| {
            container(m)["lifecycle"]["preStop"] = json!({"exec": {"command": ["sleep", "5"]}});
        });
        assert_eq!(exec_sleep, Vec::<String>::new());
    }

    #[test]
    fn ports_that_disagree_fail() {
        let problems = problems_after(|m| set_env(m, "FLUXLIT_GATEWAY_PORT", "8080"));
        assert_problem(
            &problems,
            "containerPort is 8000, FLUXLIT_GATEWAY_PORT is 8080",
        );
        assert_problem(
            &problems,
            "targetPort \"http\" resolves to container port Some(8000)",
        );
        let numeric = problems_after(|m| {
            m.resources[1].1["spec"]["ports"][0]["targetPort"] = json!(8001);
        });
        assert_problem(&numeric, "targetPort 8001");
    }

    #[test]
    fn an_unknown_fluxlit_variable_fails() {
        let problems = problems_after(|m| set_env(m, "FLUXLIT_GRACEFUL_SHUTDOWN_TIMEOUT", "10"));
        assert_problem(&problems, "FluxLit warns about the container's environment");
        let invalid = problems_after(|m| set_env(m, "FLUXLIT_GATEWAY_PORT", "http"));
        assert_problem(&invalid, "not a valid FluxLit configuration");
    }

    #[test]
    fn gateway_settings_unfit_for_a_pod_fail() {
        let loopback = problems_after(|m| set_env(m, "FLUXLIT_GATEWAY_HOST", "127.0.0.1"));
        assert_problem(&loopback, "FLUXLIT_GATEWAY_HOST is \"127.0.0.1\"");
        let untrusted = problems_after(|m| set_env(m, "FLUXLIT_TRUST_PROXY", "false"));
        assert_problem(&untrusted, "FLUXLIT_TRUST_PROXY must be on");
        let uncapped =
            problems_after(|m| set_env(m, "FLUXLIT_GATEWAY_MAX_API_REQUEST_BODY_BYTES", "0"));
        assert_problem(&uncapped, "(0 is no limit)");
    }

    #[test]
    fn writes_outside_the_writable_mounts_fail() {
        let default_pidfile = problems_after(|m| {
            container(m)["env"]
                .as_array_mut()
                .unwrap()
                .retain(|e| e["name"] != "FLUXLIT_PIDFILE");
        });
        assert_problem(&default_pidfile, "the pidfile");
        let no_tmp = problems_after(|m| {
            container(m)["volumeMounts"]
                .as_array_mut()
                .unwrap()
                .retain(|v| v["name"] != "tmp");
        });
        assert_problem(
            &no_tmp,
            "(\"/tmp/fluxlit.pid\") is not under a writable emptyDir",
        );
        let ro_root = problems_after(|m| {
            container(m)["securityContext"]["readOnlyRootFilesystem"] = json!(false);
        });
        assert_problem(&ro_root, "readOnlyRootFilesystem: true");
    }

    #[test]
    fn an_ingress_body_size_other_than_fluxlits_cap_fails() {
        let problems = problems_after(|m| {
            m.resources[3].1["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] =
                json!("200m");
        });
        assert_problem(&problems, "proxy-body-size is Some(\"200m\")");
        let short = problems_after(|m| {
            m.resources[3].1["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] =
                json!("60");
        });
        assert_problem(&short, "proxy-read-timeout is Some(60)");
    }

    #[test]
    fn names_and_selectors_that_drift_apart_fail() {
        let hpa = problems_after(|m| {
            m.resources[4].1["spec"]["scaleTargetRef"]["name"] = json!("other");
        });
        assert_problem(&hpa, "spec.scaleTargetRef");
        let pdb = problems_after(|m| {
            m.resources[2].1["spec"]["selector"]["matchLabels"] = json!({"app": "other"});
        });
        assert_problem(&pdb, "does not select the Deployment's pods");
        let backend = problems_after(|m| {
            m.resources[3].1["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] =
                json!("other");
        });
        assert_problem(&backend, "a backend names service \"other\"");
        let image = problems_after(|m| container(m)["image"] = json!("elsewhere:2"));
        assert_problem(&image, "no entry named `elsewhere`");
    }

    #[test]
    fn the_kustomization_must_list_every_manifest() {
        let dir = empty_dir();
        for f in ["kustomization.yaml", "a.yaml", "b.yaml", "README.md"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let listing = |files: &[&str]| listed_resources(&json!({ "resources": files }), &dir);
        let missing = listing(&["a.yaml"]).unwrap_err();
        assert!(
            missing.0.contains("[\"a.yaml\", \"b.yaml\"]"),
            "{}",
            missing.0
        );
        assert!(listing(&["a.yaml", "b.yaml", "c.yaml"]).is_err());
        assert_eq!(
            listing(&["b.yaml", "a.yaml"]).unwrap(),
            vec![dir.join("b.yaml"), dir.join("a.yaml")]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nginx_sizes_and_image_names() {
        assert_eq!(nginx_size("210m"), Some(210 * 1024 * 1024));
        assert_eq!(nginx_size("8K"), Some(8192));
        assert_eq!(nginx_size("1024"), Some(1024));
        assert_eq!(nginx_size("1t"), None);
        assert_eq!(nginx_size("m"), None);
        assert_eq!(image_name("fluxlit-app"), "fluxlit-app");
        assert_eq!(image_name("reg:5000/team/app:1.2"), "reg:5000/team/app");
        assert_eq!(image_name("reg:5000/app"), "reg:5000/app");
        assert_eq!(image_name("app@sha256:abc"), "app");
    }
}
