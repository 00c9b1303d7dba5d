//! CPU kernels of bigmodel_native, free of PyO3 and of torch.
//!
//! Every kernel takes plain slices (the bindings crate turns validated tensor views into them),
//! runs on the crate's own rayon pool ([`pool`]) and picks its SIMD width at run time ([`isa`]):
//! one generic body per kernel, compiled once per instruction set, so a portable wheel still
//! runs AVX2 or AVX-512 code where the CPU has it.

pub mod buffer_cache;
pub mod cpu;
pub mod element;
pub mod error;
pub mod isa;
pub mod memory;
pub mod openmp;
pub mod pool;

pub use error::{Error, Result};
