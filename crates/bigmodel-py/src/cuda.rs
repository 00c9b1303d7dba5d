//! Bindings of the CUDA kernels (`bigmodel-cuda`): availability, the NVRTC compile check, and the
//! launch entry points of Adam and cross-entropy.
//!
//! GPU tensors cross as device addresses plus torch's current stream (`cuda_stream`, an integer);
//! nothing here synchronises or copies. Python (`bigmodel_native._cuda`, `ops/adam_cuda.py`) checks
//! shapes and devices the way torch does; this side re-checks what memory safety needs (null,
//! alignment, matching sizes and dtypes, same device) before anything is queued, so a refused call
//! changes nothing. Environment failures (no driver, no NVRTC, a compile or driver error) raise
//! RuntimeError, bad arguments ValueError / TypeError.

use crate::errors::NeedsStaging;
use crate::tensors::{inspect_step, kernel_dtype};
use crate::views::slice_mut;
use bigmodel_cuda::adam::{self, AdamHyper, AdamTensor, DType, StepCounter};
use bigmodel_cuda::attention as attn;
use bigmodel_cuda::conv2d::{self as conv, ConvShape};
use bigmodel_cuda::cross_entropy::{self as ce, BackwardArgs, ForwardArgs, Reduction};
use bigmodel_cuda::{runtime, Error};
use bigmodel_kernels::cpu::adam::AdamParams;
use bigmodel_kernels::element::DType as KDType;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

