//! Branch-free `exp` and multi-accumulator reductions that vectorise inside [`crate::dispatch_isa!`].
//!
//! No crate offers a vector `exp`, and `f32::exp` is a libm call that stops LLVM from
//! vectorising the loop around it. [`exp_f32`] / [`exp_f64`] are written so that every operation
//! has a SIMD form: Cody-Waite range reduction `x = n ln2 + r` with `|r| <= ln2 / 2`, `n` found by
//! the round-to-nearest "magic number" add (no float-to-int conversion), a polynomial for
//! `exp(r)`, and `2^n` built directly in the exponent bits. Out-of-range inputs are handled by
//! selects, never branches: below the smallest normal result the answer is 0 (flushing what
//! would be subnormal), above the overflow point it is +inf, and NaN stays NaN because every
//! comparison with NaN is false and the arithmetic then carries it through. Products and sums
//! are fused (`mul_add`): one instruction each inside the AVX2 / AVX-512 wrappers, which have
//! FMA, and a correctly rounded libm `fma` call on the baseline path, so every path computes the
//! same values (the baseline path only runs on x86 CPUs older than Haswell, and in tests).
//!
//! Reductions keep [`LANES`] independent accumulators: IEEE addition is not associative, so LLVM
//! will not reorder a single-accumulator sum into vector lanes by itself, but an explicit array
//! of partial sums is exactly what its SLP vectoriser turns into vector registers.

use crate::element::{Element, Real};
use half::{bf16, f16};

/// Independent partial sums per reduction: two AVX-512 registers of f32, four of f64.
pub const LANES: usize = 32;

/// An element type whose arithmetic type has a vectorisable `exp`.
pub trait CeElement: Element {
    /// `exp(x)`, branch-free; see the module doc for the range handling.
    fn exp_acc(x: Self::Acc) -> Self::Acc;
    /// Natural logarithm, used once per row (not vectorised).
    fn ln_acc(x: Self::Acc) -> Self::Acc;
    const NEG_INF: Self::Acc;
}

macro_rules! ce_f32 {
    ($t:ty) => {
        impl CeElement for $t {
            #[inline(always)]
            fn exp_acc(x: f32) -> f32 {
                exp_f32(x)
            }
            #[inline(always)]
            fn ln_acc(x: f32) -> f32 {
                x.ln()
            }
            const NEG_INF: f32 = f32::NEG_INFINITY;
        }
    };
}
ce_f32!(f32);
ce_f32!(bf16);
ce_f32!(f16);

impl CeElement for f64 {
    #[inline(always)]
    fn exp_acc(x: f64) -> f64 {
        exp_f64(x)
    }
    #[inline(always)]
    fn ln_acc(x: f64) -> f64 {
        x.ln()
    }
    const NEG_INF: f64 = f64::NEG_INFINITY;
}

/// `exp` in f32: relative error about 1 ulp on [-87.3, 88]; 0 below (no subnormals), +inf above 88.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // ln(2^-126): the smallest normal result.
    const LO: f32 = -87.336_54;
    // Above this, 2^n would need an exponent of 128; the kernel only ever evaluates x <= 0.
    const HI: f32 = 88.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    // ln 2 split so that n * C1 is exact for |n| < 2^9 (Cody and Waite).
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = if x < LO { LO } else { x };
    let xc = if xc > HI { HI } else { xc };
    let v = xc.mul_add(LOG2E, MAGIC);
    let n = v - MAGIC;
    let r = n.mul_add(-C2, n.mul_add(-C1, xc));
    // Minimax polynomial of Cephes' expf: exp(r) = 1 + r + r^2 P(r) on |r| <= ln2/2.
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    // v's bits are MAGIC's plus n in two's complement; MAGIC's own bits all shift out.
    let scale = f32::from_bits(v.to_bits().wrapping_add(127) << 23);
    let y = y * scale;
    let y = if x < LO { 0.0 } else { y };
    if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// `exp` in f64: relative error a few ulp on [-708.3, 709]; 0 below, +inf above 709.
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    const LO: f64 = -708.396_418_532_264_1;
    const HI: f64 = 709.0;
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // 1.5 * 2^52.
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    // fdlibm's split of ln 2.
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    let xc = if x < LO { LO } else { x };
    let xc = if xc > HI { HI } else { xc };
    let v = xc.mul_add(LOG2E, MAGIC);
    let n = v - MAGIC;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    // Taylor series to degree 13: the remainder r^14/14! < 2e-18 on |r| <= ln2/2.
    const INV_FACT: [f64; 14] = [
        1.0,
        1.0,
        0.5,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let mut p = INV_FACT[13];
    let mut k = 12;
    while k > 0 {
        p = p.mul_add(r, INV_FACT[k]);
        k -= 1;
    }
    let y = p.mul_add(r, 1.0);
    let scale = f64::from_bits(v.to_bits().wrapping_add(1023) << 52);
    let y = y * scale;
    let y = if x < LO { 0.0 } else { y };
    if x > HI {
        f64::INFINITY
    } else {
        y
    }
}

