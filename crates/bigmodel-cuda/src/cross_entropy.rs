//! Launch side of softmax cross-entropy (`kernels/cross_entropy.cu`, whose header states the
//! algorithm): one block per row, forward then (for 'mean' / 'sum') a one-block deterministic
//! reduction; backward in one pass that may write the gradient over the logits.

use crate::adam::DType;
use crate::error::{Error, Result};
use crate::runtime::{self, check_ptr};
use std::ffi::c_void;

pub const THREADS: u32 = 512;
/// Rows beyond this many blocks are handled by the kernels' grid-stride loop.
const MAX_GRID: u64 = 1 << 20;

const KERNELS: [&str; 9] = [
    "ce_forward_f32",
    "ce_forward_bf16",
    "ce_forward_f16",
    "ce_reduce_f32",
    "ce_reduce_bf16",
    "ce_reduce_f16",
    "ce_backward_f32",
    "ce_backward_bf16",
    "ce_backward_f16",
];

fn suffix(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
    }
}

/// torch's reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    None,
    Mean,
    Sum,
}

/// Kernel parameter of `ce_forward_*` (layout shared with `struct CeForward`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CeForward {
    pub logits: u64,
    pub target: u64,
    pub weight: u64,
    pub lse: u64,
    pub row_loss: u64,
    pub row_weight: u64,
    pub loss_none: u64,
    pub error_flag: u64,
    pub n_rows: i64,
    pub n_classes: i64,
    pub ignore_index: i64,
    pub label_smoothing: f32,
    pub pad: i32,
}

/// Kernel parameter of `ce_reduce_*` (layout shared with `struct CeReduce`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CeReduce {
    pub row_loss: u64,
    pub row_weight: u64,
    pub out: u64,
    pub total_weight: u64,
    pub n_rows: i64,
    pub mean: i32,
    pub pad: i32,
}

/// Kernel parameter of `ce_backward_*` (layout shared with `struct CeBackward`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CeBackward {
    pub logits: u64,
    pub target: u64,
    pub weight: u64,
    pub lse: u64,
    pub grad_out: u64,
    pub total_weight: u64,
    pub grad_in: u64,
    pub n_rows: i64,
    pub n_classes: i64,
    pub ignore_index: i64,
    pub label_smoothing: f32,
    pub grad_out_per_row: i32,
}

/// Device addresses of a forward call. `row_loss` / `row_weight` (fp32, n_rows) and `out` (a
/// scalar of the input dtype) / `total_weight` (fp32 scalar) serve 'mean' and 'sum'; `out` holds
/// n_rows losses for 'none'. `lse` (fp32, n_rows) is always written, for the backward.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardArgs {
    pub logits: u64,
    pub target: u64,
    pub weight: u64,
    pub lse: u64,
    pub row_loss: u64,
    pub row_weight: u64,
    pub out: u64,
    pub total_weight: u64,
    pub error_flag: u64,
    pub n_rows: u64,
    pub n_classes: u64,
    pub ignore_index: i64,
    pub label_smoothing: f64,
}

/// Device addresses of a backward call; `grad_in` may equal `logits` (in-place gradient).
/// `grad_out` is a scalar ('mean' / 'sum') or n_rows values ('none'); `total_weight` is the
/// forward's, for 'mean'.
#[derive(Clone, Copy, Debug, Default)]
pub struct BackwardArgs {
    pub logits: u64,
    pub target: u64,
    pub weight: u64,
    pub lse: u64,
    pub grad_out: u64,
    pub total_weight: u64,
    pub grad_in: u64,
    pub n_rows: u64,
    pub n_classes: u64,
    pub ignore_index: i64,
    pub label_smoothing: f64,
}

/// Checks the inputs every row reads; with no rows there is nothing to read.
#[allow(clippy::too_many_arguments)]
fn check_rows(
    a: u64,
    n_rows: u64,
    logits: u64,
    target: u64,
    weight: u64,
    lse: u64,
    n_classes: u64,
    smoothing: f64,
) -> Result<()> {
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(Error::Value(format!(
            "label_smoothing must be between 0.0 and 1.0. Got: {smoothing}"
        )));
    }
    if n_rows == 0 {
        return Ok(());
    }
    if n_rows > i64::MAX as u64 || n_classes == 0 || n_classes > i64::MAX as u64 / n_rows {
        return Err(Error::Value(format!(
            "cross_entropy: invalid shape ({n_rows}, {n_classes})"
        )));
    }
    check_ptr("cross_entropy: input", logits, a)?;
    check_ptr("cross_entropy: target", target, 8)?;
    check_ptr("cross_entropy: lse", lse, 4)?;
    if weight != 0 {
        check_ptr("cross_entropy: weight", weight, a)?;
    }
    Ok(())
}

