//! Bindings of conv2d forward and backward.
//!
//! The Python layer (`bigmodel_native.ops.conv2d`) checks shapes and options the way torch does,
//! makes every tensor contiguous and allocates the outputs; here each tensor is inspected again
//! (CPU, dtype, contiguity), its element count is checked by the kernel against the shapes, and the
//! kernel runs on the pool with the GIL released.

use crate::errors::to_py;
use crate::tensors::{index_info, kernel_info, TensorInfo};
use crate::views::{slice, slice_mut};
use bigmodel_kernels::cpu::conv2d::{
    conv2d_backward as backward, conv2d_forward as forward, conv2d_relu_pool2_forward as pooled,
    Conv2dGrads, Conv2dParams, Scratch, Upstream,
};
use bigmodel_kernels::element::{DType, Element};
use bigmodel_kernels::{pool, Result};
use half::{bf16, f16};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

fn info(t: &Bound<'_, PyAny>, what: &str) -> PyResult<TensorInfo> {
    kernel_info(t, "conv2d", what)
}

/// Inspects every tensor and checks they share one dtype.
fn infos(
    tensors: &[(Option<&Bound<'_, PyAny>>, &str)],
) -> PyResult<(Vec<Option<TensorInfo>>, DType)> {
    let mut out = Vec::with_capacity(tensors.len());
    let mut dtype = None;
    for (t, what) in tensors {
        let i = t.map(|t| info(t, what)).transpose()?;
        if let Some(i) = i {
            match dtype {
                None => dtype = Some(i.dtype),
                Some(d) if d != i.dtype => {
                    return Err(PyRuntimeError::new_err(format!(
                        "conv2d: {what} has dtype {:?}, expected {d:?} like the input",
                        i.dtype
                    )))
                }
                _ => {}
            }
        }
        out.push(i);
    }
    Ok((out, dtype.unwrap_or(DType::F32)))
}

#[allow(clippy::too_many_arguments)]
fn params(
    input_shape: (usize, usize, usize, usize),
    weight_shape: (usize, usize, usize),
    groups: usize,
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    out_hw: (usize, usize),
) -> Conv2dParams {
    let (batch, c_in, h, w) = input_shape;
    let (c_out, kh, kw) = weight_shape;
    Conv2dParams {
        batch,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        groups,
        stride: [stride.0, stride.1],
        dilation: [dilation.0, dilation.1],
        pad: [padding.0, padding.1],
        out: [out_hw.0, out_hw.1],
    }
}

/// Fills `output` (N, C_out, OH, OW) with conv2d(input, weight) + bias, or with its ReLU when
/// `relu`. `padding` is the padding before the first row and column; `out_hw` the output's
/// spatial size. With `pool_indices` (and `relu`), `output` and `pool_indices` (N, C_out,
/// OH / 2, OW / 2) get max_pool2d(relu(conv2d), 2) and its indices.
#[pyfunction]
#[pyo3(signature = (input, weight, bias, output, *, input_shape, weight_shape, groups, stride, padding, dilation, out_hw, num_threads, relu=false, pool_indices=None))]
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
    output: &Bound<'_, PyAny>,
    input_shape: (usize, usize, usize, usize),
    weight_shape: (usize, usize, usize),
    groups: usize,
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    out_hw: (usize, usize),
    num_threads: usize,
    relu: bool,
    pool_indices: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let p = params(
        input_shape,
        weight_shape,
        groups,
        stride,
        padding,
        dilation,
        out_hw,
    );
    let (t, dtype) = infos(&[
        (Some(input), "input"),
        (Some(weight), "weight"),
        (bias, "bias"),
        (Some(output), "output"),
    ])?;
    let [x, w, b, y] = [t[0], t[1], t[2], t[3]];
    let (x, w, y) = (x.unwrap_or(EMPTY), w.unwrap_or(EMPTY), y.unwrap_or(EMPTY));
    let ix = match pool_indices {
        Some(_) if !relu => {
            return Err(PyRuntimeError::new_err(
                "conv2d: the fused pooling follows the fused ReLU (relu=True)",
            ))
        }
        Some(t) => Some(as_info(index_info(t, "conv2d")?)),
        None => None,
    };
    let written = [Some(y), ix];
    for out in written.iter().flatten() {
        if [Some(x), Some(w), b]
            .iter()
            .flatten()
            .any(|r| overlap(r, out))
        {
            return Err(PyRuntimeError::new_err(
                "conv2d: output must not share memory with an input",
            ));
        }
    }
    if let Some(ix) = ix {
        if overlap(&ix, &y) {
            return Err(PyRuntimeError::new_err(
                "conv2d: the indices must not share memory with the output",
            ));
        }
    }
    py.detach(|| {
        pool::run(num_threads, serial(&p), || match dtype {
            DType::F32 => run_forward::<f32>(&p, x, w, b, relu, y, ix),
            DType::F64 => run_forward::<f64>(&p, x, w, b, relu, y, ix),
            DType::BF16 => run_forward::<bf16>(&p, x, w, b, relu, y, ix),
            DType::F16 => run_forward::<f16>(&p, x, w, b, relu, y, ix),
        })
    })
    .map_err(to_py)
}

/// Whether a call has too little work to be worth the pool (see `pool::run`).
fn serial(p: &Conv2dParams) -> bool {
    let macs = pool::work(&[
        p.batch,
        p.c_out,
        p.out[0],
        p.out[1],
        p.c_in / p.groups.max(1),
        p.kh,
        p.kw,
    ]);
    macs < pool::SERIAL_MACS
}

/// Whether two tensors' memory ranges intersect (empty tensors intersect nothing).
fn overlap(a: &TensorInfo, b: &TensorInfo) -> bool {
    let end = |t: &TensorInfo| {
        t.ptr
            .saturating_add(t.numel.saturating_mul(t.dtype.size_of()))
    };
    a.numel > 0 && b.numel > 0 && a.ptr < end(b) && b.ptr < end(a)
}

const EMPTY: TensorInfo = TensorInfo {
    ptr: 0,
    numel: 0,
    dtype: DType::F32,
};

/// An int64 tensor's (pointer, count) as a [`TensorInfo`] for the overlap checks (its `dtype`
/// field is unused: 8-byte elements, as F64).
fn as_info((ptr, numel): (usize, usize)) -> TensorInfo {
    TensorInfo {
        ptr,
        numel,
        dtype: DType::F64,
    }
}

fn run_forward<E: Element>(
    p: &Conv2dParams,
    x: TensorInfo,
    w: TensorInfo,
    b: Option<TensorInfo>,
    relu: bool,
    y: TensorInfo,
    ix: Option<TensorInfo>,
) -> Result<()>
where
    E::Acc: Scratch,
{
    // SAFETY: each pointer is the data pointer of a live contiguous CPU tensor of `numel`
    // elements of this dtype (inspected above; int64 for the indices), kept alive by the Python
    // caller for the whole call; the output and the indices overlap neither the inputs nor each
    // other (checked above), and the inputs are only read.
    unsafe {
        let x = slice::<E>(x.ptr, x.numel, "input")?;
        let w = slice::<E>(w.ptr, w.numel, "weight")?;
        let b = match b {
            Some(b) => Some(slice::<E>(b.ptr, b.numel, "bias")?),
            None => None,
        };
        let y = slice_mut::<E>(y.ptr, y.numel, "output")?;
        match ix {
            Some(ix) => pooled(
                p,
                x,
                w,
                b,
                y,
                slice_mut::<i64>(ix.ptr, ix.numel, "indices")?,
            ),
            None => forward(p, x, w, b, relu, y),
        }
    }
}

/// Fills the gradients passed (None for those not wanted) of conv2d given `grad_output`; with
/// `relu_output` (the output of a forward with `relu`), of relu(conv2d); with `pool_indices`
/// (a pooled forward's indices, `grad_output` shaped like them), of max_pool2d(relu(conv2d), 2).
#[pyfunction]
#[pyo3(signature = (grad_output, input, weight, grad_input, grad_weight, grad_bias, *, input_shape, weight_shape, groups, stride, padding, dilation, out_hw, num_threads, relu_output=None, pool_indices=None))]
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    py: Python<'_>,
    grad_output: &Bound<'_, PyAny>,
    input: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    grad_input: Option<&Bound<'_, PyAny>>,
    grad_weight: Option<&Bound<'_, PyAny>>,
    grad_bias: Option<&Bound<'_, PyAny>>,
    input_shape: (usize, usize, usize, usize),
    weight_shape: (usize, usize, usize),
    groups: usize,
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    out_hw: (usize, usize),
    num_threads: usize,
    relu_output: Option<&Bound<'_, PyAny>>,
    pool_indices: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let p = params(
        input_shape,
        weight_shape,
        groups,
        stride,
        padding,
        dilation,
        out_hw,
    );
    let (t, dtype) = infos(&[
        (Some(grad_output), "grad_output"),
        (Some(input), "input"),
        (Some(weight), "weight"),
        (grad_input, "grad_input"),
        (grad_weight, "grad_weight"),
        (grad_bias, "grad_bias"),
        (relu_output, "relu_output"),
    ])?;
    let reads = [t[0], t[1], t[2]].map(|i| i.unwrap_or(EMPTY));
    let writes = [t[3], t[4], t[5]];
    let relu_out = t[6];
    let ix = pool_indices
        .map(|t| index_info(t, "conv2d").map(as_info))
        .transpose()?;
    if ix.is_some() && relu_out.is_some() {
        return Err(PyRuntimeError::new_err(
            "conv2d: give pool_indices (a pooled forward) or relu_output (a ReLU forward), not both",
        ));
    }
    // Every written tensor must be distinct from every other tensor (fresh outputs from Python).
    for (i, a) in writes.iter().enumerate() {
        let Some(a) = a.filter(|a| a.numel > 0) else {
            continue;
        };
        let clash = reads
            .iter()
            .chain(&relu_out)
            .chain(&ix)
            .any(|r| overlap(r, &a))
            || writes
                .iter()
                .enumerate()
                .any(|(j, b)| j != i && b.is_some_and(|b| overlap(&b, &a)));
        if clash {
            return Err(PyRuntimeError::new_err(
                "conv2d: gradient outputs must not share memory with other tensors",
            ));
        }
    }
    py.detach(|| {
        pool::run(num_threads, serial(&p), || match dtype {
            DType::F32 => run_backward::<f32>(&p, reads, [relu_out, ix], writes),
            DType::F64 => run_backward::<f64>(&p, reads, [relu_out, ix], writes),
            DType::BF16 => run_backward::<bf16>(&p, reads, [relu_out, ix], writes),
            DType::F16 => run_backward::<f16>(&p, reads, [relu_out, ix], writes),
        })
    })
    .map_err(to_py)
}

