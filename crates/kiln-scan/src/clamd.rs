//! A client for clamd, ClamAV's daemon, over its documented socket protocol.
//!
//! Commands use the `z` form (`zPING\0`): NUL-terminated, and clamd answers NUL-terminated.
//! `INSTREAM` sends the file as chunks, each a 4-byte big-endian length and the bytes, then a
//! zero length; clamd answers `stream: OK`, `stream: <signature> FOUND` or `<reason> ERROR`.
//! One connection per command keeps a failed file from poisoning the next one, and costs little
//! over a Unix socket.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::ScanError;

/// Bytes per `INSTREAM` chunk (clamd's own clients use a few KiB to a few hundred KiB).
const CHUNK: usize = 64 * 1024;
/// Longest reply read; clamd's are one short line.
const MAX_REPLY: usize = 4096;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
enum Addr {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Where clamd listens, and how long one exchange may take.
#[derive(Debug, Clone)]
pub struct Clamd {
    addr: Addr,
    io_timeout: Duration,
}

/// clamd's answer for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdVerdict {
    /// `stream: OK`.
    Clean,
    /// `stream: <signature> FOUND`: the signature name.
    Found(String),
}

/// One failed exchange with clamd.
#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    /// No connection (daemon not up yet, socket missing, refused).
    #[error("cannot connect to clamd at {addr}: {source}")]
    Connect {
        /// The daemon's address.
        addr: String,
        /// The connection error.
        source: io::Error,
    },
    /// The connection broke or timed out during the exchange.
    #[error("clamd at {addr}: {source}")]
    Io {
        /// The daemon's address.
        addr: String,
        /// The I/O error.
        source: io::Error,
    },
    /// clamd answered with an error or something that is not its protocol.
    #[error("clamd at {addr} answered {reply:?}")]
    Reply {
        /// The daemon's address.
        addr: String,
        /// The reply, without its terminator.
        reply: String,
    },
}

impl ClamdError {
    /// Connection-level failures are worth retrying (a daemon starting or restarting); an
    /// answer is not.
    fn retryable(&self) -> bool {
        !matches!(self, ClamdError::Reply { .. })
    }
}

trait Conn: Read + Write {}
impl Conn for UnixStream {}
impl Conn for TcpStream {}

impl Clamd {
    /// clamd's `LocalSocket`.
    pub fn unix(path: impl Into<PathBuf>) -> Clamd {
        Clamd { addr: Addr::Unix(path.into()), io_timeout: Duration::from_secs(120) }
    }

    /// clamd's `TCPSocket`, as `host:port`.
    pub fn tcp(addr: impl Into<String>) -> Clamd {
        Clamd { addr: Addr::Tcp(addr.into()), io_timeout: Duration::from_secs(120) }
    }

    /// Read/write timeout of one exchange (default 120 s: a large archive takes clamd a while).
    pub fn with_io_timeout(mut self, timeout: Duration) -> Clamd {
        self.io_timeout = timeout;
        self
    }

    fn connect(&self) -> Result<Box<dyn Conn>, ClamdError> {
        let connect_err = |source| ClamdError::Connect { addr: self.addr.to_string(), source };
        let conn: Box<dyn Conn> = match &self.addr {
            Addr::Unix(path) => {
                let s = UnixStream::connect(path).map_err(connect_err)?;
                s.set_read_timeout(Some(self.io_timeout)).map_err(connect_err)?;
                s.set_write_timeout(Some(self.io_timeout)).map_err(connect_err)?;
                Box::new(s)
            }
            Addr::Tcp(addr) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
                let mut found = None;
                for a in addr.to_socket_addrs().map_err(connect_err)? {
                    match TcpStream::connect_timeout(&a, self.io_timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = found.ok_or_else(|| connect_err(last))?;
                s.set_read_timeout(Some(self.io_timeout)).map_err(connect_err)?;
                s.set_write_timeout(Some(self.io_timeout)).map_err(connect_err)?;
                Box::new(s)
            }
        };
        Ok(conn)
    }

    fn io_err(&self, source: io::Error) -> ClamdError {
        ClamdError::Io { addr: self.addr.to_string(), source }
    }

    fn read_reply(&self, conn: &mut dyn Conn) -> Result<String, ClamdError> {
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = conn.read(&mut buf).map_err(|e| self.io_err(e))?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            if reply.contains(&0) || reply.len() > MAX_REPLY {
                break;
            }
        }
        if let Some(end) = reply.iter().position(|&b| b == 0) {
            reply.truncate(end);
        }
        reply.truncate(MAX_REPLY);
        let text = String::from_utf8_lossy(&reply).trim_end_matches(['\n', '\r']).to_string();
        if text.is_empty() {
            return Err(self
                .io_err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed without a reply")));
        }
        Ok(text)
    }

    fn command(&self, cmd: &str) -> Result<String, ClamdError> {
        let mut conn = self.connect()?;
        conn.write_all(format!("z{cmd}\0").as_bytes()).map_err(|e| self.io_err(e))?;
        self.read_reply(&mut *conn)
    }

    /// One `PING`; `Ok` when clamd answers `PONG`.
    pub fn ping(&self) -> Result<(), ClamdError> {
        let reply = self.command("PING")?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(ClamdError::Reply { addr: self.addr.to_string(), reply })
        }
    }