fn to_py(e: Error) -> PyErr {
    match e {
        Error::Value(m) => PyValueError::new_err(m),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// Whether a CUDA device can run the kernels here (driver loadable, at least one device).
#[pyfunction]
pub fn cuda_available() -> bool {
    runtime::cuda_available()
}

/// Why CUDA cannot be used here, or None when it can.
#[pyfunction]
pub fn cuda_unavailable_reason() -> Option<String> {
    match runtime::device_count() {
        Ok(0) => Some("CUDA is not available: the driver reports no device".into()),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// NVRTC's (major, minor) version; RuntimeError when libnvrtc cannot be loaded.
#[pyfunction]
pub fn nvrtc_version() -> PyResult<(i32, i32)> {
    runtime::nvrtc_version().map_err(to_py)
}

/// Compiles every kernel source for `sm_<arch>` (PTX for `compute_<arch>` when `output="ptx"`,
/// a cubin for `sm_<arch>` when `output="cubin"`) and returns {source name: size in bytes}.
/// Needs libnvrtc only, no GPU. RuntimeError with NVRTC's log when a source does not compile.
#[pyfunction]
#[pyo3(signature = (arch, output="ptx"))]
pub fn nvrtc_compile_check<'py>(
    py: Python<'py>,
    arch: u32,
    output: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let out = match output {
        "ptx" => runtime::Output::Ptx,
        "cubin" => runtime::Output::Cubin,
        _ => {
            return Err(PyValueError::new_err(format!(
                "output must be 'ptx' or 'cubin', got {output:?}"
            )))
        }
    };
    let d = PyDict::new(py);
    for (name, src) in bigmodel_cuda::SOURCES {
        let bytes = py
            .detach(|| runtime::compile(name, src, arch, out))
            .map_err(to_py)?;
        d.set_item(name, bytes.len())?;
    }
    Ok(d)
}

/// Compiles one CUDA C source (with the kernels' shared prelude `common.cuh` in front) and returns
/// NVRTC's output: PTX text or a cubin. For tests: a source that does not compile raises
/// RuntimeError carrying NVRTC's log.
#[pyfunction]
#[pyo3(signature = (name, source, arch, output="ptx"))]
pub fn nvrtc_compile_source<'py>(
    py: Python<'py>,
    name: &str,
    source: &str,
    arch: u32,
    output: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let out = match output {
        "ptx" => runtime::Output::Ptx,
        "cubin" => runtime::Output::Cubin,
        _ => {
            return Err(PyValueError::new_err(format!(
                "output must be 'ptx' or 'cubin', got {output:?}"
            )))
        }
    };
    let bytes = py
        .detach(|| runtime::compile(name, source, arch, out))
        .map_err(to_py)?;
    Ok(PyBytes::new(py, &bytes))
}

/// The embedded kernel sources as (name, CUDA C text without the prelude).
#[pyfunction]
pub fn cuda_sources() -> Vec<(&'static str, &'static str)> {
    bigmodel_cuda::SOURCES.to_vec()
}

/// Sizes in bytes of the kernel-parameter structs as Rust lays them out, {C struct name: size};
/// the compile tests compare them with the parameter sizes in the PTX.
#[pyfunction]
pub fn cuda_abi_sizes() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    vec![
        ("AdamBatch", size_of::<bigmodel_cuda::adam::AdamBatch>()),
        ("AdamHyper", size_of::<AdamHyper>()),
        ("CeForward", size_of::<ce::CeForward>()),
        ("CeReduce", size_of::<ce::CeReduce>()),
        ("CeBackward", size_of::<ce::CeBackward>()),
        ("ConvGeom", size_of::<conv::ConvGeom>()),
        ("ConvScatter", size_of::<conv::ConvScatter>()),
        ("ConvGather", size_of::<conv::ConvGather>()),
        ("ConvBiasGrad", size_of::<conv::ConvBiasGrad>()),
        ("ConvCast", size_of::<conv::ConvCast>()),
        ("AttnParams", size_of::<attn::AttnParams>()),
    ]
}

/// A CUDA tensor as the kernels see it.
#[derive(Clone, Copy)]
struct CudaInfo {
    ptr: u64,
    nbytes: u64,
    dtype: DType,
    device: i32,
}

fn cuda_dtype(d: KDType) -> Option<DType> {
    match d {
        KDType::F32 => Some(DType::F32),
        KDType::BF16 => Some(DType::BF16),
        KDType::F16 => Some(DType::F16),
        KDType::F64 => None,
    }
}

/// Inspects a tensor bound for a CUDA kernel; `what` names it in errors.
fn inspect_cuda(t: &Bound<'_, PyAny>, what: &str) -> PyResult<CudaInfo> {
    let py = t.py();
    if !t.getattr(intern!(py, "is_cuda"))?.is_truthy()? {
        return Err(PyRuntimeError::new_err(format!(
            "{what} is not a CUDA tensor (device {}); every tensor of a CUDA call must be on the GPU",
            t.getattr(intern!(py, "device"))?.str()?
        )));
    }
    let dtype_obj = t.getattr(intern!(py, "dtype"))?;
    let Some(dtype) = kernel_dtype(py, &dtype_obj)?.and_then(cuda_dtype) else {
        if crate::tensors::call0(t, intern!(py, "is_complex"))?.is_truthy()? {
            return Err(NeedsStaging::new_err(format!("{what} is complex")));
        }
        return Err(PyTypeError::new_err(format!(
            "{what}: unsupported dtype {} for bigmodel_native's CUDA kernels; expected torch.float32, \
             torch.bfloat16 or torch.float16",
            dtype_obj.str()?
        )));
    };
    if !crate::tensors::call0(t, intern!(py, "is_contiguous"))?.is_truthy()? {
        return Err(NeedsStaging::new_err(format!("{what} is not contiguous")));
    }
    Ok(CudaInfo {
        ptr: crate::tensors::call0(t, intern!(py, "data_ptr"))?.extract()?,
        nbytes: t.getattr(intern!(py, "nbytes"))?.extract()?,
        dtype,
        device: crate::tensors::call0(t, intern!(py, "get_device"))?.extract()?,
    })
}

/// A one-element float32 CUDA tensor on `device` (AMP's grad_scale / found_inf): its address.
fn cuda_scalar_f32(t: Option<&Bound<'_, PyAny>>, what: &str, device: i32) -> PyResult<u64> {
    let Some(t) = t else { return Ok(0) };
    let info = inspect_cuda(t, what)?;
    if info.dtype != DType::F32 || info.nbytes != 4 || info.device != device {
        return Err(PyRuntimeError::new_err(format!(
            "{what} must be a one-element float32 tensor on cuda:{device}"
        )));
    }
    Ok(info.ptr)
}

enum Step {
    Device(StepCounter),
    Host(usize, KDType),
}

fn read_step(t: &Bound<'_, PyAny>, i: usize, device: i32) -> PyResult<Step> {
    let py = t.py();
    if let Some((ptr, d)) = inspect_step(t)? {
        return Ok(Step::Host(ptr, d));
    }
    let bad = || {
        PyRuntimeError::new_err(format!(
            "adam_step_: state_steps[{i}] must be a one-element float32 or float64 tensor on the CPU or on \
             cuda:{device}"
        ))
    };
    if !t.getattr(intern!(py, "is_cuda"))?.is_truthy()?
        || crate::tensors::call0(t, intern!(py, "get_device"))?.extract::<i32>()? != device
    {
        return Err(bad());
    }
    let ptr: u64 = crate::tensors::call0(t, intern!(py, "data_ptr"))?.extract()?;
    let nbytes: u64 = t.getattr(intern!(py, "nbytes"))?.extract()?;
    match kernel_dtype(py, &t.getattr(intern!(py, "dtype"))?)? {
        Some(KDType::F32) if nbytes == 4 => Ok(Step::Device(StepCounter::DeviceF32(ptr))),
        Some(KDType::F64) if nbytes == 8 => Ok(Step::Device(StepCounter::DeviceF64(ptr))),
        _ => Err(bad()),
    }
}

const ROLES: [&str; 5] = ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"];

/// One Adam/AdamW step over a parameter group of CUDA tensors, queued on `stream` (torch's
/// `current_stream().cuda_stream`) and never synchronised. Step counters on the device are
/// incremented on the stream (capturable); counters on the host are incremented here, which
/// requires `found_inf` to be None (the Python layer reads it first). Raises `NeedsStaging` for
/// complex or non-contiguous tensors. Nothing is modified unless every tensor passed the checks.
#[pyfunction]
#[pyo3(signature = (
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
    grad_scale, found_inf, stream
))]
#[allow(clippy::too_many_arguments)]
pub fn cuda_adam_step(
    py: Python<'_>,
    params: &Bound<'_, PyList>,
    grads: &Bound<'_, PyList>,
    exp_avgs: &Bound<'_, PyList>,
    exp_avg_sqs: &Bound<'_, PyList>,
    max_exp_avg_sqs: &Bound<'_, PyList>,
    steps: &Bound<'_, PyList>,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    grad_scale: Option<Bound<'_, PyAny>>,
    found_inf: Option<Bound<'_, PyAny>>,
    stream: u64,
) -> PyResult<()> {
    let check = AdamParams {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decoupled_weight_decay,
        amsgrad,
        maximize,
        grad_scale: None,
    };
    check.validate().map_err(crate::errors::to_py)?;
    let n = params.len();
    let lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs];
    let used = if amsgrad { 5 } else { 4 };
    if !amsgrad && !max_exp_avg_sqs.is_empty() {
        return Err(PyValueError::new_err(
            "adam_step_: max_exp_avg_sqs must be empty when amsgrad=False",
        ));
    }
    for (r, list) in lists.iter().enumerate().take(used).skip(1) {
        if list.len() != n {
            return Err(PyValueError::new_err(format!(
                "adam_step_: {}s has {} tensors, params has {n}",
                ROLES[r],
                list.len()
            )));
        }
    }
    if steps.len() != n {
        return Err(PyValueError::new_err(format!(
            "adam_step_: state_steps has {} tensors, params has {n}",
            steps.len()
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let device = inspect_cuda(&params.get_item(0)?, "param 0")?.device;
    let mut hyper = AdamHyper {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        grad_scale: cuda_scalar_f32(grad_scale.as_ref(), "grad_scale", device)?,
        found_inf: cuda_scalar_f32(found_inf.as_ref(), "found_inf", device)?,
        amsgrad: amsgrad as i32,
        maximize: maximize as i32,
        decoupled: decoupled_weight_decay as i32,
        n_tensors: 0,
    };
    let mut slots: Vec<(DType, AdamTensor, Step)> = Vec::with_capacity(n);
    for i in 0..n {
        let mut ptrs = [0u64; 5];
        let mut first: Option<CudaInfo> = None;
        for r in 0..used {
            let info = inspect_cuda(&lists[r].get_item(i)?, &format!("{} {i}", ROLES[r]))?;
            if info.device != device {
                return Err(PyRuntimeError::new_err(format!(
                    "adam_step_: {} {i} is on cuda:{}, param 0 on cuda:{device}; a group must be on one device",
                    ROLES[r], info.device
                )));
            }
            if let Some(p) = first {
                if info.dtype != p.dtype || info.nbytes != p.nbytes {
                    return Err(PyRuntimeError::new_err(format!(
                        "adam_step_: {} of parameter {i} must match the parameter's dtype and size \
                         ({:?}, {} bytes vs {:?}, {} bytes)",
                        ROLES[r], info.dtype, info.nbytes, p.dtype, p.nbytes
                    )));
                }
            } else {
                first = Some(info);
            }
            ptrs[r] = info.ptr;
        }
        let p = first.expect("params are always inspected");
        let step = read_step(&steps.get_item(i)?, i, device)?;
        if matches!(step, Step::Host(..)) && hyper.found_inf != 0 {
            return Err(PyValueError::new_err(
                "adam_step_: found_inf with step counters on the host: read found_inf first (the Python layer does)",
            ));
        }
        let t = AdamTensor {
            param: ptrs[0],
            grad: ptrs[1],
            exp_avg: ptrs[2],
            exp_avg_sq: ptrs[3],
            max_exp_avg_sq: ptrs[4],
            numel: p.nbytes / p.dtype.size(),
            step: StepCounter::Host(1.0), // set below, once every check has passed
        };
        slots.push((p.dtype, t, step));
    }
    let dtypes = [DType::F32, DType::BF16, DType::F16];
    for &d in &dtypes {
        let group: Vec<AdamTensor> = slots.iter().filter(|s| s.0 == d).map(|s| s.1).collect();
        adam::validate(d, &hyper, &group).map_err(to_py)?;
        if !group.is_empty() {
            // Compile and load before any counter moves, so that a failure changes nothing.
            py.detach(|| adam::prepare(device, d)).map_err(to_py)?;
        }
    }
    for s in slots.iter_mut() {
        s.1.step = match s.2 {
            Step::Device(c) => c,
            Step::Host(ptr, d) => {
                StepCounter::Host(bump_host_step(ptr, d).map_err(crate::errors::to_py)?)
            }
        };
    }
    for d in dtypes {
        let group: Vec<AdamTensor> = slots.iter().filter(|s| s.0 == d).map(|s| s.1).collect();
        if group.is_empty() {
            continue;
        }
        hyper.n_tensors = 0;
        // SAFETY: every address is the data pointer of a live, contiguous CUDA tensor on `device`
        // of the checked dtype and size (or a one-element counter / float32 scalar), held by the
        // caller's lists for the call; torch's caching allocator keeps the memory for the stream
        // the kernels are queued on, which is the caller's current stream. torch forbids one
        // tensor twice in a group and every state tensor is the parameter's own, so none overlap.
        py.detach(|| unsafe { adam::adam_step(device, stream, d, hyper, &group) })
            .map_err(to_py)?;
    }
    Ok(())
}

/// Adds one to a host step counter and returns the new count.
fn bump_host_step(ptr: usize, d: KDType) -> bigmodel_kernels::Result<f64> {
    if d == KDType::F64 {
        // SAFETY: `ptr` is the data pointer of a live one-element float64 CPU tensor (checked by
        // `inspect_step`), the counter of one parameter only.
        let s = unsafe { slice_mut::<f64>(ptr, 1, "step")? };
        s[0] += 1.0;
        Ok(s[0])
    } else {
        // SAFETY: as above, for a float32 counter.
        let s = unsafe { slice_mut::<f32>(ptr, 1, "step")? };
        s[0] += 1.0;
        Ok(s[0] as f64)
    }
}

fn parse_dtype(name: &str) -> PyResult<DType> {
    match name {
        "float32" => Ok(DType::F32),
        "bfloat16" => Ok(DType::BF16),
        "float16" => Ok(DType::F16),
        _ => Err(PyTypeError::new_err(format!(
            "unsupported dtype {name} for bigmodel_native's CUDA kernels; expected float32, bfloat16 or float16"
        ))),
    }
}

fn parse_reduction(name: &str) -> PyResult<Reduction> {
    match name {
        "none" => Ok(Reduction::None),
        "mean" => Ok(Reduction::Mean),
        "sum" => Ok(Reduction::Sum),
        _ => Err(PyValueError::new_err(format!(
            "{name} is not a valid value for reduction"
        ))),
    }
}

/// Queues the cross-entropy forward (see `bigmodel_native._cuda.cross_entropy_forward`, which
/// allocates the buffers). Addresses are `data_ptr()` values, 0 for an absent optional buffer.
#[pyfunction]
#[pyo3(signature = (
    *, dtype, reduction, logits, target, weight, lse, row_loss, row_weight, out, total_weight,
    error_flag, n_rows, n_classes, ignore_index, label_smoothing, device, stream
))]
#[allow(clippy::too_many_arguments)]
pub fn cuda_cross_entropy_forward(
    py: Python<'_>,
    dtype: &str,
    reduction: &str,
    logits: u64,
    target: u64,
    weight: u64,
    lse: u64,
    row_loss: u64,
    row_weight: u64,
    out: u64,
    total_weight: u64,
    error_flag: u64,
    n_rows: u64,
    n_classes: u64,
    ignore_index: i64,
    label_smoothing: f64,
    device: i32,
    stream: u64,
) -> PyResult<()> {
    let d = parse_dtype(dtype)?;
    let r = parse_reduction(reduction)?;
    let args = ForwardArgs {
        logits,
        target,
        weight,
        lse,
        row_loss,
        row_weight,
        out,
        total_weight,
        error_flag,
        n_rows,
        n_classes,
        ignore_index,
        label_smoothing,
    };
    // SAFETY: the Python caller (`_cuda.cross_entropy_forward`) passes data pointers of live,
    // contiguous tensors on `device` that it allocated or checked with the documented shapes and
    // dtypes, keeps them alive through the call, and queues on the current stream of `device`.
    py.detach(|| unsafe { ce::forward(device, stream, d, r, &args) })
        .map_err(to_py)
}

