//! Recipes (what to build an image from) and image manifests (what it is).

use kiln_store::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{ImageError, Result};

/// The name of kiln's default image, the one `ubuntu-*` runners map to.
pub const DEFAULT_IMAGE: &str = "kiln/runner";

/// Debian suite of the default image: the newest stable release this
/// archive carries, for the newest rustc, Python and Node.js it has.
pub const DEFAULT_SUITE: &str = "trixie";

/// Suites kiln knows how to build.
pub const SUITES: [&str; 2] = ["bookworm", "trixie"];

/// The Debian archive images are built from unless the recipe says otherwise.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// File times inside a built image when `SOURCE_DATE_EPOCH` is not set:
/// 1980-01-01, the earliest time a zip archive can hold (tools that zip
/// files from the image refuse anything older).
pub const DEFAULT_EPOCH: u64 = 315_532_800;

/// What a `ubuntu-latest` job expects to find, as far as Debian has it.
pub const RUNNER_PACKAGES: &[&str] = &[
    "bash",
    "build-essential",
    "ca-certificates",
    "cargo",
    "cmake",
    "coreutils",
    "curl",
    "file",
    "git",
    "jq",
    "libssl-dev",
    "nodejs",
    "npm",
    "pkg-config",
    "procps",
    "python-is-python3",
    "python3",
    "python3-pip",
    "python3-venv",
    "rust-clippy",
    "rustc",
    "rustfmt",
    "sudo",
    "unzip",
    "wget",
    "xz-utils",
    "zip",
];

/// What to build an image from: a Debian suite and packages. Its digest
/// names the build, so the same recipe is built once per store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Debian suite (`bookworm`, `trixie`).
    pub suite: String,
    /// Packages on top of the suite's essential set, sorted, unique.
    pub packages: Vec<String>,
    /// The archive (apt checks its signatures with Debian's keyring).
    pub mirror: String,
}

fn valid_package(p: &str) -> bool {
    // Debian policy 5.6.1: lowercase letters, digits, `+`, `-`, `.`;
    // at least two characters, starting with a letter or digit.
    p.len() >= 2
        && p.len() <= 100
        && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

impl Recipe {
    /// A checked recipe: a known suite, package names Debian would accept
    /// (so none can smuggle an option into mmdebstrap), an http(s) mirror.
    pub fn new(suite: &str, packages: &[String], mirror: &str) -> Result<Recipe> {
        if !SUITES.contains(&suite) {
            return Err(ImageError::Recipe(format!(
                "suite `{suite}` is not one kiln builds (use one of: {})",
                SUITES.join(", ")
            )));
        }
        let mut pkgs: Vec<String> = Vec::with_capacity(packages.len());
        for p in packages {
            if !valid_package(p) {
                return Err(ImageError::Recipe(format!("`{p}` is not a Debian package name")));
            }
            pkgs.push(p.clone());
        }
        pkgs.sort();
        pkgs.dedup();
        let scheme_ok = mirror.starts_with("http://") || mirror.starts_with("https://");
        if !scheme_ok || mirror.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ImageError::Recipe(format!("mirror `{mirror}` must be an http(s) URL")));
        }
        Ok(Recipe { suite: suite.into(), packages: pkgs, mirror: mirror.trim_end_matches('/').into() })
    }

    /// The recipe of [`DEFAULT_IMAGE`] on `suite`.
    pub fn runner(suite: &str) -> Result<Recipe> {
        let pkgs: Vec<String> = RUNNER_PACKAGES.iter().map(|s| s.to_string()).collect();
        Recipe::new(suite, &pkgs, DEFAULT_MIRROR)
    }

    /// Digest of the canonical JSON form.
    pub fn digest(&self) -> Digest {
        Digest::of(&serde_json::to_vec(self).unwrap_or_default())
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// One layer: a tar stream in the store, applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
}

/// Where an image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// Built with mmdebstrap from a recipe.
    Debian { recipe: Recipe, recipe_digest: Digest, source_date_epoch: u64 },
    /// Imported from an OCI image layout.
    Oci {
        /// What it was imported from (the archive's file name).
        reference: String,
        /// The OCI manifest's digest in that layout.
        manifest_digest: String,
        /// Environment, working directory and user of the image's config.
        config: crate::oci::RunConfig,
    },
}

impl Source {
    /// One line on where the image came from.
    pub fn describe(&self) -> String {
        match self {
            Source::Debian { recipe, .. } => format!("debian {}", recipe.suite),
            Source::Oci { reference, .. } => format!("oci {reference}"),
        }
    }

    /// `NAME=value` pairs the image's config sets (none for Debian images).
    pub fn env(&self) -> &[String] {
        match self {
            Source::Oci { config, .. } => &config.env,
            Source::Debian { .. } => &[],
        }
    }

