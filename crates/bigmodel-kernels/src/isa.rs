//! Run-time choice of the instruction set.
//!
//! The wheel is built for baseline x86-64, so nothing wider than SSE2 may appear outside a
//! function compiled with `#[target_feature]`. Each kernel writes one `#[inline(always)]` generic
//! body and instantiates it inside one small wrapper per [`Isa`]; LLVM vectorises the inlined
//! body to that wrapper's width. The CPU is probed once and the answer cached; tests can force
//! a narrower set (never a wider one) to check every path against the scalar one.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The instruction sets a kernel body is compiled for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline code (SSE2 on x86-64, whatever the target has elsewhere).
    Scalar,
    /// AVX2 + FMA + F16C (Haswell and later, Zen and later).
    Avx2,
    /// AVX-512 F/BW/DQ/VL (Skylake-SP and later, Zen 4 and later).
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        match name {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

/// The widest instruction set this CPU supports, probed once.
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(probe)
}

#[cfg(target_arch = "x86_64")]
fn probe() -> Isa {
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("fma")
    {
        Isa::Avx512
    } else if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn probe() -> Isa {
    Isa::Scalar
}

/// 0 means "no override"; otherwise `Isa as u8 + 1`.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// The instruction set kernels use now: the detected one unless narrowed by [`set_override`].
#[inline]
pub fn active() -> Isa {
    match OVERRIDE.load(Ordering::Relaxed) {
        1 => Isa::Scalar,
        2 => Isa::Avx2,
        3 => Isa::Avx512,
        _ => detected(),
    }
}

/// Whether hand-written AVX-512 kernels may run now: an x86-64 CPU with AVX-512 whose kernels
/// have not been narrowed to a smaller set (see [`set_override`]).
#[inline]
pub fn avx512_active() -> bool {
    cfg!(target_arch = "x86_64") && active() == Isa::Avx512
}

/// Forces kernels onto `isa` (for tests and benchmarks), or back to the detected set with `None`.
/// Asking for a set the CPU lacks is refused, since running it would fault.
pub fn set_override(isa: Option<Isa>) -> Result<Isa, String> {
    match isa {
        None => {
            OVERRIDE.store(0, Ordering::Relaxed);
            Ok(detected())
        }
        Some(isa) if isa <= detected() => {
            OVERRIDE.store(isa as u8 + 1, Ordering::Relaxed);
            Ok(isa)
        }
        Some(isa) => Err(format!(
            "this CPU supports up to {}, cannot force {}",
            detected().name(),
            isa.name()
        )),
    }
}

/// Instantiates a generic `#[inline(always)]` body once per instruction set and dispatches on
/// [`active`]. `$body` is an expression evaluated inside each wrapper; the wrappers differ only in
/// the `target_feature`s they are compiled with.
#[macro_export]
macro_rules! dispatch_isa {
    (fn $name:ident<$($g:ident : $b:path),*>($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        #[inline]
        fn $name<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi2")]
            unsafe fn avx512<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c,bmi2")]
            unsafe fn avx2<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? $body
            fn scalar<$($g: $b),*>($($arg: $ty),*) $(-> $ret)? $body
            match $crate::isa::active() {
                // SAFETY: `active()` never returns an instruction set that `detected()` did not
                // find on this CPU, so the target features the wrapper was compiled with exist.
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Isa::Avx512 => unsafe { avx512::<$($g),*>($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Isa::Avx2 => unsafe { avx2::<$($g),*>($($arg),*) },
                _ => scalar::<$($g),*>($($arg),*),
            }
        }
    };
}
