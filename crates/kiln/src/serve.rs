//! `kiln serve`, `kiln worker` and `kiln admin`: flags and process glue
//! around `kiln-server`.

use crate::exit::Exit;
use std::net::SocketAddr;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand, ValueEnum};
use kiln_server::db::{ControlDb, Principal};

use crate::cli::{IsolationArg, StateArgs};
use crate::run::isolation;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port; the address
    /// is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8420")]
    pub listen: SocketAddr,
    /// In-process workers (builds at once on this host). 0: remote workers only.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Isolation tier for every job; a job may ask for a stronger one.
    #[arg(long, value_enum, default_value = "gvisor", env = "KILN_ISOLATION")]
    pub isolation: IsolationArg,
    /// A lease not renewed for this long is taken back: a remote worker renews
    /// its lease with heartbeats, a server those of its in-process workers.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub lease_timeout_ms: u64,
    /// Largest request body (413 above).
    #[arg(long, value_name = "BYTES", default_value = "64Mi")]
    pub max_body: String,
    /// Egress bytes (in + out) per build.
    #[arg(long, value_name = "BYTES", default_value = "2Gi")]
    pub egress_cap: String,
    /// Open a private `IP:PORT` to steps that have network.
    #[arg(long = "allow-private", value_name = "IP:PORT")]
    pub allow_private: Vec<SocketAddr>,
    /// Serve HTTPS with this certificate chain (PEM); with --tls-key.
    /// Without them the server speaks plain HTTP: fine on loopback or
    /// behind a TLS-terminating proxy, and remote workers refuse plain
    /// HTTP to any other address.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub state: StateArgs,
}

/// Where the control plane's state is.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// The control database: `postgres://USER:PASSWORD@HOST:PORT/DB`
    /// (migrated on start). Default: `control.db` (SQLite) in the state dir.
    #[arg(long, env = "KILN_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
}

