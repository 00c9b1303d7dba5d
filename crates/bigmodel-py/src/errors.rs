//! Kernel errors as the Python exceptions torch raises for the same mistakes.

use bigmodel_kernels::Error;
use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::PyErr;

pyo3::create_exception!(
    _native,
    NeedsStaging,
    pyo3::exceptions::PyException,
    "A tensor is complex or not contiguous; the Python layer passes real, contiguous stand-ins instead."
);

pub fn to_py(e: Error) -> PyErr {
    match e {
        Error::Shape(m) => PyRuntimeError::new_err(m),
        Error::Index(m) => PyIndexError::new_err(m),
        Error::Value(m) => PyValueError::new_err(m),
        Error::DType(m) => PyTypeError::new_err(m),
    }
}