/// Queues the cross-entropy backward (see `bigmodel_native._cuda.cross_entropy_backward`);
/// `grad_in` may equal `logits`.
#[pyfunction]
#[pyo3(signature = (
    *, dtype, reduction, logits, target, weight, lse, grad_out, total_weight, grad_in,
    n_rows, n_classes, ignore_index, label_smoothing, device, stream
))]
#[allow(clippy::too_many_arguments)]
pub fn cuda_cross_entropy_backward(
    py: Python<'_>,
    dtype: &str,
    reduction: &str,
    logits: u64,
    target: u64,
    weight: u64,
    lse: u64,
    grad_out: u64,
    total_weight: u64,
    grad_in: u64,
    n_rows: u64,
    n_classes: u64,
    ignore_index: i64,
    label_smoothing: f64,
    device: i32,
    stream: u64,
) -> PyResult<()> {
    let d = parse_dtype(dtype)?;
    let r = parse_reduction(reduction)?;
    let args = BackwardArgs {
        logits,
        target,
        weight,
        lse,
        grad_out,
        total_weight,
        grad_in,
        n_rows,
        n_classes,
        ignore_index,
        label_smoothing,
    };
    // SAFETY: as in `cuda_cross_entropy_forward`; `grad_in` is either the logits tensor itself or
    // a fresh tensor of the same shape.
    py.detach(|| unsafe { ce::backward(device, stream, d, r, &args) })
        .map_err(to_py)
}

