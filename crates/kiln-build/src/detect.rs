//! Package manager detection: what to install, how, what to build, where the output will be.
//!
//! The first match wins, in this order: bun (`bun.lockb` or `bun.lock`), pnpm
//! (`pnpm-lock.yaml`), Yarn berry (`yarn.lock` with `.yarnrc.yml`, or a `yarn.lock` whose
//! header has `__metadata`), Yarn classic (`yarn.lock`), npm (`package-lock.json`,
//! `npm-shrinkwrap.json`, or a `package.json` without any lockfile), uv (`uv.lock`), Poetry
//! (`poetry.lock`), pip (`requirements.txt`), Go (`go.mod` or `go.sum`), Cargo (`Cargo.toml` or
//! `Cargo.lock`), else none. Only the repository root is looked at.
//!
//! Commands are shell command lines run from the repository root with `HOME` set to
//! [`crate::HOME_DIR`]. Install commands never update a lockfile. Build commands assume no
//! network (the build step is hermetic by default), so each one is the offline form:
//!
//! | manager | install | build |
//! | --- | --- | --- |
//! | npm | `npm ci --no-audit --no-fund` (no lockfile: `npm install --no-package-lock ...`) | `npm run build` if `scripts.build` |
//! | pnpm | `pnpm install --frozen-lockfile` | `pnpm run build` |
//! | Yarn classic | `yarn install --frozen-lockfile` | `yarn run build` |
//! | Yarn berry | `yarn install --immutable` | `yarn run build` |
//! | bun | `bun install --frozen-lockfile` | `bun run build` |
//! | pip | `python3 -m venv .venv && .venv/bin/pip install --no-input [--require-hashes] -r requirements.txt`, then the `[build-system]` requirements | `.venv/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir dist .` if `pyproject.toml`/`setup.py` |
//! | Poetry | `POETRY_VIRTUALENVS_IN_PROJECT=true poetry install --no-root --sync --no-interaction` | `poetry build --format wheel` unless `package-mode = false` |
//! | uv | `uv sync --frozen`, then the `[build-system]` requirements | `uv build --offline --no-build-isolation --wheel --out-dir dist` if the project is a package |
//! | Go | `GOTOOLCHAIN=local go mod download` (nothing with `vendor/`) | `GOTOOLCHAIN=local GOFLAGS=-mod=readonly GOPROXY=off go build -trimpath -o .kiln/out/ ./...` |
//! | Cargo | `cargo fetch --locked` | `cargo build --release --locked --offline` |
//!
//! Python builds use `pip wheel` rather than `python3 -m build`: pip is in every virtual
//! environment while `build` is not, and both need `--no-build-isolation` offline (an isolated
//! build would download the build backend), which is why the install step also installs the
//! `[build-system]` requirements into `.venv`. `GOTOOLCHAIN=local` keeps a `toolchain` line in
//! `go.mod` from downloading a Go toolchain.
//!
//! `ignore_scripts` adds `--ignore-scripts` (npm, pnpm, Yarn classic, bun), sets
//! `YARN_ENABLE_SCRIPTS=false` (Yarn berry), adds `--only-binary :all:` (pip: no `setup.py`
//! runs) and `--no-build` (uv). Poetry and Cargo have no such switch; a note says so.

use std::path::Path;

use serde::Serialize;

use crate::config::KilnToml;
use crate::fsread::{self, Entry, CONFIG_CAP, LOCKFILE_CAP};
use crate::{BuildError, OutputKind, OUT_DIR};

/// A package manager kiln knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manager {
    /// bun (`bun.lock`, `bun.lockb`).
    Bun,
    /// pnpm (`pnpm-lock.yaml`).
    Pnpm,
    /// Yarn 2+ (`yarn.lock` in YAML form, `.yarnrc.yml`).
    YarnBerry,
    /// Yarn 1 (`yarn.lock` v1).
    YarnClassic,
    /// npm (`package-lock.json`, `npm-shrinkwrap.json`, or only `package.json`).
    Npm,
    /// uv (`uv.lock`).
    Uv,
    /// Poetry (`poetry.lock`).
    Poetry,
    /// pip (`requirements.txt`) into a `.venv`.
    Pip,
    /// Go modules (`go.mod`, `go.sum`).
    Go,
    /// Cargo (`Cargo.toml`, `Cargo.lock`).
    Cargo,
    /// Nothing recognised: no install, and a build only from `kiln.toml`.
    #[serde(rename = "none")]
    Unknown,
}

