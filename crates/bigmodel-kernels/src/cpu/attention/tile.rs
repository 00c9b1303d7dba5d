//! Tile math shared by the forward and backward passes: the GEMM wrapper, a vectorisable `exp2`,
//! the per-tile score fix-ups (mask, causal edge, dropout) and element conversion.
//!
//! Everything here works on the arithmetic type (f32 for fp32/bf16, f64 for fp64). Row loops are
//! plain Rust that LLVM vectorises inside the per-ISA wrappers of [`crate::dispatch_isa`]; the
//! products go through faer's matmul single-threaded, since the caller already runs one rayon
//! task per tile row.

use crate::element::{Element, Real};
use faer::traits::ComplexField;
use faer::{Accum, MatMut, MatRef, Par};
use half::{bf16, f16};

/// log2(e): scores are kept in base 2 so that the softmax needs `exp2` only.
pub const LOG2E: f64 = std::f64::consts::LOG2_E;

/// Coefficients of the degree-6 Taylor polynomial for 2^f, |f| <= 1/2, lowest first (relative
/// error below 2e-7), shared by the generic f32 `exp2` and the AVX-512 one (`super::simd`).
pub const EXP2_POLY_F32: [f32; 7] = [
    1.0,
    std::f32::consts::LN_2,
    0.240_226_5,
    0.055_504_11,
    0.009_618_129,
    0.001_333_355_8,
    0.000_154_035_3,
];

/// The arithmetic types of the kernel: f32 and f64, with the `exp2` the softmax uses.
pub trait Acc: Real + ComplexField + Default {
    const NEG_INF: Self;
    /// 2^x; 0 for -inf, NaN for NaN.
    fn exp2(x: Self) -> Self;
    fn log2(x: Self) -> Self;
    fn is_neg_inf(self) -> bool;

    /// The forward's online-softmax update of a tile's rows (see `forward::softmax_step`) by
    /// hand-written SIMD, where this type and CPU have one; false, having done nothing, where not.
    #[allow(clippy::too_many_arguments)]
    fn softmax_rows_simd(
        _s: &mut [Self],
        _rs: usize,
        _rows: usize,
        _cols: usize,
        _m: &mut [Self],
        _l: &mut [Self],
        _o: &mut [Self],
        _dv: usize,
    ) -> bool {
        false
    }

    /// `row[i] = 2^(row[i] - sub)` by hand-written SIMD, where this type and CPU have one; false,
    /// having done nothing, where not.
    fn exp2_sub_simd(_row: &mut [Self], _sub: Self) -> bool {
        false
    }
}

impl Acc for f32 {
    const NEG_INF: f32 = f32::NEG_INFINITY;
    /// Cody-Waite split x = n + f (|f| <= 1/2), a degree-6 Taylor polynomial for 2^f (relative
    /// error below 2e-7), and 2^n built in the exponent bits. Inputs under -127 give 0 (denormal
    /// results are flushed, which the softmax cannot tell apart from 0 after normalisation).
    #[inline(always)]
    fn exp2(x: f32) -> f32 {
        let x = if x < -127.0 { -127.0 } else { x };
        let x = if x > 127.0 { 127.0 } else { x };
        // Round to nearest by the 1.5 * 2^23 trick: no rounding instruction needed on SSE2, and
        // the integer n sits in the low mantissa bits of `t`, so no (scalar, saturating)
        // float-to-int conversion is needed either.
        const MAGIC: f32 = 12_582_912.0;
        let t = x + MAGIC;
        let n = t - MAGIC;
        let f = x - n;
        const C: [f32; 7] = EXP2_POLY_F32;
        let p = C[6];
        let p = p.mul_add(f, C[5]);
        let p = p.mul_add(f, C[4]);
        let p = p.mul_add(f, C[3]);
        let p = p.mul_add(f, C[2]);
        let p = p.mul_add(f, C[1]);
        let p = p.mul_add(f, C[0]);
        let bits = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23;
        p * f32::from_bits(bits)
    }
    #[inline(always)]
    fn log2(x: f32) -> f32 {
        x.log2()
    }
    #[inline(always)]
    fn is_neg_inf(self) -> bool {
        self == f32::NEG_INFINITY
    }

