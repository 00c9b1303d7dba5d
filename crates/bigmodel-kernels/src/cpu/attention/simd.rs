//! The f32 softmax loops by AVX-512 intrinsics: the forward's online-softmax update and the
//! backward's probabilities.
//!
//! LLVM vectorises the generic loops ([`super::forward`], [`super::backward`]), but not as
//! tightly: its `exp2` rounds with the 1.5 * 2^23 trick and builds 2^n in the exponent bits (five
//! instructions where `vrndscaleps` and `vscalefps` take two), and its NaN-propagating row maximum
//! costs a compare, a mask merge and a blend per vector. Here `exp2` is `vrndscaleps`, the same
//! degree-6 polynomial and `vscalefps`, so both give the same values (this one keeps the
//! subnormal results under 2^-126 that the generic one flushes to zero), and the maximum is a
//! plain `vmaxps`: where a row holds a NaN, its exponentials and so its sum turn NaN anyway,
//! and a row whose other entries are all -inf is checked for NaN before it counts as masked.

use super::tile::{Acc, EXP2_POLY_F32};
use crate::element::Real;
use std::arch::x86_64::*;

/// The forward's softmax update of `rows` rows of `s` (row stride `rs`, `cols` scores each,
/// masked and in base 2): see `forward::softmax_step`, which this replaces for f32.
///
/// # Safety
/// AVX-512F ([`crate::isa::avx512_active`]).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn softmax_rows(
    s: &mut [f32],
    rs: usize,
    rows: usize,
    cols: usize,
    m: &mut [f32],
    l: &mut [f32],
    o: &mut [f32],
    dv: usize,
) {
    for r in 0..rows {
        let row = &mut s[r * rs..r * rs + cols];
        let mut m_new = row_max(row).max_nan(m[r]);
        if m_new == f32::NEG_INFINITY {
            if row.iter().any(|x| x.is_nan()) {
                m_new = f32::NAN; // the plain maximum may have skipped it
            } else {
                // Every key so far masked: nothing to add, and 2^(-inf - -inf) must not appear.
                row.fill(0.0);
                continue;
            }
        }
        let alpha = <f32 as Acc>::exp2(m[r] - m_new);
        let sum = exp2_sub(row, m_new);
        l[r] = l[r] * alpha + sum;
        m[r] = m_new;
        if alpha != 1.0 {
            o[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= alpha);
        }
    }
}

/// `row[i] = 2^(row[i] - sub)` for every entry; returns their sum.
///
/// # Safety
/// AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn exp2_sub(row: &mut [f32], sub: f32) -> f32 {
    let shift = _mm512_set1_ps(sub);
    let mut sum = _mm512_setzero_ps();
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        // SAFETY: `c` is 16 contiguous f32.
        unsafe {
            let e = exp2(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), shift));
            _mm512_storeu_ps(c.as_mut_ptr(), e);
            sum = _mm512_add_ps(sum, e);
        }
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let lanes = ((1u32 << tail.len()) - 1) as u16;
        // SAFETY: the enabled lanes are the tail's len (< 16) elements; the others are neither
        // read nor written.
        unsafe {
            let x = _mm512_maskz_loadu_ps(lanes, tail.as_ptr());
            let e = exp2(_mm512_sub_ps(x, shift));
            _mm512_mask_storeu_ps(tail.as_mut_ptr(), lanes, e);
            sum = _mm512_mask_add_ps(sum, lanes, sum, e);
        }
    }
    _mm512_reduce_add_ps(sum)
}

/// The largest entry of a row (-inf for an empty one); a NaN may or may not come out.
#[target_feature(enable = "avx512f")]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        // SAFETY: `c` is 16 contiguous f32.
        acc = _mm512_max_ps(acc, unsafe { _mm512_loadu_ps(c.as_ptr()) });
    }
    let tail = chunks.remainder();
    let lanes = ((1u32 << tail.len()) - 1) as u16;
    // SAFETY: only the tail's len enabled lanes are read; the others keep acc's value.
    acc = _mm512_max_ps(acc, unsafe {
        _mm512_mask_loadu_ps(acc, lanes, tail.as_ptr())
    });
    _mm512_reduce_max_ps(acc)
}

