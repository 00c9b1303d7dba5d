//! Reading torch tensors from Rust without linking libtorch.
//!
//! A tensor is inspected through its Python attributes (`data_ptr`, `nbytes`, `is_contiguous`,
//! `dtype`, `is_cpu`), called with interned names, which costs a fraction of the same calls made
//! from Python bytecode: with thousands of parameters per group that difference is most of an
//! optimizer step. dtype objects are compared by identity with torch's singletons.

use bigmodel_kernels::element::DType;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

/// What a tensor is, for the kernels.
#[derive(Clone, Copy, Debug)]
pub struct TensorInfo {
    pub ptr: usize,
    pub numel: usize,
    pub dtype: DType,
}

/// Why a tensor cannot be handed to a kernel as it is, in the order the caller should react.
pub enum Unfit {
    /// Complex, or not contiguous: the Python layer stages a real / contiguous view and retries.
    NeedsStaging,
    /// Not a CPU tensor.
    Device,
    /// A dtype the kernels have no body for; carries torch's name of it.
    DType(String),
}

struct Names {
    data_ptr: Py<PyString>,
    nbytes: Py<PyString>,
    is_contiguous: Py<PyString>,
    dtype: Py<PyString>,
    is_cpu: Py<PyString>,
    is_complex: Py<PyString>,
}

static NAMES: PyOnceLock<Names> = PyOnceLock::new();

/// torch's dtype objects, fetched once per process.
struct DTypes {
    f32: Py<PyAny>,
    f64: Py<PyAny>,
    bf16: Py<PyAny>,
    f16: Py<PyAny>,
}

static DTYPES: PyOnceLock<DTypes> = PyOnceLock::new();

fn names(py: Python<'_>) -> &Names {
    NAMES.get_or_init(py, || Names {
        data_ptr: PyString::intern(py, "data_ptr").unbind(),
        nbytes: PyString::intern(py, "nbytes").unbind(),
        is_contiguous: PyString::intern(py, "is_contiguous").unbind(),
        dtype: PyString::intern(py, "dtype").unbind(),
        is_cpu: PyString::intern(py, "is_cpu").unbind(),
        is_complex: PyString::intern(py, "is_complex").unbind(),
    })
}

fn dtypes(py: Python<'_>) -> PyResult<&DTypes> {
    DTYPES.get_or_try_init(py, || {
        let torch = py.import("torch")?;
        Ok(DTypes {
            f32: torch.getattr("float32")?.unbind(),
            f64: torch.getattr("float64")?.unbind(),
            bf16: torch.getattr("bfloat16")?.unbind(),
            f16: torch.getattr("float16")?.unbind(),
        })
    })
}

/// The kernel dtype of a torch dtype object, if it has one.
pub fn kernel_dtype(py: Python<'_>, dtype: &Bound<'_, PyAny>) -> PyResult<Option<DType>> {
    let d = dtypes(py)?;
    Ok(if dtype.is(d.f32.bind(py)) {
        Some(DType::F32)
    } else if dtype.is(d.f64.bind(py)) {
        Some(DType::F64)
    } else if dtype.is(d.bf16.bind(py)) {
        Some(DType::BF16)
    } else if dtype.is(d.f16.bind(py)) {
        Some(DType::F16)
    } else {
        None
    })
}

/// `obj.name()` without allocating a bound method or an argument tuple.
///
/// `call_method0` builds a bound method per call, which on 8,000 tensors costs more than the
/// kernel and wakes the garbage collector; CPython's `PyObject_CallMethodObjArgs` looks the
/// method up and calls it on a stack vector instead.
pub(crate) fn call0<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    // SAFETY: both pointers are live objects borrowed for the duration of the call; the
    // variadic list is terminated by a null pointer as the C API requires; the result is a new
    // reference (or null with an exception set), which `from_owned_ptr_or_err` takes over.
    unsafe {
        let ret = pyo3::ffi::PyObject_CallMethodObjArgs(
            obj.as_ptr(),
            name.as_ptr(),
            std::ptr::null_mut::<pyo3::ffi::PyObject>(),
        );
        Bound::from_owned_ptr_or_err(py, ret)
    }
}