    fn softmax_rows_simd(
        s: &mut [f32],
        rs: usize,
        rows: usize,
        cols: usize,
        m: &mut [f32],
        l: &mut [f32],
        o: &mut [f32],
        dv: usize,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if crate::isa::avx512_active() {
            // SAFETY: avx512_active() checked that this CPU runs AVX-512F.
            unsafe { super::simd::softmax_rows(s, rs, rows, cols, m, l, o, dv) };
            return true;
        }
        let _ = (s, rs, rows, cols, m, l, o, dv);
        false
    }

    fn exp2_sub_simd(row: &mut [f32], sub: f32) -> bool {
        #[cfg(target_arch = "x86_64")]
        if crate::isa::avx512_active() {
            // SAFETY: as above.
            unsafe { super::simd::exp2_sub(row, sub) };
            return true;
        }
        let _ = (row, sub);
        false
    }
}

impl Acc for f64 {
    const NEG_INF: f64 = f64::NEG_INFINITY;
    /// fp64 is the reference / gradcheck dtype: exact libm `exp2`, speed is secondary.
    #[inline(always)]
    fn exp2(x: f64) -> f64 {
        x.exp2()
    }
    #[inline(always)]
    fn log2(x: f64) -> f64 {
        x.log2()
    }
    #[inline(always)]
    fn is_neg_inf(self) -> bool {
        self == f64::NEG_INFINITY
    }
}

/// Storage types the attention kernel accepts: fp32 and fp64 read in place, bf16/fp16 converted.
pub trait AttnElement: Element<Acc: Acc> {
    /// The elements as the arithmetic type, when no conversion is needed.
    fn as_acc(s: &[Self]) -> Option<&[Self::Acc]>;
}

impl AttnElement for f32 {
    fn as_acc(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
}
impl AttnElement for f64 {
    fn as_acc(s: &[f64]) -> Option<&[f64]> {
        Some(s)
    }
}
impl AttnElement for bf16 {
    fn as_acc(_: &[bf16]) -> Option<&[f32]> {
        None
    }
}
impl AttnElement for f16 {
    fn as_acc(_: &[f16]) -> Option<&[f32]> {
        None
    }
}

/// `src` as the arithmetic type: borrowed when it already is, else converted into `scratch`.
#[inline]
pub fn view<'a, T: AttnElement>(src: &'a [T], scratch: &'a mut Vec<T::Acc>) -> &'a [T::Acc] {
    match T::as_acc(src) {
        Some(s) => s,
        None => {
            scratch.clear();
            scratch.extend(src.iter().map(|x| x.load()));
            scratch
        }
    }
}

/// `dst[m x n] = (acc ? dst : 0) + beta * lhs[m x k] * rhs[k x n]`, all row/column strides in
/// elements. Bounds of every operand are checked against the strides before the raw call.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn matmul<R: Acc>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [R],
    dst_rs: usize,
    acc: bool,
    lhs: &[R],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[R],
    (rhs_rs, rhs_cs): (usize, usize),
    beta: R,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(R::ZERO);
            }
        }
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    // Internal invariants of the tiling, not user input: a failure is a bug in this module.
    assert!(n <= dst_rs && last(m, dst_rs, n, 1) < dst.len());
    assert!(last(m, lhs_rs, k, lhs_cs) < lhs.len());
    assert!(last(k, rhs_rs, n, rhs_cs) < rhs.len());
    // SAFETY: the asserts above keep every addressed element inside its slice (strides are
    // slice offsets, so they fit in isize); `dst` is a unique borrow, so the product writes memory
    // nothing else reads, and the views live only for this call.
    let (dst, lhs, rhs) = unsafe {
        (
            MatMut::from_raw_parts_mut(dst.as_mut_ptr(), m, n, dst_rs as isize, 1),
            MatRef::from_raw_parts(lhs.as_ptr(), m, k, lhs_rs as isize, lhs_cs as isize),
            MatRef::from_raw_parts(rhs.as_ptr(), k, n, rhs_rs as isize, rhs_cs as isize),
        )
    };
    let acc = if acc { Accum::Add } else { Accum::Replace };
    faer::linalg::matmul::matmul(dst, acc, lhs, rhs, beta, Par::Seq);
}

