//! Raw tensor memory handed over by the Python layer, turned into slices.
//!
//! The Python side passes `tensor.data_ptr()` and `tensor.numel()` of contiguous CPU tensors it
//! keeps alive for the whole call. What can be checked here without torch is checked: a null
//! pointer with elements, misalignment for the element type, and sizes that overflow.
//! Distinctness of the tensors (no two mutable views of one buffer) is the caller's contract,
//! which the Python layer upholds by construction: every slot is a different tensor of a
//! parameter's own state, and torch refuses duplicate parameters in a group.

use bigmodel_kernels::{Error, Result};

/// A mutable slice over `len` elements of `T` at address `ptr`.
///
/// # Safety
/// `ptr` must be the data pointer of a live tensor of at least `len` elements of `T`, not
/// accessed by anything else while the returned slice lives.
pub unsafe fn slice_mut<'a, T>(ptr: usize, len: usize, what: &str) -> Result<&'a mut [T]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr == 0 {
        return Err(Error::Value(format!(
            "{what}: null data pointer for {len} elements"
        )));
    }
    if !ptr.is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Error::Value(format!(
            "{what}: data pointer {ptr:#x} is not aligned to {} bytes",
            std::mem::align_of::<T>()
        )));
    }
    if len
        .checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Error::Value(format!(
            "{what}: {len} elements overflow the address space"
        )));
    }
    // SAFETY: non-null, aligned, size fits in isize (checked above); validity and exclusivity
    // of the memory for the slice's lifetime are this function's documented precondition.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr as *mut T, len) })
}

/// A read-only slice over `len` elements of `T` at `ptr`.
///
/// # Safety
/// `ptr` must be the data pointer of a live tensor of at least `len` elements of `T` that nothing
/// writes while the slice lives.
pub unsafe fn slice<'a, T>(ptr: usize, len: usize, what: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr == 0 || !ptr.is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Error::Value(format!(
            "{what}: null or misaligned data pointer {ptr:#x}"
        )));
    }
    if len
        .checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Error::Value(format!(
            "{what}: {len} elements overflow the address space"
        )));
    }
    // SAFETY: non-null, aligned, size fits in isize (checked above); validity and the absence of
    // writers for the slice's lifetime are this function's documented precondition.
    Ok(unsafe { std::slice::from_raw_parts(ptr as *const T, len) })
}