const NPM_REGISTRIES: &[&str] = &["registry.npmjs.org", "registry.yarnpkg.com"];
const PYTHON_REGISTRIES: &[&str] = &["pypi.org", "files.pythonhosted.org"];
const GO_REGISTRIES: &[&str] = &["proxy.golang.org", "sum.golang.org"];
const CARGO_REGISTRIES: &[&str] = &["index.crates.io", "static.crates.io"];

impl Manager {
    /// Short lower-case name (`yarn-berry`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            Manager::Bun => "bun",
            Manager::Pnpm => "pnpm",
            Manager::YarnBerry => "yarn-berry",
            Manager::YarnClassic => "yarn-classic",
            Manager::Npm => "npm",
            Manager::Uv => "uv",
            Manager::Poetry => "poetry",
            Manager::Pip => "pip",
            Manager::Go => "go",
            Manager::Cargo => "cargo",
            Manager::Unknown => "none",
        }
    }

    /// The registry hosts the install step needs by default (egress allow-list entries).
    pub fn registries(self) -> &'static [&'static str] {
        match self {
            Manager::Bun | Manager::Pnpm | Manager::YarnBerry | Manager::YarnClassic | Manager::Npm => {
                NPM_REGISTRIES
            }
            Manager::Uv | Manager::Poetry | Manager::Pip => PYTHON_REGISTRIES,
            Manager::Go => GO_REGISTRIES,
            Manager::Cargo => CARGO_REGISTRIES,
            Manager::Unknown => &[],
        }
    }

    /// What the dependency cache keeps, relative to the repository root: the installed tree a
    /// build needs, so a cache hit can skip the install. Paths may not exist (a Yarn PnP
    /// install has no `node_modules`); the caller skips those. Paths under `.kiln/home` assume
    /// `HOME` = [`crate::HOME_DIR`].
    pub fn cache_paths(self) -> &'static [&'static str] {
        match self {
            Manager::Bun | Manager::Pnpm | Manager::YarnClassic | Manager::Npm => &["node_modules"],
            Manager::YarnBerry => &[
                ".yarn/cache",
                ".yarn/unplugged",
                ".yarn/install-state.gz",
                ".pnp.cjs",
                ".pnp.loader.mjs",
                "node_modules",
            ],
            Manager::Uv | Manager::Poetry | Manager::Pip => &[".venv"],
            Manager::Go => &[".kiln/home/go/pkg/mod"],
            Manager::Cargo => &[".kiln/home/.cargo/registry", ".kiln/home/.cargo/git"],
            Manager::Unknown => &[],
        }
    }

    /// Whether this is one of the JavaScript managers (they share `.npmrc` and `package.json`).
    pub fn is_node(self) -> bool {
        matches!(
            self,
            Manager::Bun | Manager::Pnpm | Manager::YarnBerry | Manager::YarnClassic | Manager::Npm
        )
    }

    /// Whether this is one of the Python managers.
    pub fn is_python(self) -> bool {
        matches!(self, Manager::Uv | Manager::Poetry | Manager::Pip)
    }

    /// The kind of output a build with this manager usually makes.
    pub fn default_output_kind(self) -> OutputKind {
        match self {
            Manager::Go | Manager::Cargo => OutputKind::Server,
            // A wheel is run by a platform, not served as files; scanning it as a static site
            // would also quarantine every wheel with a compiled extension (ELF inside).
            Manager::Uv | Manager::Poetry | Manager::Pip => OutputKind::Function,
            _ => OutputKind::Static,
        }
    }
}

impl std::fmt::Display for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A place the build output usually is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputCandidate {
    /// Relative to the repository root.
    pub path: String,
    /// What the output is when found there.
    pub kind: OutputKind,
}

/// What detection decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// The package manager.
    pub manager: Manager,
    /// The lockfiles that exist (relative paths), for the dependency cache key.
    pub lockfiles: Vec<String>,
    /// The manifests that exist (`package.json`, `pyproject.toml`, `go.mod`, `Cargo.toml`);
    /// they belong in the cache key too.
    pub manifests: Vec<String>,
    /// The clean install command, if anything needs installing.
    pub install: Option<String>,
    /// The build command, if one was found.
    pub build: Option<String>,
    /// Where to look for the output, in order.
    pub output_candidates: Vec<OutputCandidate>,
    /// Things a human should know (no lockfile, an option without effect).
    pub notes: Vec<String>,
}

/// Options that change the commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetectOptions {
    /// Keep dependency install scripts from running where the manager allows it.
    pub ignore_scripts: bool,
}

impl From<&KilnToml> for DetectOptions {
    fn from(config: &KilnToml) -> Self {
        DetectOptions { ignore_scripts: config.ignore_scripts }
    }
}