impl DbArgs {
    fn open(&self, state: &StateArgs) -> anyhow::Result<ControlDb> {
        ControlDb::connect(self.database.as_deref(), &state.state_dir).map_err(|e| anyhow!("{e}"))
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The server (`https://host:port`; `http://` on loopback), or several
    /// replicas comma-separated: the worker moves to the next when one
    /// cannot be reached.
    #[arg(long, env = "KILN_SERVER")]
    pub server: String,
    /// A worker token (`kiln admin token create --worker`).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// This worker's name (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Builds at once.
    #[arg(long, default_value_t = 1)]
    pub slots: usize,
    #[arg(long, value_enum, default_value = "gvisor", env = "KILN_ISOLATION")]
    pub isolation: IsolationArg,
    #[arg(long, value_name = "BYTES", default_value = "2Gi")]
    pub egress_cap: String,
    #[arg(long = "allow-private", value_name = "IP:PORT")]
    pub allow_private: Vec<SocketAddr>,
    /// Trust only this certificate (PEM: the server's own, or the CA that
    /// signed it) for an https:// server. Default: Mozilla's roots.
    #[arg(long, value_name = "PEM", env = "KILN_CA")]
    pub ca: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanArg {
    /// 1 build at a time, 10-minute timeout, 256 MiB cache.
    Free,
    /// 4 builds at a time, 3-hour timeout, 10 GiB cache.
    Team,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Tenants (writes the server's control.db directly).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// API tokens (printed once; stored hashed).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant, or change its plan.
    Create {
        /// Lower-case letters, digits and `-`.
        name: String,
        #[arg(long, value_enum, default_value = "free")]
        plan: PlanArg,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (it cannot be shown again).
    Create {
        /// The tenant whose builds the token submits and reads.
        #[arg(long)]
        tenant: Option<String>,
        /// Sees every tenant's audit events and the metrics.
        #[arg(long)]
        operator: bool,
        /// May lease and run builds (`kiln worker`).
        #[arg(long)]
        worker: bool,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List tokens: id, who they speak for, when made (never the token).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token by its id (as `list` shows it, or a longer prefix of
    /// its SHA-256): refused at its next request.
    Revoke {
        id: String,
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        db: DbArgs,
    },
}

fn size(flag: &str, s: &str) -> Result<u64, Exit> {
    kiln_workflow::parse_size(s).map_err(|e| {
        eprintln!("error: {flag}: {e}");
        Exit::Invalid
    })
}

pub fn serve(args: ServeArgs) -> Exit {
    let (max_body, egress_cap) =
        match (size("--max-body", &args.max_body), size("--egress-cap", &args.egress_cap)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(c), _) | (_, Err(c)) => return c,
        };
    let mut cfg = kiln_server::ServerConfig::new(args.state.state_dir.clone());
    cfg.workers = args.workers;
    cfg.isolation = isolation(args.isolation);
    cfg.lease_ttl_ms = args.lease_timeout_ms.max(1);
    cfg.max_body_bytes = usize::try_from(max_body).unwrap_or(usize::MAX);
    cfg.egress_cap = egress_cap;
    cfg.allow_private = args.allow_private.clone();
    cfg.store_url = args.state.store.clone();
    cfg.database = args.db.database.clone();
    let result = (|| -> anyhow::Result<()> {
        // Its threads are marked: a database call on one of them outside the
        // blocking pool is a bug (see kiln_server::blocking).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .on_thread_start(kiln_server::blocking::mark_async_thread)
            .build()?;
        rt.block_on(async {
            let tls = match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(kiln_server::tls::server_config(cert, key).map_err(|e| anyhow!("{e}"))?)
                }
                _ => None,
            };
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("listening on {}", args.listen))?;
            let addr = listener.local_addr()?;
            if tls.is_none() && !addr.ip().is_loopback() {
                eprintln!(
                    "kiln serve: warning: plain HTTP on {addr}: tokens and secrets cross the network in the clear \
                     unless a TLS proxy is in front (--tls-cert/--tls-key serve HTTPS)"
                );
            }
            // Announced once the server can answer: its databases open, its
            // keys made (a script may copy them to a replica then).
            let scheme = if tls.is_some() { "https" } else { "http" };
            let ready = move || {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "kiln serve: listening on {scheme}://{addr}");
                let _ = out.flush();
                eprintln!("kiln serve: web UI at {scheme}://{addr}/ui/ (sign in with a tenant token)");
            };
            match tls {
                Some(config) => {
                    let listener = kiln_server::tls::TlsListener::new(listener, config)?;
                    kiln_server::serve(cfg, listener, shutdown_signal(), ready).await
                }
                None => kiln_server::serve(cfg, listener, shutdown_signal(), ready).await,
            }
            .map_err(|e| anyhow!("{e}"))
        })?;
        rt.shutdown_timeout(std::time::Duration::from_secs(5));
        Ok(())
    })();
    crate::run::exit_status(result)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
    let Ok(mut int) = signal(SignalKind::interrupt()) else { return std::future::pending().await };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub fn worker(args: WorkerArgs) -> Exit {
    let egress_cap = match size("--egress-cap", &args.egress_cap) {
        Ok(n) => n,
        Err(c) => return c,
    };
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    for url in args.server.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        if let Err(e) = kiln_server::tls::check_server_url(url) {
            eprintln!("error: {e}");
            return Exit::Invalid;
        }
    }
    let cfg = kiln_server::remote::WorkerConfig {
        ca: args.ca.clone(),
        server: args.server.clone(),
        token: args.token.clone(),
        name,
        state_dir: args.state.state_dir.clone(),
        isolation: isolation(args.isolation),
        slots: args.slots.max(1),
        egress_cap,
        allow_private: args.allow_private.clone(),
    };
    let result = (|| -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(async {
            tokio::select! {
                r = kiln_server::remote::run_worker(cfg) => r.map_err(|e| anyhow!("{e}")),
                _ = shutdown_signal() => Ok(()),
            }
        })?;
        rt.shutdown_timeout(std::time::Duration::from_secs(5));
        Ok(())
    })();
    crate::run::exit_status(result)
}

fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        // `local` is the store namespace of `kiln run` on the same state dir.
        && name != crate::run::LOCAL_TENANT
}

