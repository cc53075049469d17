//! A job's writable root over an image: what kiln does to it from the host.
//!
//! The root is an overlay mounted by [`crate::Workspace::mount_root`]; its
//! contents come from an image (which may have been made by anyone) and
//! from the job's own steps, so every path kiln touches in it from the host
//! is resolved beneath the root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`: a link in the image or one a step planted (say
//! `/kiln -> /etc`) makes the operation fail, never reach the host.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use oci_spec::runtime::Spec;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{Result, SandboxError};

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn refused(root: &Path, rel: &str, what: &str, e: Errno) -> SandboxError {
    let why = match e {
        Errno::XDEV | Errno::LOOP => "a link is in the way".to_string(),
        Errno::NOTDIR => "a link or a file is in the way".to_string(),
        e => std::io::Error::from(e).to_string(),
    };
    SandboxError::Invalid(format!("the job's root {}: {what} /{rel}: {why}", root.display()))
}

fn open_root(root: &Path) -> Result<OwnedFd> {
    rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| refused(root, "", "open", e))
}

/// Creates directory `rel` (and its parents, 0755 root-owned) beneath
/// `root` without following links; an existing directory is kept.
fn mkdir_beneath(root: &Path, fd: &OwnedFd, rel: &str) -> Result<()> {
    let mut cur = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(SandboxError::Invalid(format!("path /{rel} has a `{part}` part")));
        }
        if !cur.is_empty() {
            cur.push('/');
        }
        cur.push_str(part);
        match rustix::fs::openat2(
            fd,
            cur.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            beneath(),
        ) {
            Ok(_) => continue,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(refused(root, &cur, "open", e)),
        }
        let (parent, name) = cur.rsplit_once('/').unwrap_or(("", cur.as_str()));
        let pfd = if parent.is_empty() {
            rustix::io::dup(fd).map_err(|e| refused(root, parent, "open", e))?
        } else {
            rustix::fs::openat2(
                fd,
                parent,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                beneath(),
            )
            .map_err(|e| refused(root, parent, "open", e))?
        };
        match rustix::fs::mkdirat(&pfd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(refused(root, &cur, "create", e)),
        }
    }
    Ok(())
}

/// Opens (creating if missing) file `rel` beneath `root` for writing.
fn open_file_beneath(
    root: &Path,
    fd: &OwnedFd,
    rel: &str,
    flags: OFlags,
    mode: u32,
) -> Result<std::fs::File> {
    if let Some((parent, _)) = rel.rsplit_once('/') {
        mkdir_beneath(root, fd, parent)?;
    }
    let f = rustix::fs::openat2(
        fd,
        rel,
        OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | flags,
        Mode::from_raw_mode(mode),
        beneath(),
    )
    .map_err(|e| refused(root, rel, "open", e))?;
    Ok(std::fs::File::from(f))
}

/// Reads file `rel` beneath `root` (empty when missing).
fn read_beneath(root: &Path, fd: &OwnedFd, rel: &str) -> Result<String> {
    match rustix::fs::openat2(
        fd,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        beneath(),
    ) {
        Ok(f) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(f), &mut s)
                .map_err(|e| SandboxError::Invalid(format!("the job's root: read /{rel}: {e}")))?;
            Ok(s)
        }
        Err(Errno::NOENT) => Ok(String::new()),
        Err(e) => Err(refused(root, rel, "read", e)),
    }
}

