//! The one error type of the kernels. The bindings map each variant to the Python exception
//! class torch would raise for the same mistake.

/// Why a kernel refused to run. Kernels never panic on bad input: they return one of these.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Mismatched lengths, shapes or counts (torch raises RuntimeError or ValueError).
    #[error("{0}")]
    Shape(String),
    /// An argument outside its domain, such as a class index out of range (IndexError in torch).
    #[error("{0}")]
    Index(String),
    /// A value that is invalid whatever the shapes (ValueError).
    #[error("{0}")]
    Value(String),
    /// A dtype the kernel has no body for (TypeError).
    #[error("{0}")]
    DType(String),
}

pub type Result<T> = std::result::Result<T, Error>;