fn conv_shape(
    input_shape: (i64, i64, i64, i64),
    weight_shape: (i64, i64, i64, i64),
    stride: (i64, i64),
    padding: (i64, i64, i64, i64),
    dilation: (i64, i64),
    groups: i64,
) -> PyResult<ConvShape> {
    let (n, c, h, w) = input_shape;
    let (o, cg, kh, kw) = weight_shape;
    if cg.checked_mul(groups) != Some(c) {
        return Err(PyValueError::new_err(format!(
            "conv2d (CUDA): weight {weight_shape:?} with groups={groups} does not fit input {input_shape:?}"
        )));
    }
    Ok(ConvShape {
        n,
        c,
        h,
        w,
        o,
        kh,
        kw,
        groups,
        stride: [stride.0, stride.1],
        padding: [padding.0, padding.1, padding.2, padding.3],
        dilation: [dilation.0, dilation.1],
    })
}

/// The plan of a CUDA convolution: `(oh, ow, chunk, col_elems, gather_elems, bias_slices)` with
/// `chunk` images per pass so that the fp32 column matrix stays within `budget_bytes`; buffer
/// sizes in elements (see `bigmodel_cuda::conv2d::Plan`). ValueError for a shape the kernels
/// cannot take (empty batches and zero input channels are the caller's).
#[pyfunction]
#[pyo3(signature = (*, input_shape, weight_shape, stride, padding, dilation, groups, budget_bytes))]
pub fn cuda_conv2d_plan(
    input_shape: (i64, i64, i64, i64),
    weight_shape: (i64, i64, i64, i64),
    stride: (i64, i64),
    padding: (i64, i64, i64, i64),
    dilation: (i64, i64),
    groups: i64,
    budget_bytes: u64,
) -> PyResult<(i64, i64, i64, i64, i64, i64)> {
    let s = conv_shape(input_shape, weight_shape, stride, padding, dilation, groups)?;
    let chunk = s.chunk_for(budget_bytes).map_err(to_py)?;
    let p = s.plan(chunk).map_err(to_py)?;
    Ok((p.oh, p.ow, p.chunk, p.col, p.gather, p.bias_slices))
}