/// Makes a fresh root ready for a job: the step user in `/etc/passwd` and
/// `/etc/group` (with `home` as its home), kiln's host name, and the
/// directories kiln mounts on. Runs once, before any step, on the merged
/// overlay.
pub(crate) fn prepare_job_root(root: &Path, uid: u32, gid: u32, home: &str) -> Result<()> {
    let fd = open_root(root)?;
    let passwd = read_beneath(root, &fd, "etc/passwd")?;
    if uid != 0 && !passwd.lines().any(|l| l.split(':').nth(2) == Some(&uid.to_string())) {
        let line = format!("runner:x:{uid}:{gid}:runner:{home}:/bin/bash\n");
        let mut f = open_file_beneath(root, &fd, "etc/passwd", OFlags::APPEND, 0o644)?;
        let sep = if passwd.is_empty() || passwd.ends_with('\n') { "" } else { "\n" };
        f.write_all(format!("{sep}{line}").as_bytes())
            .map_err(|e| SandboxError::Invalid(format!("the job's root: write /etc/passwd: {e}")))?;
    }
    let group = read_beneath(root, &fd, "etc/group")?;
    if gid != 0 && !group.lines().any(|l| l.split(':').nth(2) == Some(&gid.to_string())) {
        let mut f = open_file_beneath(root, &fd, "etc/group", OFlags::APPEND, 0o644)?;
        let sep = if group.is_empty() || group.ends_with('\n') { "" } else { "\n" };
        f.write_all(format!("{sep}runner:x:{gid}:\n").as_bytes())
            .map_err(|e| SandboxError::Invalid(format!("the job's root: write /etc/group: {e}")))?;
    }
    for (rel, text) in [
        ("etc/hosts", "127.0.0.1\tlocalhost kiln\n::1\tlocalhost ip6-localhost\n"),
        ("etc/hostname", "kiln\n"),
    ] {
        let mut f = open_file_beneath(root, &fd, rel, OFlags::TRUNC, 0o644)?;
        f.write_all(text.as_bytes())
            .map_err(|e| SandboxError::Invalid(format!("the job's root: write /{rel}: {e}")))?;
    }
    for d in ["proc", "sys", "dev", "tmp", "workspace", "run", "kiln", home.trim_start_matches('/')] {
        mkdir_beneath(root, &fd, d)?;
    }
    Ok(())
}

/// Creates the mount points of `oci` in the job's root (directories, or
/// empty files for file binds), beneath it. Runs before every sandbox on
/// the root: a step may have removed or replaced what an earlier one had.
pub(crate) fn mount_points(root: &Path, oci: &Spec) -> Result<()> {
    let fd = open_root(root)?;
    for m in oci.mounts().iter().flatten() {
        let dest = m.destination().to_string_lossy();
        let rel = dest.trim_start_matches('/');
        if rel.is_empty() {
            continue;
        }
        let src_is_file =
            m.typ().as_deref() == Some("bind") && m.source().as_ref().map(|s| s.is_file()).unwrap_or(false);
        if src_is_file {
            open_file_beneath(root, &fd, rel, OFlags::empty(), 0o644)?;
        } else {
            mkdir_beneath(root, &fd, rel)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_link_never_reaches_the_host() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, out) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir(&out).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        prepare_job_root(&root, 10001, 10001, "/home/runner").unwrap();
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.contains("runner:x:10001:10001:runner:/home/runner:/bin/bash"), "{passwd}");
        prepare_job_root(&root, 10001, 10001, "/home/runner").unwrap();
        let again = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert_eq!(passwd, again, "the user is added once");
        assert!(root.join("home/runner").is_dir() && root.join("kiln").is_dir());

        // A step replaces /kiln with a link to a host directory, and /etc
        // with a link to one: every operation refuses, nothing outside moves.
        std::fs::remove_dir(root.join("kiln")).unwrap();
        std::os::unix::fs::symlink(&out, root.join("kiln")).unwrap();
        let fd = open_root(&root).unwrap();
        let err = mkdir_beneath(&root, &fd, "kiln/agent").unwrap_err();
        assert!(err.to_string().contains("link"), "{err}");
        assert!(open_file_beneath(&root, &fd, "kiln/init", OFlags::empty(), 0o644).is_err());
        std::fs::rename(root.join("etc"), root.join("etc.real")).unwrap();
        std::os::unix::fs::symlink(&out, root.join("etc")).unwrap();
        assert!(prepare_job_root(&root, 10001, 10001, "/home/runner").is_err());
        std::fs::remove_file(root.join("etc")).unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(out.join("passwd"), root.join("etc/passwd")).unwrap();
        assert!(prepare_job_root(&root, 10001, 10001, "/home/runner").is_err());
        assert!(mkdir_beneath(&root, &fd, "a/../../x").is_err());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing was made outside the root");
    }
}
