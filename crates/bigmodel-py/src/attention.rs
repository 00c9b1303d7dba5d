//! Binding of the flash-attention kernels (forward and backward).
//!
//! The Python layer (`bigmodel_native.ops.attention`) broadcasts and flattens the inputs to
//! contiguous (B, H, L, E) tensors, compacts the mask, allocates every output with torch and
//! passes it here to be filled. This side re-checks what memory safety needs: CPU, contiguous,
//! dtypes, element counts against the shape (the kernel checks them again), and that no output
//! overlaps another tensor; then it releases the GIL and runs on the crate's pool.

use crate::errors::to_py;
use crate::tensors::{kernel_info, TensorInfo};
use crate::views::{slice, slice_mut};
use bigmodel_kernels::cpu::attention::{
    self as kernel, AttnElement, BackwardInputs, Mask, Params, Shape,
};
use bigmodel_kernels::element::DType;
use bigmodel_kernels::{pool, Error, Result};
use half::{bf16, f16};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// A tensor's memory as (pointer, elements, dtype), or the Python error torch would raise.
fn info(t: &Bound<'_, PyAny>, what: &str) -> PyResult<TensorInfo> {
    kernel_info(t, "attention", what)
}

/// A contiguous CPU torch.bool tensor as (pointer, bytes).
fn bool_info(t: &Bound<'_, PyAny>) -> PyResult<(usize, usize)> {
    let py = t.py();
    let torch = py.import("torch")?;
    if !t.getattr("is_cpu")?.is_truthy()?
        || !t.getattr("dtype")?.is(&torch.getattr("bool")?)
        || !t.call_method0("is_contiguous")?.is_truthy()?
    {
        return Err(PyRuntimeError::new_err(
            "attention: a boolean mask must be a contiguous CPU torch.bool tensor",
        ));
    }
    Ok((
        t.call_method0("data_ptr")?.extract()?,
        t.getattr("nbytes")?.extract()?,
    ))
}

/// Byte range of a tensor, for the overlap check.
fn span(ptr: usize, bytes: usize) -> (usize, usize) {
    (ptr, ptr.saturating_add(bytes))
}

fn check_disjoint(outputs: &[(usize, usize)], all: &[(usize, usize)]) -> Result<()> {
    for (i, o) in outputs.iter().enumerate() {
        for (j, a) in all.iter().enumerate() {
            let same = i == j;
            if !same && o.0 < o.1 && a.0 < a.1 && o.0 < a.1 && a.0 < o.1 {
                return Err(Error::Value(
                    "attention: an output tensor overlaps another argument".into(),
                ));
            }
        }
    }
    Ok(())
}

/// The mask argument: kind ("none", "bool", "float"), tensor and its 4 broadcast dims.
struct MaskArg {
    kind: u8,
    ptr: usize,
    len: usize,
    dtype: Option<DType>,
    dims: [usize; 4],
}

fn mask_arg(kind: &str, mask: Option<&Bound<'_, PyAny>>, dims: [usize; 4]) -> PyResult<MaskArg> {
    match (kind, mask) {
        ("none", _) => Ok(MaskArg {
            kind: 0,
            ptr: 0,
            len: 0,
            dtype: None,
            dims,
        }),
        ("bool", Some(m)) => {
            let (ptr, len) = bool_info(m)?;
            Ok(MaskArg {
                kind: 1,
                ptr,
                len,
                dtype: None,
                dims,
            })
        }
        ("float", Some(m)) => {
            let i = info(m, "attn_mask")?;
            Ok(MaskArg {
                kind: 2,
                ptr: i.ptr,
                len: i.numel,
                dtype: Some(i.dtype),
                dims,
            })
        }
        _ => Err(PyRuntimeError::new_err(format!(
            "attention: bad mask kind {kind:?}"
        ))),
    }
}

/// The kernel's mask over the memory described by `m`.
///
/// # Safety
/// `m` must describe a live tensor the caller keeps alive and unwritten during the call.
unsafe fn kernel_mask<'a, T: AttnElement>(m: &MaskArg, acc: DType) -> Result<Mask<'a, T::Acc>> {
    Ok(match m.kind {
        0 => Mask::None,
        // SAFETY: forwarded precondition; bool bytes are read as u8, valid for any value.
        1 => Mask::Bool {
            data: unsafe { slice::<u8>(m.ptr, m.len, "attn_mask")? },
            dims: m.dims,
        },
        _ => {
            if m.dtype != Some(acc) {
                return Err(Error::DType(format!(
                    "attention: an additive mask must be {acc:?} for this query dtype, got {:?}",
                    m.dtype
                )));
            }
            // SAFETY: forwarded precondition; dtype checked equal to the arithmetic type.
            Mask::Additive {
                data: unsafe { slice::<T::Acc>(m.ptr, m.len, "attn_mask")? },
                dims: m.dims,
            }
        }
    })
}