/// Checks a forward call's addresses for `reduction`.
pub fn validate_forward(dtype: DType, reduction: Reduction, f: &ForwardArgs) -> Result<()> {
    let a = dtype.size();
    check_rows(
        a,
        f.n_rows,
        f.logits,
        f.target,
        f.weight,
        f.lse,
        f.n_classes,
        f.label_smoothing,
    )?;
    if reduction == Reduction::None {
        if f.n_rows > 0 {
            check_ptr("cross_entropy: out", f.out, a)?;
        }
    } else {
        check_ptr("cross_entropy: out", f.out, a)?;
        check_ptr("cross_entropy: total_weight", f.total_weight, 4)?;
        if f.n_rows > 0 {
            check_ptr("cross_entropy: row_loss", f.row_loss, 4)?;
            check_ptr("cross_entropy: row_weight", f.row_weight, 4)?;
        }
    }
    if f.error_flag != 0 {
        check_ptr("cross_entropy: error_flag", f.error_flag, 4)?;
    }
    Ok(())
}

fn grid(n_rows: u64) -> u32 {
    n_rows.clamp(1, MAX_GRID) as u32
}

/// Queues the forward on `stream`. Never synchronises.
///
/// # Safety
/// Every address must be device memory of device `ordinal` of the documented size and dtype
/// (logits n_rows x n_classes contiguous, target n_rows int64, weight n_classes), alive until the
/// stream has run the kernels; outputs must not overlap inputs.
pub unsafe fn forward(
    ordinal: i32,
    stream: u64,
    dtype: DType,
    reduction: Reduction,
    f: &ForwardArgs,
) -> Result<()> {
    validate_forward(dtype, reduction, f)?;
    if f.n_rows == 0 && reduction == Reduction::None {
        return Ok(());
    }
    let dev = runtime::device(ordinal)?;
    let s = suffix(dtype);
    let fwd = dev.function("cross_entropy", &KERNELS, &format!("ce_forward_{s}"))?;
    let none = reduction == Reduction::None;
    let mut k = CeForward {
        logits: f.logits,
        target: f.target,
        weight: f.weight,
        lse: f.lse,
        row_loss: if none { 0 } else { f.row_loss },
        row_weight: if none { 0 } else { f.row_weight },
        loss_none: if none { f.out } else { 0 },
        error_flag: f.error_flag,
        n_rows: f.n_rows as i64,
        n_classes: f.n_classes as i64,
        ignore_index: f.ignore_index,
        label_smoothing: f.label_smoothing as f32,
        pad: 0,
    };
    if f.n_rows > 0 {
        let mut args = [(&mut k as *mut CeForward).cast::<c_void>()];
        dev.launch(fwd, grid(f.n_rows), THREADS, stream, &mut args)?;
    }
    if !none {
        let red = dev.function("cross_entropy", &KERNELS, &format!("ce_reduce_{s}"))?;
        let mut r = CeReduce {
            row_loss: f.row_loss,
            row_weight: f.row_weight,
            out: f.out,
            total_weight: f.total_weight,
            n_rows: f.n_rows as i64,
            mean: (reduction == Reduction::Mean) as i32,
            pad: 0,
        };
        let mut args = [(&mut r as *mut CeReduce).cast::<c_void>()];
        dev.launch(red, 1, THREADS, stream, &mut args)?;
    }
    Ok(())
}

/// Checks a backward call's addresses.
pub fn validate_backward(dtype: DType, reduction: Reduction, b: &BackwardArgs) -> Result<()> {
    let a = dtype.size();
    check_rows(
        a,
        b.n_rows,
        b.logits,
        b.target,
        b.weight,
        b.lse,
        b.n_classes,
        b.label_smoothing,
    )?;
    if b.n_rows == 0 {
        return Ok(());
    }
    check_ptr("cross_entropy: grad_output", b.grad_out, a)?;
    check_ptr("cross_entropy: grad_input", b.grad_in, a)?;
    if reduction == Reduction::Mean {
        check_ptr("cross_entropy: total_weight", b.total_weight, 4)?;
    }
    Ok(())
}

