//! Binding of the fused softmax cross-entropy (forward, logits backward, target backward).
//!
//! The Python layer (`bigmodel_native.ops.cross_entropy`) checks arguments as torch does, makes
//! the tensors contiguous, allocates every output and passes them here to be filled. This file
//! re-checks what memory safety needs: CPU, contiguous, dtypes (the float tensors share one
//! dtype; the saved statistics are in its accumulation type; class targets are int64), element
//! counts (in the kernel) and that no written buffer overlaps another buffer, then releases the
//! GIL and runs the kernel on the crate's pool. Class indices are re-validated by the kernel
//! before any memory is touched at them.

use crate::errors::to_py;
use crate::tensors::{call0, kernel_info};
use bigmodel_kernels::cpu::cross_entropy::{
    backward, forward, forward_grad, math::CeElement, target_backward, weight_backward, Backward,
    CeParams, Forward, Reduction, Target,
};
use bigmodel_kernels::element::DType;
use bigmodel_kernels::{pool, Error, Result};
use half::{bf16, f16};
use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// A float tensor (or an int64 one, for class targets) checked for the kernel.
#[derive(Clone, Copy)]
struct Buf {
    ptr: usize,
    numel: usize,
    dtype: Option<DType>,
}

impl Buf {
    fn bytes(&self) -> usize {
        self.numel * self.dtype.map_or(8, DType::size_of)
    }
}

static INT64: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn float_buf(t: &Bound<'_, PyAny>, role: &str) -> PyResult<Buf> {
    let info = kernel_info(t, "cross_entropy", role)?;
    Ok(Buf {
        ptr: info.ptr,
        numel: info.numel,
        dtype: Some(info.dtype),
    })
}

/// A contiguous int64 CPU tensor of class indices.
fn index_buf(t: &Bound<'_, PyAny>) -> PyResult<Buf> {
    let py = t.py();
    let int64 = INT64.get_or_try_init(py, || {
        PyResult::Ok(py.import("torch")?.getattr("int64")?.unbind())
    })?;
    if !t.getattr(intern!(py, "is_cpu"))?.is_truthy()? {
        return Err(PyNotImplementedError::new_err(
            "cross_entropy: target is not a CPU tensor",
        ));
    }
    if !t.getattr(intern!(py, "dtype"))?.is(int64.bind(py)) {
        return Err(PyRuntimeError::new_err(
            "cross_entropy: class-index targets must be int64 (torch.long)",
        ));
    }
    if !call0(t, intern!(py, "is_contiguous"))?.is_truthy()? {
        return Err(PyRuntimeError::new_err(
            "cross_entropy: target must be contiguous",
        ));
    }
    Ok(Buf {
        ptr: call0(t, intern!(py, "data_ptr"))?.extract()?,
        numel: t.getattr(intern!(py, "nbytes"))?.extract::<usize>()? / 8,
        dtype: None,
    })
}

/// The target: int64 class indices, or probabilities in the logits' dtype.
fn target_buf(t: &Bound<'_, PyAny>) -> PyResult<Buf> {
    if call0(t, intern!(t.py(), "is_floating_point"))?.is_truthy()? {
        float_buf(t, "target")
    } else {
        index_buf(t)
    }
}

/// Refuses a written buffer that shares memory with any other buffer of the call.
fn check_disjoint(written: &[(&str, Buf)], others: &[(&str, Buf)]) -> PyResult<()> {
    for (i, (name, w)) in written.iter().enumerate() {
        if w.numel == 0 {
            continue;
        }
        let all = written
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, b)| b);
        for (other, o) in all.chain(others.iter()) {
            if o.numel == 0 {
                continue;
            }
            if w.ptr < o.ptr + o.bytes() && o.ptr < w.ptr + w.bytes() {
                return Err(PyRuntimeError::new_err(format!(
                    "cross_entropy: {name} overlaps {other} in memory"
                )));
            }
        }
    }
    Ok(())
}

/// Checks that every float buffer has the logits' dtype and every statistic its accumulator's.
fn check_dtypes(dtype: DType, same: &[(&str, Buf)], stats: &[(&str, Buf)]) -> PyResult<()> {
    for (name, b) in same {
        if b.dtype.is_some_and(|d| d != dtype) {
            return Err(PyRuntimeError::new_err(format!(
                "cross_entropy: expected {name} to have dtype {dtype:?} like the input, got {:?}",
                b.dtype.unwrap()
            )));
        }
    }
    let acc = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    for (name, b) in stats {
        if b.dtype != Some(acc) {
            return Err(PyRuntimeError::new_err(format!(
                "cross_entropy: {name} must have dtype {acc:?} for {dtype:?} logits"
            )));
        }
    }
    Ok(())
}

