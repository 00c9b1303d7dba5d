//! `bigmodel_native._native`: the PyO3 face of the kernels.
//!
//! The Python layer (`bigmodel_native.ops`) validates arguments the way torch does and hands
//! over tensors as (data pointer, element count) pairs of contiguous CPU memory. This crate
//! re-checks what memory safety needs (null, alignment, sizes), turns the pairs into slices,
//! releases the GIL and runs the kernel on the crate's pool. Errors come back as the Python
//! exception classes torch would raise; nothing here panics on bad input.

mod adam;
mod attention;
mod conv2d;
mod cross_entropy;
mod cuda;
mod dlpack;
mod errors;
mod max_pool2d;
mod tensors;
mod views;

use bigmodel_kernels::isa::{self, Isa};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The instruction set the kernels run now ("avx512", "avx2" or "scalar").
#[pyfunction]
fn active_isa() -> &'static str {
    isa::active().name()
}

/// The widest instruction set this CPU supports.
#[pyfunction]
fn detected_isa() -> &'static str {
    isa::detected().name()
}

/// Forces the kernels onto a narrower instruction set (for tests), or back with None.
#[pyfunction]
#[pyo3(signature = (name=None))]
fn set_isa(name: Option<&str>) -> PyResult<&'static str> {
    let wanted = match name {
        None => None,
        Some(n) => Some(Isa::from_name(n).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown instruction set {n:?}; expected avx512, avx2 or scalar"
            ))
        })?),
    };
    isa::set_override(wanted)
        .map(Isa::name)
        .map_err(PyValueError::new_err)
}

/// Whether kernel calls park torch's OpenMP team (libgomp found in this process; see
/// `bigmodel_kernels::openmp`).
#[pyfunction]
fn openmp_parking() -> bool {
    bigmodel_kernels::openmp::detect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // torch (and its libgomp) is loaded before this module; looking it up now ties the parking
    // to this process, so that forked children run their calls without it.
    bigmodel_kernels::openmp::detect();
    m.add_function(wrap_pyfunction!(openmp_parking, m)?)?;
    m.add_function(wrap_pyfunction!(active_isa, m)?)?;
    m.add_function(wrap_pyfunction!(detected_isa, m)?)?;
    m.add_function(wrap_pyfunction!(set_isa, m)?)?;
    m.add_function(wrap_pyfunction!(adam::adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(dlpack::grad_buffer, m)?)?;
    m.add_function(wrap_pyfunction!(dlpack::release_buffer_cache, m)?)?;
    m.add_function(wrap_pyfunction!(dlpack::buffer_cache_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy::cross_entropy_forward, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy::cross_entropy_backward, m)?)?;
    m.add_function(wrap_pyfunction!(
        cross_entropy::cross_entropy_target_backward,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(
        cross_entropy::cross_entropy_weight_backward,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(conv2d::conv2d_forward, m)?)?;
    m.add_function(wrap_pyfunction!(conv2d::conv2d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool2d::max_pool2d_forward, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool2d::max_pool2d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(attention::attention_forward, m)?)?;
    m.add_function(wrap_pyfunction!(attention::attention_backward, m)?)?;
    cuda::register(m)?;
    m.add("NeedsStaging", m.py().get_type::<errors::NeedsStaging>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
