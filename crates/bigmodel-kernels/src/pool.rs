//! The crate's rayon pool: sized on request, rebuilt after a fork.
//!
//! rayon's global pool cannot be resized, and a forked child (a DataLoader worker) inherits a
//! pool whose threads do not exist in it, so its first parallel call would hang (rayon #708).
//! The pool here is keyed by (process id, thread count): a child or a new size builds a fresh
//! pool, and a pool inherited through fork is leaked rather than dropped, since its threads are
//! not there to be told to stop.

use std::sync::{Arc, Mutex};

struct Current {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);

/// The pool for `threads` workers in this process, built on first use.
pub fn get(threads: usize) -> Arc<rayon::ThreadPool> {
    let threads = threads.max(1);
    let pid = std::process::id();
    // A poisoned lock only means another thread panicked while holding it; the Option inside is
    // still a valid value, so recover it rather than propagate the panic.
    let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = current.as_ref() {
        if c.pid == pid && c.threads == threads {
            return Arc::clone(&c.pool);
        }
    }
    let pool = Arc::new(build(threads));
    if let Some(old) = current.replace(Current {
        pid,
        threads,
        pool: Arc::clone(&pool),
    }) {
        if old.pid != pid {
            std::mem::forget(old);
        }
    }
    pool
}

fn build(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("bigmodel-native-{i}"))
        .build()
        // Building only fails when the OS refuses to spawn threads; one thread then is the
        // honest fallback (the calling thread runs the work) rather than a panic.
        .or_else(|_| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .use_current_thread()
                .build()
        })
        .expect("a one-thread pool on the current thread needs no spawn")
}

/// Runs `op` inside the pool of `threads` workers, with torch's OpenMP team of the same size
/// parked meanwhile so that it does not spin on the cores the pool computes on
/// ([`crate::openmp`]).
pub fn install<R: Send>(threads: usize, op: impl FnOnce() -> R + Send) -> R {
    crate::openmp::parked(threads, || get(threads).install(op))
}