    /// clamd's version line (`ClamAV 1.4.6/...`), for logs and provenance.
    pub fn version(&self) -> Result<String, ClamdError> {
        self.command("VERSION")
    }

    /// Scan `data` with one `INSTREAM`.
    pub fn scan(&self, data: &[u8]) -> Result<ClamdVerdict, ClamdError> {
        let mut conn = self.connect()?;
        let sent = (|| -> io::Result<()> {
            conn.write_all(b"zINSTREAM\0")?;
            for chunk in data.chunks(CHUNK) {
                conn.write_all(&(chunk.len() as u32).to_be_bytes())?;
                conn.write_all(chunk)?;
            }
            conn.write_all(&0u32.to_be_bytes())?;
            conn.flush()
        })();
        // clamd stops reading and answers early when a stream exceeds its StreamMaxLength:
        // prefer its answer to our broken pipe.
        let reply = match (sent, self.read_reply(&mut *conn)) {
            (_, Ok(reply)) => reply,
            (Err(e), Err(_)) => return Err(self.io_err(e)),
            (Ok(()), Err(e)) => return Err(e),
        };
        parse_stream_reply(&reply).ok_or(ClamdError::Reply { addr: self.addr.to_string(), reply })
    }

    /// [`Clamd::ping`] until it answers or `wait` has passed.
    pub fn wait_ready(&self, wait: Duration) -> Result<(), ScanError> {
        self.retrying(wait, || self.ping()).map_err(|e| self.scan_error("(ping)", e))
    }

    /// [`Clamd::scan`], retrying connection failures until `wait` has passed.
    pub fn scan_with_wait(&self, path: &str, data: &[u8], wait: Duration) -> Result<ClamdVerdict, ScanError> {
        self.retrying(wait, || self.scan(data)).map_err(|e| self.scan_error(path, e))
    }

    fn scan_error(&self, path: &str, e: Retry) -> ScanError {
        match e {
            Retry::GaveUp { waited, last } => {
                ScanError::Unavailable { scanner: "clamd".into(), waited, last_error: last.to_string() }
            }
            Retry::Final(e) => {
                ScanError::Scanner { scanner: "clamd".into(), path: path.into(), message: e.to_string() }
            }
        }
    }

    fn retrying<T>(&self, wait: Duration, mut op: impl FnMut() -> Result<T, ClamdError>) -> Result<T, Retry> {
        let start = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if !e.retryable() => return Err(Retry::Final(e)),
                Err(e) => {
                    let waited = start.elapsed();
                    if waited >= wait {
                        return Err(Retry::GaveUp { waited, last: e });
                    }
                    thread::sleep(backoff.min(wait - waited));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

enum Retry {
    GaveUp { waited: Duration, last: ClamdError },
    Final(ClamdError),
}

/// `stream: OK` → clean, `stream: <name> FOUND` → found; anything else (`... ERROR`) → `None`.
fn parse_stream_reply(reply: &str) -> Option<ClamdVerdict> {
    let rest = reply.strip_prefix("stream: ")?;
    if rest == "OK" {
        return Some(ClamdVerdict::Clean);
    }
    let name = rest.strip_suffix(" FOUND")?.trim();
    (!name.is_empty()).then(|| ClamdVerdict::Found(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OutputKind, ScanInput, Scanner, Verdict};
    use std::os::unix::net::UnixListener;
    use std::path::Path;

    /// A clamd stand-in speaking the protocol: `INFECTED` in a stream is a hit, `BROKEN` an
    /// error reply; it counts the bytes it received.
    fn serve(listener: UnixListener) {
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                thread::spawn(move || {
                    let _ = handle(&mut conn);
                });
            }
        });
    }

    fn handle(conn: &mut UnixStream) -> io::Result<()> {
        let mut cmd = Vec::new();
        let mut byte = [0u8; 1];
        while conn.read(&mut byte)? == 1 && byte[0] != 0 {
            cmd.push(byte[0]);
        }
        match &cmd[..] {
            b"zPING" => conn.write_all(b"PONG\0"),
            b"zVERSION" => conn.write_all(b"ClamAV 0.0.0-test\0"),
            b"zINSTREAM" => {
                let mut data = Vec::new();
                loop {
                    let mut len = [0u8; 4];
                    conn.read_exact(&mut len)?;
                    let len = u32::from_be_bytes(len) as usize;
                    if len == 0 {
                        break;
                    }
                    let start = data.len();
                    data.resize(start + len, 0);
                    conn.read_exact(&mut data[start..])?;
                }
                let has = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
                let reply: &[u8] = if has(b"INFECTED") {
                    b"stream: Kiln.Test.Infected FOUND\0"
                } else if has(b"BROKEN") {
                    b"INSTREAM size limit exceeded. ERROR\0"
                } else {
                    b"stream: OK\0"
                };
                conn.write_all(reply)
            }
            _ => conn.write_all(b"UNKNOWN COMMAND\0"),
        }
    }

    fn start(dir: &Path) -> Clamd {
        let path = dir.join("clamd.sock");
        serve(UnixListener::bind(&path).unwrap());
        Clamd::unix(path)
    }

    fn input(path: &str, data: &[u8]) -> ScanInput {
        ScanInput { path: path.into(), mode: 0o100_644, symlink_target: None, data: data.to_vec() }
    }

    #[test]
    fn ping_version_and_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let clamd = start(dir.path());
        clamd.ping().unwrap();
        assert_eq!(clamd.version().unwrap(), "ClamAV 0.0.0-test");
        assert_eq!(clamd.scan(b"hello").unwrap(), ClamdVerdict::Clean);
        assert_eq!(clamd.scan(b"").unwrap(), ClamdVerdict::Clean);
        // Spans several chunks.
        let mut big = vec![b'a'; 3 * CHUNK + 17];
        big.extend_from_slice(b"INFECTED");
        assert_eq!(clamd.scan(&big).unwrap(), ClamdVerdict::Found("Kiln.Test.Infected".into()));
        let err = clamd.scan(b"BROKEN").unwrap_err();
        assert!(matches!(err, ClamdError::Reply { ref reply, .. } if reply.ends_with("ERROR")), "{err}");
    }

