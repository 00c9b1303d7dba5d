//! Large gradient buffers from the kernels' buffer cache, handed to torch as DLPack capsules.
//!
//! `torch.from_dlpack` adopts the buffer without copying and calls the capsule's deleter when
//! the last tensor using it is freed, from whatever thread frees it; the deleter gives the
//! mapping back to `bigmodel_kernels::buffer_cache` (pure Rust, no GIL needed). The structs
//! are DLPack's stable (pre-1.0) ABI, which every torch since 1.x reads.

use bigmodel_kernels::buffer_cache::{self, LargeBuffer};
use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use std::ffi::{c_void, CStr};

#[repr(C)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    /// Null: compact row-major.
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

const KDL_CPU: i32 = 1;
const KDL_FLOAT: u8 = 2;
const KDL_BFLOAT: u8 = 4;
const NAME: &CStr = c"dltensor";

/// What a managed tensor owns: the mapping and the shape array its `DLTensor` points into.
struct Owner {
    _buffer: LargeBuffer,
    shape: Vec<i64>,
}

/// DLPack's deleter: frees the managed tensor and returns its mapping to the cache.
unsafe extern "C" fn delete_managed(m: *mut DLManagedTensor) {
    if m.is_null() {
        return;
    }
    // SAFETY: `m` and its `manager_ctx` were made by `Box::into_raw` in `grad_buffer` and DLPack
    // calls the deleter exactly once (the consumer when it frees the tensor, or the capsule's
    // destructor when nobody consumed it, never both).
    unsafe {
        let m = Box::from_raw(m);
        drop(Box::from_raw(m.manager_ctx as *mut Owner));
    }
}

/// Frees the managed tensor of a capsule nobody consumed (a consumer renames it).
unsafe extern "C" fn capsule_destructor(capsule: *mut ffi::PyObject) {
    // SAFETY: CPython passes the live capsule being destroyed. `PyCapsule_IsValid` never fails
    // and is false once a consumer renamed the capsule ("used_dltensor"), in which case the
    // consumer owns the managed tensor; otherwise the pointer is the one stored at creation.
    unsafe {
        if ffi::PyCapsule_IsValid(capsule, NAME.as_ptr()) == 1 {
            let m = ffi::PyCapsule_GetPointer(capsule, NAME.as_ptr()) as *mut DLManagedTensor;
            delete_managed(m);
        }
    }
}

/// A contiguous CPU buffer of `shape` and `dtype` ("float32", "float64", "bfloat16" or
/// "float16") as a DLPack capsule for `torch.from_dlpack`, or None when the buffer is below the
/// cache's minimum size or the system refuses the mapping (the caller then allocates as usual).
/// Its contents are unspecified.
#[pyfunction]
pub fn grad_buffer(py: Python<'_>, shape: Vec<i64>, dtype: &str) -> PyResult<Option<Py<PyAny>>> {
    let (code, bits) = match dtype {
        "float32" => (KDL_FLOAT, 32u8),
        "float64" => (KDL_FLOAT, 64),
        "float16" => (KDL_FLOAT, 16),
        "bfloat16" => (KDL_BFLOAT, 16),
        _ => {
            return Err(PyValueError::new_err(format!(
                "grad_buffer: unsupported dtype {dtype:?}"
            )))
        }
    };
    let bytes = shape
        .iter()
        .try_fold(usize::from(bits / 8), |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
        .ok_or_else(|| PyValueError::new_err(format!("grad_buffer: invalid shape {shape:?}")))?;
    let ndim = i32::try_from(shape.len())
        .map_err(|_| PyValueError::new_err("grad_buffer: too many dimensions"))?;
    let Some(mut buffer) = LargeBuffer::new(bytes) else {
        return Ok(None);
    };
    let data = buffer.as_mut_ptr() as *mut c_void;
    let owner = Box::into_raw(Box::new(Owner {
        _buffer: buffer,
        shape,
    }));
    let managed = Box::into_raw(Box::new(DLManagedTensor {
        dl_tensor: DLTensor {
            data,
            device: DLDevice {
                device_type: KDL_CPU,
                device_id: 0,
            },
            ndim,
            dtype: DLDataType {
                code,
                bits,
                lanes: 1,
            },
            // SAFETY: `owner` is a live box made just above; its Vec's heap array does not move
            // while the box lives, which is as long as the managed tensor.
            shape: unsafe { (*owner).shape.as_mut_ptr() },
            strides: std::ptr::null_mut(),
            byte_offset: 0,
        },
        manager_ctx: owner as *mut c_void,
        deleter: Some(delete_managed),
    }));
    // SAFETY: `managed` is a valid heap pointer that the capsule (or, after `from_dlpack`, torch)
    // now owns; the name is a static C string; on failure nothing took ownership, so the
    // managed tensor is freed here before the Python error is returned.
    unsafe {
        let capsule = ffi::PyCapsule_New(
            managed as *mut c_void,
            NAME.as_ptr(),
            Some(capsule_destructor),
        );
        if capsule.is_null() {
            delete_managed(managed);
            return Err(PyErr::fetch(py));
        }
        Ok(Some(Bound::from_owned_ptr(py, capsule).unbind()))
    }
}

/// Unmaps the cached gradient buffer, if any; returns the bytes given back to the system.
#[pyfunction]
pub fn release_buffer_cache() -> usize {
    buffer_cache::release()
}

/// Bytes the gradient-buffer cache holds now.
#[pyfunction]
pub fn buffer_cache_bytes() -> usize {
    buffer_cache::cached_bytes()
}
