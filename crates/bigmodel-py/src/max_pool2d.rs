//! Bindings of max_pool2d (with indices) forward and backward.
//!
//! The Python layer (`bigmodel_native.ops.max_pool2d`) checks options and shapes the way torch
//! does, makes the input contiguous and allocates the outputs; here every tensor is inspected
//! again (CPU, dtype, contiguity), the kernel checks element counts against the shapes, and it
//! runs on the pool with the GIL released.

use crate::errors::to_py;
use crate::tensors::{index_info, kernel_info, TensorInfo};
use crate::views::{slice, slice_mut};
use bigmodel_kernels::cpu::max_pool2d::{
    max_pool2d_backward as backward, max_pool2d_forward as forward, MaxPool2dParams,
};
use bigmodel_kernels::element::{DType, Element};
use bigmodel_kernels::{pool, Result};
use half::{bf16, f16};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

fn info(t: &Bound<'_, PyAny>, what: &str) -> PyResult<TensorInfo> {
    kernel_info(t, "max_pool2d", what)
}

/// Whether two byte ranges `(ptr, bytes)` intersect (empty ones intersect nothing).
fn overlap(a: (usize, usize), b: (usize, usize)) -> bool {
    a.1 > 0 && b.1 > 0 && a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

fn bytes(t: &TensorInfo) -> (usize, usize) {
    (t.ptr, t.numel.saturating_mul(t.dtype.size_of()))
}

#[allow(clippy::too_many_arguments)]
fn params(
    planes: usize,
    hw: (usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    out_hw: (usize, usize),
) -> MaxPool2dParams {
    MaxPool2dParams {
        planes,
        h: hw.0,
        w: hw.1,
        kernel: [kernel.0, kernel.1],
        stride: [stride.0, stride.1],
        pad: [padding.0, padding.1],
        dilation: [dilation.0, dilation.1],
        out: [out_hw.0, out_hw.1],
    }
}

/// Fills `output` and `indices` (planes x OH x OW) from `input` (planes x H x W).
#[pyfunction]
#[pyo3(signature = (input, output, indices, *, planes, hw, kernel, stride, padding, dilation, out_hw, num_threads))]
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_forward(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    output: &Bound<'_, PyAny>,
    indices: &Bound<'_, PyAny>,
    planes: usize,
    hw: (usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    out_hw: (usize, usize),
    num_threads: usize,
) -> PyResult<()> {
    let p = params(planes, hw, kernel, stride, padding, dilation, out_hw);
    let x = info(input, "input")?;
    let y = info(output, "output")?;
    let ix = index_info(indices, "max_pool2d")?;
    if y.dtype != x.dtype {
        return Err(PyRuntimeError::new_err(
            "max_pool2d: output must have the input's dtype",
        ));
    }
    let ix_bytes = (ix.0, ix.1.saturating_mul(8));
    if overlap(bytes(&x), bytes(&y)) || overlap(bytes(&x), ix_bytes) || overlap(bytes(&y), ix_bytes)
    {
        return Err(PyRuntimeError::new_err(
            "max_pool2d: output, indices and input must not share memory",
        ));
    }
    let serial = pool::work(&[planes, hw.0, hw.1]) < pool::SERIAL_ELEMS;
    py.detach(|| {
        pool::run(num_threads, serial, || match x.dtype {
            DType::F32 => run_forward::<f32>(&p, x, y, ix),
            DType::F64 => run_forward::<f64>(&p, x, y, ix),
            DType::BF16 => run_forward::<bf16>(&p, x, y, ix),
            DType::F16 => run_forward::<f16>(&p, x, y, ix),
        })
    })
    .map_err(to_py)
}

fn run_forward<E: Element>(
    p: &MaxPool2dParams,
    x: TensorInfo,
    y: TensorInfo,
    ix: (usize, usize),
) -> Result<()> {
    // SAFETY: each pointer is the data pointer of a live contiguous CPU tensor of that many
    // elements of the checked dtype (int64 for the indices), kept alive by the Python caller for
    // the whole call; the two written tensors overlap neither each other nor the input (checked
    // above), and the input is only read.
    unsafe {
        let input = slice::<E>(x.ptr, x.numel, "input")?;
        let out = slice_mut::<E>(y.ptr, y.numel, "output")?;
        let idx = slice_mut::<i64>(ix.0, ix.1, "indices")?;
        forward(p, input, out, idx)
    }
}

/// Overwrites `grad_input` (planes x H x W) with the gradient scattered through `indices`.
#[pyfunction]
#[pyo3(signature = (grad_output, indices, grad_input, *, planes, hw, kernel, stride, padding, dilation, out_hw, num_threads))]
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_backward(
    py: Python<'_>,
    grad_output: &Bound<'_, PyAny>,
    indices: &Bound<'_, PyAny>,
    grad_input: &Bound<'_, PyAny>,
    planes: usize,
    hw: (usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    out_hw: (usize, usize),
    num_threads: usize,
) -> PyResult<()> {
    let p = params(planes, hw, kernel, stride, padding, dilation, out_hw);
    let gy = info(grad_output, "grad_output")?;
    let gx = info(grad_input, "grad_input")?;
    let ix = index_info(indices, "max_pool2d")?;
    if gy.dtype != gx.dtype {
        return Err(PyRuntimeError::new_err(
            "max_pool2d_backward: grad_output and grad_input must share a dtype",
        ));
    }
    let ix_bytes = (ix.0, ix.1.saturating_mul(8));
    if overlap(bytes(&gx), bytes(&gy)) || overlap(bytes(&gx), ix_bytes) {
        return Err(PyRuntimeError::new_err(
            "max_pool2d_backward: grad_input must not share memory with grad_output or indices",
        ));
    }
    let serial = pool::work(&[planes, hw.0, hw.1]) < pool::SERIAL_ELEMS;
    py.detach(|| {
        pool::run(num_threads, serial, || match gx.dtype {
            DType::F32 => run_backward::<f32>(&p, gy, ix, gx),
            DType::F64 => run_backward::<f64>(&p, gy, ix, gx),
            DType::BF16 => run_backward::<bf16>(&p, gy, ix, gx),
            DType::F16 => run_backward::<f16>(&p, gy, ix, gx),
        })
    })
    .map_err(to_py)
}

fn run_backward<E: Element>(
    p: &MaxPool2dParams,
    gy: TensorInfo,
    ix: (usize, usize),
    gx: TensorInfo,
) -> Result<()> {
    // SAFETY: as in `run_forward`: live contiguous CPU tensors of the checked dtypes; grad_input,
    // the only one written, overlaps neither grad_output nor the indices (checked above).
    unsafe {
        let g = slice::<E>(gy.ptr, gy.numel, "grad_output")?;
        let idx = slice::<i64>(ix.0, ix.1, "indices")?;
        let out = slice_mut::<E>(gx.ptr, gx.numel, "grad_input")?;
        backward(p, g, idx, out)
    }
}
