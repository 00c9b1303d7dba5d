//! Binding of the fused multi-tensor Adam step.
//!
//! Takes the group's tensors themselves (Python lists), validates every one before touching any
//! (so a refused call changes nothing), splits the group by dtype, bumps the step counters and
//! runs the kernel with the GIL released.

use crate::errors::{to_py, NeedsStaging};
use crate::tensors::{inspect, inspect_step, TensorInfo, Unfit};
use crate::views::slice_mut;
use bigmodel_kernels::cpu::adam::{adam_step as kernel, AdamParams, AdamTensor};
use bigmodel_kernels::element::{DType, Element};
use bigmodel_kernels::{pool, Result};
use half::{bf16, f16};
use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;

/// The memory of one parameter and its state.
struct Slot {
    tensors: [TensorInfo; 5],
    has_max: bool,
    step_ptr: usize,
    step_dtype: DType,
}

const ROLES: [&str; 5] = ["param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"];

/// One Adam/AdamW step over a parameter group (lists of CPU tensors, one entry per parameter).
///
/// Raises `NeedsStaging` when a tensor is complex or not contiguous (the Python layer then
/// passes real, contiguous stand-ins); NotImplementedError for non-CPU tensors; TypeError for
/// unsupported dtypes; RuntimeError for mismatched grads or state. Nothing is modified unless
/// every tensor passed the checks.
#[pyfunction]
#[pyo3(signature = (
    params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, *,
    lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize,
    grad_scale, num_threads
))]
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
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
    grad_scale: Option<f64>,
    num_threads: usize,
) -> PyResult<()> {
    let hyper = AdamParams {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decoupled_weight_decay,
        amsgrad,
        maximize,
        grad_scale,
    };
    hyper.validate().map_err(to_py)?;
    let n = params.len();
    let mut lists = vec![
        ("grads", grads),
        ("exp_avgs", exp_avgs),
        ("exp_avg_sqs", exp_avg_sqs),
        ("state_steps", steps),
    ];
    if amsgrad {
        lists.push(("max_exp_avg_sqs", max_exp_avg_sqs));
    } else if !max_exp_avg_sqs.is_empty() {
        return Err(PyValueError::new_err(
            "adam_step_: max_exp_avg_sqs must be empty when amsgrad=False",
        ));
    }
    for (name, list) in &lists {
        if list.len() != n {
            return Err(PyValueError::new_err(format!(
                "adam_step_: {name} has {} tensors, params has {n}",
                list.len()
            )));
        }
    }

    let mut slots = Vec::with_capacity(n);
    for i in 0..n {
        slots.push(read_slot(
            i,
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            steps,
            amsgrad,
        )?);
    }
    let elems = slots
        .iter()
        .fold(0usize, |a, s| a.saturating_add(s.tensors[0].numel));
    let serial = elems < pool::SERIAL_ELEMS;
    py.detach(|| pool::run(num_threads, serial, || run_all(&hyper, &slots)))
        .map_err(to_py)
}

