//! kiln's init: PID 1 inside every sandbox.
//!
//! The runtime starts `/kiln/init` (the `kiln-init` binary, bind-mounted
//! read-only) instead of the step's command. It:
//!
//! - reads the step's secrets from stdin (a pipe kiln writes and closes), so
//!   they never sit in the OCI spec on disk: `env` secrets go into the
//!   command's environment only, `file` secrets become `/run/secrets/NAME`
//!   (mode 0400, owned by the step user) on a tmpfs that dies with the sandbox;
//! - optionally listens on `127.0.0.1:<port>` and relays each connection to
//!   kiln's egress proxy through a Unix socket bound into the sandbox (the
//!   sandbox itself has no route anywhere);
//! - optionally forwards addresses on the sandbox's loopback to the job's
//!   services (`--forward 127.0.0.2:5432=/kiln/services/postgres-5432.sock`),
//!   each connection relayed to kiln's socket for that service port;
//! - in a service's sandbox, dials kiln's socket (`--dial`) and keeps a few
//!   connections waiting there: kiln names a port on each it uses, and the
//!   init relays it to that port on the sandbox's own loopback (a service
//!   sandbox has no other way in);
//! - starts the step's command with stdin from /dev/null, forwards SIGTERM,
//!   SIGINT, SIGHUP, SIGQUIT and SIGUSR1/2 to it, reaps every orphan, and exits
//!   with the command's status (128+n for a signal) once the command ends; the
//!   runtime then tears down whatever the step left running.
//!
//! It is deliberately small and synchronous (std threads, no async runtime),
//! since it runs inside every sandbox and starts before every step.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::sys;

/// Where file secrets appear inside the sandbox.
pub const SECRETS_DIR: &str = "/run/secrets";
/// Where the init binary is mounted inside the sandbox.
pub const INIT_PATH: &str = "/kiln/init";
/// The directory (inside the sandbox) holding the egress proxy's socket.
pub const EGRESS_DIR: &str = "/kiln/egress";
/// The socket's file name in [`EGRESS_DIR`].
pub const EGRESS_SOCKET: &str = "proxy.sock";
/// The directory (inside the sandbox) holding kiln's sockets of the job's
/// services.
pub const SERVICES_DIR: &str = "/kiln/services";
/// The directory (inside a service's sandbox) holding the socket its init dials.
pub const DIAL_DIR: &str = "/kiln/dial";
/// The socket's file name in [`DIAL_DIR`].
pub const DIAL_SOCKET: &str = "dial.sock";
/// Connections a service's init keeps waiting on kiln's socket.
const DIAL_IDLE: usize = 4;

/// An address a sandbox's init listens on for a service of the job, and
/// the file name (in [`SERVICES_DIR`]) of kiln's socket it relays to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub listen: std::net::SocketAddrV4,
    pub socket: String,
}

const MAX_SECRETS: usize = 4096;
const MAX_SECRET_BYTES: usize = 1 << 20;
const MAX_NAME_BYTES: usize = 256;

/// How a secret reaches the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMode {
    Env,
    File,
}

/// Encodes secrets for the init's stdin: per secret, a kind byte (`E`/`F`),
/// then the name and the value, each as a little-endian u32 length and bytes.
pub fn encode_secrets(secrets: &[(String, SecretMode, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, mode, value) in secrets {
        out.push(match mode {
            SecretMode::Env => b'E',
            SecretMode::File => b'F',
        });
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// A secret as the init received it.
#[derive(PartialEq, Eq)]
pub struct Received {
    pub name: String,
    pub mode: SecretMode,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Received {{ name: {:?}, mode: {:?}, value: *** }}", self.name, self.mode)
    }
}

/// Decodes [`encode_secrets`]' format, with bounds on every length.
pub fn decode_secrets(mut input: &[u8]) -> Result<Vec<Received>, String> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if input.len() < n {
            return Err("truncated secret record".into());
        }
        let (a, b) = input.split_at(n);
        *input = b;
        Ok(a)
    }
    fn len(input: &mut &[u8], max: usize) -> Result<usize, String> {
        let b = take(input, 4)?;
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if n > max {
            return Err(format!("secret record field of {n} bytes is over the limit of {max}"));
        }
        Ok(n)
    }
    let mut out = Vec::new();
    while !input.is_empty() {
        if out.len() >= MAX_SECRETS {
            return Err("too many secrets".into());
        }
        let mode = match take(&mut input, 1)?[0] {
            b'E' => SecretMode::Env,
            b'F' => SecretMode::File,
            other => return Err(format!("unknown secret kind {other:#x}")),
        };
        let n = len(&mut input, MAX_NAME_BYTES)?;
        let name =
            String::from_utf8(take(&mut input, n)?.to_vec()).map_err(|_| "secret name is not UTF-8")?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid secret name `{name}`"));
        }
        let n = len(&mut input, MAX_SECRET_BYTES)?;
        let value = take(&mut input, n)?.to_vec();
        out.push(Received { name, mode, value });
    }
    Ok(out)
}