/// Maximum of `x`, ignoring NaN; -inf for an empty slice or one of only NaN.
///
/// The caller need not see NaN here: the row's NaN reaches its log-sum-exp anyway through
/// `exp(NaN - m)` in the sum that follows, as torch's does. A plain compare-and-select is one
/// `vmaxps` per vector; propagating NaN would cost a compare, a blend and an `or` besides.
#[inline(always)]
pub fn max<T: CeElement>(x: &[T]) -> T::Acc {
    #[inline(always)]
    fn gt<A: Real>(m: A, v: A) -> A {
        if v > m {
            v
        } else {
            m
        }
    }
    if x.len() < LANES {
        // Short rows: one accumulator; reducing 32 lanes would cost more than the row.
        return x.iter().fold(T::NEG_INF, |m, v| gt(m, v.load()));
    }
    let mut acc = [T::NEG_INF; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            acc[l] = gt(acc[l], ch[l].load());
        }
    }
    for (l, v) in chunks.remainder().iter().enumerate() {
        acc[l] = gt(acc[l], v.load());
    }
    acc.into_iter().fold(T::NEG_INF, gt)
}

/// Sum of the lanes, pairwise (what the vector code would do), for a deterministic order.
#[inline(always)]
pub fn hsum<A: Real>(mut acc: [A; LANES]) -> A {
    let mut w = LANES / 2;
    while w > 0 {
        for l in 0..w {
            acc[l] = acc[l] + acc[l + w];
        }
        w /= 2;
    }
    acc[0]
}

/// `sum_j exp(x_j - m)`.
#[inline(always)]
pub fn sum_exp<T: CeElement>(x: &[T], m: T::Acc) -> T::Acc {
    if x.len() < LANES {
        return x
            .iter()
            .fold(<T::Acc as Real>::ZERO, |s, v| s + T::exp_acc(v.load() - m));
    }
    let mut acc = [<T::Acc as Real>::ZERO; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            acc[l] = acc[l] + T::exp_acc(ch[l].load() - m);
        }
    }
    for (l, v) in chunks.remainder().iter().enumerate() {
        acc[l] = acc[l] + T::exp_acc(v.load() - m);
    }
    hsum(acc)
}

/// `(sum_j exp(x_j - m), sum_j a_j (x_j - m), sum_j a_j)` with `a_j = coef(j)`.
///
/// `coef` is an inlined closure of the element's position in `x`; with the class weights or
/// the target probabilities it reads them at the same index.
#[inline(always)]
pub fn sum_exp_weighted<T: CeElement>(
    x: &[T],
    m: T::Acc,
    coef: impl Fn(usize) -> T::Acc,
) -> (T::Acc, T::Acc, T::Acc) {
    let zero = <T::Acc as Real>::ZERO;
    if x.len() < LANES {
        let (mut s, mut sa, mut asum) = (zero, zero, zero);
        for (j, v) in x.iter().enumerate() {
            let d = v.load() - m;
            let a = coef(j);
            s = s + T::exp_acc(d);
            sa = sa + a * d;
            asum = asum + a;
        }
        return (s, sa, asum);
    }
    let (mut s, mut sa, mut asum) = ([zero; LANES], [zero; LANES], [zero; LANES]);
    let full = x.len() / LANES * LANES;
    let mut base = 0;
    while base < full {
        let ch = &x[base..base + LANES];
        for l in 0..LANES {
            let d = ch[l].load() - m;
            let a = coef(base + l);
            s[l] = s[l] + T::exp_acc(d);
            sa[l] = sa[l] + a * d;
            asum[l] = asum[l] + a;
        }
        base += LANES;
    }
    for (l, v) in x[full..].iter().enumerate() {
        let d = v.load() - m;
        let a = coef(full + l);
        s[l] = s[l] + T::exp_acc(d);
        sa[l] = sa[l] + a * d;
        asum[l] = asum[l] + a;
    }
    (hsum(s), hsum(sa), hsum(asum))
}

/// `v_j = exp(v_j)` over a flat slice: one vector loop however the values are grouped in rows.
#[inline(always)]
pub fn exp_all<T: CeElement>(v: &mut [T::Acc]) {
    for x in v.iter_mut() {
        *x = T::exp_acc(*x);
    }
}

