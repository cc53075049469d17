//! `kiln.toml`: the optional per-repository settings of the zero-config build.
//!
//! ```toml
//! install = "npm ci"                 # replaces the detected install command
//! build = "npm run build:site"       # replaces the detected build command
//! output = "site"                    # the output directory (or file), relative, beneath the root
//! output_type = "static"             # static | server | function
//! node = "20"                        # recorded in provenance; kiln does not switch versions
//! python = "3.12"                    # likewise
//! hermetic = true                    # default: the build step has no network
//! ignore_scripts = false             # skip dependency install scripts where the manager can
//! allow_yarn_path = false            # accept `.yarnrc.yml` yarnPath / plugins (repository code inside yarn)
//! registries = ["npm.pkg.github.com"] # extra registry hosts the repository asks for
//!
//! [env]                              # extra environment for install and build
//! NODE_ENV = "production"
//! ```
//!
//! Unknown keys are errors with a did-you-mean, because a misspelt `hermetic` silently
//! leaving the default in place is worse than a failed build. Every error carries the line and
//! column. `registries` only asks: the operator's policy decides which hosts are reachable, so a
//! repository cannot widen its own egress.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::fsread::{self, CONFIG_CAP};
use crate::policy::HostRule;
use crate::{BuildError, OutputKind};

/// The keys `kiln.toml` accepts.
const KEYS: &[&str] = &[
    "install",
    "build",
    "output",
    "output_type",
    "env",
    "node",
    "python",
    "hermetic",
    "ignore_scripts",
    "allow_yarn_path",
    "registries",
];

/// Longest command, version string or env value accepted.
const MAX_VALUE: usize = 64 * 1024;

/// Parsed and validated `kiln.toml`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KilnToml {
    /// Replaces the detected install command.
    pub install: Option<String>,
    /// Replaces the detected build command.
    pub build: Option<String>,
    /// The output path, normalised (no `./`, no trailing `/`), relative and beneath the root.
    pub output: Option<String>,
    /// What the output is.
    pub output_type: Option<OutputKind>,
    /// Extra environment for install and build steps.
    pub env: BTreeMap<String, String>,
    /// Node.js version the repository asks for (recorded only).
    pub node: Option<String>,
    /// Python version the repository asks for (recorded only).
    pub python: Option<String>,
    /// The build step has no network (default `true`).
    pub hermetic: bool,
    /// Skip dependency install scripts where the manager allows it.
    pub ignore_scripts: bool,
    /// Accept Yarn's `yarnPath` and plugins from the repository.
    pub allow_yarn_path: bool,
    /// Extra registry hosts the repository asks for (egress host-rule syntax).
    pub registries: Vec<String>,
}