fn acc_dtype(d: DType) -> DType {
    if d == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

type ShapeArg = (usize, usize, usize, usize, usize, usize, usize);

/// Whether a call has too little work to be worth the pool (see `pool::run`).
fn serial(s: &Shape) -> bool {
    let macs = pool::work(&[
        s.batch,
        s.heads_q,
        s.len_q,
        s.len_kv,
        s.dim_qk.saturating_add(s.dim_v),
    ]);
    macs < pool::SERIAL_MACS
}

fn shape_of(s: ShapeArg) -> Shape {
    Shape {
        batch: s.0,
        heads_q: s.1,
        heads_kv: s.2,
        len_q: s.3,
        len_kv: s.4,
        dim_qk: s.5,
        dim_v: s.6,
    }
}

/// Checks the dtypes of the data tensors (all equal) and of the log-sum-exp (arithmetic type).
fn check_dtypes(tensors: &[(&TensorInfo, &str)], lse: &TensorInfo) -> PyResult<DType> {
    let d = tensors[0].0.dtype;
    for (t, name) in tensors {
        if t.dtype != d {
            return Err(PyRuntimeError::new_err(format!(
                "Expected query, key, and value to have the same dtype, but {name} is {:?} and query is {d:?}",
                t.dtype
            )));
        }
    }
    if lse.dtype != acc_dtype(d) {
        return Err(PyRuntimeError::new_err(
            "attention: logsumexp must be in the arithmetic dtype",
        ));
    }
    Ok(d)
}

/// Forward pass: fills `out` and `lse`.
#[pyfunction]
#[pyo3(signature = (q, k, v, out, lse, mask, mask_kind, mask_dims, shape, scale, causal, dropout_p, seed, num_threads))]
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    lse: &Bound<'_, PyAny>,
    mask: Option<&Bound<'_, PyAny>>,
    mask_kind: &str,
    mask_dims: (usize, usize, usize, usize),
    shape: ShapeArg,
    scale: f64,
    causal: bool,
    dropout_p: f64,
    seed: u64,
    num_threads: usize,
) -> PyResult<()> {
    let (qi, ki, vi) = (info(q, "query")?, info(k, "key")?, info(v, "value")?);
    let (oi, li) = (info(out, "out")?, info(lse, "logsumexp")?);
    let d = check_dtypes(
        &[(&qi, "query"), (&ki, "key"), (&vi, "value"), (&oi, "out")],
        &li,
    )?;
    let md = mask_dims;
    let m = mask_arg(mask_kind, mask, [md.0, md.1, md.2, md.3])?;
    let sz = d.size_of();
    let spans = [
        span(oi.ptr, oi.numel * sz),
        span(li.ptr, li.numel * acc_dtype(d).size_of()),
        span(qi.ptr, qi.numel * sz),
        span(ki.ptr, ki.numel * sz),
        span(vi.ptr, vi.numel * sz),
        span(
            m.ptr,
            m.len
                * if m.kind == 2 {
                    acc_dtype(d).size_of()
                } else {
                    1
                },
        ),
    ];
    check_disjoint(&spans[..2], &spans).map_err(to_py)?;
    let params = Params {
        scale,
        causal,
        dropout_p,
        seed,
    };
    let shape = shape_of(shape);
    let run = || -> Result<()> {
        match d {
            DType::F32 => fwd::<f32>(&shape, &params, [qi, ki, vi, oi, li], &m, d),
            DType::F64 => fwd::<f64>(&shape, &params, [qi, ki, vi, oi, li], &m, d),
            DType::BF16 => fwd::<bf16>(&shape, &params, [qi, ki, vi, oi, li], &m, d),
            DType::F16 => fwd::<f16>(&shape, &params, [qi, ki, vi, oi, li], &m, d),
        }
    };
    py.detach(|| pool::run(num_threads, serial(&shape), run))
        .map_err(to_py)
}

fn fwd<T: AttnElement>(
    shape: &Shape,
    params: &Params,
    t: [TensorInfo; 5],
    m: &MaskArg,
    d: DType,
) -> Result<()> {
    let [q, k, v, o, l] = t;
    // SAFETY: every pointer is the data pointer of a live, contiguous CPU tensor of `numel`
    // elements of its checked dtype, which the Python caller holds for the whole call; the two
    // outputs overlap nothing else (checked above), the inputs are only read.
    unsafe {
        kernel::forward::<T>(
            shape,
            params,
            slice(q.ptr, q.numel, "query")?,
            slice(k.ptr, k.numel, "key")?,
            slice(v.ptr, v.numel, "value")?,
            kernel_mask::<T>(m, acc_dtype(d))?,
            slice_mut(o.ptr, o.numel, "out")?,
            slice_mut(l.ptr, l.numel, "logsumexp")?,
        )
    }
}