    /// The command the image's config runs (`Entrypoint` then `Cmd`; none
    /// for Debian images, which are toolboxes, not services).
    pub fn command(&self) -> (Vec<String>, Vec<String>) {
        match self {
            Source::Oci { config, .. } => {
                (config.entrypoint.clone().unwrap_or_default(), config.cmd.clone().unwrap_or_default())
            }
            Source::Debian { .. } => (Vec::new(), Vec::new()),
        }
    }

    /// The TCP ports the image's config exposes.
    pub fn exposed_ports(&self) -> &[u16] {
        match self {
            Source::Oci { config, .. } => config.ports.as_deref().unwrap_or(&[]),
            Source::Debian { .. } => &[],
        }
    }

    /// The config's working directory, if it names one.
    pub fn working_dir(&self) -> Option<&str> {
        match self {
            Source::Oci { config, .. } => config.working_dir.as_deref().filter(|d| d.starts_with('/')),
            Source::Debian { .. } => None,
        }
    }
}

/// Schema tag of [`ImageManifest`].
pub const SCHEMA: &str = "kiln.image/v1";

/// An image: its layers, where it came from and every package it holds.
/// The digest of its canonical JSON is the image's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageManifest {
    pub schema: String,
    pub source: Source,
    pub layers: Vec<Layer>,
    /// Installed packages, sorted by name.
    pub packages: Vec<Package>,
}

impl ImageManifest {
    /// Parses and checks a manifest blob.
    pub fn parse(digest: &Digest, bytes: &[u8]) -> Result<ImageManifest> {
        let bad = |reason: String| ImageError::Manifest { digest: digest.to_string(), reason };
        let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.schema != SCHEMA {
            return Err(bad(format!("schema `{}` is not {SCHEMA}", m.schema)));
        }
        if m.layers.is_empty() {
            return Err(bad("no layers".into()));
        }
        Ok(m)
    }

    /// Canonical bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Version of an installed package.
    pub fn package(&self, name: &str) -> Option<&str> {
        self.packages.iter().find(|p| p.name == name).map(|p| p.version.as_str())
    }
}

/// Parses `dpkg-query -W -f '${Package}\t${Version}\n'` output.
pub fn parse_package_list(text: &str) -> Vec<Package> {
    let mut v: Vec<Package> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(n, ver)| !n.is_empty() && !ver.is_empty())
        .map(|(n, ver)| Package { name: n.trim().into(), version: ver.trim().into() })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v.dedup_by(|a, b| a.name == b.name);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_are_checked_and_canonical() {
        let a = Recipe::new("trixie", &["jq".into(), "curl".into(), "jq".into()], DEFAULT_MIRROR).unwrap();
        assert_eq!(a.packages, ["curl", "jq"]);
        let b =
            Recipe::new("trixie", &["curl".into(), "jq".into()], "http://deb.debian.org/debian/").unwrap();
        assert_eq!(a.digest(), b.digest(), "order, duplicates and a trailing slash do not change the recipe");
        let c = Recipe::new("bookworm", &["curl".into(), "jq".into()], DEFAULT_MIRROR).unwrap();
        assert_ne!(a.digest(), c.digest());
        for bad in ["--hook=x", "a", "Jq", "jq;rm", "jq bash", ""] {
            assert!(Recipe::new("trixie", &[bad.into()], DEFAULT_MIRROR).is_err(), "{bad:?} accepted");
        }
        assert!(Recipe::new("sid", &[], DEFAULT_MIRROR).is_err());
        assert!(Recipe::new("trixie", &[], "file:///etc").is_err());
        assert!(Recipe::new("trixie", &[], "http://x/ --keyring=y").is_err());
        Recipe::runner(DEFAULT_SUITE).unwrap();
    }

    #[test]
    fn package_lists_parse() {
        let p = parse_package_list("rustc\t1.85.0+dfsg1-1\nbash\t5.2.37-2\n\nbroken\nbash\t5.2.37-2\n");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], Package { name: "bash".into(), version: "5.2.37-2".into() });
    }

    #[test]
    fn manifests_round_trip_and_are_checked() {
        let recipe = Recipe::runner("trixie").unwrap();
        let m = ImageManifest {
            schema: SCHEMA.into(),
            source: Source::Debian { recipe_digest: recipe.digest(), recipe, source_date_epoch: 1 },
            layers: vec![Layer { digest: Digest::of(b"x"), size: 1 }],
            packages: parse_package_list("rustc\t1.85\n"),
        };
        let bytes = m.to_json();
        let d = Digest::of(&bytes);
        assert_eq!(ImageManifest::parse(&d, &bytes).unwrap(), m);
        assert_eq!(m.package("rustc"), Some("1.85"));
        let mut no_layers = m.clone();
        no_layers.layers.clear();
        assert!(ImageManifest::parse(&d, &no_layers.to_json()).is_err());
        assert!(ImageManifest::parse(&d, b"[]").is_err());
    }
}