/// Queues the backward on `stream`. Never synchronises.
///
/// # Safety
/// As [`forward`]; `grad_in` (n_rows x n_classes) is either `logits` itself or does not overlap it.
pub unsafe fn backward(
    ordinal: i32,
    stream: u64,
    dtype: DType,
    reduction: Reduction,
    b: &BackwardArgs,
) -> Result<()> {
    validate_backward(dtype, reduction, b)?;
    if b.n_rows == 0 {
        return Ok(());
    }
    let dev = runtime::device(ordinal)?;
    let f = dev.function(
        "cross_entropy",
        &KERNELS,
        &format!("ce_backward_{}", suffix(dtype)),
    )?;
    let mut k = CeBackward {
        logits: b.logits,
        target: b.target,
        weight: b.weight,
        lse: b.lse,
        grad_out: b.grad_out,
        total_weight: if reduction == Reduction::Mean {
            b.total_weight
        } else {
            0
        },
        grad_in: b.grad_in,
        n_rows: b.n_rows as i64,
        n_classes: b.n_classes as i64,
        ignore_index: b.ignore_index,
        label_smoothing: b.label_smoothing as f32,
        grad_out_per_row: (reduction == Reduction::None) as i32,
    };
    let mut args = [(&mut k as *mut CeBackward).cast::<c_void>()];
    dev.launch(f, grid(b.n_rows), THREADS, stream, &mut args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_cuda_source() {
        let src = include_str!("../kernels/cross_entropy.cu");
        let line = src
            .lines()
            .find(|l| l.starts_with("#define CE_THREADS "))
            .unwrap();
        assert_eq!(
            line["#define CE_THREADS ".len()..]
                .trim()
                .parse::<u32>()
                .unwrap(),
            THREADS
        );
        assert_eq!(std::mem::size_of::<CeForward>(), 8 * 8 + 3 * 8 + 8);
        assert_eq!(std::mem::size_of::<CeReduce>(), 4 * 8 + 8 + 8);
        assert_eq!(std::mem::size_of::<CeBackward>(), 7 * 8 + 3 * 8 + 8);
        for k in KERNELS {
            let entry = k.rsplit_once('_').unwrap().0; // ce_forward / ce_reduce / ce_backward
            assert!(
                src.contains(&format!("{entry}_##SUFFIX")),
                "{k} has no entry point"
            );
        }
    }

    fn fwd() -> ForwardArgs {
        ForwardArgs {
            logits: 0x1000,
            target: 0x2000,
            lse: 0x3000,
            row_loss: 0x4000,
            row_weight: 0x5000,
            out: 0x6000,
            total_weight: 0x7000,
            n_rows: 4,
            n_classes: 10,
            ignore_index: -100,
            ..Default::default()
        }
    }

    #[test]
    fn validation() {
        assert!(validate_forward(DType::F32, Reduction::Mean, &fwd()).is_ok());
        let mut f = fwd();
        f.row_loss = 0;
        assert!(validate_forward(DType::F32, Reduction::Mean, &f).is_err());
        assert!(validate_forward(DType::F32, Reduction::None, &f).is_ok());
        f.target = 0x2004;
        assert!(validate_forward(DType::F32, Reduction::None, &f).is_err());
        let mut f = fwd();
        f.label_smoothing = 1.5;
        let e = validate_forward(DType::BF16, Reduction::Sum, &f).unwrap_err();
        assert!(e.to_string().contains("label_smoothing"));
        let mut f = fwd();
        f.n_classes = 0;
        assert!(validate_forward(DType::F16, Reduction::Sum, &f).is_err());
        // No rows: only the scalar outputs of a reduction are written, nothing else is checked.
        let empty = ForwardArgs {
            out: 0x6000,
            total_weight: 0x7000,
            ..Default::default()
        };
        assert!(validate_forward(DType::F32, Reduction::Mean, &empty).is_ok());
        assert!(validate_forward(DType::F32, Reduction::None, &ForwardArgs::default()).is_ok());
        let mut f = fwd();
        f.n_rows = u64::MAX / 2;
        assert!(validate_forward(DType::F32, Reduction::None, &f).is_err());
        let b = BackwardArgs {
            logits: 0x1000,
            target: 0x2000,
            lse: 0x3000,
            grad_out: 0x4000,
            grad_in: 0x1000,
            n_rows: 2,
            n_classes: 3,
            ..Default::default()
        };
        assert!(validate_backward(DType::F32, Reduction::Sum, &b).is_ok());
        assert!(validate_backward(DType::F32, Reduction::Mean, &b).is_err()); // needs total_weight
    }
}