/// Queues the conv2d forward (see `bigmodel_native.ops.conv2d_cuda`, which allocates the output
/// and buffers with the sizes of `cuda_conv2d_plan`). Addresses are `data_ptr()` values, 0 for an
/// absent bias / workspace.
#[pyfunction]
#[pyo3(signature = (
    *, dtype, input_shape, weight_shape, stride, padding, dilation, groups, x, weight, bias, out,
    col, col_bytes, tmp, tmp_bytes, workspace, ws_bytes, chunk, tf32, device, stream
))]
#[allow(clippy::too_many_arguments)]
pub fn cuda_conv2d_forward(
    py: Python<'_>,
    dtype: &str,
    input_shape: (i64, i64, i64, i64),
    weight_shape: (i64, i64, i64, i64),
    stride: (i64, i64),
    padding: (i64, i64, i64, i64),
    dilation: (i64, i64),
    groups: i64,
    x: u64,
    weight: u64,
    bias: u64,
    out: u64,
    col: u64,
    col_bytes: u64,
    tmp: u64,
    tmp_bytes: u64,
    workspace: u64,
    ws_bytes: u64,
    chunk: i64,
    tf32: bool,
    device: i32,
    stream: u64,
) -> PyResult<()> {
    let d = parse_dtype(dtype)?;
    let s = conv_shape(input_shape, weight_shape, stride, padding, dilation, groups)?;
    let args = conv::ForwardArgs {
        x,
        weight,
        bias,
        out,
        col,
        col_bytes,
        tmp,
        tmp_bytes,
        workspace,
        ws_bytes,
        chunk,
        tf32,
    };
    conv::validate_forward(d, &s, &args).map_err(to_py)?;
    // SAFETY: the Python caller passes data pointers of live, contiguous CUDA tensors on `device`
    // with the shapes and dtype described (output and buffers freshly allocated there with the
    // plan's sizes, so they overlap nothing), keeps them alive through the call, and queues on the
    // current stream of `device`, where torch's allocator keeps the memory until the work has run.
    py.detach(|| unsafe { conv::forward(device, stream, d, &s, &args) })
        .map_err(to_py)
}