/// Parsed command line of `kiln-init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitArgs {
    /// Listen port on 127.0.0.1 and the proxy's Unix socket.
    pub egress: Option<(u16, PathBuf)>,
    /// Read secrets from stdin first.
    pub secrets: bool,
    /// Serve the step agent on this socket (see [`crate::agent`]).
    pub agent: Option<PathBuf>,
    /// Listen on each address and relay to the socket.
    pub forwards: Vec<(std::net::SocketAddrV4, PathBuf)>,
    /// Keep connections waiting on this socket for kiln to use.
    pub dial: Option<PathBuf>,
    pub argv: Vec<String>,
}

/// `kiln-init [--agent SOCKET] [--egress PORT:SOCKET] [--forward ADDR:PORT=SOCKET]...
/// [--dial SOCKET] [--secrets] -- COMMAND ARGS...`
pub fn parse_args(args: &[String]) -> Result<InitArgs, String> {
    let mut egress = None;
    let mut secrets = false;
    let mut agent = None;
    let mut forwards = Vec::new();
    let mut dial = None;
    let mut it = args.iter();
    loop {
        match it.next().map(String::as_str) {
            Some("--egress") => {
                let v = it.next().ok_or("--egress needs PORT:SOCKET")?;
                let (port, sock) = v.split_once(':').ok_or("--egress needs PORT:SOCKET")?;
                let port: u16 = port.parse().map_err(|_| format!("bad egress port `{port}`"))?;
                egress = Some((port, PathBuf::from(sock)));
            }
            Some("--secrets") => secrets = true,
            Some("--agent") => agent = Some(PathBuf::from(it.next().ok_or("--agent needs SOCKET")?)),
            Some("--forward") => {
                let v = it.next().ok_or("--forward needs ADDR:PORT=SOCKET")?;
                let (addr, sock) = v.split_once('=').ok_or("--forward needs ADDR:PORT=SOCKET")?;
                let addr = addr.parse().map_err(|_| format!("bad forward address `{addr}`"))?;
                forwards.push((addr, PathBuf::from(sock)));
            }
            Some("--dial") => dial = Some(PathBuf::from(it.next().ok_or("--dial needs SOCKET")?)),
            Some("--") => break,
            Some(other) => return Err(format!("unknown argument `{other}`")),
            None => return Err("missing `-- COMMAND`".into()),
        }
    }
    let argv: Vec<String> = it.cloned().collect();
    if argv.is_empty() {
        return Err("no command given after `--`".into());
    }
    Ok(InitArgs { egress, secrets, agent, forwards, dial, argv })
}

/// The argv that starts `argv` under kiln's init inside the sandbox, as
/// `spec` asks (its paths are where [`crate::InitSpec`]'s directories are
/// mounted).
pub fn wrap_argv(spec: &crate::InitSpec, argv: &[String]) -> Vec<String> {
    let mut out = vec![INIT_PATH.to_string()];
    if spec.agent.is_some() {
        out.push("--agent".into());
        out.push(format!("{}/{}", crate::agent::AGENT_DIR, crate::agent::AGENT_SOCKET));
    }
    if let Some((_, port)) = &spec.egress {
        out.push("--egress".into());
        out.push(format!("{port}:{EGRESS_DIR}/{EGRESS_SOCKET}"));
    }
    for f in spec.forwards.iter().flat_map(|(_, f)| f) {
        out.push("--forward".into());
        out.push(format!("{}={SERVICES_DIR}/{}", f.listen, f.socket));
    }
    if spec.dial.is_some() {
        out.push("--dial".into());
        out.push(format!("{DIAL_DIR}/{DIAL_SOCKET}"));
    }
    if spec.secrets {
        out.push("--secrets".into());
    }
    out.push("--".into());
    out.extend(argv.iter().cloned());
    out
}