fn run_backward<E: Element>(
    p: &Conv2dParams,
    reads: [TensorInfo; 3],
    [relu_out, ix]: [Option<TensorInfo>; 2],
    writes: [Option<TensorInfo>; 3],
) -> Result<()>
where
    E::Acc: Scratch,
{
    let [gy, x, w] = reads;
    let names = ["grad_input", "grad_weight", "grad_bias"];
    // SAFETY: as in `run_forward`: live contiguous CPU tensors of `numel` elements of this dtype;
    // the three outputs overlap neither each other nor the inputs and the ReLU output (checked
    // by the caller), and the inputs are only read.
    unsafe {
        let gy = slice::<E>(gy.ptr, gy.numel, "grad_output")?;
        let x = slice::<E>(x.ptr, x.numel, "input")?;
        let w = slice::<E>(w.ptr, w.numel, "weight")?;
        let up = match (relu_out, ix) {
            (_, Some(ix)) => Upstream::ReluPool2 {
                grad: gy,
                indices: slice::<i64>(ix.ptr, ix.numel, "pool_indices")?,
            },
            (Some(y), None) => Upstream::Relu {
                grad: gy,
                out: slice::<E>(y.ptr, y.numel, "relu_output")?,
            },
            _ => Upstream::Conv(gy),
        };
        let mut outs: [Option<&mut [E]>; 3] = [None, None, None];
        for (k, t) in writes.iter().enumerate() {
            if let Some(t) = t {
                outs[k] = Some(slice_mut::<E>(t.ptr, t.numel, names[k])?);
            }
        }
        let [gi, gw, gb] = outs;
        backward(
            p,
            up,
            x,
            w,
            Conv2dGrads {
                input: gi,
                weight: gw,
                bias: gb,
            },
        )
    }
}
