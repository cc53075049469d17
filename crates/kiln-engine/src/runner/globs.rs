//! Path patterns over a job's workspace: `upload-artifact`'s `path` (one
//! pattern per line, `!` excludes) and `hashFiles()`.
//!
//! The workspace was written by the build's own steps, so it is hostile: the
//! walk never follows a symbolic link, a pattern's literal prefix must not
//! pass through one, and the number of entries walked is capped.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use sha2::{Digest as _, Sha256};

/// Entries one selection may walk, at most.
pub const MAX_WALK: usize = 1_000_000;

/// Parsed patterns: what to include, what to exclude, and where to look.
#[derive(Debug)]
pub struct Patterns {
    include: GlobSet,
    exclude: GlobSet,
    /// The literal leading directories of the include patterns (GitHub's
    /// "search paths"): only these are walked.
    pub roots: Vec<String>,
    /// Whether any pattern has a wildcard or an exclusion.
    pub has_globs: bool,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

impl Patterns {
    /// Parses one pattern per entry; blank entries are ignored.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Patterns, String> {
        let mut include = GlobSetBuilder::new();
        let mut exclude = GlobSetBuilder::new();
        let mut roots = Vec::new();
        let mut has_globs = false;
        let mut any = false;
        for line in lines {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (negated, pat) = match line.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, line),
            };
            let pat = pat.trim_start_matches("./").trim_end_matches('/');
            let pat = if pat.is_empty() { "." } else { pat };
            kiln_workflow::check_relative_path(pat)?;
            has_globs |= negated || is_glob(pat);
            let builder = if negated { &mut exclude } else { &mut include };
            if pat == "." {
                builder.add(glob("**")?);
            } else {
                builder.add(glob(pat)?);
                // A matched directory brings everything beneath it.
                builder.add(glob(&format!("{pat}/**"))?);
            }
            if !negated {
                any = true;
                let literal: Vec<&str> = pat.split('/').take_while(|c| !is_glob(c)).collect();
                let root = if literal.is_empty() || pat == "." { String::new() } else { literal.join("/") };
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
        }
        if !any {
            return Err("no path to include (only exclusions)".into());
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| e.to_string());
        Ok(Patterns { include: build(include)?, exclude: build(exclude)?, roots, has_globs })
    }

    fn matches(&self, rel: &str) -> bool {
        self.include.is_match(rel) && !self.exclude.is_match(rel)
    }

    /// The files (regular files and symbolic links, which are never
    /// followed) under `ws` that the patterns select, sorted by path.
    /// What cannot be a file of the result (a FIFO, a socket, a device, a
    /// name that is not UTF-8) is passed over, as `hashFiles()` does.
    pub fn select(&self, ws: &Path) -> Result<Vec<(String, PathBuf)>, String> {
        self.select_inner(ws, false)
    }

    /// [`Patterns::select`] for storing the files: a selected entry that
    /// cannot be stored (a FIFO, a socket, a device, a name that is not
    /// UTF-8) is an error naming it by its workspace path, never dropped
    /// in silence.
    pub fn select_for_upload(&self, ws: &Path) -> Result<Vec<(String, PathBuf)>, String> {
        self.select_inner(ws, true)
    }

    fn select_inner(&self, ws: &Path, strict: bool) -> Result<Vec<(String, PathBuf)>, String> {
        let mut out = Vec::new();
        let mut walked = 0usize;
        let mut roots = self.roots.clone();
        roots.sort();
        // A root beneath another root is walked with it.
        roots.dedup_by(|b, a| a.is_empty() || b.starts_with(&format!("{a}/")) || a == b);
        for root in &roots {
            let start = if root.is_empty() {
                ws.to_path_buf()
            } else {
                match super::artifacts::resolve_beneath(ws, root) {
                    Ok(p) => p,
                    Err(e) if e.ends_with("does not exist") => continue,
                    Err(e) => return Err(e),
                }
            };
            let meta = std::fs::symlink_metadata(&start).map_err(|e| format!("`{root}`: {e}"))?;
            if !meta.is_dir() {
                if self.matches(root) {
                    let ft = meta.file_type();
                    if ft.is_file() || ft.is_symlink() {
                        out.push((root.clone(), start));
                    } else if strict {
                        return Err(unstorable(root, ft));
                    }
                }
                continue;
            }
            self.walk(&start, root, &mut out, &mut walked, strict)?;
        }
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        out: &mut Vec<(String, PathBuf)>,
        walked: &mut usize,
        strict: bool,
    ) -> Result<(), String> {
        let rd = std::fs::read_dir(dir).map_err(|e| format!("reading `{rel}`: {e}"))?;
        for entry in rd {
            let entry = entry.map_err(|e| format!("reading `{rel}`: {e}"))?;
            *walked += 1;
            if *walked > MAX_WALK {
                return Err(format!("more than {MAX_WALK} entries under the workspace; narrow the pattern"));
            }
            let raw = entry.file_name();
            let Some(name) = raw.to_str() else {
                let lossy = raw.to_string_lossy();
                let shown = if rel.is_empty() { lossy.to_string() } else { format!("{rel}/{lossy}") };
                if strict && self.matches(&shown) {
                    return Err(format!("`{shown}` cannot be stored: its name is not UTF-8"));
                }
                continue;
            };
            let child = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
            let ft = entry.file_type().map_err(|e| format!("`{child}`: {e}"))?;
            if ft.is_dir() {
                self.walk(&entry.path(), &child, out, walked, strict)?;
            } else if self.matches(&child) {
                if ft.is_file() || ft.is_symlink() {
                    out.push((child, entry.path()));
                } else if strict {
                    return Err(unstorable(&child, ft));
                }
            }
        }
        Ok(())
    }
}

