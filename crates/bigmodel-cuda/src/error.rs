//! The one error type of the GPU crate. Nothing here panics: a missing library, a driver or NVRTC
//! failure, a bad argument all come back as one of these, and the bindings map them onto Python
//! exceptions (RuntimeError for the environment, ValueError / TypeError for arguments).

/// Why a GPU call did not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// CUDA is absent or unusable here: no libcuda / libnvrtc, no device, a driver error.
    #[error("{0}")]
    Unavailable(String),
    /// NVRTC refused a kernel source; carries the compiler log.
    #[error("{0}")]
    Compile(String),
    /// A driver call failed while loading or launching a kernel.
    #[error("{0}")]
    Driver(String),
    /// An argument the kernels cannot take (null pointer, mismatched sizes, misalignment).
    #[error("{0}")]
    Value(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn driver(what: &str, e: cudarc::driver::DriverError) -> Self {
        let name = e
            .error_string()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|_| format!("{:?}", e.0));
        Error::Driver(format!("{what} failed: {name} ({:?})", e.0))
    }
}