/// [`sum_exp`] that also stores each `exp(x_j - m)`, converted by `put`, in `e` (as long as
/// `x`): into the gradient buffer itself, or into a row of `T::Acc` scratch.
///
/// The pairs of chunks keep the loop free of bounds checks, so it vectorises like `sum_exp`.
#[inline(always)]
pub fn sum_exp_store<T: CeElement, D>(
    x: &[T],
    m: T::Acc,
    e: &mut [D],
    put: impl Fn(T::Acc) -> D,
) -> T::Acc {
    assert_eq!(e.len(), x.len());
    let mut acc = [<T::Acc as Real>::ZERO; LANES];
    let mut xs = x.chunks_exact(LANES);
    let mut es = e.chunks_exact_mut(LANES);
    for (xc, ec) in (&mut xs).zip(&mut es) {
        for l in 0..LANES {
            let v = T::exp_acc(xc[l].load() - m);
            ec[l] = put(v);
            acc[l] = acc[l] + v;
        }
    }
    let tail = xs.remainder().iter().zip(es.into_remainder());
    for (l, (xv, ev)) in tail.enumerate() {
        let v = T::exp_acc(xv.load() - m);
        *ev = put(v);
        acc[l] = acc[l] + v;
    }
    hsum(acc)
}

/// [`sum_exp_weighted`] that also stores each `exp(x_j - m)` as [`sum_exp_store`] does.
#[inline(always)]
pub fn sum_exp_weighted_store<T: CeElement, D>(
    x: &[T],
    m: T::Acc,
    coef: impl Fn(usize) -> T::Acc,
    e: &mut [D],
    put: impl Fn(T::Acc) -> D,
) -> (T::Acc, T::Acc, T::Acc) {
    assert_eq!(e.len(), x.len());
    let zero = <T::Acc as Real>::ZERO;
    let (mut s, mut sa, mut asum) = ([zero; LANES], [zero; LANES], [zero; LANES]);
    let mut term = |l: usize, j: usize, xv: &T, ev: &mut D| {
        let d = xv.load() - m;
        let a = coef(j);
        let v = T::exp_acc(d);
        *ev = put(v);
        s[l] = s[l] + v;
        sa[l] = sa[l] + a * d;
        asum[l] = asum[l] + a;
    };
    let mut xs = x.chunks_exact(LANES);
    let mut es = e.chunks_exact_mut(LANES);
    for (i, (xc, ec)) in (&mut xs).zip(&mut es).enumerate() {
        for l in 0..LANES {
            term(l, i * LANES + l, &xc[l], &mut ec[l]);
        }
    }
    let full = x.len() / LANES * LANES;
    let tail = xs.remainder().iter().zip(es.into_remainder());
    for (l, (xv, ev)) in tail.enumerate() {
        term(l, full + l, xv, ev);
    }
    (hsum(s), hsum(sa), hsum(asum))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_accuracy_and_edges() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn exp_f64_accuracy_and_edges() {
        let mut worst = 0.0f64;
        let mut x = -700.0f64;
        while x < 700.0 {
            let want = x.exp();
            let got = exp_f64(x);
            worst = worst.max(((got - want) / want).abs());
            x += 0.01371;
        }
        assert!(worst < 1e-15, "worst relative error {worst}");
        assert_eq!(exp_f64(0.0), 1.0);
        assert_eq!(exp_f64(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_f64(f64::INFINITY), f64::INFINITY);
        assert!(exp_f64(f64::NAN).is_nan());
    }

    #[test]
    fn reductions_handle_tails_and_nan() {
        for n in [0usize, 1, 5, LANES - 1, LANES, LANES + 3, 1000] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37) % 101) as f32 * 0.1 - 5.0)
                .collect();
            let want_m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), want_m);
            let want: f64 = x.iter().map(|&v| ((v - 1.0) as f64).exp()).sum();
            assert!((sum_exp(&x, 1.0) as f64 - want).abs() <= 1e-5 * want.max(1.0));
            let (s, sa, asum) = sum_exp_weighted(&x, 1.0, |j| j as f32);
            let want_sa: f64 = x
                .iter()
                .enumerate()
                .map(|(j, &v)| j as f64 * (v as f64 - 1.0))
                .sum();
            assert!((s as f64 - want).abs() <= 1e-5 * want.max(1.0));
            assert!((sa as f64 - want_sa).abs() <= 1e-4 * want_sa.abs().max(1.0));
            assert_eq!(asum as f64, (n * n.saturating_sub(1) / 2) as f64);
        }
        // NaN is skipped by the max; the sum that follows carries it into the row's result.
        let mut x = vec![1.0f32; 100];
        x[57] = f32::NAN;
        assert_eq!(max(&x), 1.0);
        assert!(sum_exp(&x, max(&x)).is_nan());
    }
}
