//! Keeping torch's OpenMP workers from spinning on the cores our pool computes on.
//!
//! torch's CPU ops run on a GNU OpenMP team. When a parallel region ends, libgomp's workers do not
//! sleep: they spin (by default for up to a few hundred thousand pause loops, milliseconds) waiting
//! for the next region, which is what makes back-to-back torch ops cheap. In a training step our
//! ops alternate with torch's (ReLU, linear layers, the optimizer's bookkeeping), so every call of
//! ours starts while an OpenMP worker spins on one of the cores: on a 2-core machine that takes
//! half the machine away from our pool (measured: the S3 training step 1.7x slower than with a
//! short spin count).
//!
//! [`parked`] runs a call inside an OpenMP parallel region of the same size, through libgomp's own
//! entry point `GOMP_parallel` (found in the process with `dlopen(RTLD_NOLOAD)`, never loaded by
//! us): the encountering thread (OpenMP thread 0) runs the call, the other team members block on
//! a condition variable (asleep, not spinning) until it returns. The workers are the same
//! threads torch's next op uses, so they are released hot. Without libgomp in the process (macOS,
//! a torch built with another backend), in a forked child, or with
//! `BIGMODEL_NATIVE_NO_OMP_PARK` set, the call simply runs.

#[cfg(target_os = "linux")]
mod imp {
    use std::ffi::{c_int, c_uint, c_void, CString};
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
    use std::sync::{Condvar, Mutex, OnceLock};

    type GompParallel =
        unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
    type ThreadNum = unsafe extern "C" fn() -> c_int;

    struct Gomp {
        parallel: GompParallel,
        thread_num: ThreadNum,
        max_threads: ThreadNum,
        pid: u32,
    }

    static GOMP: OnceLock<Option<Gomp>> = OnceLock::new();

    /// libgomp's entry points, if the library is mapped into this process.
    fn find() -> Option<Gomp> {
        if std::env::var_os("BIGMODEL_NATIVE_NO_OMP_PARK").is_some() {
            return None;
        }
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let path = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| {
                p.rsplit('/')
                    .next()
                    .is_some_and(|name| name.starts_with("libgomp"))
            })?;
        let path = CString::new(path).ok()?;
        // SAFETY: RTLD_NOLOAD never loads anything: it returns a handle to a library already
        // mapped (no constructors run) or null. The handle is kept for the life of the process.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if handle.is_null() {
            return None;
        }
        // SAFETY: `handle` is a live library handle and the names are NUL-terminated.
        let (parallel, thread_num, max_threads) = unsafe {
            (
                libc::dlsym(handle, c"GOMP_parallel".as_ptr()),
                libc::dlsym(handle, c"omp_get_thread_num".as_ptr()),
                libc::dlsym(handle, c"omp_get_max_threads".as_ptr()),
            )
        };
        if parallel.is_null() || thread_num.is_null() || max_threads.is_null() {
            return None;
        }
        // SAFETY: the symbols are libgomp's public C ABI with exactly these signatures
        // (`GOMP_parallel` since GCC 4.9: fn, data, num_threads, flags).
        unsafe {
            Some(Gomp {
                parallel: std::mem::transmute::<*mut c_void, GompParallel>(parallel),
                thread_num: std::mem::transmute::<*mut c_void, ThreadNum>(thread_num),
                max_threads: std::mem::transmute::<*mut c_void, ThreadNum>(max_threads),
                pid: std::process::id(),
            })
        }
    }

    /// What the team shares: the call (taken by thread 0), its result, and the "finished" flag
    /// the other members sleep on.
    struct Region<F, R> {
        call: Mutex<Option<F>>,
        result: Mutex<Option<std::thread::Result<R>>>,
        done: Mutex<bool>,
        wake: Condvar,
        thread_num: ThreadNum,
    }

    extern "C" fn member<F: FnOnce() -> R + Send, R: Send>(data: *mut c_void) {
        // SAFETY: `data` is the `Region<F, R>` that `parked` keeps alive on its stack until
        // GOMP_parallel returns, which is after every team member has left this function.
        let region = unsafe { &*(data as *const Region<F, R>) };
        fn lock(m: &Mutex<bool>) -> std::sync::MutexGuard<'_, bool> {
            m.lock().unwrap_or_else(|e| e.into_inner())
        }
        // SAFETY: libgomp's `omp_get_thread_num` takes nothing and may be called from any thread.
        if unsafe { (region.thread_num)() } == 0 {
            let call = region.call.lock().unwrap_or_else(|e| e.into_inner()).take();
            // A panic must not unwind through libgomp's C frames: carry it out and resume it.
            let result = call.map(|f| catch_unwind(AssertUnwindSafe(f)));
            *region.result.lock().unwrap_or_else(|e| e.into_inner()) = result;
            *lock(&region.done) = true;
            region.wake.notify_all();
        } else {
            let mut done = lock(&region.done);
            while !*done {
                done = region.wake.wait(done).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Looks libgomp up now (the bindings do so at import, in the process that loaded torch,
    /// so that a forked child, whose libgomp is unusable, is recognised by its pid); whether
    /// calls will park its team.
    pub fn detect() -> bool {
        GOMP.get_or_init(find)
            .as_ref()
            .is_some_and(|g| g.pid == std::process::id())
    }

    pub fn parked<R: Send, F: FnOnce() -> R + Send>(team: usize, op: F) -> R {
        let gomp = match GOMP.get_or_init(find) {
            Some(g) if g.pid == std::process::id() => g,
            // libgomp does not survive fork(): a child runs the call plainly.
            _ => return op(),
        };
        // Park the team torch runs (its size is OpenMP's default, which torch.set_num_threads
        // sets), never more: a larger team would start extra OpenMP threads that then spin.
        // SAFETY: libgomp's `omp_get_max_threads` takes nothing and may be called from any thread.
        let torch_team = usize::try_from(unsafe { (gomp.max_threads)() }).unwrap_or(1);
        let team = team.min(torch_team);
        if team <= 1 {
            return op();
        }
        let region = Region {
            call: Mutex::new(Some(op)),
            result: Mutex::new(None),
            done: Mutex::new(false),
            wake: Condvar::new(),
            thread_num: gomp.thread_num,
        };
        let team = c_uint::try_from(team).unwrap_or(c_uint::MAX);
        // SAFETY: `member::<F, R>` matches the `Region<F, R>` passed as data, which outlives the
        // call (GOMP_parallel returns only after the whole team has finished the region).
        unsafe {
            (gomp.parallel)(member::<F, R>, &region as *const _ as *mut c_void, team, 0);
        }
        let Region { call, result, .. } = region;
        match result.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(r)) => r,
            Some(Err(panic)) => resume_unwind(panic),
            // Thread 0 always takes the call; should a runtime not, it runs here instead.
            None => match call.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(f) => f(),
                None => unreachable!("the parked call was taken but left no result"),
            },
        }
    }
}

#[cfg(target_os = "linux")]
pub use imp::{detect, parked};

/// No OpenMP runtime is looked for on this platform.
#[cfg(not(target_os = "linux"))]
pub fn detect() -> bool {
    false
}

/// Runs `op` directly (no OpenMP runtime to park on this platform).
#[cfg(not(target_os = "linux"))]
pub fn parked<R: Send>(_team: usize, op: impl FnOnce() -> R + Send) -> R {
    op()
}