/// Queues the conv2d backward (see `bigmodel_native.ops.conv2d_cuda`); 0 for a gradient not asked
/// for and for the buffers it would need.
#[pyfunction]
#[pyo3(signature = (
    *, dtype, input_shape, weight_shape, stride, padding, dilation, groups, grad_out, x, weight,
    grad_x, grad_weight, grad_weight_acc, grad_bias, partial, col, col_bytes, gather, gather_bytes,
    workspace, ws_bytes, chunk, tf32, device, stream
))]
#[allow(clippy::too_many_arguments)]
pub fn cuda_conv2d_backward(
    py: Python<'_>,
    dtype: &str,
    input_shape: (i64, i64, i64, i64),
    weight_shape: (i64, i64, i64, i64),
    stride: (i64, i64),
    padding: (i64, i64, i64, i64),
    dilation: (i64, i64),
    groups: i64,
    grad_out: u64,
    x: u64,
    weight: u64,
    grad_x: u64,
    grad_weight: u64,
    grad_weight_acc: u64,
    grad_bias: u64,
    partial: u64,
    col: u64,
    col_bytes: u64,
    gather: u64,
    gather_bytes: u64,
    workspace: u64,
    ws_bytes: u64,
    chunk: i64,
    tf32: bool,
    device: i32,
    stream: u64,
) -> PyResult<()> {
    let d = parse_dtype(dtype)?;
    let s = conv_shape(input_shape, weight_shape, stride, padding, dilation, groups)?;
    let args = conv::BackwardArgs {
        grad_out,
        x,
        weight,
        grad_x,
        grad_weight,
        grad_weight_acc,
        grad_bias,
        partial,
        col,
        col_bytes,
        gather,
        gather_bytes,
        workspace,
        ws_bytes,
        chunk,
        tf32,
    };
    conv::validate_backward(d, &s, &args).map_err(to_py)?;
    // SAFETY: as in `cuda_conv2d_forward`; the gradients and buffers are fresh tensors of the
    // documented sizes (the fp32 weight-gradient accumulator is the weight gradient itself for
    // fp32), overlapping neither each other nor the inputs.
    py.detach(|| unsafe { conv::backward(device, stream, d, &s, &args) })
        .map_err(to_py)
}