impl Default for KilnToml {
    fn default() -> Self {
        KilnToml {
            install: None,
            build: None,
            output: None,
            output_type: None,
            env: BTreeMap::new(),
            node: None,
            python: None,
            hermetic: true,
            ignore_scripts: false,
            allow_yarn_path: false,
            registries: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct Raw {
    install: Option<Spanned<String>>,
    build: Option<Spanned<String>>,
    output: Option<Spanned<String>>,
    output_type: Option<Spanned<String>>,
    env: Option<BTreeMap<String, Spanned<String>>>,
    node: Option<Spanned<String>>,
    python: Option<Spanned<String>>,
    hermetic: Option<bool>,
    ignore_scripts: Option<bool>,
    allow_yarn_path: Option<bool>,
    registries: Option<Vec<Spanned<String>>>,
}

impl KilnToml {
    /// The file name, at the repository root.
    pub const FILE: &'static str = "kiln.toml";

    /// Read `kiln.toml` at `root`; `None` when there is none.
    pub fn load(root: &Path) -> Result<Option<KilnToml>, BuildError> {
        match fsread::read(root, Self::FILE, CONFIG_CAP)? {
            None => Ok(None),
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| BuildError::Parse {
                    file: Self::FILE.into(),
                    message: "not UTF-8 text".into(),
                })?;
                KilnToml::parse(&text).map(Some)
            }
        }
    }

    /// [`KilnToml::load`], with the defaults when there is no file.
    pub fn load_or_default(root: &Path) -> Result<KilnToml, BuildError> {
        Ok(KilnToml::load(root)?.unwrap_or_default())
    }

    /// Parse and validate the text of a `kiln.toml`.
    pub fn parse(text: &str) -> Result<KilnToml, BuildError> {
        let at = |offset: usize, message: String| {
            let (line, column) = fsread::line_col(text, offset);
            BuildError::Invalid { file: Self::FILE.into(), line, column, message }
        };
        let toml_err =
            |e: toml::de::Error| at(e.span().map_or(0, |s| s.start), e.message().trim().to_string());

        // Keys first, on the spanned document: serde's unknown-field error has no suggestion.
        let doc = DeTable::parse(text).map_err(toml_err)?;
        for (key, value) in doc.get_ref().iter() {
            let name: &str = key.get_ref();
            if !KEYS.contains(&name) {
                let hint =
                    did_you_mean(name, KEYS).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default();
                return Err(at(key.span().start, format!("unknown key `{name}`{hint}")));
            }
            if name == "env" {
                if let DeValue::Table(env) = value.get_ref() {
                    for (k, _) in env.iter() {
                        if !is_env_name(k.get_ref()) {
                            return Err(at(
                                k.span().start,
                                format!(
                                    "`{}` is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                                    k.get_ref()
                                ),
                            ));
                        }
                    }
                }
            }
        }

        let raw: Raw = toml::from_str(text).map_err(toml_err)?;
        let text_value = |v: Option<Spanned<String>>, what: &str| -> Result<Option<String>, BuildError> {
            match v {
                None => Ok(None),
                Some(v) => {
                    let s = v.get_ref();
                    if s.trim().is_empty() {
                        Err(at(v.span().start, format!("`{what}` is empty")))
                    } else if s.len() > MAX_VALUE || s.contains('\0') {
                        Err(at(
                            v.span().start,
                            format!("`{what}` is longer than {MAX_VALUE} bytes or contains NUL"),
                        ))
                    } else {
                        Ok(Some(v.into_inner()))
                    }
                }
            }
        };
        let output = match raw.output {
            None => None,
            Some(v) => Some(
                normalize_output(v.get_ref())
                    .map_err(|reason| at(v.span().start, format!("`output`: {reason}")))?,
            ),
        };
        let output_type = match raw.output_type {
            None => None,
            Some(v) => Some(
                v.get_ref()
                    .parse::<OutputKind>()
                    .map_err(|e| at(v.span().start, format!("`output_type`: {e}")))?,
            ),
        };
        let mut env = BTreeMap::new();
        for (k, v) in raw.env.unwrap_or_default() {
            if v.get_ref().contains('\0') || v.get_ref().len() > MAX_VALUE {
                return Err(at(v.span().start, format!("env `{k}`: value contains NUL or is too long")));
            }
            env.insert(k, v.into_inner());
        }
        let mut registries = Vec::new();
        for r in raw.registries.unwrap_or_default() {
            HostRule::parse(r.get_ref()).map_err(|e| at(r.span().start, format!("`registries`: {e}")))?;
            registries.push(r.into_inner());
        }
        let version = |v: Option<Spanned<String>>, what: &str| -> Result<Option<String>, BuildError> {
            if let Some(s) = &v {
                if s.get_ref().len() > 64 || s.get_ref().chars().any(|c| c.is_control()) {
                    return Err(at(
                        s.span().start,
                        format!("`{what}`: a version is at most 64 printable characters"),
                    ));
                }
            }
            text_value(v, what)
        };
        Ok(KilnToml {
            install: text_value(raw.install, "install")?,
            build: text_value(raw.build, "build")?,
            output,
            output_type,
            env,
            node: version(raw.node, "node")?,
            python: version(raw.python, "python")?,
            hermetic: raw.hermetic.unwrap_or(true),
            ignore_scripts: raw.ignore_scripts.unwrap_or(false),
            allow_yarn_path: raw.allow_yarn_path.unwrap_or(false),
            registries,
        })
    }
}

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `./dist/` → `dist`; refuses absolute paths, `..`, empty paths and the root itself.
pub(crate) fn normalize_output(path: &str) -> Result<String, String> {
    let mut p = path.trim();
    while let Some(rest) = p.strip_prefix("./") {
        p = rest.trim_start_matches('/');
    }
    let p = p.trim_end_matches('/');
    if p.is_empty() || p == "." {
        return Err("the output cannot be the repository root itself".into());
    }
    if path.trim().starts_with('/') {
        return Err("must be relative to the repository root".into());
    }
    // A component that begins or ends with whitespace would not survive
    // being written back and read again (the value is trimmed): refused.
    if p.split('/').any(|c| c.trim() != c) {
        return Err(format!("`{p}`: a path component cannot begin or end with whitespace"));
    }
    fsread::components(p)?;
    Ok(p.to_string())
}

/// The closest known key within a small edit distance.
fn did_you_mean<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let name = name.to_ascii_lowercase().replace('-', "_");
    known
        .iter()
        .map(|k| (edit_distance(&name, k), *k))
        .filter(|(d, k)| {
            *d <= 2.max(k.len() / 4) || (name.len() >= 4 && (name.starts_with(k) || k.starts_with(&name)))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (usize, usize, String) {
        match KilnToml::parse(text).unwrap_err() {
            BuildError::Invalid { file, line, column, message } => {
                assert_eq!(file, "kiln.toml");
                (line, column, message)
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn full_file() {
        let c = KilnToml::parse(
            r#"
install = "npm ci"
build = "npm run build:site"
output = "./site/"
output_type = "static"
node = "20"
python = "3.12"
hermetic = false
ignore_scripts = true
allow_yarn_path = true
registries = ["npm.pkg.github.com", "*.example.org:8443"]

[env]
NODE_ENV = "production"
_X1 = ""
"#,
        )
        .unwrap();
        assert_eq!(c.install.as_deref(), Some("npm ci"));
        assert_eq!(c.output.as_deref(), Some("site"));
        assert_eq!(c.output_type, Some(OutputKind::Static));
        assert_eq!(c.env.get("NODE_ENV").map(String::as_str), Some("production"));
        assert_eq!(c.env.get("_X1").map(String::as_str), Some(""));
        assert!(!c.hermetic && c.ignore_scripts && c.allow_yarn_path);
        assert_eq!(c.registries, ["npm.pkg.github.com", "*.example.org:8443"]);
        assert_eq!((c.node.as_deref(), c.python.as_deref()), (Some("20"), Some("3.12")));
    }

    #[test]
    fn defaults() {
        let c = KilnToml::parse("").unwrap();
        assert_eq!(c, KilnToml::default());
        assert!(c.hermetic);
        assert!(!c.ignore_scripts && !c.allow_yarn_path);
    }

    #[test]
    fn unknown_keys_suggest_the_closest() {
        let (line, column, message) = err("build = \"x\"\n  hermtic = false\n");
        assert_eq!((line, column), (2, 3));
        assert_eq!(
            message,
            "unknown key `hermetic`".replace("hermetic", "hermtic") + " (did you mean `hermetic`?)"
        );
        assert!(err("ignore-scripts = true").2.contains("did you mean `ignore_scripts`"));
        assert!(err("output_dir = \"x\"").2.contains("did you mean `output`"));
        let (_, _, message) = err("frobnicate = 1");
        assert_eq!(message, "unknown key `frobnicate`");
        assert!(err("[tool]\nx = 1\n").2.contains("unknown key `tool`"));
    }

    #[test]
    fn errors_carry_positions() {
        assert_eq!(err("build = 1\n").0, 1);
        let (line, column, message) = err("build = \"x\"\nhermetic = \"yes\"\n");
        assert_eq!((line, column), (2, 12), "{message}");
        assert!(message.contains("bool"), "{message}");
        let (line, _, message) = err("\n\noutput = \"../etc\"\n");
        assert_eq!(line, 3);
        assert!(message.contains(".."), "{message}");
        assert!(err("output = \"/srv/www\"").2.contains("relative"));
        assert!(err("output = \"./\"").2.contains("root"));
        assert!(err("output_type = \"lambda\"").2.contains("static, server or function"));
        assert!(err("install = \"  \"").2.contains("empty"));
        let (line, column, message) = err("[env]\nOK = \"1\"\n\"BAD-NAME\" = \"2\"\n");
        assert_eq!((line, column), (3, 1), "{message}");
        assert!(err("registries = [\"https://registry.npmjs.org\"]").2.contains("registries"));
        assert!(err("[env]\nX = 1\n").2.contains("string"));
        assert!(err("build = \"x\"\nbuild = \"y\"\n").2.contains("duplicate"));
        assert!(err("node = \"20\\n\"").2.contains("version"));
    }

    #[test]
    fn loads_from_the_root_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(KilnToml::load(dir.path()).unwrap(), None);
        assert_eq!(KilnToml::load_or_default(dir.path()).unwrap(), KilnToml::default());
        std::fs::write(dir.path().join("kiln.toml"), "build = \"make\"\n").unwrap();
        assert_eq!(KilnToml::load(dir.path()).unwrap().unwrap().build.as_deref(), Some("make"));
        std::fs::remove_file(dir.path().join("kiln.toml")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("kiln.toml")).unwrap();
        assert!(matches!(KilnToml::load(dir.path()), Err(BuildError::Symlink { .. })));
        std::fs::remove_file(dir.path().join("kiln.toml")).unwrap();
        std::fs::write(dir.path().join("kiln.toml"), vec![b'#'; (CONFIG_CAP + 1) as usize]).unwrap();
        assert!(matches!(KilnToml::load(dir.path()), Err(BuildError::TooLarge { .. })));
    }

    #[test]
    fn output_normalisation() {
        assert_eq!(normalize_output("dist").unwrap(), "dist");
        assert_eq!(normalize_output("./.next/standalone/").unwrap(), ".next/standalone");
        for bad in ["", ".", "./", "/abs", "a/../b", "..", "a//b"] {
            assert!(normalize_output(bad).is_err(), "{bad}");
        }
    }

    /// Found by the `build_kiln_toml` fuzz target: `./ x` was accepted as
    /// ` x`, which written back read as `x`, another directory.
    #[test]
    fn bug_an_output_path_changed_when_written_back() {
        for bad in ["./ x", "a/ b", "a /b", "./\tx"] {
            assert!(normalize_output(bad).is_err(), "{bad:?}");
        }
        for good in ["dist", "./dist/", "a b/c", " dist "] {
            let once = normalize_output(good).unwrap();
            assert_eq!(normalize_output(&once).unwrap(), once, "{good:?}");
        }
    }
}