/// Detect with default options.
pub fn detect(root: &Path) -> Result<Detection, BuildError> {
    detect_with(root, &DetectOptions::default())
}

/// Detect, then apply `kiln.toml`: the options it sets and its `install`, `build`, `output`
/// and `output_type` overrides.
pub fn plan(root: &Path, config: &KilnToml) -> Result<Detection, BuildError> {
    let mut detection = detect_with(root, &DetectOptions::from(config))?;
    detection.apply_config(config);
    Ok(detection)
}

impl Detection {
    /// Let `kiln.toml` override the detected commands and output.
    pub fn apply_config(&mut self, config: &KilnToml) {
        if let Some(install) = &config.install {
            self.install = Some(install.clone());
            self.notes.push("install command from kiln.toml".into());
        }
        if let Some(build) = &config.build {
            self.build = Some(build.clone());
            self.notes.push("build command from kiln.toml".into());
        }
        if let Some(kind) = config.output_type {
            for c in &mut self.output_candidates {
                c.kind = kind;
            }
        }
        if let Some(path) = &config.output {
            let kind = config
                .output_type
                .or_else(|| self.output_candidates.iter().find(|c| &c.path == path).map(|c| c.kind))
                .unwrap_or_else(|| self.manager.default_output_kind());
            self.output_candidates = vec![OutputCandidate { path: path.clone(), kind }];
        }
    }
}

/// Detect the package manager of the repository at `root`.
pub fn detect_with(root: &Path, opts: &DetectOptions) -> Result<Detection, BuildError> {
    let exists = |rel: &str| fsread::is_file(root, rel);
    let present = |names: &[&str]| -> Result<Vec<String>, BuildError> {
        let mut out = Vec::new();
        for n in names {
            if exists(n)? {
                out.push(n.to_string());
            }
        }
        Ok(out)
    };

    let bun = present(&["bun.lockb", "bun.lock"])?;
    let manager = if !bun.is_empty() {
        Manager::Bun
    } else if exists("pnpm-lock.yaml")? {
        Manager::Pnpm
    } else if exists("yarn.lock")? {
        if exists(".yarnrc.yml")? || yarn_lock_is_berry(root)? {
            Manager::YarnBerry
        } else {
            Manager::YarnClassic
        }
    } else if exists("package-lock.json")? || exists("npm-shrinkwrap.json")? || exists("package.json")? {
        Manager::Npm
    } else if exists("uv.lock")? {
        Manager::Uv
    } else if exists("poetry.lock")? {
        Manager::Poetry
    } else if exists("requirements.txt")? {
        Manager::Pip
    } else if exists("go.mod")? || exists("go.sum")? {
        Manager::Go
    } else if exists("Cargo.toml")? || exists("Cargo.lock")? {
        Manager::Cargo
    } else {
        Manager::Unknown
    };

    let mut d = Detection {
        manager,
        lockfiles: Vec::new(),
        manifests: Vec::new(),
        install: None,
        build: None,
        output_candidates: Vec::new(),
        notes: Vec::new(),
    };
    let scripts = opts.ignore_scripts;
    match manager {
        Manager::Bun | Manager::Pnpm | Manager::YarnBerry | Manager::YarnClassic | Manager::Npm => {
            d.lockfiles = match manager {
                Manager::Bun => bun,
                Manager::Pnpm => vec!["pnpm-lock.yaml".into()],
                Manager::YarnBerry | Manager::YarnClassic => vec!["yarn.lock".into()],
                _ => present(&["npm-shrinkwrap.json", "package-lock.json"])?,
            };
            d.manifests = present(&["package.json"])?;
            let flag = if scripts { " --ignore-scripts" } else { "" };
            d.install = Some(match manager {
                Manager::Bun => format!("bun install --frozen-lockfile{flag}"),
                Manager::Pnpm => format!("pnpm install --frozen-lockfile{flag}"),
                Manager::YarnClassic => format!("yarn install --frozen-lockfile{flag}"),
                Manager::YarnBerry if scripts => "YARN_ENABLE_SCRIPTS=false yarn install --immutable".into(),
                Manager::YarnBerry => "yarn install --immutable".into(),
                _ if d.lockfiles.is_empty() => {
                    d.notes.push(
                        "no package-lock.json: dependencies are resolved at install time and not pinned"
                            .into(),
                    );
                    format!("npm install --no-package-lock --no-audit --no-fund{flag}")
                }
                _ => format!("npm ci --no-audit --no-fund{flag}"),
            });
            if has_build_script(root)? {
                let runner = match manager {
                    Manager::Bun => "bun",
                    Manager::Pnpm => "pnpm",
                    Manager::YarnBerry | Manager::YarnClassic => "yarn",
                    _ => "npm",
                };
                d.build = Some(format!("{runner} run build"));
            } else {
                d.notes.push("package.json has no `build` script: nothing to build".into());
            }
            d.output_candidates = vec![
                candidate("dist", OutputKind::Static),
                candidate("build", OutputKind::Static),
                candidate("out", OutputKind::Static),
                candidate(".next/standalone", OutputKind::Server),
                candidate("public", OutputKind::Static),
            ];
        }
        Manager::Uv | Manager::Poetry | Manager::Pip => python(root, manager, scripts, &mut d)?,
        Manager::Go => {
            d.lockfiles = present(&["go.sum"])?;
            d.manifests = present(&["go.mod"])?;
            let vendored =
                fsread::entry(root, "vendor")? == Some(Entry::Dir) && exists("vendor/modules.txt")?;
            let module_mode = if vendored { "vendor" } else { "readonly" };
            if vendored {
                d.notes.push("vendor/ holds the modules: nothing to download".into());
            } else if d.manifests.is_empty() {
                d.notes.push("go.sum without go.mod: nothing to download".into());
            } else {
                d.install = Some("GOTOOLCHAIN=local go mod download".into());
            }
            if !d.manifests.is_empty() {
                d.build = Some(format!(
                    "GOTOOLCHAIN=local GOFLAGS=-mod={module_mode} GOPROXY=off go build -trimpath -o {OUT_DIR}/ ./..."
                ));
            }
            d.output_candidates = vec![candidate(OUT_DIR, OutputKind::Server)];
        }
        Manager::Cargo => {
            d.lockfiles = present(&["Cargo.lock"])?;
            d.manifests = present(&["Cargo.toml"])?;
            let locked = if d.lockfiles.is_empty() {
                d.notes.push("no Cargo.lock: dependency versions are resolved at install time".into());
                ""
            } else {
                " --locked"
            };
            d.install = Some(format!("cargo fetch{locked}"));
            if !d.manifests.is_empty() {
                d.build = Some(format!("cargo build --release{locked} --offline"));
                let bins = cargo_bins(root)?;
                if bins.is_empty() {
                    d.notes.push(
                        "Cargo.toml has no [package] or [[bin]]: no binary to take as the output".into(),
                    );
                }
                d.output_candidates = bins
                    .into_iter()
                    .map(|b| candidate(&format!("target/release/{b}"), OutputKind::Server))
                    .collect();
            }
            if scripts {
                d.notes.push(
                    "ignore_scripts: Cargo always runs build scripts (build.rs) and proc macros".into(),
                );
            }
        }
        Manager::Unknown => {
            d.notes.push("no package manager recognised: set `install` and `build` in kiln.toml".into());
            d.output_candidates = vec![
                candidate("dist", OutputKind::Static),
                candidate("build", OutputKind::Static),
                candidate("out", OutputKind::Static),
                candidate("public", OutputKind::Static),
            ];
        }
    }
    Ok(d)
}