type AttnShape = (u64, u64, u64, u64, u64, u64, u64);

fn attn_shape(s: AttnShape) -> attn::Shape {
    attn::Shape {
        batch: s.0,
        heads_q: s.1,
        heads_kv: s.2,
        len_q: s.3,
        len_kv: s.4,
        dim_qk: s.5,
        dim_v: s.6,
    }
}

fn attn_mask(kind: &str, ptr: u64, dims: (u64, u64, u64, u64)) -> PyResult<attn::Mask> {
    let kind = match kind {
        "none" => attn::MaskKind::None,
        "bool" => attn::MaskKind::Bool,
        "float" => attn::MaskKind::Additive,
        _ => {
            return Err(PyValueError::new_err(format!(
                "mask kind must be 'none', 'bool' or 'float', got {kind:?}"
            )))
        }
    };
    Ok(attn::Mask {
        kind,
        ptr,
        dims: [dims.0, dims.1, dims.2, dims.3],
    })
}

fn attn_dtype(name: &str) -> PyResult<DType> {
    parse_dtype(name).map_err(|_| {
        PyTypeError::new_err(format!(
            "unsupported dtype {name} for the CUDA attention kernels; expected float32, bfloat16 or float16"
        ))
    })
}

/// Which kernels the CUDA attention runs for this dtype and shape (B, Hq, Hkv, L, S, E, Ev):
/// ("mma", head_dim) for the tensor-core kernels, whose backward needs a zeroed fp32 dQ workspace,
/// or ("simt", 0).
#[pyfunction]
pub fn cuda_attention_path(dtype: &str, shape: AttnShape) -> PyResult<(&'static str, u64)> {
    Ok(match attn::path(attn_dtype(dtype)?, &attn_shape(shape)) {
        attn::Path::Mma(d) => ("mma", d),
        attn::Path::Simt => ("simt", 0),
    })
}

