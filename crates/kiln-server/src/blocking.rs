//! Database work off the async threads.
//!
//! Every statement on the control database and on `state.db` is
//! synchronous: rusqlite on SQLite, and on PostgreSQL a call that waits for
//! its connection's thread (see [`crate::pg`]). Such a call may wait on a
//! lock, a disk, a network round trip or a database that is restarting. On
//! one of tokio's async worker threads that wait would stall every task
//! scheduled there (other requests, live logs, heartbeats, the reaper), so
//! the control plane's database work runs on tokio's blocking pool through
//! [`run`] (or [`crate::core::Core::blocking`]).
//!
//! The rule is checked rather than hoped for: the server's runtime marks
//! its threads ([`mark_async_thread`]), and taking a database handle on a
//! marked thread outside [`run`] is reported by [`check`]: a panic in debug
//! builds (so the integration tests that reach a forgetful handler fail), a
//! logged error once in release builds.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::ServerError;

thread_local! {
    /// This thread belongs to the server's runtime (async workers and the
    /// blocking pool alike: tokio starts both through the same hook).
    static RUNTIME_THREAD: Cell<bool> = const { Cell::new(false) };
    /// This thread is running a closure handed to [`run`].
    static IN_BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one of the server's runtime's threads; for
/// `tokio::runtime::Builder::on_thread_start`.
pub fn mark_async_thread() {
    RUNTIME_THREAD.with(|c| c.set(true));
}

/// Marks the calling thread while the returned guard lives: for tests
/// that drive the handlers on a runtime of their own.
pub fn marked() -> Marked {
    Marked(RUNTIME_THREAD.with(|c| c.replace(true)))
}

/// See [`marked`].
#[derive(Debug)]
#[must_use = "the thread is marked only while the guard lives"]
pub struct Marked(bool);

impl Drop for Marked {
    fn drop(&mut self) {
        RUNTIME_THREAD.with(|c| c.set(self.0));
    }
}

/// Whether a database handle may be taken on this thread: not a thread of
/// the server's runtime, or one running a closure of [`run`].
pub fn allowed_here() -> bool {
    !RUNTIME_THREAD.with(Cell::get) || IN_BLOCKING.with(Cell::get)
}

/// Reports `what` (a database handle) taken on an async thread.
pub(crate) fn check(what: &str) {
    if allowed_here() {
        return;
    }
    if cfg!(debug_assertions) {
        panic!("{what} taken on an async worker thread: run the call through Core::blocking");
    }
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if !REPORTED.swap(true, Ordering::Relaxed) {
        tracing::error!("{what} taken on an async worker thread (reported once)");
    }
}

/// Sets [`IN_BLOCKING`] for as long as it lives (also when `f` panics).
struct Scope(bool);

impl Scope {
    fn enter() -> Scope {
        Scope(IN_BLOCKING.with(|c| c.replace(true)))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        IN_BLOCKING.with(|c| c.set(self.0));
    }
}

/// Runs `f` on tokio's blocking pool and waits for it without holding an
/// async thread. A panic in `f` becomes an error (the request it served
/// answers 500; the server goes on).
pub async fn run<T, E, F>(f: F) -> Result<T, E>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<ServerError> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || {
        let _scope = Scope::enter();
        f()
    })
    .await
    {
        Ok(r) => r,
        Err(e) => Err(ServerError::Setup(format!("a database task failed: {e}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_thread_may_take_a_handle_only_inside_run() {
        std::thread::spawn(|| {
            assert!(allowed_here(), "an unmarked thread is not the server's");
            mark_async_thread();
            assert!(!allowed_here());
            {
                let _s = Scope::enter();
                assert!(allowed_here());
            }
            assert!(!allowed_here(), "the scope ends with its closure");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn run_answers_from_the_blocking_pool_and_turns_a_panic_into_an_error() {
        let rt =
            tokio::runtime::Builder::new_current_thread().on_thread_start(mark_async_thread).build().unwrap();
        rt.block_on(async {
            let ok: Result<bool, ServerError> = run(|| Ok(allowed_here())).await;
            assert!(ok.unwrap());
            let failed: Result<(), ServerError> = run(|| panic!("boom")).await;
            assert!(failed.unwrap_err().to_string().contains("a database task failed"));
        });
    }
}
