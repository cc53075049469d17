//! Build records and logs shared by replicas (`kiln serve` on PostgreSQL).
//!
//! Every engine event of every attempt — log lines, job and step records,
//! artifacts, cache use, audit — is appended to the control database's
//! `attempt_events`: an in-process worker's by its server (in batches, off
//! the engine's path), a remote worker's by the server that receives it,
//! before that server answers the worker (so a worker's batches are stored
//! in the order it sent them, whichever replica each reached).
//!
//! Each server follows the table in commit order (woken by `NOTIFY`, and
//! at least every second) and writes what it did not make itself into its
//! own `state.db` through the engine's store writer. The API keeps reading
//! build records and logs from `state.db`, log streams keep waking on its
//! commits, and any replica answers for any build: a log stream that breaks
//! resumes on another replica with `Last-Event-ID`, the lines numbered
//! alike everywhere (each attempt's `log_base` comes from the shared
//! events).
//!
//! Why follow into `state.db` rather than read the table: the job, step
//! and artifact records are the engine's fold of its events, written by the
//! engine's own writer; reading them from PostgreSQL would need a second
//! fold kept in step with it. The live path of a server's own builds stays
//! a local append plus an in-process push.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_engine::store::{LiveBuild, StoreWriter};
use kiln_engine::Event;

use crate::error::ServerError;
use crate::pg::{EventPosition, PgControl, SharedEvent};

/// The files in a server's state dir that every server of a deployment
/// must share: the secrets key, the provenance signing key pair and the
/// webhook key.
pub const SHARED_KEY_FILES: [&str; 4] =
    ["secrets.key", "provenance-ed25519.key", "provenance-ed25519.pub", "notify.key"];

/// Copies the shared keys from a server's state dir into a new replica's
/// (creating it), as an operator adding a replica does.
pub fn copy_shared_keys(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for f in SHARED_KEY_FILES {
        std::fs::copy(from.join(f), to.join(f))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", from.join(f).display())))?;
    }
    Ok(())
}

/// Rows read per query while catching up.
const BATCH: i64 = 1000;

/// A server's side of the shared events.
pub struct Replication {
    server_id: String,
    writer: PgControl,
    follower: Arc<Follower>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication").field("server_id", &self.server_id).finish()
    }
}

struct Follower {
    server_id: String,
    state_dir: PathBuf,
    db: PgControl,
    /// A connection of its own for waiting: a catch-up asked by another
    /// thread never queues behind a wait.
    listen: PgControl,
    state: Mutex<FollowState>,
    stop: AtomicBool,
    /// Told after every batch that brought another server's events: log
    /// streams of builds that run elsewhere wait on it.
    changed: tokio::sync::watch::Sender<u64>,
}

struct FollowState {
    pos: EventPosition,
    /// Writers of the attempts being followed, by engine build id.
    open: HashMap<String, (StoreWriter, LiveBuild)>,
}

impl Replication {
    /// Connects and starts following from where this state dir stopped.
    pub fn start(
        url: &str,
        server_id: &str,
        state_dir: &Path,
        changed: tokio::sync::watch::Sender<u64>,
    ) -> Result<Replication, ServerError> {
        let follower = Arc::new(Follower {
            server_id: server_id.to_string(),
            state_dir: state_dir.to_path_buf(),
            db: PgControl::connect(url)?,
            listen: PgControl::connect(url)?,
            state: Mutex::new(FollowState { pos: load_position(state_dir), open: HashMap::new() }),
            stop: AtomicBool::new(false),
            changed,
        });
        let thread = std::thread::Builder::new()
            .name("kiln-follow".into())
            .spawn({
                let f = follower.clone();
                move || f.run()
            })
            .map_err(|e| ServerError::Setup(format!("starting the event follower: {e}")))?;
        Ok(Replication {
            server_id: server_id.to_string(),
            writer: PgControl::connect(url)?,
            follower,
            thread: Some(thread),
        })
    }

    /// Refuses to go on unless this server's keys are the ones the servers
    /// before it recorded (the first server records its own): `(file in
    /// the state dir, fingerprint)`.
    pub fn check_keys(&self, keys: &[(&str, String)]) -> Result<(), ServerError> {
        for (file, fp) in keys {
            let recorded = self.writer.deployment_key(file, fp)?;
            if &recorded != fp {
                return Err(ServerError::Key(format!(
                    "this server's {file} is not the one the other servers on this database use: \
                     copy {file} from a running server's state dir into this one's"
                )));
            }
        }
        Ok(())
    }