fn candidate(path: &str, kind: OutputKind) -> OutputCandidate {
    OutputCandidate { path: path.to_string(), kind }
}

/// A berry lockfile starts with a `__metadata:` block, after a comment header.
fn yarn_lock_is_berry(root: &Path) -> Result<bool, BuildError> {
    let head = fsread::read_prefix(root, "yarn.lock", 8192)?.unwrap_or_default();
    Ok(head.windows(b"__metadata".len()).any(|w| w == b"__metadata"))
}

fn parse_json(file: &str, text: &str) -> Result<serde_json::Value, BuildError> {
    serde_json::from_str(text).map_err(|e| BuildError::Invalid {
        file: file.into(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

fn has_build_script(root: &Path) -> Result<bool, BuildError> {
    let Some(text) = fsread::read_text(root, "package.json", CONFIG_CAP)? else {
        return Ok(false);
    };
    let json = parse_json("package.json", &text)?;
    Ok(json
        .get("scripts")
        .and_then(|s| s.get("build"))
        .and_then(|b| b.as_str())
        .is_some_and(|b| !b.trim().is_empty()))
}

fn parse_toml(file: &str, text: &str) -> Result<toml::Table, BuildError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| fsread::line_col(text, s.start));
        BuildError::Invalid { file: file.into(), line, column, message: e.message().to_string() }
    })
}

