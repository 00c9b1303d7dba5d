//! Storage types and the arithmetic type each is computed in.
//!
//! fp32 and fp64 compute natively; bf16 and fp16 are stored narrow and computed in fp32, the
//! policy torch's fused CPU kernels follow. Conversions are written as plain bit arithmetic so
//! that they vectorise inside the per-ISA wrappers (see [`crate::isa`]).

use half::{bf16, f16};
use std::ops::{Add, Div, Mul, Neg, Sub};

/// The arithmetic type of a kernel body: f32 or f64.
pub trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    /// IEEE maximum that propagates NaN from either side, as torch.maximum does.
    fn max_nan(self, other: Self) -> Self;
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn max_nan(self, other: Self) -> Self {
                // Branch-free select so the loop around it still vectorises.
                if self != self || self > other {
                    self
                } else {
                    other
                }
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

/// A storage element type of a tensor, with the type it is computed in.
pub trait Element: Copy + Send + Sync + 'static {
    type Acc: Real;
    /// torch's name of the dtype, for error messages.
    const NAME: &'static str;
    fn load(self) -> Self::Acc;
    fn store(x: Self::Acc) -> Self;
}

impl Element for f32 {
    type Acc = f32;
    const NAME: &'static str = "torch.float32";
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn store(x: f32) -> f32 {
        x
    }
}

impl Element for f64 {
    type Acc = f64;
    const NAME: &'static str = "torch.float64";
    #[inline(always)]
    fn load(self) -> f64 {
        self
    }
    #[inline(always)]
    fn store(x: f64) -> f64 {
        x
    }
}

impl Element for bf16 {
    type Acc = f32;
    const NAME: &'static str = "torch.bfloat16";
    #[inline(always)]
    fn load(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn store(x: f32) -> bf16 {
        bf16::from_bits(f32_to_bf16_bits(x))
    }
}

/// Round-to-nearest-even fp32 -> bf16, NaN kept quiet (what torch's conversion does).
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounding_bias = 0x7fff + ((bits >> 16) & 1);
    let rounded = (bits.wrapping_add(rounding_bias) >> 16) as u16;
    if x.is_nan() {
        ((bits >> 16) as u16) | 0x0040
    } else {
        rounded
    }
}

impl Element for f16 {
    type Acc = f32;
    const NAME: &'static str = "torch.float16";
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn store(x: f32) -> f16 {
        f16::from_f32(x)
    }
}

/// The dtypes a tensor can carry across the boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    BF16,
    F16,
}

impl DType {
    /// Parses torch's spelling (`"float32"`, `"torch.float32"`, `"bfloat16"`, ...).
    pub fn parse(name: &str) -> Option<DType> {
        match name.trim_start_matches("torch.") {
            "float32" | "float" => Some(DType::F32),
            "float64" | "double" => Some(DType::F64),
            "bfloat16" => Some(DType::BF16),
            "float16" | "half" => Some(DType::F16),
            _ => None,
        }
    }

    pub fn size_of(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half() {
        for &x in &[
            0.0f32,
            -0.0,
            1.0,
            // 1 + 2^-8: halfway between two bf16 values.
            1.0 + 1.0 / 256.0,
            1.0039063,
            std::f32::consts::PI,
            -std::f32::consts::E,
            65504.0,
            1e-40,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(f32_to_bf16_bits(x), bf16::from_f32(x).to_bits(), "x = {x}");
        }
        assert!(bf16::from_bits(f32_to_bf16_bits(f32::NAN)).is_nan());
    }

    #[test]
    fn dtype_names() {
        assert_eq!(DType::parse("torch.bfloat16"), Some(DType::BF16));
        assert_eq!(DType::parse("int64"), None);
    }
}
