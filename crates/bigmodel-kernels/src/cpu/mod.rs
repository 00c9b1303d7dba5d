//! CPU kernels, one module per op.

pub mod adam;
pub mod attention;
pub mod conv2d;
pub mod cross_entropy;
pub mod max_pool2d;
