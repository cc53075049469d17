//! Finding the build's output after the build step.
//!
//! The configured `output` wins; otherwise the first existing of the detection's candidates:
//! `dist`, `build`, `out` (static), `.next/standalone` (server), `public` (static) for
//! JavaScript; `target/release/<bin>` (server) for Cargo; `.kiln/out` (server) for Go; `dist`
//! (function: wheels are run by a platform, not served) for Python. An output must stay beneath
//! the repository root: absolute paths, `..` and a symbolic link anywhere on the path are
//! refused, so a build cannot hand `/etc` or the host's home to the packager.

use std::path::Path;

use serde::Serialize;

use crate::config::{normalize_output, KilnToml};
use crate::detect::Detection;
use crate::fsread::{self, Entry};
use crate::{BuildError, OutputKind};

/// The output to package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Output {
    /// Relative to the repository root, normalised.
    pub path: String,
    /// What it is; decides the scanning rules and how it is deployed.
    pub kind: OutputKind,
}

/// Whether something usable is at `path`: a directory or a regular file. A link (here or on
/// the way) or a special file is an error.
fn usable(root: &Path, path: &str) -> Result<bool, BuildError> {
    let entry = fsread::entry(root, path).map_err(|e| match e {
        BuildError::Symlink { file } => {
            BuildError::Path { path: path.to_string(), reason: format!("{file} is a symbolic link") }
        }
        other => other,
    })?;
    match entry {
        None => Ok(false),
        Some(Entry::Dir | Entry::File) => Ok(true),
        Some(Entry::Symlink) => {
            Err(BuildError::Path { path: path.into(), reason: "is a symbolic link".into() })
        }
        Some(Entry::Other) => {
            Err(BuildError::Path { path: path.into(), reason: "is not a directory or a regular file".into() })
        }
    }
}

/// Locate the output of a finished build.
pub fn locate(root: &Path, detection: &Detection, config: &KilnToml) -> Result<Output, BuildError> {
    if let Some(configured) = &config.output {
        let path = normalize_output(configured)
            .map_err(|reason| BuildError::Path { path: configured.clone(), reason })?;
        let kind = config
            .output_type
            .or_else(|| detection.output_candidates.iter().find(|c| c.path == path).map(|c| c.kind))
            .unwrap_or_else(|| detection.manager.default_output_kind());
        return if usable(root, &path)? {
            Ok(Output { path, kind })
        } else {
            Err(BuildError::OutputMissing { looked_for: vec![path] })
        };
    }
    let mut looked_for = Vec::new();
    for candidate in &detection.output_candidates {
        let path = normalize_output(&candidate.path)
            .map_err(|reason| BuildError::Path { path: candidate.path.clone(), reason })?;
        if usable(root, &path)? {
            return Ok(Output { path, kind: config.output_type.unwrap_or(candidate.kind) });
        }
        looked_for.push(path);
    }
    Err(BuildError::OutputMissing { looked_for })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{detect, Manager};
    use crate::test_support::repo;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn config(text: &str) -> KilnToml {
        KilnToml::parse(text).unwrap()
    }

    #[test]
    fn first_existing_candidate() {
        let r = repo(&[("package.json", "{}"), ("build/index.html", "x"), ("public/favicon.ico", "x")]);
        let d = detect(r.path()).unwrap();
        let out = locate(r.path(), &d, &KilnToml::default()).unwrap();
        assert_eq!(out, Output { path: "build".into(), kind: OutputKind::Static });

        let r = repo(&[("package.json", "{}"), (".next/standalone/server.js", "x"), ("public/a", "x")]);
        let out = locate(r.path(), &detect(r.path()).unwrap(), &KilnToml::default()).unwrap();
        assert_eq!(out, Output { path: ".next/standalone".into(), kind: OutputKind::Server });
        assert_eq!(serde_json::to_value(&out).unwrap()["kind"], "server");
    }

    #[test]
    fn cargo_binary_and_python_dist() {
        let r = repo(&[("Cargo.toml", "[package]\nname = \"api\"\n"), ("target/release/api", "\x7fELF")]);
        let out = locate(r.path(), &detect(r.path()).unwrap(), &KilnToml::default()).unwrap();
        assert_eq!(out, Output { path: "target/release/api".into(), kind: OutputKind::Server });

        let r = repo(&[("requirements.txt", ""), ("setup.py", ""), ("dist/app-1.0-py3-none-any.whl", "PK")]);
        let d = detect(r.path()).unwrap();
        assert_eq!(d.manager, Manager::Pip);
        let out = locate(r.path(), &d, &KilnToml::default()).unwrap();
        assert_eq!(out, Output { path: "dist".into(), kind: OutputKind::Function });
    }

    #[test]
    fn configured_output_and_type() {
        let r = repo(&[("package.json", "{}"), ("site/index.html", "x"), ("dist/x", "x")]);
        let d = detect(r.path()).unwrap();
        let out = locate(r.path(), &d, &config("output = \"./site/\"")).unwrap();
        assert_eq!(out, Output { path: "site".into(), kind: OutputKind::Static });
        let out = locate(r.path(), &d, &config("output = \"site\"\noutput_type = \"function\"")).unwrap();
        assert_eq!(out.kind, OutputKind::Function);
        let out = locate(r.path(), &d, &config("output_type = \"server\"")).unwrap();
        assert_eq!(out, Output { path: "dist".into(), kind: OutputKind::Server });
        let err = locate(r.path(), &d, &config("output = \"missing\"")).unwrap_err();
        assert!(
            matches!(err, BuildError::OutputMissing { ref looked_for } if looked_for == &["missing"]),
            "{err}"
        );
    }

    #[test]
    fn missing_output_lists_what_was_looked_for() {
        let r = repo(&[("package.json", "{}")]);
        let err = locate(r.path(), &detect(r.path()).unwrap(), &KilnToml::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no build output found; looked for dist, build, out, .next/standalone, public"
        );
    }

    #[test]
    fn refuses_links_and_escapes() {
        let outside = tempfile::tempdir().unwrap();
        let r = repo(&[("package.json", "{}")]);
        symlink(outside.path(), r.path().join("dist")).unwrap();
        let d = detect(r.path()).unwrap();
        let err = locate(r.path(), &d, &KilnToml::default()).unwrap_err();
        assert!(matches!(err, BuildError::Path { ref path, .. } if path == "dist"), "{err}");

        fs::create_dir(r.path().join("real")).unwrap();
        symlink(outside.path(), r.path().join("real/inner")).unwrap();
        fs::create_dir(outside.path().join("x")).unwrap();
        let mut c = KilnToml { output: Some("real/inner/x".into()), ..KilnToml::default() };
        let err = locate(r.path(), &d, &c).unwrap_err();
        assert!(err.to_string().contains("real/inner is a symbolic link"), "{err}");

        for bad in ["../outside", "/etc", "a/../../b"] {
            c.output = Some(bad.into());
            assert!(matches!(locate(r.path(), &d, &c), Err(BuildError::Path { .. })), "{bad}");
        }
    }
}