/// Runs the init; returns the process exit status.
pub fn main(args: &[String]) -> i32 {
    // `kiln-init --probe PORT`, run by the agent inside a service's
    // sandbox: does anything accept connections on that loopback port yet?
    if let [flag, port] = args {
        if flag == "--probe" {
            let Ok(port) = port.parse::<u16>() else { return 2 };
            return match TcpStream::connect_timeout(
                &(std::net::Ipv4Addr::LOCALHOST, port).into(),
                Duration::from_secs(1),
            ) {
                Ok(_) => 0,
                Err(_) => 1,
            };
        }
    }
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kiln-init: {e}");
            return 127;
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln-init: {e}");
            127
        }
    }
}

fn run(args: &InitArgs) -> Result<i32, String> {
    sys::block_forwarded_signals().map_err(|e| format!("blocking signals: {e}"))?;
    let mut env: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if args.secrets {
        let mut buf = Vec::new();
        io::stdin()
            .take((MAX_SECRETS * (MAX_SECRET_BYTES + 300)) as u64)
            .read_to_end(&mut buf)
            .map_err(|e| format!("reading secrets: {e}"))?;
        let secrets = decode_secrets(&buf)?;
        buf.fill(0);
        for s in secrets {
            match s.mode {
                SecretMode::Env => {
                    env.insert(s.name, s.value);
                }
                SecretMode::File => write_secret_file(Path::new(SECRETS_DIR), &s.name, &s.value)?,
            }
        }
    }
    if let Some((port, socket)) = &args.egress {
        let listener = TcpListener::bind(("127.0.0.1", *port)).map_err(|e| format!("egress relay: {e}"))?;
        let socket = socket.clone();
        std::thread::Builder::new()
            .name("egress-relay".into())
            .spawn(move || relay_accept(listener, socket))
            .map_err(|e| e.to_string())?;
    }
    for (addr, socket) in &args.forwards {
        let listener = TcpListener::bind(addr).map_err(|e| format!("service forward on {addr}: {e}"))?;
        let socket = socket.clone();
        std::thread::Builder::new()
            .name("service-forward".into())
            .spawn(move || relay_accept(listener, socket))
            .map_err(|e| e.to_string())?;
    }
    if let Some(socket) = &args.dial {
        for _ in 0..DIAL_IDLE {
            spawn_dialer(socket.clone());
        }
    }
    let agent = match &args.agent {
        Some(socket) => Some(crate::agent::Agent::start(socket)?),
        None => None,
    };
    let mut cmd = Command::new(&args.argv[0]);
    cmd.args(&args.argv[1..]).stdin(Stdio::null());
    {
        use std::os::unix::ffi::OsStringExt;
        for (k, v) in env.iter() {
            cmd.env(k, std::ffi::OsString::from_vec(v.clone()));
        }
    }
    let child = cmd.spawn().map_err(|e| format!("starting `{}`: {e}", args.argv[0]))?;
    drop(env);
    let pid = child.id() as i32;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match sys::wait_signal() {
                Ok(sig) => {
                    let _ = sys::signal(pid, sig);
                }
                Err(_) => return,
            }
        })
        .map_err(|e| e.to_string())?;
    // PID 1 reaps everything; the step's own status decides ours.
    loop {
        let status = |how| match how {
            sys::Reaped::Exited(c) => c,
            sys::Reaped::Signaled(s) => 128 + s,
        };
        match sys::reap_any().map_err(|e| format!("waiting: {e}"))? {
            Some((p, how)) if p == pid => {
                let _ = io::stdout().flush();
                return Ok(status(how));
            }
            Some((p, how)) => {
                if let Some(agent) = &agent {
                    agent.reaped(p, status(how));
                }
            }
            None => return Ok(127),
        }
    }
}

/// Writes one file secret: new file, no symlink following, mode 0400.
fn write_secret_file(dir: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| format!("writing secret file {}: {e}", path.display()))?;
    f.write_all(value).map_err(|e| format!("writing secret file {}: {e}", path.display()))
}