/// The broadcast mask of one (batch, head): rows of `dims[3]` entries (1 or the key length),
/// `dims[2]` rows (1 or the query length).
#[derive(Clone, Copy)]
pub enum HeadMask<'a, R> {
    None,
    /// `true` (non-zero) where attention is allowed.
    Bool {
        data: &'a [u8],
        rows: usize,
        cols: usize,
    },
    /// Added to the scores (already multiplied by log2(e)).
    Additive {
        data: &'a [R],
        rows: usize,
        cols: usize,
    },
}

/// What turns raw scores of one tile into masked, base-2 scores: everything but the product.
pub struct TileFix<'a, R> {
    pub mask: HeadMask<'a, R>,
    /// Scale of additive mask entries into base 2 (log2(e)); fp64 for fp64 inputs.
    pub mask_scale: R,
    pub causal: bool,
    /// First query row and first key of the tile.
    pub row0: usize,
    pub col0: usize,
}

/// Applies mask and causal edge to a `br x bc` tile of base-2 scores (row stride `rs`).
#[inline(always)]
pub fn fix_scores<R: Acc>(s: &mut [R], rs: usize, br: usize, bc: usize, fix: &TileFix<'_, R>) {
    for r in 0..br {
        let row = &mut s[r * rs..r * rs + bc];
        let qi = fix.row0 + r;
        match fix.mask {
            HeadMask::None => {}
            HeadMask::Bool { data, rows, cols } => {
                let mr = if rows == 1 { 0 } else { qi };
                if cols == 1 {
                    if data[mr] == 0 {
                        row.fill(R::NEG_INF);
                    }
                } else {
                    let m = &data[mr * cols + fix.col0..mr * cols + fix.col0 + bc];
                    for (x, &keep) in row.iter_mut().zip(m) {
                        if keep == 0 {
                            *x = R::NEG_INF;
                        }
                    }
                }
            }
            HeadMask::Additive { data, rows, cols } => {
                let mr = if rows == 1 { 0 } else { qi };
                if cols == 1 {
                    let a = data[mr] * fix.mask_scale;
                    row.iter_mut().for_each(|x| *x += a);
                } else {
                    let m = &data[mr * cols + fix.col0..mr * cols + fix.col0 + bc];
                    for (x, &a) in row.iter_mut().zip(m) {
                        *x += a * fix.mask_scale;
                    }
                }
            }
        }
        if fix.causal && fix.col0 + bc > qi + 1 {
            // Keys after the query: torch's is_causal is the top-left aligned lower triangle.
            let first_masked = (qi + 1).saturating_sub(fix.col0);
            row[first_masked..].fill(R::NEG_INF);
        }
    }
}

/// Counter-based dropout stream: keep-decisions depend only on (seed, head, query, key), so the
/// backward pass regenerates exactly the forward's mask without storing it.
#[derive(Clone, Copy)]
pub struct Dropout {
    pub seed: u64,
    /// Keep when the 24-bit hash is >= this (p * 2^24 rounded).
    pub threshold: u32,
    pub len_kv: usize,
}

impl Dropout {
    pub fn new(p: f64, seed: u64, len_kv: usize) -> Dropout {
        Dropout {
            seed,
            threshold: (p * (1u64 << 24) as f64).round() as u32,
            len_kv,
        }
    }

