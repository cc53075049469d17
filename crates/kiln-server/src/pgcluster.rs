//! A throwaway PostgreSQL cluster on loopback: `initdb` in a scratch
//! directory, `pg_ctl start` on a free port, removed when dropped. For the
//! control plane's tests (every one of them runs on SQLite and on
//! PostgreSQL) and for `kiln bench-serve --database postgres`.
//!
//! It uses the host's PostgreSQL server binaries (Debian's `postgresql`
//! package, which `scripts/install.sh` installs). `initdb` refuses to run as
//! root, so as root the cluster runs as the `postgres` user the package
//! creates. Connections are trusted from loopback only: the cluster holds
//! nothing but test data and is gone when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::ServerError;

/// A running cluster.
#[derive(Debug)]
pub struct LocalCluster {
    bin: PathBuf,
    data: PathBuf,
    /// The scratch directory (holds `data` and the socket).
    dir: tempfile::TempDir,
    port: u16,
    /// Run the server's commands as this user (root cannot).
    user: Option<String>,
    /// Where it listens besides loopback, and the network it trusts there
    /// (test hosts in network namespaces).
    also: Option<(std::net::Ipv4Addr, String)>,
}

fn setup(msg: impl Into<String>) -> ServerError {
    ServerError::Setup(msg.into())
}

/// The directory of `initdb` and `pg_ctl`: `$KILN_PG_BIN`, Debian's
/// `/usr/lib/postgresql/N/bin` (newest N), or `PATH`.
fn server_bin() -> Result<PathBuf, ServerError> {
    if let Some(dir) = std::env::var_os("KILN_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, p)) = versions.pop() {
        return Ok(p);
    }
    let found =
        Command::new("sh").args(["-c", "command -v initdb"]).output().ok().filter(|o| o.status.success());
    match found {
        Some(o) => Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).with_file_name("")),
        None => Err(setup(
            "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's `postgresql` package \
             (scripts/install.sh does) or set KILN_PG_BIN",
        )),
    }
}

impl LocalCluster {
    /// Creates and starts a cluster; returns once it accepts connections.
    pub fn start() -> Result<LocalCluster, ServerError> {
        LocalCluster::start_with(None)
    }

    /// [`LocalCluster::start`], listening on `addr` too and trusting the
    /// hosts of `network` (a CIDR) there: for tests whose servers run on
    /// hosts of their own (network namespaces on a bridge).
    pub fn start_on(addr: std::net::Ipv4Addr, network: &str) -> Result<LocalCluster, ServerError> {
        LocalCluster::start_with(Some((addr, network.to_string())))
    }

    fn start_with(also: Option<(std::net::Ipv4Addr, String)>) -> Result<LocalCluster, ServerError> {
        let bin = server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("kiln-pg-")
            .tempdir()
            .map_err(|e| setup(format!("scratch dir for PostgreSQL: {e}")))?;
        let user = (kiln_sandbox::effective_uid() == 0).then(|| "postgres".to_string());
        if let Some(u) = &user {
            let ok = Command::new("chown")
                .arg(format!("{u}:"))
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(setup(format!(
                    "cannot give {} to the `{u}` user (Debian's postgresql package creates it)",
                    dir.path().display()
                )));
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| setup(format!("a free port: {e}")))?
            .port();
        let data = dir.path().join("data");
        let cluster = LocalCluster { bin, data, dir, port, user, also };
        cluster.run("initdb", |c| {
            c.args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C", "-D"])
                .arg(&cluster.data);
        })?;
        if let Some((_, network)) = &cluster.also {
            use std::io::Write;
            let hba = cluster.data.join("pg_hba.conf");
            std::fs::OpenOptions::new()
                .append(true)
                .open(&hba)
                .and_then(|mut f| writeln!(f, "host all all {network} trust"))
                .map_err(|e| setup(format!("{}: {e}", hba.display())))?;
        }
        cluster.restart()?;
        Ok(cluster)
    }

    /// Runs one of the server's programs (as the cluster's user).
    fn run(&self, program: &str, args: impl FnOnce(&mut Command)) -> Result<(), ServerError> {
        let path = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        args(&mut cmd);
        let out = cmd
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| setup(format!("{}: {e}", path.display())))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            return Err(setup(format!(
                "{program} failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// A new, empty database in the cluster; returns its URL.
    pub fn database(&self, name: &str) -> Result<String, ServerError> {
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| setup(format!("connecting to the test cluster: {e}")))?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .map_err(|e| setup(format!("CREATE DATABASE {name}: {e}")))?;
        Ok(self.url(name))
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of database `db` as the hosts of [`LocalCluster::start_on`]'s
    /// network reach it.
    pub fn url_on_network(&self, db: &str) -> Option<String> {
        self.also.as_ref().map(|(addr, _)| format!("postgres://postgres@{addr}:{}/{db}", self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast: its clients are cut off), keeping its data.
    pub fn stop(&self) -> Result<(), ServerError> {
        self.run("pg_ctl", |c| {
            c.arg("-D").arg(&self.data).args(["-m", "fast", "-w", "stop"]);
        })
    }

    /// Starts it again after [`LocalCluster::stop`], on the same port.
    pub fn restart(&self) -> Result<(), ServerError> {
        let listen = match &self.also {
            Some((addr, _)) => format!("127.0.0.1,{addr}"),
            None => "127.0.0.1".into(),
        };
        let opts = format!(
            "-c listen_addresses={listen} -p {} -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        self.run("pg_ctl", |c| {
            c.args(["-w", "-t", "60", "-l"])
                .arg(self.dir.path().join("server.log"))
                .arg("-D")
                .arg(&self.data)
                .args(["-o", &opts, "start"]);
        })
    }

    /// Where the cluster lives.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", |c| {
            c.arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]);
        });
    }
}

/// The control database a test runs on: each test that
/// [`on_both_databases!`](crate::on_both_databases) lists runs once on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestDatabase {
    Sqlite,
    Postgres,
}

thread_local! {
    /// Set by the `postgres` variant of a listed test (every test runs on
    /// a thread of its own).
    pub static TEST_DATABASE: std::cell::Cell<TestDatabase> = const { std::cell::Cell::new(TestDatabase::Sqlite) };
}

/// The database the current test runs on.
pub fn test_database() -> TestDatabase {
    TEST_DATABASE.with(|d| d.get())
}

/// Makes each named function (a test body with no arguments) two tests,
/// `NAME::sqlite` and `NAME::postgres`; the body asks [`test_database`]
/// which one it is.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                super::$name()
            }
            #[test]
            fn postgres() {
                $crate::pgcluster::TEST_DATABASE
                    .with(|d| d.set($crate::pgcluster::TestDatabase::Postgres));
                super::$name()
            }
        }
    )*};
}