/// One connection waiting on kiln's socket of a service sandbox: kiln
/// writes the port (2 bytes, big-endian) when it hands the connection a
/// client; the dialer then starts its replacement and relays to that port
/// on the sandbox's loopback (closing at once when nothing listens there).
fn spawn_dialer(socket: PathBuf) {
    let _ = std::thread::Builder::new().name("service-dial".into()).spawn(move || {
        let mut backoff = Duration::from_millis(20);
        loop {
            let mut conn = match UnixStream::connect(&socket) {
                Ok(c) => c,
                Err(_) => {
                    // kiln is not listening (yet, or any more): try again.
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(20);
            let mut port = [0u8; 2];
            if conn.read_exact(&mut port).is_err() {
                continue;
            }
            spawn_dialer(socket.clone());
            if let Ok(tcp) = TcpStream::connect(("127.0.0.1", u16::from_be_bytes(port))) {
                relay(tcp, conn);
            }
            return;
        }
    });
}

fn relay_accept(listener: TcpListener, socket: PathBuf) {
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        let socket = socket.clone();
        let _ = std::thread::Builder::new().name("relay-conn".into()).spawn(move || {
            if let Ok(unix) = UnixStream::connect(&socket) {
                relay(tcp, unix);
            }
        });
    }
}

/// Copies both ways until each side is done, then closes.
fn relay(tcp: TcpStream, unix: UnixStream) {
    let (Ok(mut tcp_r), Ok(mut unix_r)) = (tcp.try_clone(), unix.try_clone()) else { return };
    let (mut tcp_w, mut unix_w) = (tcp, unix);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_never_debug_print() {
        let enc = encode_secrets(&[
            ("TOKEN".into(), SecretMode::Env, b"s3cr3t-value".as_slice()),
            ("KEY".into(), SecretMode::File, b"-----BEGIN\nxyz\n".as_slice()),
        ]);
        let dec = decode_secrets(&enc).unwrap();
        assert_eq!(dec.len(), 2);
        assert_eq!(dec[0].value, b"s3cr3t-value");
        assert_eq!(dec[1].mode, SecretMode::File);
        assert!(!format!("{dec:?}").contains("s3cr3t"));
    }

    #[test]
    fn hostile_records_are_refused() {
        assert!(decode_secrets(b"E\x05\x00\x00\x00TOK").is_err());
        assert!(decode_secrets(b"X").is_err());
        assert!(decode_secrets(b"E\xff\xff\xff\xff").is_err());
        let bad_name = encode_secrets(&[("../etc/passwd".into(), SecretMode::File, b"12345678".as_slice())]);
        assert!(decode_secrets(&bad_name).is_err());
    }

    #[test]
    fn args_parse_and_wrap() {
        let argv = vec!["bash".to_string(), "-e".into(), "/kiln/step/script.sh".into()];
        let spec = crate::InitSpec {
            binary: "/x".into(),
            secrets: true,
            egress: Some(("/h/e".into(), 3128)),
            agent: None,
            forwards: None,
            dial: None,
        };
        let wrapped = wrap_argv(&spec, &argv);
        assert_eq!(wrapped[0], INIT_PATH);
        let parsed = parse_args(&wrapped[1..]).unwrap();
        assert_eq!(parsed.argv, argv);
        assert!(parsed.secrets);
        assert_eq!(parsed.agent, None);
        assert!(parsed.forwards.is_empty() && parsed.dial.is_none());
        let phase = crate::InitSpec {
            secrets: false,
            egress: None,
            agent: Some("/h/a".into()),
            forwards: Some((
                "/h/s".into(),
                vec![
                    Forward { listen: "127.0.0.1:5432".parse().unwrap(), socket: "pg-5432.sock".into() },
                    Forward { listen: "127.0.0.2:5432".parse().unwrap(), socket: "pg-5432.sock".into() },
                ],
            )),
            dial: Some("/h/d".into()),
            ..spec
        };
        let agent = parse_args(&wrap_argv(&phase, &argv)[1..]).unwrap();
        assert_eq!(agent.agent, Some(PathBuf::from("/kiln/agent/agent.sock")));
        assert_eq!(
            agent.forwards,
            vec![
                ("127.0.0.1:5432".parse().unwrap(), PathBuf::from("/kiln/services/pg-5432.sock")),
                ("127.0.0.2:5432".parse().unwrap(), PathBuf::from("/kiln/services/pg-5432.sock")),
            ]
        );
        assert_eq!(agent.dial, Some(PathBuf::from("/kiln/dial/dial.sock")));
        assert_eq!(parsed.egress, Some((3128, PathBuf::from("/kiln/egress/proxy.sock"))));
        assert!(parse_args(&["--forward".into(), "nohost=/x".into(), "--".into(), "a".into()]).is_err());
        assert!(parse_args(&["--".into()]).is_err());
        assert!(parse_args(&["--bogus".into()]).is_err());
    }

    #[test]
    fn secret_files_are_private_and_never_follow_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write_secret_file(dir.path(), "A", b"value-123").unwrap();
        let meta = std::fs::metadata(dir.path().join("A")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        std::os::unix::fs::symlink("/tmp/elsewhere", dir.path().join("B")).unwrap();
        assert!(write_secret_file(dir.path(), "B", b"value-123").is_err());
    }
}