    #[test]
    fn scanner_turns_hits_into_high_findings_and_errors_into_scan_errors() {
        let dir = tempfile::tempdir().unwrap();
        let scanner = Scanner::builtin().with_clamd(start(dir.path()), Duration::from_secs(30));
        let report = scanner
            .scan(
                OutputKind::Server,
                &mut vec![input("ok.txt", b"fine"), input("bad.bin", b"xx INFECTED xx")].into_iter(),
            )
            .unwrap();
        assert_eq!(report.verdict, Verdict::Quarantined);
        assert_eq!(report.findings.len(), 1);
        assert_eq!(report.findings[0].to_string(), "quarantined: bad.bin: clamav (Kiln.Test.Infected)");

        let err =
            scanner.scan(OutputKind::Server, &mut vec![input("odd.bin", b"BROKEN")].into_iter()).unwrap_err();
        match err {
            ScanError::Scanner { scanner, path, message } => {
                assert_eq!((scanner.as_str(), path.as_str()), ("clamd", "odd.bin"));
                assert!(message.contains("ERROR"), "{message}");
            }
            other => panic!("expected a scanner error, got {other}"),
        }
    }

    #[test]
    fn unreachable_daemon_fails_the_scan_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let wait = Duration::from_millis(200);
        let scanner = Scanner::builtin().with_clamd(Clamd::unix(dir.path().join("missing.sock")), wait);
        let err = scanner.scan(OutputKind::Static, &mut vec![input("a", b"x")].into_iter()).unwrap_err();
        match err {
            ScanError::Unavailable { scanner, waited, last_error } => {
                assert_eq!(scanner, "clamd");
                assert!(waited >= wait, "gave up before the wait: {waited:?}");
                assert!(last_error.contains("missing.sock"), "{last_error}");
            }
            other => panic!("expected unavailable, got {other}"),
        }
        // The same over TCP, to a port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let tcp = Clamd::tcp(format!("127.0.0.1:{port}"));
        assert!(matches!(tcp.wait_ready(Duration::from_millis(100)), Err(ScanError::Unavailable { .. })));
    }

    #[test]
    fn a_daemon_that_comes_up_within_the_wait_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.sock");
        let bind_path = path.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            // Bind only after the scanner has failed to connect at least once.
            rx.recv().unwrap();
            serve(UnixListener::bind(&bind_path).unwrap());
        });
        let clamd = Clamd::unix(&path);
        assert!(matches!(clamd.ping(), Err(ClamdError::Connect { .. })));
        tx.send(()).unwrap();
        let scanner = Scanner::builtin().with_clamd(clamd, Duration::from_secs(60));
        let report =
            scanner.scan(OutputKind::Static, &mut vec![input("a.txt", b"clean")].into_iter()).unwrap();
        assert_eq!(report.verdict, Verdict::Clean);
    }

    #[test]
    fn stream_replies() {
        assert_eq!(parse_stream_reply("stream: OK"), Some(ClamdVerdict::Clean));
        assert_eq!(
            parse_stream_reply("stream: Eicar-Signature FOUND"),
            Some(ClamdVerdict::Found("Eicar-Signature".into()))
        );
        assert_eq!(parse_stream_reply("stream:  FOUND"), None);
        assert_eq!(parse_stream_reply("INSTREAM size limit exceeded. ERROR"), None);
        assert_eq!(parse_stream_reply("stream: OK ERROR"), None);
    }
}