/// 2^x per lane: 0 for x <= -150 (and -inf), NaN for NaN, subnormal results kept.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp2(x: __m512) -> __m512 {
    // MAXPS returns its second operand when either is NaN, so a NaN passes the clamp. At -150,
    // 2^n * p(0) = 2^-150 is half the smallest subnormal and rounds (to even) to 0.
    let x = _mm512_max_ps(_mm512_set1_ps(-150.0), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm512_sub_ps(x, n);
    let c = EXP2_POLY_F32;
    let mut p = _mm512_set1_ps(c[6]);
    for &k in c[..6].iter().rev() {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(k));
    }
    _mm512_scalef_ps(p, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp2_matches_the_generic_one() {
        if !crate::isa::avx512_active() {
            return;
        }
        let xs: Vec<f32> = (0..4000)
            .map(|i| -130.0 + i as f32 * 0.0331)
            .chain([f32::NEG_INFINITY, -1000.0, -150.0, -149.5, 0.0, -0.0, 5.5])
            .collect();
        let mut got = xs.clone();
        // SAFETY: avx512_active() checked AVX-512F.
        unsafe { exp2_sub(&mut got, 0.0) };
        for (&x, &g) in xs.iter().zip(&got) {
            let want = <f32 as Acc>::exp2(x);
            if x >= -126.0 {
                assert_eq!(g, want, "x = {x}");
            } else {
                // Below the generic one's flush: the subnormal value (or 0), not an error.
                let exact = (x as f64).exp2();
                assert!((g as f64 - exact).abs() <= 2f64.powi(-149), "x = {x}: {g}");
            }
        }
        let mut nan = [f32::NAN; 3];
        // SAFETY: as above.
        assert!(unsafe { exp2_sub(&mut nan, 1.0) }.is_nan());
        assert!(nan.iter().all(|x| x.is_nan()));
    }

    #[test]
    fn exp2_sub_sums_every_length() {
        if !crate::isa::avx512_active() {
            return;
        }
        for n in [0, 1, 15, 16, 17, 40, 64] {
            let row: Vec<f32> = (0..n)
                .map(|i| (i as f32 * 0.37).sin() * 4.0 - 2.0)
                .collect();
            let mut got = row.clone();
            // SAFETY: avx512_active() checked AVX-512F.
            let sum = unsafe { exp2_sub(&mut got, 1.5) };
            let want: Vec<f32> = row.iter().map(|&x| <f32 as Acc>::exp2(x - 1.5)).collect();
            assert_eq!(got, want, "n = {n}");
            let total: f32 = want.iter().sum();
            assert!((sum - total).abs() <= 1e-5 * total.max(1.0), "n = {n}");
        }
    }

    #[test]
    fn row_max_and_masked_rows() {
        if !crate::isa::avx512_active() {
            return;
        }
        // SAFETY (all calls): avx512_active() checked AVX-512F.
        for n in [1, 7, 16, 33] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 7) % 13) as f32 - 20.0).collect();
            let want = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            assert_eq!(unsafe { row_max(&row) }, want);
        }
        assert_eq!(unsafe { row_max(&[]) }, f32::NEG_INFINITY);
        // A fully masked row is zeroed and leaves the running state alone; one with a NaN
        // among masked entries poisons it.
        let (mut m, mut l, mut o) = ([f32::NEG_INFINITY; 2], [0.0f32; 2], [0.0f32; 4]);
        let mut s = [
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        unsafe { softmax_rows(&mut s, 2, 2, 2, &mut m, &mut l, &mut o, 2) };
        assert_eq!(&s[..2], &[0.0, 0.0]);
        assert_eq!((m[0], l[0]), (f32::NEG_INFINITY, 0.0));
        assert!(l[1].is_nan() || m[1].is_nan());
    }
}