/// A one-element CPU step counter: its data pointer and dtype (float32 or float64), if it is one.
pub fn inspect_step(t: &Bound<'_, PyAny>) -> PyResult<Option<(usize, DType)>> {
    let py = t.py();
    let n = names(py);
    if !t.getattr(n.is_cpu.bind(py))?.is_truthy()? {
        return Ok(None);
    }
    match kernel_dtype(py, &t.getattr(n.dtype.bind(py))?)? {
        Some(d @ (DType::F32 | DType::F64))
            if t.getattr(n.nbytes.bind(py))?.extract::<usize>()? == d.size_of() =>
        {
            Ok(Some((call0(t, n.data_ptr.bind(py))?.extract()?, d)))
        }
        _ => Ok(None),
    }
}

/// Inspects one tensor; `Ok(Err(..))` says why it cannot go to a kernel as it is.
pub fn inspect(t: &Bound<'_, PyAny>) -> PyResult<Result<TensorInfo, Unfit>> {
    let py = t.py();
    let n = names(py);
    if !t.getattr(n.is_cpu.bind(py))?.is_truthy()? {
        return Ok(Err(Unfit::Device));
    }
    let dtype_obj = t.getattr(n.dtype.bind(py))?;
    let Some(dtype) = kernel_dtype(py, &dtype_obj)? else {
        if call0(t, n.is_complex.bind(py))?.is_truthy()? {
            return Ok(Err(Unfit::NeedsStaging));
        }
        return Ok(Err(Unfit::DType(dtype_obj.str()?.to_string())));
    };
    if !call0(t, n.is_contiguous.bind(py))?.is_truthy()? {
        return Ok(Err(Unfit::NeedsStaging));
    }
    Ok(Ok(TensorInfo {
        ptr: call0(t, n.data_ptr.bind(py))?.extract()?,
        // `nbytes` is a getter, cheaper than the `numel()` method's argument parsing.
        numel: t.getattr(n.nbytes.bind(py))?.extract::<usize>()? / dtype.size_of(),
        dtype,
    }))
}

/// [`inspect`] for a kernel that takes the tensor as it is: torch's exception classes otherwise,
/// with messages naming the op and the argument.
pub fn kernel_info(t: &Bound<'_, PyAny>, op: &str, what: &str) -> PyResult<TensorInfo> {
    use pyo3::exceptions::{PyNotImplementedError, PyRuntimeError, PyTypeError};
    match inspect(t)? {
        Ok(i) => Ok(i),
        Err(Unfit::NeedsStaging) => Err(PyRuntimeError::new_err(format!(
            "{op}: {what} must be a contiguous real tensor"
        ))),
        Err(Unfit::Device) => Err(PyNotImplementedError::new_err(format!(
            "{op}: {what} is not a CPU tensor; bigmodel_native's {op} kernel runs on CPU tensors"
        ))),
        Err(Unfit::DType(name)) => Err(PyTypeError::new_err(format!(
            "{op}: unsupported dtype {name} for {what}; expected torch.float32, torch.float64, \
             torch.bfloat16 or torch.float16"
        ))),
    }
}

static INT64: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A contiguous int64 CPU tensor (pooling indices): its data pointer and element count.
pub fn index_info(t: &Bound<'_, PyAny>, op: &str) -> PyResult<(usize, usize)> {
    let py = t.py();
    let n = names(py);
    let int64 = INT64.get_or_try_init(py, || {
        PyResult::Ok(py.import("torch")?.getattr("int64")?.unbind())
    })?;
    if !t.getattr(n.is_cpu.bind(py))?.is_truthy()?
        || !t.getattr(n.dtype.bind(py))?.is(int64.bind(py))
        || !call0(t, n.is_contiguous.bind(py))?.is_truthy()?
    {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
            "{op}: indices must be a contiguous int64 CPU tensor"
        )));
    }
    Ok((
        call0(t, n.data_ptr.bind(py))?.extract()?,
        t.getattr(n.nbytes.bind(py))?.extract::<usize>()? / 8,
    ))
}