/// Why an entry of this type cannot be stored, by its workspace path.
fn unstorable(rel: &str, ft: std::fs::FileType) -> String {
    use std::os::unix::fs::FileTypeExt;
    let what = if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    };
    format!("`{rel}` cannot be stored: it is {what} (only files, directories and links are)")
}

/// `*` stays within one path component; `**` crosses them.
fn glob(p: &str) -> Result<Glob, String> {
    globset::GlobBuilder::new(p)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("bad pattern `{p}`: {e}"))
}

/// `hashFiles()` over one job's disk: patterns are relative to the
/// workspace, or to the job's home when written `~/...` or
/// `/home/runner/...` (`hashFiles('~/.cargo/registry/index/**')`).
#[derive(Debug)]
pub struct WorkspaceHasher {
    pub ws: PathBuf,
    /// The job's home directory on its disk, if it has one.
    pub home: Option<PathBuf>,
}

/// A `hashFiles()` pattern's root: `Some(rest)` when it names the job's
/// home (`!` kept in front).
fn home_pattern(p: &str) -> Option<String> {
    let (neg, body) = match p.strip_prefix('!') {
        Some(b) => ("!", b),
        None => ("", p),
    };
    let rest = body
        .strip_prefix("~/")
        .or_else(|| body.strip_prefix(super::env::HOME).and_then(|r| r.strip_prefix('/')))?;
    Some(format!("{neg}{rest}"))
}

