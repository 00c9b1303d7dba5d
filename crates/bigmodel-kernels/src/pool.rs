//! The crate's rayon pool: sized on request, rebuilt after a fork.
//!
//! rayon's global pool cannot be resized, and a forked child (a DataLoader worker) inherits a
//! pool whose threads do not exist in it, so its first parallel call would hang (rayon #708).
//! The pool here is keyed by (process id, thread count): a child or a new size builds a fresh
//! pool, and a pool inherited through fork is leaked rather than dropped, since its threads are
//! not there to be told to stop.

use std::cell::RefCell;
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

thread_local! {
    /// This thread's own pool of one worker, the thread itself: `None` until first used, and
    /// `Some(None)` if it could not be built.
    static HERE: RefCell<Option<Option<Arc<rayon::ThreadPool>>>> = const { RefCell::new(None) };
}

/// Runs `op` on the calling thread: inside a one-worker pool whose worker is this thread, so the
/// kernels' parallel iterators run sequentially here instead of waking the shared pool.
///
/// For calls with little work that is the faster way: handing a job to a sleeping pool worker and
/// waiting for it costs tens of microseconds (up to 100 on a virtual machine), more than a small
/// convolution or pooling takes. The one-worker pool is built once per thread; its only worker is
/// the thread that owns it, so it also stays valid in a forked child.
pub fn here<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    let pool = HERE.with(|h| {
        h.borrow_mut()
            .get_or_insert_with(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .use_current_thread()
                    .thread_name(|_| "bigmodel-native-here".into())
                    .build()
                    .ok()
                    .map(Arc::new)
            })
            .clone()
    });
    match pool {
        Some(p) => p.install(op),
        // This thread is already a worker of some other rayon pool: run in the shared one.
        None => install(1, op),
    }
}

/// Multiply-adds below which a compute-bound call (conv2d, attention) runs on the calling thread:
/// about 50-100 us of one core's work, the order of a pool wake-up.
pub const SERIAL_MACS: usize = 1 << 20;
/// Elements below which a memory-bound call (pooling, Adam) runs on the calling thread.
pub const SERIAL_ELEMS: usize = 1 << 16;

/// The product of `xs`, saturating (sizes only decide how a call is run here).
pub fn work(xs: &[usize]) -> usize {
    xs.iter().fold(1usize, |a, &x| a.saturating_mul(x))
}

/// [`install`] for `threads > 1` and calls with enough work to share; [`here`] otherwise.
pub fn run<R: Send>(threads: usize, serial: bool, op: impl FnOnce() -> R + Send) -> R {
    if threads <= 1 || serial {
        here(op)
    } else {
        install(threads, op)
    }
}
