//! CPU kernels, one module per op.

pub mod adam;
pub mod attention;