#[allow(clippy::too_many_arguments)]
fn read_slot(
    i: usize,
    params: &Bound<'_, PyList>,
    grads: &Bound<'_, PyList>,
    exp_avgs: &Bound<'_, PyList>,
    exp_avg_sqs: &Bound<'_, PyList>,
    max_exp_avg_sqs: &Bound<'_, PyList>,
    steps: &Bound<'_, PyList>,
    amsgrad: bool,
) -> PyResult<Slot> {
    let lists = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs];
    let used = if amsgrad { 5 } else { 4 };
    let mut infos = [TensorInfo {
        ptr: 0,
        numel: 0,
        dtype: DType::F32,
    }; 5];
    for r in 0..used {
        let t = lists[r].get_item(i)?;
        infos[r] = match inspect(&t)? {
            Ok(info) => info,
            Err(Unfit::NeedsStaging) => {
                return Err(NeedsStaging::new_err(format!("{} {i} is complex or not contiguous", ROLES[r])))
            }
            Err(Unfit::Device) => {
                return Err(PyNotImplementedError::new_err(format!(
                    "adam_step_: {} {i} is not a CPU tensor; bigmodel_native's Adam kernel runs on CPU tensors",
                    ROLES[r]
                )))
            }
            Err(Unfit::DType(name)) => {
                return Err(PyTypeError::new_err(format!(
                    "adam_step_: unsupported dtype {name} for {} {i}; expected torch.float32, torch.float64, \
                     torch.bfloat16 or torch.float16",
                    ROLES[r]
                )))
            }
        };
        if r > 0 && (infos[r].numel != infos[0].numel || infos[r].dtype != infos[0].dtype) {
            return Err(PyRuntimeError::new_err(format!(
                "adam_step_: {} of parameter {i} must match the parameter's dtype and number of elements \
                 ({:?}, {} elements vs {:?}, {} elements)",
                ROLES[r], infos[r].dtype, infos[r].numel, infos[0].dtype, infos[0].numel
            )));
        }
    }
    let Some((step_ptr, step_dtype)) = inspect_step(&steps.get_item(i)?)? else {
        return Err(PyRuntimeError::new_err(format!(
            "adam_step_: state_steps[{i}] must be a one-element float32 or float64 CPU tensor"
        )));
    };
    Ok(Slot {
        tensors: infos,
        has_max: amsgrad,
        step_ptr,
        step_dtype,
    })
}

/// Runs the kernel once per dtype present in the group.
fn run_all(hyper: &AdamParams, slots: &[Slot]) -> Result<()> {
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
        let group: Vec<&Slot> = slots
            .iter()
            .filter(|s| s.tensors[0].dtype == dtype)
            .collect();
        if group.is_empty() {
            continue;
        }
        match dtype {
            DType::F32 => run::<f32>(hyper, &group)?,
            DType::F64 => run::<f64>(hyper, &group)?,
            DType::BF16 => run::<bf16>(hyper, &group)?,
            DType::F16 => run::<f16>(hyper, &group)?,
        }
    }
    Ok(())
}

fn run<T: Element>(hyper: &AdamParams, slots: &[&Slot]) -> Result<()> {
    let mut tensors = Vec::with_capacity(slots.len());
    for s in slots {
        let [p, g, m, v, vm] = s.tensors;
        // SAFETY: each pointer is the data pointer of a distinct, contiguous, live CPU tensor of
        // `numel` elements of this dtype (checked in `read_slot`); the Python caller holds the
        // tensors in its argument lists until this call returns, and torch forbids one tensor
        // appearing twice in a group, so no two slices alias.
        let t = unsafe {
            AdamTensor::<T> {
                param: slice_mut(p.ptr, p.numel, "param")?,
                grad: slice_mut(g.ptr, g.numel, "grad")?,
                exp_avg: slice_mut(m.ptr, m.numel, "exp_avg")?,
                exp_avg_sq: slice_mut(v.ptr, v.numel, "exp_avg_sq")?,
                max_exp_avg_sq: if s.has_max {
                    Some(slice_mut(vm.ptr, vm.numel, "max_exp_avg_sq")?)
                } else {
                    None
                },
                step: 0.0,
            }
        };
        tensors.push(t);
    }
    // Every check has passed: from here on the step cannot fail, so the counters may move.
    for (t, s) in tensors.iter_mut().zip(slots) {
        t.step = bump_step(s.step_ptr, s.step_dtype)?;
    }
    kernel(hyper, tensors)
}

/// Adds one to a scalar step tensor and returns the new count.
fn bump_step(ptr: usize, dtype: DType) -> Result<f64> {
    if dtype == DType::F64 {
        // SAFETY: `ptr` is the data pointer of a live one-element float64 CPU tensor (checked in
        // `read_slot`), the step counter of one parameter only.
        let s = unsafe { slice_mut::<f64>(ptr, 1, "step")? };
        s[0] += 1.0;
        Ok(s[0])
    } else {
        // SAFETY: as above, for a float32 step tensor.
        let s = unsafe { slice_mut::<f32>(ptr, 1, "step")? };
        s[0] += 1.0;
        Ok(s[0] as f64)
    }
}
