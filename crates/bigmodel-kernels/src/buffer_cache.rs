//! A one-slot cache of large anonymous mappings, for the logits-sized gradient buffers.
//!
//! Every cross-entropy training step needs a fresh logits-sized gradient (hundreds of MiB at
//! language-model sizes). Memory fresh from the allocator is unmapped memory: the kernel must
//! fault in and zero every page on first write, which at (4096, 32000) f32 costs as long as the
//! loss's own arithmetic. The gradient of step k is released (by autograd, after the last
//! linear layer's backward) before step k + 1 asks for one of the same size, so one kept
//! mapping serves every step.
//!
//! A released mapping is not hoarded: it is marked `MADV_FREE`, so the kernel may take its
//! pages back whenever memory runs short (they then fault in as zero pages again), and until
//! then a reuse writes them with no fault. At most one mapping is kept; a request whose size is
//! not within 1/8 of it unmaps it. The slot's lock is only tried, never waited for (see
//! [`try_lock`]). [`release`] unmaps it at once, and
//! `BIGMODEL_NATIVE_NO_BUFFER_CACHE` turns the cache off (every buffer is unmapped when freed).
//! Only Linux has these mappings; elsewhere [`LargeBuffer::new`] returns None and callers
//! allocate as usual.

use std::sync::Mutex;

/// Buffers smaller than this come from the ordinary allocator (whose own free lists keep them).
pub const MIN_BYTES: usize = crate::memory::HUGE_PAGE_MIN_BYTES;

/// A writable mapping of at least the requested size, 2 MiB aligned, given back to the cache
/// when dropped.
#[derive(Debug)]
pub struct LargeBuffer {
    map: Mapping,
}

impl LargeBuffer {
    /// A buffer of at least `bytes` bytes (`>= MIN_BYTES`), the cached one if it fits; None
    /// below `MIN_BYTES`, when the system refuses the mapping, or off Linux.
    pub fn new(bytes: usize) -> Option<LargeBuffer> {
        if bytes < MIN_BYTES {
            return None;
        }
        let len = bytes.checked_next_multiple_of(sys::HUGE)?;
        let cached = try_lock().and_then(|mut slot| slot.take());
        match cached {
            Some(m) if m.len >= len && m.len - len <= len / 8 => Some(LargeBuffer { map: m }),
            other => {
                drop(other); // a size that no longer fits: give it back to the system
                Mapping::new(len).map(|map| LargeBuffer { map })
            }
        }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.ptr as *mut u8
    }

    pub fn len(&self) -> usize {
        self.map.len
    }

    pub fn is_empty(&self) -> bool {
        self.map.len == 0
    }
}

impl Drop for LargeBuffer {
    fn drop(&mut self) {
        let map = std::mem::replace(&mut self.map, Mapping { ptr: 0, len: 0 });
        if disabled() {
            return; // dropping `map` unmaps it
        }
        map.mark_free();
        if let Some(mut slot) = try_lock() {
            if slot.is_none() {
                *slot = Some(map);
            }
        } // else (a second buffer was live, or the slot was busy) `map` is unmapped as it goes
          // out of scope, after the guard (declared later, dropped first) released the lock
    }
}

/// Unmaps the cached mapping, if any. Returns the bytes given back.
pub fn release() -> usize {
    try_lock()
        .and_then(|mut slot| slot.take())
        .map_or(0, |m| m.len)
}

/// Bytes held by the cache now.
pub fn cached_bytes() -> usize {
    try_lock()
        .and_then(|slot| slot.as_ref().map(|m| m.len))
        .unwrap_or(0)
}

static SLOT: Mutex<Option<Mapping>> = Mutex::new(None);

/// The slot, unless another thread holds it right now: then the caller does without the cache
/// (a fresh mapping, or an unmap) rather than wait. The lock is only ever held for a swap, so
/// this is rare; and it cannot deadlock a process forked while another thread held the lock.
fn try_lock() -> Option<std::sync::MutexGuard<'static, Option<Mapping>>> {
    match SLOT.try_lock() {
        Ok(guard) => Some(guard),
        // A poisoned lock only means a panic elsewhere while holding it; the slot is still valid.
        Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

fn disabled() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("BIGMODEL_NATIVE_NO_BUFFER_CACHE").is_some())
}