    /// Multiplies row `qi` of head `bh` (keys from `col0`) by keep / (1 - p), zeroing dropped.
    #[inline]
    pub fn apply<R: Acc>(&self, row: &mut [R], bh: usize, qi: usize, col0: usize, inv_keep: R) {
        let base = (bh as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(((qi * self.len_kv + col0) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        dropout_row(row, self.seed, base, self.threshold, inv_keep);
    }
}

crate::dispatch_isa! {
    // Compiled per ISA: the hash's 64-bit multiplies are one instruction with AVX-512DQ, where
    // baseline SSE2 code emulates each with three; at baseline this loop was ~20% of the
    // char-LM's training step (dropout 0.1 in every attention layer).
    fn dropout_row<R: Acc>(row: &mut [R], seed: u64, base: u64, threshold: u32, inv_keep: R) {
        for (c, x) in row.iter_mut().enumerate() {
            let h = splitmix(seed ^ base.wrapping_add((c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)));
            let keep = ((h >> 40) as u32) >= threshold;
            *x = if keep { *x * inv_keep } else { R::ZERO };
        }
    }
}

#[inline(always)]
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp2_f32_accuracy() {
        let mut x = -126.0f32;
        while x < 127.0 {
            let want = (x as f64).exp2();
            let got = <f32 as Acc>::exp2(x) as f64;
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "x={x} got={got} want={want}"
            );
            x += 0.013;
        }
        assert_eq!(<f32 as Acc>::exp2(f32::NEG_INFINITY), 0.0);
        assert_eq!(<f32 as Acc>::exp2(-500.0), 0.0);
        assert!(<f32 as Acc>::exp2(f32::NAN).is_nan());
    }

    #[test]
    fn matmul_matches_naive_with_transposed_rhs() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| i as f64 * 0.5 - 2.0).collect();
        let b: Vec<f64> = (0..n * k).map(|i| (i as f64).sin()).collect(); // n x k, used as b^T
        let mut c = vec![1.0f64; m * 8];
        matmul((m, n, k), &mut c, 8, true, &a, (k, 1), &b, (1, k), 2.0);
        for i in 0..m {
            for j in 0..n {
                let want = 1.0 + 2.0 * (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum::<f64>();
                assert!((c[i * 8 + j] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn dropout_rate_and_determinism() {
        let d = Dropout::new(0.3, 42, 1000);
        let mut row = vec![1.0f32; 1000];
        d.apply(&mut row, 3, 7, 0, 1.0);
        let kept = row.iter().filter(|&&x| x != 0.0).count();
        assert!((650..750).contains(&kept), "kept {kept}");
        let mut tail = vec![1.0f32; 500];
        d.apply(&mut tail, 3, 7, 500, 1.0);
        assert_eq!(&row[500..], &tail[..]);
    }

    /// The backward regenerates the forward's mask, and a run must not depend on the CPU: every
    /// instruction set keeps and scales the same elements.
    #[test]
    fn dropout_mask_is_the_same_on_every_isa() {
        use crate::isa::{self, Isa};
        let d = Dropout::new(0.25, 7, 300);
        let run = || {
            let mut row: Vec<f32> = (0..300).map(|i| i as f32 + 1.0).collect();
            d.apply(&mut row, 5, 11, 0, 4.0 / 3.0);
            row
        };
        let want = run();
        for narrower in [Isa::Avx2, Isa::Scalar] {
            if isa::set_override(Some(narrower)).is_ok() {
                assert_eq!(run(), want, "{narrower:?}");
            }
        }
        isa::set_override(None).unwrap();
    }
}

#[cfg(test)]
mod gemm_speed {
    use super::*;

    /// Single-thread GFLOP/s of the tile products (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn tile_gemm_throughput() {
        for (m, n, k, t_rhs) in [
            (128, 512, 64, true),
            (128, 64, 512, false),
            (128, 128, 64, true),
        ] {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; n * k];
            let mut c = vec![0.0f32; m * n];
            let rhs_st = if t_rhs { (1, k) } else { (n, 1) };
            let reps = 2000;
            let t0 = std::time::Instant::now();
            for _ in 0..reps {
                matmul((m, n, k), &mut c, n, false, &a, (k, 1), &b, rhs_st, 1.0);
            }
            let s = t0.elapsed().as_secs_f64();
            println!(
                "{m}x{n}x{k}: {:.1} GFLOP/s",
                2.0 * (m * n * k * reps) as f64 / s / 1e9
            );
        }
    }
}