    /// Shares events of an attempt: `own` when this server has them
    /// already (its in-process worker made them), else every server
    /// (this one included) writes them into its `state.db`. Blocks until
    /// they are committed.
    pub fn publish(
        &self,
        own: bool,
        build: &str,
        attempt: i64,
        engine_id: &str,
        events: &[Event],
    ) -> Result<(), ServerError> {
        let origin = if own { self.server_id.clone() } else { String::new() };
        let mut rows = Vec::with_capacity(events.len());
        for ev in events {
            let seq = match ev {
                Event::Log(l) => Some(l.seq as i64),
                _ => None,
            };
            let event = serde_json::to_string(ev).map_err(|e| ServerError::Setup(e.to_string()))?;
            rows.push(SharedEvent {
                origin: origin.clone(),
                build: build.to_string(),
                attempt,
                engine_id: engine_id.to_string(),
                seq,
                event,
            });
        }
        self.writer.append_events(rows)
    }

    /// Writes every event committed so far into this server's `state.db`
    /// (before the end of a build is recorded, so its usage counts them).
    pub fn catch_up(&self) -> Result<(), ServerError> {
        self.follower.catch_up().map(|_| ())
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        self.follower.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Follower {
    fn run(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            match self.catch_up() {
                Ok(0) => {
                    if let Err(e) = self.listen.wait_for_events(Duration::from_secs(1)) {
                        tracing::warn!("waiting for shared events: {e}");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("following shared events: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        // Writers still open flush what they have.
        let open = std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).open);
        for (_, (w, _live)) in open {
            let _ = w.close();
        }
    }

    /// Applies every event committed so far; returns how many were read.
    fn catch_up(&self) -> Result<usize, ServerError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut read = 0;
        loop {
            let rows = self.db.events_after(&st.pos, BATCH)?;
            let Some((last, _)) = rows.last() else { break };
            let last = last.clone();
            read += rows.len();
            let mut applied = false;
            for (_, ev) in rows {
                if ev.origin != self.server_id {
                    self.apply(&mut st, ev);
                    applied = true;
                }
            }
            st.pos = last;
            save_position(&self.state_dir, &st.pos);
            if applied {
                self.changed.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        Ok(read)
    }

    fn apply(&self, st: &mut FollowState, ev: SharedEvent) {
        let event: Event = match serde_json::from_str(&ev.event) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(build = %ev.build, "a shared event that does not parse: {e}");
                return;
            }
        };
        let event = event.for_build(&ev.engine_id);
        if let Event::BuildStarted { pipeline, jobs, .. } = &event {
            if !st.open.contains_key(&ev.engine_id) {
                let trigger = format!("attempt {} of {}", ev.attempt, ev.build);
                match crate::remote::open_writer(&self.state_dir, &ev.engine_id, pipeline, &trigger, jobs) {
                    Ok(w) => {
                        st.open.insert(ev.engine_id.clone(), w);
                    }
                    Err(e) => tracing::warn!(build = %ev.build, "recording a shared attempt: {e}"),
                }
            }
        }
        let finished = matches!(event, Event::BuildFinished(_));
        if let Some((w, _)) = st.open.get(&ev.engine_id) {
            let _ = w.sender().send(event);
        }
        if finished {
            if let Some((w, _live)) = st.open.remove(&ev.engine_id) {
                if let Err(e) = w.close() {
                    tracing::warn!(build = %ev.build, "state store writer: {e}");
                }
            }
        }
    }
}

/// Where this state dir's follower stopped (`replica.position`: the last
/// row's transaction id and number).
fn load_position(state_dir: &Path) -> EventPosition {
    std::fs::read_to_string(state_dir.join("replica.position"))
        .ok()
        .and_then(|s| {
            let (xid, n) = s.trim().split_once(' ')?;
            let n = n.parse().ok()?;
            let digits = !xid.is_empty() && xid.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| EventPosition { xid: xid.to_string(), n })
        })
        .unwrap_or_default()
}

fn save_position(state_dir: &Path, pos: &EventPosition) {
    let tmp = state_dir.join("replica.position.tmp");
    let write = std::fs::write(&tmp, format!("{} {}\n", pos.xid, pos.n))
        .and_then(|_| std::fs::rename(&tmp, state_dir.join("replica.position")));
    if let Err(e) = write {
        tracing::warn!("saving the follower's position: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_bad_files_start_over() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_position(dir.path()), EventPosition::default());
        let pos = EventPosition { xid: "7400".into(), n: 12 };
        save_position(dir.path(), &pos);
        assert_eq!(load_position(dir.path()), pos);
        std::fs::write(dir.path().join("replica.position"), "7400; DROP 1").unwrap();
        assert_eq!(load_position(dir.path()), EventPosition::default());
    }
}