impl kiln_workflow::FileHasher for WorkspaceHasher {
    /// SHA-256 over the SHA-256 of each selected regular file, in path
    /// order (the workspace's, then the home's); `""` when nothing matches.
    /// Links are not followed (a link planted by a step must not make kiln
    /// read a host file).
    fn hash_files(&self, patterns: &[String]) -> Result<String, String> {
        let (home_pats, ws_pats): (Vec<String>, Vec<String>) = {
            let mut home = Vec::new();
            let mut ws = Vec::new();
            for p in patterns {
                match home_pattern(p) {
                    Some(h) => home.push(h),
                    None => ws.push(p.clone()),
                }
            }
            (home, ws)
        };
        let mut files = Vec::new();
        for (pats, root) in [(ws_pats, Some(&self.ws)), (home_pats, self.home.as_ref())] {
            if pats.iter().all(|p| p.starts_with('!')) {
                continue;
            }
            let Some(root) = root else {
                return Err("hashFiles: this job has no home directory".into());
            };
            let parsed =
                Patterns::parse(pats.iter().map(String::as_str)).map_err(|e| format!("hashFiles: {e}"))?;
            files.extend(parsed.select(root).map_err(|e| format!("hashFiles: {e}"))?);
        }
        let mut all = Sha256::new();
        let mut any = false;
        for (rel, path) in files {
            let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("hashFiles: `{rel}`: {e}"))?;
            if !meta.is_file() {
                continue;
            }
            use std::io::Read;
            let mut f = std::fs::File::open(&path).map_err(|e| format!("hashFiles: `{rel}`: {e}"))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = f.read(&mut buf).map_err(|e| format!("hashFiles: `{rel}`: {e}"))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            all.update(h.finalize());
            any = true;
        }
        Ok(if any { hex::encode(all.finalize()) } else { String::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_workflow::FileHasher;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "dist/a.js",
            "dist/b.css",
            "dist/sub/c.js",
            "dist/sub/skip.map",
            "top.txt",
            "pkg/x/package-lock.json",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f).unwrap();
        }
        std::os::unix::fs::symlink("/etc", d.path().join("dist/etc-link")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("escape")).unwrap();
        d
    }

    #[test]
    fn bug_fifo_and_non_utf8_names_were_silently_left_out_of_uploads() {
        use std::os::unix::ffi::OsStrExt;
        let d = tree();
        let fifo = d.path().join("dist/pipe");
        let ok = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success());
        assert!(ok.unwrap_or(false), "mkfifo failed");
        // A directory, a glob, the FIFO by name: each names it.
        for pats in [&["dist/"][..], &["dist/**"], &["dist/pipe"]] {
            let p = Patterns::parse(pats.iter().copied()).unwrap();
            let err = p.select_for_upload(d.path()).unwrap_err();
            assert_eq!(
                err,
                "`dist/pipe` cannot be stored: it is a FIFO (only files, directories and links are)"
            );
            assert!(!err.contains(&d.path().display().to_string()), "no host path in: {err}");
            // hashFiles() passes over it, as GitHub's does.
            assert!(p.select(d.path()).is_ok());
        }
        std::fs::remove_file(&fifo).unwrap();
        let odd = d.path().join("dist").join(std::ffi::OsStr::from_bytes(b"bad-\xff.js"));
        std::fs::write(&odd, b"x").unwrap();
        let err = Patterns::parse(["dist/"]).unwrap().select_for_upload(d.path()).unwrap_err();
        assert!(
            err.starts_with("`dist/bad-") && err.ends_with("cannot be stored: its name is not UTF-8"),
            "{err}"
        );
        // A pattern that does not select it is not disturbed by it.
        assert!(Patterns::parse(["dist/*.css"]).unwrap().select_for_upload(d.path()).is_ok());
    }

    fn names(d: &Path, pats: &[&str]) -> Vec<String> {
        Patterns::parse(pats.iter().copied())
            .unwrap()
            .select(d)
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    #[test]
    fn globs_exclusions_and_directories() {
        let d = tree();
        assert_eq!(names(d.path(), &["dist/**/*.js"]), ["dist/a.js", "dist/sub/c.js"]);
        assert_eq!(
            names(d.path(), &["dist", "!dist/**/*.map", "!dist/etc-link"]),
            ["dist/a.js", "dist/b.css", "dist/sub/c.js"]
        );
        assert_eq!(names(d.path(), &["**/package-lock.json"]), ["pkg/x/package-lock.json"]);
        assert_eq!(names(d.path(), &["*.txt"]), ["top.txt"]);
        // A link is selected as a link, never walked into.
        assert!(names(d.path(), &["**"])
            .iter()
            .all(|n| !n.starts_with("escape/") && !n.starts_with("dist/etc-link/")));
        assert!(Patterns::parse(["!dist"]).is_err());
        assert!(Patterns::parse(["../x/*"]).is_err());
        assert!(Patterns::parse(["/etc/*"]).is_err());
    }

    #[test]
    fn a_root_through_a_link_is_refused() {
        let d = tree();
        let e = Patterns::parse(["escape/**"]).unwrap().select(d.path()).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn hash_files_is_stable_and_content_based() {
        let d = tree();
        let h = WorkspaceHasher { ws: d.path().to_path_buf(), home: None };
        let a = h.hash_files(&["**/*.js".into()]).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, h.hash_files(&["dist/**/*.js".into()]).unwrap());
        assert_eq!(h.hash_files(&["nothing/*".into()]).unwrap(), "");
        std::fs::write(d.path().join("dist/a.js"), "changed").unwrap();
        assert_ne!(a, h.hash_files(&["**/*.js".into()]).unwrap());
        // Links are not read.
        assert!(h.hash_files(&["escape".into()]).unwrap_err().contains("symbolic link"));
        // `~/` names the job's home.
        let home = tree();
        let hh = WorkspaceHasher { ws: d.path().to_path_buf(), home: Some(home.path().to_path_buf()) };
        let in_home = hh.hash_files(&["~/dist/**/*.js".into()]).unwrap();
        assert_eq!(in_home.len(), 64);
        assert_eq!(in_home, hh.hash_files(&["/home/runner/dist/**/*.js".into()]).unwrap());
        assert_eq!(
            hh.hash_files(&["~/dist/**/*.js".into(), "!~/dist/sub/**".into()]).unwrap(),
            hh.hash_files(&["~/dist/a.js".into()]).unwrap()
        );
        assert!(hh.hash_files(&["~/escape/**".into()]).unwrap_err().contains("symbolic link"));
        assert!(hh.hash_files(&["~/../x".into()]).is_err());
        assert!(h.hash_files(&["dist/etc-link".into()]).unwrap_err().contains("symbolic link"));
    }
}
