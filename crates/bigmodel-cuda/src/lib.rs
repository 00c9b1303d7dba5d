//! bigmodel_native's CUDA kernels, without PyO3.
//!
//! The CUDA C sources (`kernels/*.cu`) are embedded with `include_str!` and compiled at first use
//! by NVRTC for the device's own architecture (a cubin for `sm_XY`), then cached per (device,
//! process). Kernels run on torch's memory and torch's current stream: the caller passes
//! `data_ptr()` values and the `cuda_stream` handle, and this crate launches through cudarc's
//! low-level `result` layer. It never wraps torch's memory in a `CudaSlice` (whose drop would
//! free it) nor its stream in a `CudaStream` (whose drop would destroy it), and never
//! synchronises.
//!
//! libcuda and libnvrtc are opened at run time (cudarc's `dynamic-loading`), so the crate builds
//! and loads on machines with no CUDA; [`runtime::cuda_available`] and every entry point check the
//! libraries first (cudarc panics on a missing library) and return [`Error`] instead.

pub mod adam;
pub mod attention;
pub mod blas;
pub mod conv2d;
pub mod cross_entropy;
mod error;
pub mod runtime;

pub use error::{Error, Result};

/// Every kernel source, by name: the names the NVRTC compile check reports.
pub const SOURCES: [(&str, &str); 4] = [
    ("adam", runtime::ADAM_SRC),
    ("cross_entropy", runtime::CROSS_ENTROPY_SRC),
    ("conv2d", runtime::CONV2D_SRC),
    ("attention", runtime::ATTENTION_SRC),
];