/// An anonymous private mapping `[ptr, ptr + len)` owned by this value (unmapped on drop).
#[derive(Debug)]
struct Mapping {
    ptr: usize,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Option<Mapping> {
        sys::map(len).map(|ptr| Mapping { ptr, len })
    }

    fn mark_free(&self) {
        sys::mark_free(self.ptr, self.len);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            sys::unmap(self.ptr, self.len);
        }
    }
}

#[cfg(target_os = "linux")]
mod sys {
    pub const HUGE: usize = 2 << 20;

    /// Maps `len` bytes (a multiple of HUGE) at a HUGE-aligned address, with huge pages asked for.
    pub fn map(len: usize) -> Option<usize> {
        let over = len.checked_add(HUGE)?;
        // SAFETY: an anonymous private mapping at an address of the kernel's choice touches no
        // existing memory; the result is checked against MAP_FAILED before any use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                over,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE);
        let (head, tail) = (aligned - start, over - (aligned - start) - len);
        // SAFETY: the head [start, aligned) and the tail [aligned + len, start + over) lie inside
        // the mapping just created and are not used by anyone; unmapping them leaves exactly
        // [aligned, aligned + len) mapped. MADV_HUGEPAGE only sets a flag on that range.
        unsafe {
            if head > 0 {
                libc::munmap(start as *mut libc::c_void, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        Some(aligned)
    }

    pub fn mark_free(ptr: usize, len: usize) {
        // SAFETY: the range is a mapping owned by the caller and in use by nobody (its buffer was
        // just released). MADV_FREE lets the kernel drop the pages lazily; a later write simply
        // keeps them. Failure (kernels before 4.5) leaves the pages as they are.
        unsafe {
            libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_FREE);
        }
    }

    pub fn unmap(ptr: usize, len: usize) {
        // SAFETY: the range is a mapping made by `map` and owned by the caller, which gives it up.
        unsafe {
            libc::munmap(ptr as *mut libc::c_void, len);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    pub const HUGE: usize = 2 << 20;

    pub fn map(_len: usize) -> Option<usize> {
        None
    }

    pub fn mark_free(_ptr: usize, _len: usize) {}

    pub fn unmap(_ptr: usize, _len: usize) {}
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The cache is process-wide: these checks run in one test so they do not race.
    #[test]
    fn one_mapping_is_reused_resized_and_released() {
        release();
        assert!(LargeBuffer::new(MIN_BYTES - 1).is_none());
        let mut a = LargeBuffer::new(MIN_BYTES + 5).unwrap();
        assert_eq!(a.len() % sys::HUGE, 0);
        assert!(a.len() >= MIN_BYTES + 5);
        let pa = a.as_mut_ptr();
        assert_eq!(pa as usize % sys::HUGE, 0);
        // SAFETY: the buffer is at least MIN_BYTES + 5 long and owned here.
        unsafe {
            pa.write_bytes(7, a.len());
        }
        let mut b = LargeBuffer::new(MIN_BYTES + 5).unwrap(); // `a` is live: a new mapping
        assert_ne!(b.as_mut_ptr(), pa);
        drop(a);
        drop(b); // the slot already holds `a`: `b` is unmapped
        assert_eq!(cached_bytes(), MIN_BYTES + sys::HUGE);
        let mut c = LargeBuffer::new(MIN_BYTES + 1000).unwrap();
        assert_eq!(c.as_mut_ptr(), pa, "the cached mapping is reused");
        // SAFETY: as above; the memory is writable (its old contents are unspecified).
        unsafe {
            c.as_mut_ptr().write_bytes(1, c.len());
        }
        drop(c);
        let d = LargeBuffer::new(4 * MIN_BYTES).unwrap(); // too small: replaced
        assert_eq!(cached_bytes(), 0);
        drop(d);
        assert_eq!(release(), 4 * MIN_BYTES);
        assert_eq!(cached_bytes(), 0);
    }
}