fn params(
    outer: usize,
    classes: usize,
    inner: usize,
    reduction: i64,
    ignore_index: i64,
    label_smoothing: f64,
) -> PyResult<CeParams> {
    let reduction = match reduction {
        0 => Reduction::None,
        1 => Reduction::Mean,
        2 => Reduction::Sum,
        r => {
            return Err(PyValueError::new_err(format!(
                "{r} is not a valid value for reduction"
            )))
        }
    };
    Ok(CeParams {
        outer,
        classes,
        inner,
        ignore_index,
        label_smoothing,
        reduction,
    })
}

/// # Safety
/// `b` must describe a live CPU buffer of `b.numel` elements of `T` that nothing writes while
/// the slice lives.
unsafe fn view<'a, T>(b: Buf, what: &str) -> Result<&'a [T]> {
    if b.numel == 0 {
        return Ok(&[]);
    }
    if b.ptr == 0 || !b.ptr.is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Error::Value(format!(
            "{what}: null or misaligned data pointer"
        )));
    }
    // SAFETY: non-null and aligned (checked); `numel` elements come from the tensor's own
    // nbytes, so the size fits the allocation; no writer exists per this function's contract.
    Ok(unsafe { std::slice::from_raw_parts(b.ptr as *const T, b.numel) })
}

/// # Safety
/// `b` must describe a live CPU buffer of `b.numel` elements of `T` that nothing else reads or
/// writes while the slice lives.
unsafe fn view_mut<'a, T>(b: Buf, what: &str) -> Result<&'a mut [T]> {
    // SAFETY: this function's contract is `slice_mut`'s.
    unsafe { crate::views::slice_mut(b.ptr, b.numel, what) }
}

/// Calls with fewer elements than this run with the GIL held: they finish in about a
/// microsecond, less than releasing and retaking the GIL costs, and no other thread could get
/// far in that time.
const KEEP_GIL_BELOW: usize = 4096;

/// Runs `f` on the calling thread when the call is short (waking the pool would cost more than
/// the work), else inside the crate's pool; the GIL is released unless the call is tiny.
fn on_pool<R: Send>(
    py: Python<'_>,
    p: &CeParams,
    threads: usize,
    f: impl FnOnce() -> R + Send,
) -> R {
    let numel = p.outer.saturating_mul(p.inner).saturating_mul(p.classes);
    if numel < KEEP_GIL_BELOW {
        f()
    } else if p.is_serial() {
        py.detach(f)
    } else {
        py.detach(|| pool::install(threads, f))
    }
}

/// The dtype dispatch shared by the three entry points.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident, $($arg:expr),*) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
        }
    };
}

