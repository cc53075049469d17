//! The host side of `kiln/detect` and `kiln/package`: what the zero-config
//! build learns from a fetched tree. Everything here reads the workspace (a
//! tree from an untrusted repository) through `kiln-build`, which never
//! follows a link and caps what it reads; nothing here runs anything.

use std::path::Path;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// What `kiln/detect` found.
#[derive(Debug, Clone)]
pub struct Detected {
    /// The step's outputs: `manager`, `install`, `build`, `cache-key`,
    /// `cache-paths`, `hermetic`, `output`, `output-type`, `lockfiles`.
    pub outputs: Map<String, Value>,
    /// `kiln.toml`'s `env`, for the steps after this one.
    pub env: Vec<(String, String)>,
    /// Lines for the log.
    pub notes: Vec<String>,
    /// Entries that would widen the policy: the step fails naming each.
    pub violations: Vec<String>,
    /// The commands the build will run, for provenance.
    pub commands: Vec<String>,
}

/// Environment names a repository's `kiln.toml` may not set: kiln's own and
/// the ones that route traffic or load code into every process.
fn reserved_env(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("KILN_")
        || upper.starts_with("GITHUB_")
        || matches!(
            upper.as_str(),
            "HTTP_PROXY" | "HTTPS_PROXY" | "NO_PROXY" | "ALL_PROXY" | "LD_PRELOAD" | "LD_LIBRARY_PATH"
        )
}

/// Reads `kiln.toml`, detects the package manager, checks the repository's
/// package-manager configuration and lockfiles against `registries` (the
/// manager's public registries plus the operator's), and derives the
/// dependency cache key.
pub fn detect(ws: &Path, ignore_scripts: bool, operator_registries: &[String]) -> Result<Detected, String> {
    let mut config = kiln_build::KilnToml::load_or_default(ws).map_err(|e| e.to_string())?;
    config.ignore_scripts |= ignore_scripts;
    let mut detection = kiln_build::detect::plan(ws, &config).map_err(|e| e.to_string())?;
    let manager = detection.manager;
    if config.install.is_none() && npm_has_nothing_to_install(ws, manager)? {
        detection.install = None;
        detection.notes.push(
            "nothing to install: the lockfile lists no packages and package.json no install scripts".into(),
        );
    }
    let mut allowed: Vec<String> = manager.registries().iter().map(|s| s.to_string()).collect();
    allowed.extend(operator_registries.iter().cloned());
    let mut violations: Vec<String> =
        kiln_build::policy::check_all(ws, manager, &allowed, &config).iter().map(|v| v.to_string()).collect();
    // The repository's own registry wishes widen nothing: they must already
    // be the operator's.
    for r in &config.registries {
        if !operator_registries.contains(r) && !allowed.contains(r) {
            violations.push(format!(
                "kiln.toml: registry `{r}` is not one the operator allows (kiln build --registry)"
            ));
        }
    }

    let mut notes = vec![format!("package manager: {}", manager.name())];
    notes.extend(detection.notes.iter().cloned());
    let mut env = Vec::new();
    for (k, v) in &config.env {
        if reserved_env(k) {
            violations.push(format!("kiln.toml: env `{k}` is reserved"));
        } else {
            env.push((k.clone(), v.clone()));
        }
    }

    // The dependency cache key: every input that changes what the install
    // produces.
    let install = detection.install.clone().unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"kiln-deps-v1\0");
    h.update(manager.name().as_bytes());
    h.update(b"\0");
    h.update(install.as_bytes());
    h.update(b"\0");
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    for v in [&config.node, &config.python] {
        h.update(b"\0");
        h.update(v.as_deref().unwrap_or("").as_bytes());
    }
    for (k, v) in &env {
        h.update(format!("\0{k}={v}").as_bytes());
    }
    for rel in detection.lockfiles.iter().chain(detection.manifests.iter()) {
        let digest = kiln_build::file_digest(ws, rel).map_err(|e| e.to_string())?.unwrap_or_default();
        h.update(format!("\0{rel}\0{digest}").as_bytes());
    }
    let cache_key = if install.is_empty() {
        String::new()
    } else {
        format!("deps-{}-{}", manager.name(), &hex::encode(h.finalize())[..32])
    };

    let mut outputs = Map::new();
    let mut put = |k: &str, v: String| {
        outputs.insert(k.to_string(), Value::String(v));
    };
    put("manager", manager.name().to_string());
    put("install", install.clone());
    put("build", detection.build.clone().unwrap_or_default());
    put("cache-key", cache_key);
    put("cache-paths", manager.cache_paths().join("\n"));
    put("hermetic", config.hermetic.to_string());
    put("output", config.output.clone().unwrap_or_default());
    put("output-type", config.output_type.map(|k| k.as_str().to_string()).unwrap_or_default());
    put("lockfiles", detection.lockfiles.join("\n"));
    let commands = [detection.install.clone(), detection.build.clone()].into_iter().flatten().collect();
    Ok(Detected { outputs, env, notes, violations, commands })
}

/// An npm project whose lockfile lists no package but the root, and whose
/// package.json has no install-time scripts: `npm ci` would only spend time
/// (and the dependency cache would have nothing to keep).
fn npm_has_nothing_to_install(ws: &Path, manager: kiln_build::Manager) -> Result<bool, String> {
    if manager != kiln_build::Manager::Npm {
        return Ok(false);
    }
    let read = |rel: &str| -> Result<Option<Value>, String> {
        match kiln_build::read_text(ws, rel).map_err(|e| e.to_string())? {
            Some(t) => Ok(serde_json::from_str(&t).ok()),
            None => Ok(None),
        }
    };
    let (Some(lock), Some(pkg)) = (read("package-lock.json")?, read("package.json")?) else {
        return Ok(false);
    };
    let only_root = lock["lockfileVersion"].as_u64().unwrap_or(0) >= 2
        && lock["packages"].as_object().is_some_and(|p| p.keys().all(|k| k.is_empty()));
    let hooks = ["preinstall", "install", "postinstall", "prepare", "preprepare", "postprepare"];
    let scripts = pkg["scripts"].as_object().is_some_and(|s| hooks.iter().any(|h| s.contains_key(*h)));
    let deps = ["dependencies", "devDependencies", "optionalDependencies"]
        .iter()
        .any(|d| pkg[*d].as_object().is_some_and(|m| !m.is_empty()));
    Ok(only_root && !scripts && !deps)
}

/// Where `kiln/package` finds the output: `kiln.toml`'s `output`, else the
/// first of the framework's usual places. Returns the relative path and its
/// output type.
pub fn locate(ws: &Path) -> Result<(String, kiln_store::OutputType), String> {
    let config = kiln_build::KilnToml::load_or_default(ws).map_err(|e| e.to_string())?;
    let detection = kiln_build::detect::plan(ws, &config).map_err(|e| e.to_string())?;
    let out = kiln_build::locate(ws, &detection, &config).map_err(|e| e.to_string())?;
    Ok((out.path, output_type(out.kind)))
}

pub fn output_type(kind: kiln_build::OutputKind) -> kiln_store::OutputType {
    match kind {
        kiln_build::OutputKind::Static => kiln_store::OutputType::Static,
        kiln_build::OutputKind::Server => kiln_store::OutputType::Server,
        kiln_build::OutputKind::Function => kiln_store::OutputType::Function,
    }
}
