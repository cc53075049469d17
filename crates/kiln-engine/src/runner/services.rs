//! A job's `services:`: each a sandbox on its own image, started before the
//! job's first step and ended with the job.
//!
//! Sandboxes have no network between them (every gVisor sandbox has a
//! netstack of its own), so kiln carries the connections itself, through
//! Unix sockets it owns on the host:
//!
//! ```text
//!  job sandbox                 host (kiln)                  service sandbox
//!  step -> 127.0.0.2:5432      front socket s0-5432.sock    init's dialers wait on
//!       kiln-init listens ---> accept, take a waiting  <--- dial.sock; the one
//!       and relays to the      dialer, write 5432, copy     taken connects to
//!       front socket           both ways                    127.0.0.1:5432
//! ```
//!
//! The job's sandboxes resolve a service by its name (`/etc/hosts` maps it
//! to its own loopback address) and reach a mapped port on `localhost`. A
//! service reaches nothing: it has no egress, and its only way out is the
//! connection kiln hands it, to a port its `ports:` declared.
//!
//! A service runs as the step user, on a writable root of its own (an
//! overlay over its image on a quota-limited disk), with the job's memory,
//! pids and CPU limits, and no secrets: its environment is the image's and
//! its `env:` (which may not read `secrets`).

use crate::runner::env::*;
use crate::runner::host::AgentSandbox;
use crate::runner::job::{sanitize_id, JobRun, StepError};
use crate::runner::phase::StepLogger;
use crate::runner::script::{listen_for_sandbox, SocketDir, SOCKET_ROOT};
use kiln_sandbox::agent::RunRequest;
use kiln_sandbox::init::Forward;
use kiln_sandbox::{Bind, SandboxSpec, Workspace};
use kiln_workflow::{PlannedJob, ServiceSpec, StatusFns};
use serde_json::{json, Map, Value};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Mutex, Notify};

/// What the service sandbox's own process does: nothing (its init serves
/// the agent, which starts the service's command and its health checks).
const HOLD_ARGV: [&str; 2] = ["sleep", "infinity"];
/// Host ports given to a service port that `ports:` does not map (GitHub
/// gives a random one; the job reads it from `job.services.<id>.ports`).
const FIRST_FREE_PORT: u16 = 49152;
/// How long the job waits for a service without a health check to listen
/// on its ports before going on anyway.
const LISTEN_WAIT: Duration = Duration::from_secs(30);
/// How long a client waits for a connection into a service.
const DIAL_WAIT: Duration = Duration::from_secs(10);
/// Connections into one service at once: each holds descriptors in kiln's
/// own process, so a step opening connections in a loop is cut off here,
/// not at the host's file limit.
const MAX_CONNECTIONS: usize = 256;

/// The job's services while it runs.
#[derive(Debug, Default)]
pub(crate) struct Services {
    boxes: Vec<ServiceBox>,
    /// The sockets the job's sandboxes connect to (one per service port),
    /// mounted at `/kiln/services`.
    front: Option<SocketDir>,
    forwards: Vec<Forward>,
    /// `/etc/hosts` of the job's sandboxes: the services' names.
    hosts: Option<PathBuf>,
    /// `job.services`.
    pub(crate) context: Map<String, Value>,
}

#[derive(Debug)]
struct ServiceBox {
    id: String,
    /// The service's sandbox, its PID 1 serving the step agent.
    sandbox: Option<Arc<dyn AgentSandbox>>,
    workspace: Option<Workspace>,
    dir: PathBuf,
    agent_dir: SocketDir,
    dial_dir: SocketDir,
    /// Host relays: the dial listener and one front listener per port.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The service's own command has ended.
    exited: Arc<AtomicBool>,
}

impl Services {
    /// Binds for every sandbox of the job (the hosts file), and what its
    /// init forwards.
    pub(crate) fn reach(&self) -> (Vec<Bind>, Option<(PathBuf, Vec<Forward>)>) {
        let (Some(front), Some(hosts)) = (&self.front, &self.hosts) else { return (Vec::new(), None) };
        let binds = vec![Bind { source: hosts.clone(), destination: "/etc/hosts".into(), writable: false }];
        (binds, Some((front.0.clone(), self.forwards.clone())))
    }
}