/// Fills `loss` (one element, or one per row with reduction "none"), the per-row log-sum-exp
/// `lse`, the per-row coefficient sums `asum` (probability targets; else empty) and the divisor
/// of "mean" `total_weight`. Reductions are torch's enum: 0 none, 1 mean, 2 sum.
///
/// `lse`, `asum` and `total_weight` may all be None when the caller needs only the loss (they
/// are then kept in scratch memory). With `grad_input`, also writes the logits' gradient for an upstream gradient of 1 (per row
/// with reduction "none"), as `cross_entropy_backward` would; the caller scales it by the real
/// upstream gradient when that is not 1.
#[pyfunction]
#[pyo3(signature = (
    input, target, weight, loss, lse, asum, total_weight,
    outer, classes, inner, reduction, ignore_index, label_smoothing, num_threads, grad_input=None
))]
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_forward(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    target: &Bound<'_, PyAny>,
    weight: Option<&Bound<'_, PyAny>>,
    loss: &Bound<'_, PyAny>,
    lse: Option<&Bound<'_, PyAny>>,
    asum: Option<&Bound<'_, PyAny>>,
    total_weight: Option<&Bound<'_, PyAny>>,
    outer: usize,
    classes: usize,
    inner: usize,
    reduction: i64,
    ignore_index: i64,
    label_smoothing: f64,
    num_threads: usize,
    grad_input: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let p = params(
        outer,
        classes,
        inner,
        reduction,
        ignore_index,
        label_smoothing,
    )?;
    let x = float_buf(input, "input")?;
    let gi = grad_input.map(|g| float_buf(g, "grad_input")).transpose()?;
    let t = target_buf(target)?;
    let w = weight.map(|w| float_buf(w, "weight")).transpose()?;
    let l = float_buf(loss, "loss")?;
    let stats = match (lse, asum, total_weight) {
        (Some(e), Some(a), Some(tw)) => Some([
            float_buf(e, "lse")?,
            float_buf(a, "asum")?,
            float_buf(tw, "total_weight")?,
        ]),
        (None, None, None) => None,
        _ => {
            return Err(PyValueError::new_err(
                "cross_entropy: lse, asum and total_weight are given together or not at all",
            ))
        }
    };
    let dtype = x.dtype.unwrap();
    let mut same = vec![("target", t), ("loss", l)];
    same.extend(w.map(|w| ("weight", w)));
    same.extend(gi.map(|g| ("grad_input", g)));
    let stat_names = ["lse", "asum", "total_weight"];
    let stat_list: Vec<(&str, Buf)> = stats
        .iter()
        .flat_map(|s| stat_names.into_iter().zip(*s))
        .collect();
    check_dtypes(dtype, &same, &stat_list)?;
    let mut reads = vec![("input", x), ("target", t)];
    reads.extend(w.map(|w| ("weight", w)));
    let mut written = vec![("loss", l)];
    written.extend(stat_list);
    written.extend(gi.map(|g| ("grad_input", g)));
    check_disjoint(&written, &reads)?;
    let none = Buf {
        ptr: 0,
        numel: 0,
        dtype: None,
    };
    let bufs = [x, t, w.unwrap_or(none), l];
    let has_w = w.is_some();
    on_pool(py, &p, num_threads, || {
        by_dtype!(dtype, run_forward, &p, bufs, has_w, stats, gi)
    })
    .map_err(to_py)
}

fn run_forward<T: CeElement>(
    p: &CeParams,
    b: [Buf; 4],
    has_w: bool,
    stats: Option<[Buf; 3]>,
    grad: Option<Buf>,
) -> Result<()> {
    let [x, t, w, l] = b;
    // Statistics nobody keeps live in scratch memory, sized from the shape only once that shape
    // is known to describe the input (so a bad call cannot ask for a huge allocation).
    let rows = p.outer.saturating_mul(p.inner);
    if stats.is_none() && (p.classes == 0 || rows.checked_mul(p.classes) != Some(x.numel)) {
        return Err(Error::Shape(
            "cross_entropy: without lse, asum and total_weight the input must have outer * classes * \
             inner elements, classes >= 1"
                .into(),
        ));
    }
    let prob = t.dtype.is_some();
    let zero = <T::Acc as bigmodel_kernels::element::Real>::ZERO;
    let mut scratch = match stats {
        Some(_) => (Vec::new(), Vec::new(), Vec::new()),
        None => (
            vec![zero; rows],
            vec![zero; if prob { rows } else { 0 }],
            vec![zero; 1],
        ),
    };
    // SAFETY: every buffer is a live contiguous CPU tensor the Python caller holds for the whole
    // call, of the element type checked in `cross_entropy_forward`; the written ones (loss, lse,
    // asum, total_weight, grad_input) overlap no other buffer (`check_disjoint`), the read ones
    // are only read.
    unsafe {
        let target = if t.dtype.is_none() {
            Target::Index(view::<i64>(t, "target")?)
        } else {
            Target::Prob(view::<T>(t, "target")?)
        };
        let f = Forward {
            input: view(x, "input")?,
            target,
            weight: if has_w {
                Some(view(w, "weight")?)
            } else {
                None
            },
            loss: view_mut(l, "loss")?,
            lse: match stats {
                Some([e, _, _]) => view_mut(e, "lse")?,
                None => &mut scratch.0,
            },
            asum: match stats {
                Some([_, a, _]) => view_mut(a, "asum")?,
                None => &mut scratch.1,
            },
            total_weight: match stats {
                Some([_, _, tw]) => view_mut(tw, "total_weight")?,
                None => &mut scratch.2,
            },
        };
        match grad {
            Some(g) => forward_grad(p, f, view_mut(g, "grad_input")?),
            None => forward(p, f),
        }
    }
}