/// Queues the attention forward (see `ops/attention_cuda.py`, which allocates `out` and `lse`).
#[pyfunction]
#[pyo3(signature = (
    *, dtype, q, k, v, out, lse, mask, mask_kind, mask_dims, shape, scale, causal, dropout_p, seed,
    device, stream
))]
#[allow(clippy::too_many_arguments)]
pub fn cuda_attention_forward(
    py: Python<'_>,
    dtype: &str,
    q: u64,
    k: u64,
    v: u64,
    out: u64,
    lse: u64,
    mask: u64,
    mask_kind: &str,
    mask_dims: (u64, u64, u64, u64),
    shape: AttnShape,
    scale: f64,
    causal: bool,
    dropout_p: f64,
    seed: u64,
    device: i32,
    stream: u64,
) -> PyResult<()> {
    let d = attn_dtype(dtype)?;
    let m = attn_mask(mask_kind, mask, mask_dims)?;
    let s = attn_shape(shape);
    let o = attn::Options {
        scale,
        causal,
        dropout_p,
        seed,
    };
    let f = attn::ForwardArgs { q, k, v, out, lse };
    // SAFETY: the Python caller passes data pointers of live, contiguous CUDA tensors on `device`
    // with the shapes in `shape` (mask: compact 4-D of `mask_dims`), keeps them alive through
    // the call, allocated `out` and `lse` fresh, and queues on the current stream of `device`.
    py.detach(|| unsafe { attn::forward(device, stream, d, &s, &o, &m, &f) })
        .map_err(to_py)
}

/// Queues the attention backward (see `ops/attention_cuda.py`, which allocates the gradients
/// and the fp32 workspaces `delta` and, for the tensor-core path, the zeroed `dq_acc`).
#[pyfunction]
#[pyo3(signature = (
    *, dtype, q, k, v, out, lse, dout, delta, dq_acc, dq, dk, dv, mask, mask_kind, mask_dims, shape,
    scale, causal, dropout_p, seed, device, stream
))]
#[allow(clippy::too_many_arguments)]
pub fn cuda_attention_backward(
    py: Python<'_>,
    dtype: &str,
    q: u64,
    k: u64,
    v: u64,
    out: u64,
    lse: u64,
    dout: u64,
    delta: u64,
    dq_acc: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    mask: u64,
    mask_kind: &str,
    mask_dims: (u64, u64, u64, u64),
    shape: AttnShape,
    scale: f64,
    causal: bool,
    dropout_p: f64,
    seed: u64,
    device: i32,
    stream: u64,
) -> PyResult<()> {
    let d = attn_dtype(dtype)?;
    let m = attn_mask(mask_kind, mask, mask_dims)?;
    let s = attn_shape(shape);
    let o = attn::Options {
        scale,
        causal,
        dropout_p,
        seed,
    };
    let b = attn::BackwardArgs {
        q,
        k,
        v,
        out,
        lse,
        dout,
        delta,
        dq_acc,
        dq,
        dk,
        dv,
    };
    // SAFETY: as in `cuda_attention_forward`; `out` and `lse` are the forward's, the gradients
    // and workspaces are fresh tensors of the documented shapes (dq_acc zeroed on this stream).
    py.detach(|| unsafe { attn::backward(device, stream, d, &s, &o, &m, &b) })
        .map_err(to_py)
}

/// Registers the CUDA functions on the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cuda_available, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_unavailable_reason, m)?)?;
    m.add_function(wrap_pyfunction!(nvrtc_version, m)?)?;
    m.add_function(wrap_pyfunction!(nvrtc_compile_check, m)?)?;
    m.add_function(wrap_pyfunction!(nvrtc_compile_source, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_sources, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_abi_sizes, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_cross_entropy_forward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_cross_entropy_backward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_conv2d_plan, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_conv2d_forward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_conv2d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_attention_path, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_attention_forward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_attention_backward, m)?)?;
    Ok(())
}