/// A service port's addresses in the job's sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// `(service index, service port, host port on localhost)`.
    pub(crate) ports: Vec<(usize, u16, u16)>,
}

/// Gives every service port its `localhost` port: the mapped one, else the
/// first free one from [`FIRST_FREE_PORT`]. Two services mapping the same
/// host port, or kiln's egress port, is an error naming both.
pub(crate) fn place_ports(services: &[&ServiceSpec]) -> Result<Placement, String> {
    let mut taken: Vec<(u16, String)> = vec![(super::sandbox::EGRESS_PORT, "kiln's egress relay".into())];
    let mut ports = Vec::new();
    for (i, s) in services.iter().enumerate() {
        for p in s.ports.iter().filter(|p| p.host.is_some()) {
            let host = p.host.unwrap_or(p.container);
            if let Some((_, who)) = taken.iter().find(|(t, _)| *t == host) {
                return Err(format!("service `{}`: localhost port {host} is already {who}'s", s.id));
            }
            taken.push((host, format!("service `{}`", s.id)));
            ports.push((i, p.container, host));
        }
    }
    let mut next = FIRST_FREE_PORT;
    for (i, s) in services.iter().enumerate() {
        for p in s.ports.iter().filter(|p| p.host.is_none()) {
            if ports.iter().any(|&(j, c, _)| j == i && c == p.container) {
                continue;
            }
            while taken.iter().any(|(t, _)| *t == next) {
                next += 1;
            }
            taken.push((next, format!("service `{}`", s.id)));
            ports.push((i, p.container, next));
            next += 1;
        }
    }
    Ok(Placement { ports })
}

/// The address service `i` has in the job's sandboxes (its name resolves to it).
fn service_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 2 + (i % 250) as u8)
}