fn cargo_bins(root: &Path) -> Result<Vec<String>, BuildError> {
    let Some(text) = fsread::read_text(root, "Cargo.toml", CONFIG_CAP)? else {
        return Ok(Vec::new());
    };
    let manifest = parse_toml("Cargo.toml", &text)?;
    let mut bins: Vec<String> = manifest
        .get("bin")
        .and_then(|b| b.as_array())
        .map(|a| a.iter().filter_map(|b| b.get("name")?.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if bins.is_empty() {
        if let Some(name) = manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()) {
            bins.push(name.to_string());
        }
    }
    // Names become paths: keep only plain file names.
    bins.retain(|b| fsread::components(b).is_ok_and(|c| c.len() == 1));
    Ok(bins)
}

/// What `pyproject.toml` says about building.
#[derive(Debug, Default)]
struct PyProject {
    exists: bool,
    /// `[build-system] requires`, when the table is there.
    build_requires: Option<Vec<String>>,
    /// `[tool.poetry] package-mode = false`.
    poetry_package_mode: bool,
    /// `[tool.uv] package`, when set.
    uv_package: Option<bool>,
}

fn pyproject(root: &Path) -> Result<PyProject, BuildError> {
    let Some(text) = fsread::read_text(root, "pyproject.toml", CONFIG_CAP)? else {
        return Ok(PyProject { poetry_package_mode: true, ..PyProject::default() });
    };
    let t = parse_toml("pyproject.toml", &text)?;
    let tool = |name: &str| t.get("tool").and_then(|x| x.get(name));
    Ok(PyProject {
        exists: true,
        build_requires: t.get("build-system").map(|bs| {
            bs.get("requires")
                .and_then(|r| r.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        }),
        poetry_package_mode: tool("poetry").and_then(|p| p.get("package-mode")).and_then(|m| m.as_bool())
            != Some(false),
        uv_package: tool("uv").and_then(|u| u.get("package")).and_then(|p| p.as_bool()),
    })
}

/// Quote a word for a POSIX shell unless it is plainly safe.
fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.,/:=+@%".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn python(root: &Path, manager: Manager, scripts: bool, d: &mut Detection) -> Result<(), BuildError> {
    let project = pyproject(root)?;
    d.manifests = fsread_present(root, &["pyproject.toml", "setup.py", "setup.cfg"])?;
    let has_setup = d.manifests.iter().any(|m| m != "pyproject.toml");
    // The build backend's own requirements, installed during the (networked) install step so
    // the build can run offline without isolation.
    let mut build_requires: Vec<String> = match (&project.build_requires, has_setup) {
        (Some(reqs), _) => reqs.clone(),
        (None, true) => vec!["setuptools".into()],
        (None, false) => Vec::new(),
    };
    if build_requires.iter().any(|r| r.starts_with("setuptools"))
        && !build_requires.iter().any(|r| r.starts_with("wheel"))
    {
        // Older setuptools needs `wheel` for bdist_wheel.
        build_requires.push("wheel".into());
    }
    build_requires.retain(|r| !r.trim().is_empty() && r.len() <= 200 && !r.contains(['\n', '\r', '\0']));
    build_requires.truncate(32);
    let quoted = build_requires.iter().map(|r| sh_quote(r)).collect::<Vec<_>>().join(" ");
    let is_package = project.build_requires.is_some() || has_setup;
    d.output_candidates = vec![candidate("dist", OutputKind::Function)];

    match manager {
        Manager::Pip => {
            d.lockfiles = vec!["requirements.txt".into()];
            let reqs = fsread::read(root, "requirements.txt", LOCKFILE_CAP)?.unwrap_or_default();
            let hashed = reqs.windows(b"--hash".len()).any(|w| w == b"--hash");
            let binary = if scripts { " --only-binary :all:" } else { "" };
            let mut install = String::from("python3 -m venv .venv && .venv/bin/pip install --no-input");
            if hashed {
                install.push_str(" --require-hashes");
            } else {
                d.notes.push("requirements.txt has no hashes: downloads are not pinned to a digest".into());
            }
            install.push_str(&format!("{binary} -r requirements.txt"));
            if is_package && !quoted.is_empty() {
                install.push_str(&format!(" && .venv/bin/pip install --no-input{binary} {quoted}"));
            }
            d.install = Some(install);
            if is_package {
                d.build = Some(
                    ".venv/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir dist .".into(),
                );
            }
        }
        Manager::Poetry => {
            d.lockfiles = vec!["poetry.lock".into()];
            d.install = Some(
                "POETRY_VIRTUALENVS_IN_PROJECT=true poetry install --no-root --sync --no-interaction".into(),
            );
            if project.exists && project.poetry_package_mode {
                d.build = Some(
                    "POETRY_VIRTUALENVS_IN_PROJECT=true poetry build --format wheel --no-interaction".into(),
                );
            }
            if scripts {
                d.notes.push(
                    "ignore_scripts: Poetry has no switch to skip building source distributions".into(),
                );
            }
        }
        _ => {
            d.lockfiles = vec!["uv.lock".into()];
            let no_build = if scripts { " --no-build" } else { "" };
            let package = project.uv_package.unwrap_or(project.build_requires.is_some());
            let mut install = format!("uv sync --frozen{no_build}");
            if package && !quoted.is_empty() {
                install.push_str(&format!(" && uv pip install --python .venv/bin/python{no_build} {quoted}"));
            }
            d.install = Some(install);
            if package {
                d.build = Some("uv build --offline --no-build-isolation --wheel --out-dir dist".into());
            }
        }
    }
    if d.build.is_none() {
        d.notes.push(
            "not a Python package (no [build-system], setup.py or package mode): nothing to build".into(),
        );
    }
    Ok(())
}

fn fsread_present(root: &Path, names: &[&str]) -> Result<Vec<String>, BuildError> {
    let mut out = Vec::new();
    for n in names {
        if fsread::is_file(root, n)? {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::repo;
    use crate::HOME_DIR;

    fn manager_of(files: &[(&str, &str)]) -> Manager {
        detect(repo(files).path()).unwrap().manager
    }

    const PKG_BUILD: &str = r#"{"name": "site", "scripts": {"build": "vite build"}}"#;

    #[test]
    fn order_of_detection() {
        let cases: &[(&[(&str, &str)], Manager)] = &[
            (&[("bun.lockb", "\0"), ("package-lock.json", "{}"), ("package.json", "{}")], Manager::Bun),
            (&[("bun.lock", "{}"), ("yarn.lock", "")], Manager::Bun),
            (&[("pnpm-lock.yaml", ""), ("yarn.lock", ""), ("package.json", "{}")], Manager::Pnpm),
            (
                &[("yarn.lock", "# yarn lockfile v1\n"), (".yarnrc.yml", "nodeLinker: node-modules\n")],
                Manager::YarnBerry,
            ),
            (&[("yarn.lock", "# This file is generated\n\n__metadata:\n  version: 8\n")], Manager::YarnBerry),
            (&[("yarn.lock", "# yarn lockfile v1\n"), ("package-lock.json", "{}")], Manager::YarnClassic),
            (&[("package-lock.json", "{}"), ("uv.lock", "")], Manager::Npm),
            (&[("npm-shrinkwrap.json", "{}")], Manager::Npm),
            (&[("package.json", "{}"), ("requirements.txt", "")], Manager::Npm),
            (&[("uv.lock", ""), ("poetry.lock", ""), ("requirements.txt", "")], Manager::Uv),
            (&[("poetry.lock", ""), ("requirements.txt", "")], Manager::Poetry),
            (&[("requirements.txt", ""), ("go.mod", "module x\n")], Manager::Pip),
            (&[("go.mod", "module x\n"), ("Cargo.toml", "")], Manager::Go),
            (&[("go.sum", "")], Manager::Go),
            (&[("Cargo.toml", "[package]\nname = \"x\"\n")], Manager::Cargo),
            (&[("Cargo.lock", "")], Manager::Cargo),
            (&[("README.md", "hi"), ("src/package.json", "{}")], Manager::Unknown),
        ];
        for (files, want) in cases {
            assert_eq!(manager_of(files), *want, "{files:?}");
        }
    }

    #[test]
    fn npm_with_and_without_lockfile() {
        let d = detect(repo(&[("package.json", PKG_BUILD), ("package-lock.json", "{}")]).path()).unwrap();
        assert_eq!(d.install.as_deref(), Some("npm ci --no-audit --no-fund"));
        assert_eq!(d.build.as_deref(), Some("npm run build"));
        assert_eq!(d.lockfiles, ["package-lock.json"]);
        assert_eq!(d.manifests, ["package.json"]);
        assert_eq!(d.output_candidates[0], candidate("dist", OutputKind::Static));
        assert!(d.output_candidates.contains(&candidate(".next/standalone", OutputKind::Server)));

        let d = detect(repo(&[("package.json", r#"{"scripts": {"test": "x"}}"#)]).path()).unwrap();
        assert_eq!(d.install.as_deref(), Some("npm install --no-package-lock --no-audit --no-fund"));
        assert!(d.lockfiles.is_empty());
        assert!(d.notes.iter().any(|n| n.contains("no package-lock.json")));
        assert_eq!(d.build, None);
    }

    #[test]
    fn node_install_commands_and_ignore_scripts() {
        let opts = DetectOptions { ignore_scripts: true };
        let cases = [
            (
                "bun.lock",
                "bun install --frozen-lockfile",
                "bun install --frozen-lockfile --ignore-scripts",
                "bun run build",
            ),
            (
                "pnpm-lock.yaml",
                "pnpm install --frozen-lockfile",
                "pnpm install --frozen-lockfile --ignore-scripts",
                "pnpm run build",
            ),
            (
                "yarn.lock",
                "yarn install --frozen-lockfile",
                "yarn install --frozen-lockfile --ignore-scripts",
                "yarn run build",
            ),
            (
                "package-lock.json",
                "npm ci --no-audit --no-fund",
                "npm ci --no-audit --no-fund --ignore-scripts",
                "npm run build",
            ),
        ];
        for (lock, plain, ignoring, build) in cases {
            let r = repo(&[(lock, ""), ("package.json", PKG_BUILD)]);
            let d = detect(r.path()).unwrap();
            assert_eq!(d.install.as_deref(), Some(plain));
            assert_eq!(d.build.as_deref(), Some(build));
            assert_eq!(d.lockfiles, [lock]);
            assert_eq!(detect_with(r.path(), &opts).unwrap().install.as_deref(), Some(ignoring));
        }
        let r = repo(&[("yarn.lock", "__metadata:\n"), ("package.json", PKG_BUILD)]);
        assert_eq!(detect(r.path()).unwrap().install.as_deref(), Some("yarn install --immutable"));
        assert_eq!(
            detect_with(r.path(), &opts).unwrap().install.as_deref(),
            Some("YARN_ENABLE_SCRIPTS=false yarn install --immutable")
        );
    }

    #[test]
    fn pip_hashes_decide_require_hashes() {
        let hashed = "flask==3.0.0 \\\n    --hash=sha256:21128f47e4e3b9d597a3e8521a329bf56909b690fcc3fa3e477725aa81367638\n";
        let d = detect(repo(&[("requirements.txt", hashed)]).path()).unwrap();
        assert_eq!(
            d.install.as_deref(),
            Some("python3 -m venv .venv && .venv/bin/pip install --no-input --require-hashes -r requirements.txt")
        );
        assert_eq!(d.build, None, "an application without packaging metadata has nothing to build");

        let r = repo(&[
            ("requirements.txt", "flask==3.0.0\n"),
            ("pyproject.toml", "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n"),
        ]);
        let d = detect_with(r.path(), &DetectOptions { ignore_scripts: true }).unwrap();
        assert_eq!(
            d.install.as_deref(),
            Some(
                "python3 -m venv .venv && .venv/bin/pip install --no-input --only-binary :all: -r requirements.txt \
                 && .venv/bin/pip install --no-input --only-binary :all: 'setuptools>=61' wheel"
            )
        );
        assert_eq!(
            d.build.as_deref(),
            Some(".venv/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir dist .")
        );
        assert_eq!(d.output_candidates, [candidate("dist", OutputKind::Function)]);
        assert!(d.notes.iter().any(|n| n.contains("no hashes")));
    }

    #[test]
    fn poetry_and_uv() {
        let d =
            detect(repo(&[("poetry.lock", ""), ("pyproject.toml", "[tool.poetry]\nname = \"x\"\n")]).path())
                .unwrap();
        assert_eq!(
            d.install.as_deref(),
            Some("POETRY_VIRTUALENVS_IN_PROJECT=true poetry install --no-root --sync --no-interaction")
        );
        assert!(d.build.as_deref().unwrap().contains("poetry build --format wheel"));
        let d = detect(
            repo(&[("poetry.lock", ""), ("pyproject.toml", "[tool.poetry]\npackage-mode = false\n")]).path(),
        )
        .unwrap();
        assert_eq!(d.build, None);

        let d = detect(repo(&[("uv.lock", ""), ("pyproject.toml", "[project]\nname = \"app\"\n")]).path())
            .unwrap();
        assert_eq!(d.install.as_deref(), Some("uv sync --frozen"));
        assert_eq!(d.build, None);
        let r = repo(&[("uv.lock", ""), ("pyproject.toml", "[build-system]\nrequires = [\"hatchling\"]\n")]);
        let d = detect_with(r.path(), &DetectOptions { ignore_scripts: true }).unwrap();
        assert_eq!(
            d.install.as_deref(),
            Some("uv sync --frozen --no-build && uv pip install --python .venv/bin/python --no-build hatchling")
        );
        assert_eq!(
            d.build.as_deref(),
            Some("uv build --offline --no-build-isolation --wheel --out-dir dist")
        );
    }

    #[test]
    fn go_and_cargo() {
        let d = detect(repo(&[("go.mod", "module example.com/x\n"), ("go.sum", "")]).path()).unwrap();
        assert_eq!(d.install.as_deref(), Some("GOTOOLCHAIN=local go mod download"));
        assert_eq!(
            d.build.as_deref(),
            Some(
                "GOTOOLCHAIN=local GOFLAGS=-mod=readonly GOPROXY=off go build -trimpath -o .kiln/out/ ./..."
            )
        );
        assert_eq!(d.lockfiles, ["go.sum"]);
        assert_eq!(d.output_candidates, [candidate(".kiln/out", OutputKind::Server)]);
        let d = detect(repo(&[("go.mod", "module x\n"), ("vendor/modules.txt", "")]).path()).unwrap();
        assert_eq!(d.install, None);
        assert!(d.build.unwrap().contains("-mod=vendor"));

        let d =
            detect(repo(&[("Cargo.toml", "[package]\nname = \"my-server\"\n"), ("Cargo.lock", "")]).path())
                .unwrap();
        assert_eq!(d.install.as_deref(), Some("cargo fetch --locked"));
        assert_eq!(d.build.as_deref(), Some("cargo build --release --locked --offline"));
        assert_eq!(d.output_candidates, [candidate("target/release/my-server", OutputKind::Server)]);
        let toml = "[package]\nname = \"lib\"\n[[bin]]\nname = \"api\"\n[[bin]]\nname = \"../evil\"\n";
        let d = detect_with(repo(&[("Cargo.toml", toml)]).path(), &DetectOptions { ignore_scripts: true })
            .unwrap();
        assert_eq!(d.install.as_deref(), Some("cargo fetch"));
        assert_eq!(d.output_candidates, [candidate("target/release/api", OutputKind::Server)]);
        assert!(d.notes.iter().any(|n| n.contains("build.rs")));
    }

    #[test]
    fn kiln_toml_overrides() {
        let r = repo(&[("package.json", PKG_BUILD), ("package-lock.json", "{}")]);
        let config = KilnToml::parse(
            "install = \"npm ci\"\nbuild = \"npm run export\"\noutput = \"site\"\noutput_type = \"static\"\nignore_scripts = true\n",
        )
        .unwrap();
        let d = plan(r.path(), &config).unwrap();
        assert_eq!(d.install.as_deref(), Some("npm ci"));
        assert_eq!(d.build.as_deref(), Some("npm run export"));
        assert_eq!(d.output_candidates, [candidate("site", OutputKind::Static)]);
        let config = KilnToml::parse("ignore_scripts = true\noutput_type = \"server\"\n").unwrap();
        let d = plan(r.path(), &config).unwrap();
        assert_eq!(d.install.as_deref(), Some("npm ci --no-audit --no-fund --ignore-scripts"));
        assert!(d.output_candidates.iter().all(|c| c.kind == OutputKind::Server));
    }

    #[test]
    fn errors_name_the_file() {
        let r = repo(&[("package.json", "{\"scripts\": ")]);
        let err = detect(r.path()).unwrap_err();
        assert!(
            matches!(err, BuildError::Invalid { ref file, line: 1, .. } if file == "package.json"),
            "{err}"
        );
        let r = repo(&[("Cargo.toml", "[package\n")]);
        assert!(detect(r.path()).unwrap_err().to_string().starts_with("Cargo.toml:1:"));
        let r = repo(&[]);
        std::os::unix::fs::symlink("/etc/passwd", r.path().join("package.json")).unwrap();
        let err = detect(r.path()).unwrap_err();
        assert!(matches!(err, BuildError::Symlink { ref file } if file == "package.json"), "{err}");
    }

    #[test]
    fn manager_facts() {
        assert_eq!(Manager::YarnBerry.name(), "yarn-berry");
        assert_eq!(serde_json::to_string(&Manager::Unknown).unwrap(), "\"none\"");
        assert_eq!(serde_json::to_string(&Manager::YarnClassic).unwrap(), "\"yarn-classic\"");
        assert_eq!(Manager::Pip.registries(), ["pypi.org", "files.pythonhosted.org"]);
        assert_eq!(Manager::Cargo.registries(), ["index.crates.io", "static.crates.io"]);
        assert!(Manager::Go.cache_paths()[0].starts_with(HOME_DIR));
        assert!(Manager::Unknown.registries().is_empty());
        assert_eq!(sh_quote("setuptools>=61"), "'setuptools>=61'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote("hatchling"), "hatchling");
    }
}