pub fn admin(cmd: AdminCommand) -> Exit {
    let result = (|| -> anyhow::Result<Exit> {
        match cmd {
            AdminCommand::Tenant(TenantCommand::Create { name, plan, state, db }) => {
                if !valid_tenant(&name) {
                    eprintln!(
                        "error: tenant names are 1-63 lower-case letters, digits and `-` (and not `local`)"
                    );
                    return Ok(Exit::Invalid);
                }
                let plan = match plan {
                    PlanArg::Free => "free",
                    PlanArg::Team => "team",
                };
                let db = db.open(&state)?;
                let created = db.upsert_tenant(&name, plan).map_err(|e| anyhow!("{e}"))?;
                let what = if created { "created" } else { "plan set" };
                db.audit(Some(&name), None, "admin", "kiln admin", &format!("tenant {name} {what}: {plan}"))
                    .map_err(|e| anyhow!("{e}"))?;
                println!("tenant {name} {what} (plan {plan})");
            }
            AdminCommand::Tenant(TenantCommand::List { state, db }) => {
                let db = db.open(&state)?;
                for (name, plan) in db.tenants().map_err(|e| anyhow!("{e}"))? {
                    println!("{name}\t{plan}");
                }
            }
            AdminCommand::Token(TokenCommand::Create { tenant, operator, worker, state, db }) => {
                let db = db.open(&state)?;
                if let Some(t) = &tenant {
                    if db.tenant_plan(t).map_err(|e| anyhow!("{e}"))?.is_none() {
                        eprintln!("error: no tenant `{t}` (kiln admin tenant create {t})");
                        return Ok(Exit::Invalid);
                    }
                } else if !operator && !worker {
                    eprintln!("error: a token needs --tenant, --operator or --worker");
                    return Ok(Exit::Invalid);
                }
                let p = Principal { tenant: tenant.clone(), operator, worker };
                let token = kiln_server::Core::admin_token(&db, &p).map_err(|e| anyhow!("{e}"))?;
                let kind = [(operator, "operator"), (worker, "worker")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, k)| *k)
                    .collect::<Vec<_>>()
                    .join("+");
                db.audit(
                    tenant.as_deref(),
                    None,
                    "admin",
                    "kiln admin",
                    &format!(
                        "token created (tenant {}, {})",
                        tenant.as_deref().unwrap_or("-"),
                        if kind.is_empty() { "tenant" } else { &kind }
                    ),
                )
                .map_err(|e| anyhow!("{e}"))?;
                println!("{token}");
                let id = &kiln_server::auth::hash_token(&token)[..kiln_server::db::TOKEN_ID_LEN];
                eprintln!("token id {id} (kiln admin token revoke {id})");
            }
            AdminCommand::Token(TokenCommand::List { json, state, db }) => {
                let db = db.open(&state)?;
                for t in db.tokens().map_err(|e| anyhow!("{e}"))? {
                    if json {
                        println!("{}", serde_json::to_string(&t)?);
                        continue;
                    }
                    let p = &t.principal;
                    let kind: Vec<&str> =
                        [(p.operator, "operator"), (p.worker, "worker"), (p.tenant.is_some(), "tenant")]
                            .iter()
                            .filter(|(on, _)| *on)
                            .map(|(_, k)| *k)
                            .collect();
                    println!(
                        "{}\t{}\t{}\t{}",
                        t.id,
                        p.tenant.as_deref().unwrap_or("-"),
                        kind.join("+"),
                        t.created_at
                    );
                }
            }
            AdminCommand::Token(TokenCommand::Revoke { id, state, db }) => {
                let id = id.trim().to_ascii_lowercase();
                if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    eprintln!(
                        "error: a token id is at least 8 hex digits (kiln admin token list shows them)"
                    );
                    return Ok(Exit::Invalid);
                }
                let db = db.open(&state)?;
                let matching = db.tokens().map_err(|e| anyhow!("{e}"))?;
                let n = matching.iter().filter(|t| t.id.starts_with(&id) || id.starts_with(&t.id)).count();
                if n > 1 {
                    eprintln!("error: {n} tokens have ids starting {id}: give more of it");
                    return Ok(Exit::Invalid);
                }
                if db.revoke_tokens(&id).map_err(|e| anyhow!("{e}"))? == 0 {
                    eprintln!("error: no token {id}");
                    return Ok(Exit::Invalid);
                }
                db.audit(None, None, "admin", "kiln admin", &format!("token {id} revoked"))
                    .map_err(|e| anyhow!("{e}"))?;
                println!("token {id} revoked");
            }
        }
        Ok(Exit::Ok)
    })();
    match result {
        Ok(c) => c,
        Err(e) => crate::run::report_error(&e),
    }
}