/// Writes the gradient of the logits into `grad_input`. With `input=None` the logits are read
/// from `grad_input` itself and overwritten (the in-place mode).
#[pyfunction]
#[pyo3(signature = (
    grad_output, input, grad_input, target, weight, lse, asum, total_weight, *,
    outer, classes, inner, reduction, ignore_index, label_smoothing, num_threads
))]
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    py: Python<'_>,
    grad_output: &Bound<'_, PyAny>,
    input: Option<&Bound<'_, PyAny>>,
    grad_input: &Bound<'_, PyAny>,
    target: &Bound<'_, PyAny>,
    weight: Option<&Bound<'_, PyAny>>,
    lse: &Bound<'_, PyAny>,
    asum: &Bound<'_, PyAny>,
    total_weight: &Bound<'_, PyAny>,
    outer: usize,
    classes: usize,
    inner: usize,
    reduction: i64,
    ignore_index: i64,
    label_smoothing: f64,
    num_threads: usize,
) -> PyResult<()> {
    let p = params(
        outer,
        classes,
        inner,
        reduction,
        ignore_index,
        label_smoothing,
    )?;
    let gi = float_buf(grad_input, "grad_input")?;
    let go = float_buf(grad_output, "grad_output")?;
    let x = input.map(|x| float_buf(x, "input")).transpose()?;
    let t = target_buf(target)?;
    let w = weight.map(|w| float_buf(w, "weight")).transpose()?;
    let (e, a, tw) = (
        float_buf(lse, "lse")?,
        float_buf(asum, "asum")?,
        float_buf(total_weight, "total_weight")?,
    );
    let dtype = gi.dtype.unwrap();
    let mut same = vec![("grad_output", go), ("target", t)];
    same.extend(x.map(|x| ("input", x)));
    same.extend(w.map(|w| ("weight", w)));
    check_dtypes(
        dtype,
        &same,
        &[("lse", e), ("asum", a), ("total_weight", tw)],
    )?;
    let mut reads = vec![
        ("grad_output", go),
        ("target", t),
        ("lse", e),
        ("asum", a),
        ("total_weight", tw),
    ];
    reads.extend(x.map(|x| ("input", x)));
    reads.extend(w.map(|w| ("weight", w)));
    check_disjoint(&[("grad_input", gi)], &reads)?;
    let none = Buf {
        ptr: 0,
        numel: 0,
        dtype: None,
    };
    let bufs = [go, x.unwrap_or(none), gi, t, w.unwrap_or(none), e, a, tw];
    let flags = (x.is_some(), w.is_some());
    on_pool(py, &p, num_threads, || {
        by_dtype!(dtype, run_backward, &p, bufs, flags)
    })
    .map_err(to_py)
}

fn run_backward<T: CeElement>(p: &CeParams, b: [Buf; 8], flags: (bool, bool)) -> Result<()> {
    let [go, x, gi, t, w, e, a, tw] = b;
    // SAFETY: as in `run_forward`: live contiguous CPU tensors of the checked element types;
    // grad_input, the only buffer written, overlaps none of the others (`check_disjoint`).
    unsafe {
        let target = if t.dtype.is_none() {
            Target::Index(view::<i64>(t, "target")?)
        } else {
            Target::Prob(view::<T>(t, "target")?)
        };
        backward(
            p,
            Backward {
                grad_output: view(go, "grad_output")?,
                input: if flags.0 {
                    Some(view(x, "input")?)
                } else {
                    None
                },
                grad_input: view_mut(gi, "grad_input")?,
                target,
                weight: if flags.1 {
                    Some(view(w, "weight")?)
                } else {
                    None
                },
                lse: view(e, "lse")?,
                asum: view(a, "asum")?,
                total_weight: view(tw, "total_weight")?,
            },
        )
    }
}

