//! The step agent: how the steps of one phase run in one sandbox.
//!
//! A phase sandbox's PID 1 is `kiln-init --agent`: at start it connects to a
//! Unix socket kiln listens on (bound into the sandbox at [`AGENT_DIR`];
//! kiln accepts that one connection and removes the socket, so no step can
//! connect to it later) and then starts each step kiln sends it as its own
//! child. A child inherits everything PID 1 was given by the runtime — the
//! seccomp filter, `no_new_privs`, no capabilities, the step user — which a
//! process started by the runtime's `exec` does not always get (`runsc
//! exec` before 2026 installs no seccomp filter). Starting a process this
//! way costs a fork and an exec inside the sandbox, not a runtime call.
//!
//! Frames, both ways: a kind byte, the step's sequence number and the
//! payload's length (u32, little endian), then the payload:
//!
//! | kind | from | payload |
//! | --- | --- | --- |
//! | `R` | kiln | a JSON [`RunRequest`] |
//! | `O` / `E` | agent | bytes the step (or what it left running) wrote to stdout / stderr |
//! | `o` / `e` | agent | end of stdout / stderr (every writer closed it) |
//! | `X` | agent | the step's exit status (i32; 128+n for a signal) |
//! | `F` | agent | the step could not be started: a message |
//!
//! The agent is deliberately synchronous (std threads), like the rest of
//! kiln-init.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Where the agent's socket directory is inside the sandbox.
pub const AGENT_DIR: &str = "/kiln/agent";
/// The socket's file name in [`AGENT_DIR`].
pub const AGENT_SOCKET: &str = "agent.sock";
/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 4 << 20;

/// One step to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    pub argv: Vec<String>,
    /// The whole environment (nothing is inherited from PID 1).
    pub env: Vec<(String, String)>,
    pub cwd: String,
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, seq: u32, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = kind;
    head[1..5].copy_from_slice(&seq.to_le_bytes());
    head[5..9].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)
}

/// Parses a frame header: (kind, seq, payload length).
pub fn parse_header(head: &[u8; 9]) -> io::Result<(u8, u32, usize)> {
    let seq = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
    }
    Ok((head[0], seq, len))
}

/// Children the agent started, by pid: the reaper (PID 1's wait loop)
/// reports their exit to kiln.
#[derive(Debug, Clone, Default)]
pub(crate) struct Agent {
    conn: Option<Arc<Mutex<UnixStream>>>,
    children: Arc<Mutex<HashMap<i32, u32>>>,
}

impl Agent {
    /// Connects to kiln and starts serving requests on a thread.
    pub(crate) fn start(socket: &std::path::Path) -> Result<Agent, String> {
        let mut last = None;
        // kiln listens before it starts the sandbox; a few tries cover a
        // slow filesystem.
        for _ in 0..50 {
            match UnixStream::connect(socket) {
                Ok(conn) => {
                    let reader = conn.try_clone().map_err(|e| e.to_string())?;
                    let agent =
                        Agent { conn: Some(Arc::new(Mutex::new(conn))), children: Default::default() };
                    let serving = agent.clone();
                    std::thread::Builder::new()
                        .name("agent".into())
                        .spawn(move || serving.serve(reader))
                        .map_err(|e| e.to_string())?;
                    return Ok(agent);
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(format!(
            "agent: connecting to {}: {}",
            socket.display(),
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    fn send(&self, kind: u8, seq: u32, payload: &[u8]) {
        if let Some(conn) = &self.conn {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            let _ = write_frame(&mut *c, kind, seq, payload);
        }
    }

    /// Reads requests until kiln closes the connection, then ends PID 1
    /// (the sandbox with it).
    fn serve(self, mut reader: UnixStream) {
        loop {
            let mut head = [0u8; 9];
            if reader.read_exact(&mut head).is_err() {
                break;
            }
            let Ok((kind, seq, len)) = parse_header(&head) else { break };
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).is_err() {
                break;
            }
            if kind != b'R' {
                continue;
            }
            match serde_json::from_slice::<RunRequest>(&payload) {
                Ok(req) => self.run(seq, req),
                Err(e) => self.send(b'F', seq, format!("bad request: {e}").as_bytes()),
            }
        }
        // kiln hung up: the phase is over.
        std::process::exit(0);
    }

    fn run(&self, seq: u32, req: RunRequest) {
        let Some(program) = req.argv.first() else {
            self.send(b'F', seq, b"empty argv");
            return;
        };
        let mut cmd = Command::new(program);
        cmd.args(&req.argv[1..])
            .env_clear()
            .envs(req.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&req.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Registered under the lock the reaper takes, so an exit reaped
        // right after the fork is never missed.
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                drop(children);
                self.send(b'F', seq, format!("starting `{program}`: {e}").as_bytes());
                return;
            }
        };
        children.insert(child.id() as i32, seq);
        drop(children);
        for (pipe, data, end) in [
            (child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>), b'O', b'o'),
            (child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>), b'E', b'e'),
        ] {
            let Some(mut pipe) = pipe else { continue };
            let agent = self.clone();
            let _ = std::thread::Builder::new().name("agent-pipe".into()).spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => agent.send(data, seq, &buf[..n]),
                    }
                }
                agent.send(end, seq, &[]);
            });
        }
        // Not waited on here: PID 1's reaper collects it (dropping a Child
        // neither waits nor kills).
        drop(child);
    }

    /// Called by PID 1's reaper for every child it collected.
    pub(crate) fn reaped(&self, pid: i32, status: i32) {
        let seq = self.children.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
        if let Some(seq) = seq {
            self.send(b'X', seq, &status.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_huge_lengths() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b'O', 7, b"hello").unwrap();
        let head: [u8; 9] = buf[..9].try_into().unwrap();
        assert_eq!(parse_header(&head).unwrap(), (b'O', 7, 5));
        assert_eq!(&buf[9..], b"hello");
        let mut huge = head;
        huge[5..9].copy_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
        assert!(parse_header(&huge).is_err());
    }
}