impl JobRun<'_> {
    /// Binds and forwards that let a sandbox of this job reach its services.
    pub(crate) fn service_reach(&self) -> (Vec<Bind>, Option<(PathBuf, Vec<Forward>)>) {
        self.services.reach()
    }

    /// Starts the job's services and waits until each is ready (its health
    /// check passes, or it listens on its ports).
    /// A service that cannot start or never gets ready is the job's failure
    /// (the user's); kiln's own trouble starting it is infrastructure's.
    pub(crate) async fn start_services(&mut self, job: &PlannedJob) -> Result<(), StepError> {
        let ctx = self.contexts();
        let status = StatusFns::new(true, false, false);
        let mut wanted: Vec<(&ServiceSpec, String)> = Vec::new();
        for s in &job.spec.services {
            let image = s
                .image
                .render(&ctx, status)
                .map_err(|e| StepError::User(format!("service {}: image: {e}", s.id)))?;
            let image = image.trim().to_string();
            if image.is_empty() {
                self.sys("", format!("service {}: its image is empty, so it is not started", s.id));
                continue;
            }
            wanted.push((s, image));
        }
        if wanted.is_empty() {
            return Ok(());
        }
        // The images first: a port an image exposes is reachable by the
        // service's name (and on a free localhost port) without `ports:`.
        let (store, _) = self
            .runner
            .cfg
            .image_store
            .clone()
            .ok_or(StepError::User("there is no image store here for the services' images".into()))?;
        let mut images = Vec::new();
        let mut owned: Vec<ServiceSpec> = Vec::new();
        for (svc, name) in &wanted {
            let image = kiln_image::resolve(&store, name)
                .await
                .map_err(|e| StepError::User(format!("service {}: {e}", svc.id)))?;
            let mut spec = (*svc).clone();
            for &port in image.manifest.source.exposed_ports() {
                if !spec.ports.iter().any(|p| p.container == port) {
                    spec.ports.push(kiln_workflow::ServicePort { container: port, host: None });
                }
            }
            owned.push(spec);
            images.push(image);
        }
        let specs: Vec<&ServiceSpec> = owned.iter().collect();
        let placement = place_ports(&specs).map_err(StepError::User)?;
        // Where the job's sandboxes connect: one socket per service port.
        let n = self.runner.next_id.fetch_add(1, Ordering::Relaxed);
        let front = SocketDir(Path::new(SOCKET_ROOT).join(format!(
            "{}-{}-f{n}",
            sanitize_id(&self.req.build),
            self.req.job
        )));
        std::fs::create_dir_all(&front.0)
            .map_err(|e| StepError::Infrastructure(format!("creating {}: {e}", front.0.display())))?;
        let mut hosts = String::from("127.0.0.1\tlocalhost kiln\n::1\tlocalhost ip6-localhost\n");
        for (i, s) in specs.iter().enumerate() {
            hosts.push_str(&format!("{}\t{}\n", service_addr(i), s.id));
        }
        let hosts_path = self.dir.join("hosts");
        std::fs::write(&hosts_path, hosts)
            .map_err(|e| StepError::Infrastructure(format!("writing the services' hosts file: {e}")))?;
        self.services.front = Some(front);
        self.services.hosts = Some(hosts_path);
        for (i, (svc, image)) in owned.iter().zip(images).enumerate() {
            let ports: Vec<(u16, u16)> =
                placement.ports.iter().filter(|(j, ..)| *j == i).map(|&(_, c, h)| (c, h)).collect();
            let t0 = Instant::now();
            self.sys("", format!("service {}: starting on image {}@{}", svc.id, wanted[i].1, image.digest));
            let sbox = self.start_service(job, i, svc, image, &ports).await.map_err(|e| match e {
                StepError::User(e) => StepError::User(format!("service {}: {e}", svc.id)),
                StepError::Infrastructure(e) => StepError::Infrastructure(format!("service {}: {e}", svc.id)),
            })?;
            self.services.boxes.push(sbox);
            let mut port_ctx = Map::new();
            for (c, h) in &ports {
                port_ctx.insert(c.to_string(), Value::String(h.to_string()));
                let socket = format!("s{i}-{c}.sock");
                for listen in
                    [SocketAddrV4::new(service_addr(i), *c), SocketAddrV4::new(Ipv4Addr::LOCALHOST, *h)]
                {
                    self.services.forwards.push(Forward { listen, socket: socket.clone() });
                }
            }
            self.services.context.insert(
                svc.id.clone(),
                json!({ "id": format!("kiln-svc-{}-{}-{i}", sanitize_id(&self.req.build), self.req.job), "network": "", "ports": port_ctx }),
            );
            self.await_ready(svc, i, &ports)
                .await
                .map_err(|e| StepError::User(format!("service {}: {e}", svc.id)))?;
            self.sys("", format!("service {}: ready in {:.1} s", svc.id, t0.elapsed().as_secs_f64()));
        }
        Ok(())
    }

    async fn start_service(
        &mut self,
        job: &PlannedJob,
        i: usize,
        svc: &ServiceSpec,
        image: kiln_image::Image,
        ports: &[(u16, u16)],
    ) -> Result<ServiceBox, StepError> {
        use StepError::{Infrastructure as Infra, User};
        // Rendered first: the contexts are not held across an await.
        let (entrypoint_set, command_set, env_set) = {
            let ctx = self.contexts();
            let status = StatusFns::new(true, false, false);
            let render = |t: &kiln_workflow::Template, what: &str| -> Result<String, String> {
                if t.source().contains("secrets.") {
                    return Err(format!("{what} may not read `secrets`: a service gets no secrets"));
                }
                t.render(&ctx, status).map_err(|e| format!("{what}: {e}"))
            };
            let entrypoint =
                svc.entrypoint.as_ref().map(|t| render(t, "entrypoint")).transpose().map_err(User)?;
            let command = svc.command.as_ref().map(|t| render(t, "command")).transpose().map_err(User)?;
            let mut env = Vec::new();
            for (k, t) in &svc.env {
                env.push((k.clone(), render(t, &format!("env `{k}`")).map_err(User)?));
            }
            (entrypoint, command, env)
        };
        let (store, images_dir) = self
            .runner
            .cfg
            .image_store
            .clone()
            .ok_or(User("there is no image store here for its image".into()))?;
        let image_dir =
            kiln_image::materialize(&store, &image, &images_dir).await.map_err(|e| Infra(e.to_string()))?;
        // Its command: `entrypoint:`/`command:` over the image's.
        let (mut entrypoint, mut cmd) = image.manifest.source.command();
        if let Some(e) = entrypoint_set {
            entrypoint = vec![e];
            // docker: a new entrypoint drops the image's command.
            cmd.clear();
        }
        if let Some(text) = command_set {
            cmd = shlex::split(&text).ok_or_else(|| User(format!("command `{text}`: unbalanced quotes")))?;
        }
        let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        if argv.is_empty() {
            return Err(User(format!(
                "image {} names no command to run: give the service a `command:` (or `entrypoint:`)",
                image.name
            )));
        }
        let mut env: Vec<(String, String)> = Vec::new();
        for pair in image.manifest.source.env() {
            if let Some((k, v)) = pair.split_once('=') {
                env.push((k.to_string(), v.to_string()));
            }
        }
        for (k, v) in env_set {
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), "/tmp".into()));
        }
        let cwd = image.manifest.source.working_dir().unwrap_or("/").to_string();

        // Its own disk and writable root over its image.
        let dir = self.dir.join(format!("service-{i}"));
        let (disk_dir, disk_bytes) = (dir.join("disk"), self.limits.disk_bytes);
        let ws = tokio::task::spawn_blocking(move || -> Result<Workspace, String> {
            let ws =
                Workspace::create(&disk_dir, disk_bytes, STEP_UID, STEP_GID).map_err(|e| e.to_string())?;
            if let Err(e) = ws.mount_root(&image_dir, STEP_UID, STEP_GID, "/tmp") {
                let _ = ws.destroy();
                return Err(e.to_string());
            }
            Ok(ws)
        })
        .await
        .map_err(|e| Infra(e.to_string()))?
        .map_err(Infra)?;
        let tag = format!("{}-{}", sanitize_id(&self.req.build), self.req.job);
        let n = self.runner.next_id.fetch_add(1, Ordering::Relaxed);
        let agent_dir = SocketDir(Path::new(SOCKET_ROOT).join(format!("{tag}-a{n}")));
        let dial_dir = SocketDir(Path::new(SOCKET_ROOT).join(format!("{tag}-d{n}")));
        let mut sbox = ServiceBox {
            id: svc.id.clone(),
            sandbox: None,
            workspace: Some(ws),
            dir: dir.clone(),
            agent_dir,
            dial_dir,
            tasks: Vec::new(),
            exited: Arc::new(AtomicBool::new(false)),
        };
        let started = self.boot_service(job, i, &mut sbox, argv, env, cwd, ports).await;
        if let Err(e) = started {
            stop_box(sbox).await;
            return Err(Infra(e));
        }
        Ok(sbox)
    }

    #[allow(clippy::too_many_arguments)]
    async fn boot_service(
        &mut self,
        job: &PlannedJob,
        i: usize,
        sbox: &mut ServiceBox,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: String,
        ports: &[(u16, u16)],
    ) -> Result<(), String> {
        // The dialers' socket: kiln listens, the service's init keeps
        // connections waiting on it.
        let dial = listen_for_sandbox(&sbox.dial_dir.0, kiln_sandbox::init::DIAL_SOCKET)
            .map_err(|e| format!("listening for its dialers: {e}"))?;
        let (idle_tx, idle_rx) = mpsc::channel::<UnixStream>(64);
        sbox.tasks.push(tokio::spawn(async move {
            while let Ok((conn, _)) = dial.accept().await {
                if idle_tx.send(conn).await.is_err() {
                    return;
                }
            }
        }));
        let idle = Arc::new(Mutex::new(idle_rx));
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let front = self.services.front.as_ref().ok_or("no socket directory")?.0.clone();
        for &(container, _) in ports {
            let listener = listen_for_sandbox(&front, &format!("s{i}-{container}.sock"))
                .map_err(|e| format!("listening for port {container}: {e}"))?;
            let (idle, open) = (idle.clone(), open.clone());
            sbox.tasks.push(tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    // Over the limit: closed at once.
                    let Ok(permit) = open.clone().try_acquire_owned() else { continue };
                    let idle = idle.clone();
                    tokio::spawn(async move {
                        carry(client, idle, container).await;
                        drop(permit);
                    });
                }
            }));
        }
        let ws = sbox.workspace.as_ref().ok_or("no disk")?;
        let spec = SandboxSpec {
            id: format!("kiln-svc-{}-{}-{i}", sanitize_id(&self.req.build), self.req.job),
            argv: HOLD_ARGV.iter().map(|s| s.to_string()).collect(),
            env: vec![("HOME".into(), "/tmp".into())],
            cwd: "/".into(),
            workspace: ws.path(),
            binds: Vec::new(),
            limits: self.limits.sandbox_limits(),
            uid: STEP_UID,
            gid: STEP_GID,
            root: ws.root(),
            init: Some(kiln_sandbox::InitSpec {
                binary: self.runner.cfg.init.clone(),
                secrets: false,
                egress: None,
                agent: Some(sbox.agent_dir.0.clone()),
                forwards: None,
                dial: Some(sbox.dial_dir.0.clone()),
            }),
        };
        let runtime = self.runtime()?;
        std::fs::create_dir_all(dir_bundle(&sbox.dir)).map_err(|e| e.to_string())?;
        let agent = self
            .runner
            .host
            .boot(runtime, spec, dir_bundle(&sbox.dir), &sbox.agent_dir)
            .await
            .map_err(|e| format!("starting its sandbox: {e}"))?;
        sbox.sandbox = Some(agent.clone());
        // The service's command, logged as the job's `service ID` lines.
        let logger = self.service_logger(job, &sbox.id);
        let seq = self.runner.next_id.fetch_add(1, Ordering::Relaxed) as u32;
        let (exit, _pumps) = agent.start(seq, &RunRequest { argv, env, cwd }, Some(&logger)).await?;
        let exited = sbox.exited.clone();
        tokio::spawn(async move {
            let said = match exit.await {
                Ok(Ok(code)) => format!("exited with status {code}"),
                Ok(Err(e)) => format!("could not start: {e}"),
                // The sandbox ended (the job is done with it).
                Err(_) => return,
            };
            exited.store(true, Ordering::Relaxed);
            logger.line(crate::log::Stream::System, format!("the service's command {said}"));
        });
        Ok(())
    }

    /// Waits for a service: its health check when it has one (docker's
    /// rule: healthy on the first pass; unhealthy after `retries` failures
    /// past the start period, polled faster than `interval` so a job does
    /// not wait longer than the service needs), else until it accepts
    /// connections on its ports.
    async fn await_ready(&self, svc: &ServiceSpec, i: usize, ports: &[(u16, u16)]) -> Result<(), String> {
        let sbox = &self.services.boxes[i];
        let agent = sbox.sandbox.clone().ok_or("no agent")?;
        let exited = sbox.exited.clone();
        let check = |argv: Vec<String>, timeout: Duration| {
            let agent = agent.clone();
            let seq = self.runner.next_id.fetch_add(1, Ordering::Relaxed) as u32;
            async move {
                let request = RunRequest {
                    argv,
                    env: vec![("PATH".into(), DEFAULT_PATH.into()), ("HOME".into(), "/tmp".into())],
                    cwd: "/".into(),
                };
                let Ok((exit, _)) = agent.start(seq, &request, None).await else { return false };
                matches!(tokio::time::timeout(timeout, exit).await, Ok(Ok(Ok(0))))
            }
        };
        let t0 = Instant::now();
        let mut cancel = self.req.cancel.clone();
        match &svc.health {
            Some(h) => {
                let budget = h.start_period + (h.interval + h.timeout) * h.retries.max(1);
                let every = h.interval.min(Duration::from_millis(500));
                loop {
                    let argv = vec!["/bin/sh".to_string(), "-c".into(), h.command.clone()];
                    if check(argv, h.timeout).await {
                        return Ok(());
                    }
                    if exited.load(Ordering::Relaxed) {
                        return Err(
                            "its command ended before its health check passed (its output is above)".into()
                        );
                    }
                    if t0.elapsed() > budget {
                        return Err(format!(
                            "unhealthy: `{}` did not pass within {:.0} s (start period, then {} retries of interval + timeout)",
                            h.command,
                            budget.as_secs_f64(),
                            h.retries
                        ));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = crate::runner::phase::wait_cancel(&mut cancel) => return Err("cancelled".into()),
                    }
                }
            }
            None => {
                let init = kiln_sandbox::init::INIT_PATH.to_string();
                for &(container, _) in ports {
                    loop {
                        let argv = vec![init.clone(), "--probe".into(), container.to_string()];
                        if check(argv, Duration::from_secs(2)).await {
                            break;
                        }
                        if exited.load(Ordering::Relaxed) {
                            return Err(format!("its command ended before it listened on port {container}"));
                        }
                        if t0.elapsed() > LISTEN_WAIT {
                            self.sys(
                                "",
                                format!(
                                    "service {}: nothing listens on port {container} after {} s; the job goes on (give it a `--health-cmd` to wait for it)",
                                    svc.id,
                                    LISTEN_WAIT.as_secs()
                                ),
                            );
                            return Ok(());
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = crate::runner::phase::wait_cancel(&mut cancel) => return Err("cancelled".into()),
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn service_logger(&self, job: &PlannedJob, id: &str) -> StepLogger {
        StepLogger {
            emitter: self.req.emitter.clone(),
            job: job.id.clone(),
            step: format!("service {id}"),
            bytes: Arc::new(AtomicU64::new(0)),
            limit: self.limits.log_bytes,
            over: Arc::new(Notify::new()),
            tripped: Arc::new(AtomicBool::new(false)),
            phase: String::new(),
            scrubber: self.runner.cfg.scrubber.clone(),
        }
    }

    /// Ends every service: its processes, its disk, its relays.
    pub(crate) async fn stop_services(&mut self) {
        for sbox in std::mem::take(&mut self.services.boxes) {
            stop_box(sbox).await;
        }
        self.services.forwards.clear();
        self.services.front = None;
        if let Some(h) = self.services.hosts.take() {
            let _ = std::fs::remove_file(h);
        }
    }
}

fn dir_bundle(dir: &Path) -> PathBuf {
    dir.join("bundle")
}

async fn stop_box(mut sbox: ServiceBox) {
    for t in sbox.tasks.drain(..) {
        t.abort();
    }
    if let Some(sb) = sbox.sandbox.take() {
        sb.end().await;
    }
    if let Some(ws) = sbox.workspace.take() {
        let _ = tokio::task::spawn_blocking(move || ws.destroy()).await;
    }
    let _ = std::fs::remove_dir_all(&sbox.dir);
}

/// A client's connection to a service port: a waiting dialer of the
/// service is told the port, then bytes are copied both ways.
async fn carry(mut client: UnixStream, idle: Arc<Mutex<mpsc::Receiver<UnixStream>>>, port: u16) {
    use tokio::io::AsyncWriteExt;
    let deadline = tokio::time::Instant::now() + DIAL_WAIT;
    loop {
        let next = {
            let mut rx = idle.lock().await;
            tokio::time::timeout_at(deadline, rx.recv()).await
        };
        let Ok(Some(mut dialer)) = next else { return };
        // A dialer whose sandbox is gone fails here: take the next one.
        if dialer.write_all(&port.to_be_bytes()).await.is_err() {
            continue;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut dialer).await;
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_workflow::{ServicePort, Template};

    fn svc(id: &str, ports: &[(u16, Option<u16>)]) -> ServiceSpec {
        ServiceSpec {
            id: id.into(),
            location: Default::default(),
            image: Template::literal("x"),
            env: Vec::new(),
            ports: ports.iter().map(|&(container, host)| ServicePort { container, host }).collect(),
            entrypoint: None,
            command: None,
            health: None,
        }
    }

    #[test]
    fn mapped_ports_keep_their_number_and_the_rest_get_free_ones() {
        let (a, b) = (svc("db", &[(5432, Some(5432))]), svc("cache", &[(6379, None), (5432, None)]));
        let p = place_ports(&[&a, &b]).unwrap();
        assert_eq!(p.ports, vec![(0, 5432, 5432), (1, 6379, 49152), (1, 5432, 49153)]);
    }

    #[test]
    fn a_localhost_port_mapped_twice_is_an_error_naming_both() {
        let (a, b) = (svc("db", &[(5432, Some(5432))]), svc("db2", &[(5432, Some(5432))]));
        let e = place_ports(&[&a, &b]).unwrap_err();
        assert!(e.contains("service `db2`") && e.contains("service `db`'s"), "{e}");
        let e = place_ports(&[&svc("p", &[(80, Some(3128))])]).unwrap_err();
        assert!(e.contains("egress"), "{e}");
    }

    #[test]
    fn every_service_has_its_own_loopback_address() {
        let addrs: std::collections::HashSet<_> = (0..600).map(service_addr).collect();
        assert_eq!(addrs.len(), 600);
        assert!(!addrs.contains(&Ipv4Addr::LOCALHOST));
    }
}
