//! Hints to the operating system about buffers a kernel is about to fill.
//!
//! A fresh logits-sized gradient (hundreds of MiB) is memory the allocator has just mapped and
//! nobody has touched. Filling it in 4 KiB pages costs one page fault per page (a trip into the
//! kernel, a cgroup charge, a zeroed page): for the (4096, 32000) cross-entropy gradient that is
//! 128,000 faults, more time than the arithmetic. Where transparent huge pages are enabled in
//! `madvise` mode (the common default), asking for them on the buffer before the first write
//! cuts the faults 512-fold. The hint never changes the buffer's contents or validity; on
//! systems that refuse it (THP off, not Linux) nothing happens.

/// Buffers smaller than this are left alone: a few faults cost less than the system call.
pub const HUGE_PAGE_MIN_BYTES: usize = 8 << 20;

/// Asks for transparent huge pages on the 2 MiB-aligned interior of `buf`, if it is large.
pub fn advise_huge_pages<T>(buf: &mut [T]) {
    let bytes = std::mem::size_of_val(buf);
    if bytes < HUGE_PAGE_MIN_BYTES {
        return;
    }
    advise(buf.as_mut_ptr() as usize, bytes);
}

#[cfg(target_os = "linux")]
fn advise(addr: usize, bytes: usize) {
    const HUGE: usize = 2 << 20;
    let start = addr.next_multiple_of(HUGE);
    let end = (addr + bytes) / HUGE * HUGE;
    if end <= start {
        return;
    }
    // SAFETY: MADV_HUGEPAGE only sets a flag on the mappings covering [start, end), a range
    // inside the caller's exclusively borrowed buffer; it neither reads, writes nor unmaps
    // memory, and the contents of every page are preserved. A failure (THP disabled, EINVAL)
    // leaves the mapping as it was, so the result is deliberately ignored.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_addr: usize, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_keeps_contents_and_ignores_small_buffers() {
        let mut small = vec![1.5f32; 16];
        advise_huge_pages(&mut small);
        assert!(small.iter().all(|&v| v == 1.5));
        let mut big = vec![0u8; HUGE_PAGE_MIN_BYTES * 2 + 12345];
        big[0] = 7;
        let last = big.len() - 1;
        big[last] = 9;
        advise_huge_pages(&mut big[3..]);
        assert_eq!((big[0], big[last]), (7, 9));
        assert!(big[1..last].iter().all(|&v| v == 0));
    }
}
