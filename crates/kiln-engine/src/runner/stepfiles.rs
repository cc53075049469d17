//! The step files (`$GITHUB_OUTPUT`, `$GITHUB_ENV`, `$GITHUB_PATH`,
//! `$GITHUB_STEP_SUMMARY`): the only channel from a step back to kiln.
//!
//! They live in a per-step directory the sandbox can write, so by the time
//! kiln reads them they are hostile: a step may have replaced one with a
//! symlink to a host file, a FIFO that blocks the reader, or a huge file.
//! [`read_bounded`] opens without following symlinks and without blocking,
//! accepts only regular files, and reads at most a fixed number of bytes.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Most bytes kiln reads from one step file.
pub const MAX_STEP_FILE_BYTES: u64 = 1024 * 1024;

/// Why a step file was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StepFileError {
    #[error("{name} is not a regular file")]
    NotRegular { name: String },
    #[error("{name} is larger than {max} bytes")]
    TooLarge { name: String, max: u64 },
    #[error("{name}: {message}")]
    Io { name: String, message: String },
    #[error("{name} line {line}: {message}")]
    Syntax { name: String, line: usize, message: String },
}

/// Reads a step file safely; a missing file reads as empty.
pub fn read_bounded(path: &Path, name: &str) -> Result<String, StepFileError> {
    let io = |e: std::io::Error| StepFileError::Io { name: name.to_string(), message: e.to_string() };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StepFileError::NotRegular { name: name.to_string() })
        }
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(StepFileError::NotRegular { name: name.to_string() });
    }
    if meta.len() > MAX_STEP_FILE_BYTES {
        return Err(StepFileError::TooLarge { name: name.to_string(), max: MAX_STEP_FILE_BYTES });
    }
    let mut buf = Vec::new();
    file.take(MAX_STEP_FILE_BYTES + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > MAX_STEP_FILE_BYTES {
        return Err(StepFileError::TooLarge { name: name.to_string(), max: MAX_STEP_FILE_BYTES });
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Parses the `NAME=value` / `NAME<<DELIM ... DELIM` format of
/// `$GITHUB_OUTPUT` and `$GITHUB_ENV`.
pub fn parse_assignments(text: &str, name: &str) -> Result<Vec<(String, String)>, StepFileError> {
    let err = |line: usize, message: String| StepFileError::Syntax { name: name.to_string(), line, message };
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        let eq = line.find('=');
        let heredoc = line.find("<<");
        match (eq, heredoc) {
            (Some(e), h) if h.map(|h| e < h).unwrap_or(true) => {
                let key = &line[..e];
                check_name(key).map_err(|m| err(i + 1, m))?;
                out.push((key.to_string(), line[e + 1..].to_string()));
            }
            (_, Some(h)) => {
                let key = &line[..h];
                check_name(key).map_err(|m| err(i + 1, m))?;
                let delim = &line[h + 2..];
                if delim.is_empty() {
                    return Err(err(i + 1, "empty heredoc delimiter".into()));
                }
                let mut value: Vec<&str> = Vec::new();
                let mut closed = false;
                for (_, l) in lines.by_ref() {
                    if l == delim {
                        closed = true;
                        break;
                    }
                    value.push(l);
                }
                if !closed {
                    return Err(err(i + 1, format!("heredoc `{delim}` is never closed")));
                }
                out.push((key.to_string(), value.join("\n")));
            }
            _ => return Err(err(i + 1, "expected NAME=value or NAME<<DELIMITER".into())),
        }
    }
    Ok(out)
}

fn check_name(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 256
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid name `{}`", key.chars().take(64).collect::<String>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_heredoc() {
        let t = "a=1\nb=x=y\n\nmsg<<EOF\nline 1\nline 2\nEOF\nc=\n";
        let v = parse_assignments(t, "GITHUB_OUTPUT").unwrap();
        assert_eq!(
            v,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x=y".into()),
                ("msg".into(), "line 1\nline 2".into()),
                ("c".into(), "".into())
            ]
        );
    }

    #[test]
    fn rejects_garbage_and_open_heredoc() {
        assert!(parse_assignments("no equals", "f").is_err());
        assert!(parse_assignments("x<<EOF\nnever closed", "f").is_err());
        assert!(parse_assignments("bad name=1", "f").is_err());
    }

    #[test]
    fn refuses_symlinks_fifos_and_huge_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host secret").unwrap();
        let link = dir.path().join("out");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert!(matches!(read_bounded(&link, "out"), Err(StepFileError::NotRegular { .. })));

        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(status.success());
        assert!(matches!(read_bounded(&fifo, "fifo"), Err(StepFileError::NotRegular { .. })));

        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_STEP_FILE_BYTES + 1).unwrap();
        assert!(matches!(read_bounded(&big, "big"), Err(StepFileError::TooLarge { .. })));

        assert_eq!(read_bounded(&dir.path().join("missing"), "m").unwrap(), "");
    }
}