/// Backward pass: fills `dq`, `dk`, `dv`, and `grad_scores` if given (`B * Hq * L * S` in the
/// arithmetic dtype: the gradient of an additive mask before its broadcast dimensions are summed).
#[pyfunction]
#[pyo3(signature = (q, k, v, out, lse, grad_out, dq, dk, dv, mask, mask_kind, mask_dims, shape, scale, causal, dropout_p, seed, num_threads, grad_scores=None))]
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    lse: &Bound<'_, PyAny>,
    grad_out: &Bound<'_, PyAny>,
    dq: &Bound<'_, PyAny>,
    dk: &Bound<'_, PyAny>,
    dv: &Bound<'_, PyAny>,
    mask: Option<&Bound<'_, PyAny>>,
    mask_kind: &str,
    mask_dims: (usize, usize, usize, usize),
    shape: ShapeArg,
    scale: f64,
    causal: bool,
    dropout_p: f64,
    seed: u64,
    num_threads: usize,
    grad_scores: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let t = [
        info(q, "query")?,
        info(k, "key")?,
        info(v, "value")?,
        info(out, "out")?,
        info(grad_out, "grad_out")?,
        info(dq, "grad_query")?,
        info(dk, "grad_key")?,
        info(dv, "grad_value")?,
    ];
    let li = info(lse, "logsumexp")?;
    let names = [
        "query",
        "key",
        "value",
        "out",
        "grad_out",
        "grad_query",
        "grad_key",
        "grad_value",
    ];
    let pairs: Vec<(&TensorInfo, &str)> = t.iter().zip(names).collect();
    let d = check_dtypes(&pairs, &li)?;
    let md = mask_dims;
    let m = mask_arg(mask_kind, mask, [md.0, md.1, md.2, md.3])?;
    let sz = d.size_of();
    let mut spans: Vec<(usize, usize)> = [5, 6, 7, 0, 1, 2, 3, 4]
        .iter()
        .map(|&i| span(t[i].ptr, t[i].numel * sz))
        .collect();
    spans.push(span(li.ptr, li.numel * acc_dtype(d).size_of()));
    spans.push(span(
        m.ptr,
        m.len
            * if m.kind == 2 {
                acc_dtype(d).size_of()
            } else {
                1
            },
    ));
    let ds = grad_scores.map(|g| info(g, "grad_scores")).transpose()?;
    if let Some(g) = &ds {
        if g.dtype != acc_dtype(d) {
            return Err(PyRuntimeError::new_err(
                "attention backward: grad_scores must have the arithmetic dtype (float64 for float64 inputs, else float32)",
            ));
        }
        spans.insert(3, span(g.ptr, g.numel * g.dtype.size_of()));
    }
    let written = if ds.is_some() { 4 } else { 3 };
    check_disjoint(&spans[..written], &spans).map_err(to_py)?;
    let params = Params {
        scale,
        causal,
        dropout_p,
        seed,
    };
    let shape = shape_of(shape);
    let run = || -> Result<()> {
        match d {
            DType::F32 => bwd::<f32>(&shape, &params, &t, li, &m, d, ds),
            DType::F64 => bwd::<f64>(&shape, &params, &t, li, &m, d, ds),
            DType::BF16 => bwd::<bf16>(&shape, &params, &t, li, &m, d, ds),
            DType::F16 => bwd::<f16>(&shape, &params, &t, li, &m, d, ds),
        }
    };
    py.detach(|| pool::run(num_threads, serial(&shape), run))
        .map_err(to_py)
}

fn bwd<T: AttnElement>(
    shape: &Shape,
    params: &Params,
    t: &[TensorInfo; 8],
    l: TensorInfo,
    m: &MaskArg,
    d: DType,
    ds: Option<TensorInfo>,
) -> Result<()> {
    let [q, k, v, o, go, dq, dk, dv] = *t;
    // SAFETY: as in `fwd`: live contiguous CPU tensors of the checked dtypes held by the caller;
    // the gradient outputs (three, or four with grad_scores, whose dtype is the arithmetic one)
    // overlap nothing else (checked above); the rest is only read.
    unsafe {
        let x = BackwardInputs::<T> {
            q: slice(q.ptr, q.numel, "query")?,
            k: slice(k.ptr, k.numel, "key")?,
            v: slice(v.ptr, v.numel, "value")?,
            out: slice(o.ptr, o.numel, "out")?,
            lse: slice(l.ptr, l.numel, "logsumexp")?,
            grad_out: slice(go.ptr, go.numel, "grad_out")?,
        };
        kernel::backward::<T>(
            shape,
            params,
            x,
            kernel_mask::<T>(m, acc_dtype(d))?,
            slice_mut(dq.ptr, dq.numel, "grad_query")?,
            slice_mut(dk.ptr, dk.numel, "grad_key")?,
            slice_mut(dv.ptr, dv.numel, "grad_value")?,
            match ds {
                Some(g) => Some(slice_mut(g.ptr, g.numel, "grad_scores")?),
                None => None,
            },
        )
    }
}