/// Writes the gradient with respect to probability targets into `grad_target`.
#[pyfunction]
#[pyo3(signature = (
    grad_output, input, weight, lse, total_weight, grad_target, *,
    outer, classes, inner, reduction, label_smoothing, num_threads
))]
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_target_backward(
    py: Python<'_>,
    grad_output: &Bound<'_, PyAny>,
    input: &Bound<'_, PyAny>,
    weight: Option<&Bound<'_, PyAny>>,
    lse: &Bound<'_, PyAny>,
    total_weight: &Bound<'_, PyAny>,
    grad_target: &Bound<'_, PyAny>,
    outer: usize,
    classes: usize,
    inner: usize,
    reduction: i64,
    label_smoothing: f64,
    num_threads: usize,
) -> PyResult<()> {
    let p = params(outer, classes, inner, reduction, -100, label_smoothing)?;
    let gt = float_buf(grad_target, "grad_target")?;
    let go = float_buf(grad_output, "grad_output")?;
    let x = float_buf(input, "input")?;
    let w = weight.map(|w| float_buf(w, "weight")).transpose()?;
    let (e, tw) = (
        float_buf(lse, "lse")?,
        float_buf(total_weight, "total_weight")?,
    );
    let dtype = x.dtype.unwrap();
    let mut same = vec![("grad_output", go), ("grad_target", gt)];
    same.extend(w.map(|w| ("weight", w)));
    check_dtypes(dtype, &same, &[("lse", e), ("total_weight", tw)])?;
    let mut reads = vec![
        ("grad_output", go),
        ("input", x),
        ("lse", e),
        ("total_weight", tw),
    ];
    reads.extend(w.map(|w| ("weight", w)));
    check_disjoint(&[("grad_target", gt)], &reads)?;
    let none = Buf {
        ptr: 0,
        numel: 0,
        dtype: None,
    };
    let bufs = [go, x, w.unwrap_or(none), e, tw, gt];
    let has_w = w.is_some();
    on_pool(py, &p, num_threads, || {
        by_dtype!(dtype, run_target_backward, &p, bufs, has_w)
    })
    .map_err(to_py)
}

fn run_target_backward<T: CeElement>(p: &CeParams, b: [Buf; 6], has_w: bool) -> Result<()> {
    let [go, x, w, e, tw, gt] = b;
    // SAFETY: as in `run_forward`; grad_target, the only buffer written, overlaps no other.
    unsafe {
        target_backward::<T>(
            p,
            view(go, "grad_output")?,
            view(x, "input")?,
            if has_w {
                Some(view(w, "weight")?)
            } else {
                None
            },
            view(e, "lse")?,
            view(tw, "total_weight")?,
            view_mut(gt, "grad_target")?,
        )
    }
}

/// Writes the gradient with respect to the class weights (probability targets) into
/// `grad_weight`.
#[pyfunction]
#[pyo3(signature = (
    grad_output, input, target, lse, total_weight, grad_weight, *,
    outer, classes, inner, reduction, label_smoothing, num_threads
))]
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_weight_backward(
    py: Python<'_>,
    grad_output: &Bound<'_, PyAny>,
    input: &Bound<'_, PyAny>,
    target: &Bound<'_, PyAny>,
    lse: &Bound<'_, PyAny>,
    total_weight: &Bound<'_, PyAny>,
    grad_weight: &Bound<'_, PyAny>,
    outer: usize,
    classes: usize,
    inner: usize,
    reduction: i64,
    label_smoothing: f64,
    num_threads: usize,
) -> PyResult<()> {
    let p = params(outer, classes, inner, reduction, -100, label_smoothing)?;
    let gw = float_buf(grad_weight, "grad_weight")?;
    let go = float_buf(grad_output, "grad_output")?;
    let x = float_buf(input, "input")?;
    let t = float_buf(target, "target")?;
    let (e, tw) = (
        float_buf(lse, "lse")?,
        float_buf(total_weight, "total_weight")?,
    );
    let dtype = x.dtype.unwrap();
    check_dtypes(
        dtype,
        &[("grad_output", go), ("target", t), ("grad_weight", gw)],
        &[("lse", e), ("total_weight", tw)],
    )?;
    check_disjoint(
        &[("grad_weight", gw)],
        &[
            ("grad_output", go),
            ("input", x),
            ("target", t),
            ("lse", e),
            ("total_weight", tw),
        ],
    )?;
    let bufs = [go, x, t, e, tw, gw];
    on_pool(py, &p, num_threads, || {
        by_dtype!(dtype, run_weight_backward, &p, bufs)
    })
    .map_err(to_py)
}

fn run_weight_backward<T: CeElement>(p: &CeParams, b: [Buf; 6]) -> Result<()> {
    let [go, x, t, e, tw, gw] = b;
    // SAFETY: as in `run_forward`; grad_weight, the only buffer written, overlaps no other.
    unsafe {
        weight_backward::<T>(
            p,
            view(go, "grad_output")?,
            view(x, "input")?,
            view(t, "target")?,
            view(e, "lse")?,
            view(tw, "total_weight")?,
            view_mut(gw, "grad_weight")?,
        )
    }
}
