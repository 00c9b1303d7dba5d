//! The fused forward's ReLU + 2x2 max pooling and the backward's unpooling, for f32 planes,
//! sixteen windows per AVX-512 step.
//!
//! The generic bodies (`relu_pool2` and the pooled branch of `gather_row`) vectorise only eight
//! windows of a pooled row and leave the rest to scalar code with branches: the seed CNN's rows
//! are 13 and 5 windows wide, so most windows took the scalar tail, and the two were ~30% of its
//! first layer's fused forward and backward. Here one pooled row of up to sixteen windows is two
//! loads per input row (masked only at a plane's end), deinterleaved into even and odd columns by
//! `vpermt2ps`; the
//! backward runs the same layout in reverse and writes both dense rows whole, so the plane needs
//! no zero fill first and no element is read back.
//!
//! Both give the generic code's bits: the same selects in the same order forward, `0.0 + g` per
//! window maximum backward. The backward declines (returns false before the caller's generic
//! path redoes the plane) when an index lies outside its own window, which a forward never
//! produces: the generic path then reports it.

/// Plane sizes whose element offsets the kernels form in i32 lanes.
fn small_plane(h: usize, w: usize) -> bool {
    h.checked_mul(w).is_some_and(|n| n < i32::MAX as usize / 2)
}

/// `relu_pool2` for f32 (see `super::relu_pool2`): `src` holds at least `2 * ph` rows of `w`,
/// `o` and `ix` one `ph x (w / 2)` pooled plane each, indices naming positions in rows of
/// `iw >= w`. False (nothing written) when the CPU lacks AVX-512 or the sizes do not fit.
pub fn relu_pool2(
    src: &[f32],
    add: f32,
    w: usize,
    iw: usize,
    o: &mut [f32],
    ix: &mut [i64],
) -> bool {
    let pw = w / 2;
    if !crate::isa::avx512_active()
        || pw == 0
        || iw < w
        || o.len() != ix.len()
        || !o.len().is_multiple_of(pw)
    {
        return false;
    }
    let ph = o.len() / pw;
    if !small_plane(2 * ph + 1, iw) || src.len() < 2 * ph * w {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 is available (checked above); `src` has the 2 * ph rows of w the kernel
    // reads and `o`, `ix` the ph * pw elements it writes (checked above), and offsets within
    // a full plane of (2 * ph + 1) * iw < i32::MAX / 2 elements fit its i32 lanes.
    unsafe {
        avx512::relu_pool2(src, add, w, iw, o, ix)
    };
    true
}

/// The pooled branch of `gather_row` for f32: `dst` (one `h x w` plane, `h >= 2 * ph`) set to
/// the gradient of the convolution's output from the pooled gradient `grad` and the forward's
/// indices (`ph x (w / 2)` each, positions in rows of `iw >= w`). False when the CPU lacks
/// AVX-512, the sizes do not fit, or an index is neither [`super::CUT`] nor a position of its
/// own window; `dst` may then be partly written, and the caller's generic path rewrites it whole.
pub fn unpool2(
    grad: &[f32],
    indices: &[i64],
    h: usize,
    w: usize,
    iw: usize,
    dst: &mut [f32],
) -> bool {
    let pw = w / 2;
    let sizes_ok = grad.len() == indices.len() && grad.len().is_multiple_of(pw.max(1));
    if !crate::isa::avx512_active() || pw == 0 || iw < w || !sizes_ok {
        return false;
    }
    let ph = grad.len() / pw;
    if 2 * ph > h || !small_plane(2 * ph + 1, iw) || dst.len() != h * w {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512 is available; `grad` and `indices` hold ph * pw elements and `dst` the
    // h * w >= 2 * ph * w it writes (checked above); plane offsets fit i32 lanes.
    return unsafe { avx512::unpool2(grad, indices, w, iw, dst) };
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Lanes of the even and odd columns of 32 consecutive ones (two registers).
    const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
    const ODD: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];
    /// Interleaving two registers back: lanes 0..16 and 16..32 of (a0, b0, a1, b1, ...).
    const ZIP_LO: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
    const ZIP_HI: [i32; 16] = [8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];

    /// `(1 << n) - 1` for n <= 16.
    fn low(n: usize) -> u16 {
        ((1u32 << n.min(16)) - 1) as u16
    }

    /// The masks of `2 * n` consecutive lanes over two registers.
    fn pair_masks(n: usize) -> (u16, u16) {
        (low(2 * n), low((2 * n).saturating_sub(16)))
    }

    /// # Safety
    /// AVX-512F; `idx` points at 16 readable i32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lanes(idx: &[i32; 16]) -> __m512i {
        unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
    }

    /// The even and odd columns of the `2 * n` f32 at `p` (lanes past `n` zero unless `whole`).
    ///
    /// # Safety
    /// AVX-512F; `p .. p + 2n` readable, and `p .. p + 32` when `whole`. Masked-off lanes are
    /// never accessed (AVX-512 suppresses their faults), so the second half's address may lie
    /// past the slice when its mask is empty.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn split(
        p: *const f32,
        n: usize,
        whole: bool,
        even: __m512i,
        odd: __m512i,
    ) -> (__m512, __m512) {
        // SAFETY: the caller's bounds cover the lanes read. Whole loads where the slice has
        // room: masked ones measured a third slower here (Zen 4), and the extra lanes only
        // reach pooled lanes past `n`, which are never stored.
        let (lo, hi) = unsafe {
            if whole {
                (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
            } else {
                let (m_lo, m_hi) = pair_masks(n);
                (
                    _mm512_maskz_loadu_ps(m_lo, p),
                    _mm512_maskz_loadu_ps(m_hi, p.wrapping_add(16)),
                )
            }
        };
        (
            _mm512_permutex2var_ps(lo, even, hi),
            _mm512_permutex2var_ps(lo, odd, hi),
        )
    }

    /// # Safety
    /// AVX-512F/DQ; `src` has `2 * ph` rows of `w`, `o` and `ix` exactly `ph * (w / 2)`
    /// elements, `iw >= w` and `(2 * ph + 1) * iw < i32::MAX / 2` (see `super::relu_pool2`).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn relu_pool2(
        src: &[f32],
        add: f32,
        w: usize,
        iw: usize,
        o: &mut [f32],
        ix: &mut [i64],
    ) {
        let pw = w / 2;
        let ph = o.len() / pw;
        // SAFETY: loads of 16 i32 from arrays of 16.
        let (even, odd) = unsafe { (lanes(&EVEN), lanes(&ODD)) };
        let zero = _mm512_setzero_ps();
        let bias = _mm512_set1_ps(add);
        let twice_lane = _mm512_slli_epi32::<1>(_mm512_setr_epi32(
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        ));
        // relu(v + bias) as `relu_stored` computes it for f32: negatives to +0.0, NaN and
        // -0.0 kept.
        let act = |v: __m512| {
            let a = _mm512_add_ps(v, bias);
            _mm512_mask_mov_ps(a, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, zero), zero)
        };
        let steps = [
            (1, _mm512_set1_epi32(1)),
            (2, _mm512_set1_epi32(iw as i32)),
            (3, _mm512_set1_epi32(iw as i32 + 1)),
        ];
        for py in 0..ph {
            for c0 in (0..pw).step_by(16) {
                let n = (pw - c0).min(16);
                let at = 2 * py * w + 2 * c0;
                let whole = at + w + 32 <= src.len();
                // SAFETY: rows 2py and 2py + 1 exist, and 2 * c0 + 2n <= 2 * pw <= w; whole
                // loads only where 32 elements from the second row's start are in `src`.
                let (r0, r1) = unsafe {
                    (
                        split(src.as_ptr().add(at), n, whole, even, odd),
                        split(src.as_ptr().add(at + w), n, whole, even, odd),
                    )
                };
                // Window order top-left, top-right, bottom-left, bottom-right; a later value
                // wins if strictly larger or NaN (`max_pool2d::take`).
                let window = [act(r0.0), act(r0.1), act(r1.0), act(r1.1)];
                let mut best = window[0];
                let mut off = _mm512_setzero_si512();
                for (k, step) in steps {
                    let v = window[k];
                    let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best)
                        | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                    best = _mm512_mask_mov_ps(best, take, v);
                    off = _mm512_mask_mov_epi32(off, take, step);
                }
                let corner = (2 * py * iw + 2 * c0) as i32;
                let base = _mm512_add_epi32(_mm512_set1_epi32(corner), twice_lane);
                let cut = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(best, zero);
                let idx = _mm512_mask_mov_epi32(
                    _mm512_add_epi32(base, off),
                    cut,
                    _mm512_set1_epi32(super::super::CUT as i32),
                );
                let m = low(n);
                let out = py * pw + c0;
                // SAFETY: out + n <= ph * pw = o.len() = ix.len(); the second index store's
                // address is only formed past the slice when its mask is empty.
                unsafe {
                    _mm512_mask_storeu_ps(o.as_mut_ptr().add(out), m, best);
                    let p = ix.as_mut_ptr().add(out);
                    _mm512_mask_storeu_epi64(
                        p,
                        m as u8,
                        _mm512_cvtepi32_epi64(_mm512_castsi512_si256(idx)),
                    );
                    _mm512_mask_storeu_epi64(
                        p.wrapping_add(8),
                        (m >> 8) as u8,
                        _mm512_cvtepi32_epi64(_mm512_extracti32x8_epi32::<1>(idx)),
                    );
                }
            }
        }
    }

    /// # Safety
    /// AVX-512F/DQ; `grad` and `indices` hold `ph * (w / 2)` elements, `dst` is a plane of
    /// `h >= 2 * ph` rows of `w`, indices name positions in rows of `iw >= w` (see
    /// `super::unpool2`).
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn unpool2(
        grad: &[f32],
        indices: &[i64],
        w: usize,
        iw: usize,
        dst: &mut [f32],
    ) -> bool {
        let pw = w / 2;
        let ph = grad.len() / pw;
        // SAFETY: loads of 16 i32 from arrays of 16.
        let (zip_lo, zip_hi) = unsafe { (lanes(&ZIP_LO), lanes(&ZIP_HI)) };
        let zero = _mm512_setzero_ps();
        let lane2 = _mm512_slli_epi64::<1>(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
        let cut = _mm512_set1_epi64(super::super::CUT);
        let offsets = [0, 1, iw as i64, iw as i64 + 1].map(|o| _mm512_set1_epi64(o));
        for py in 0..ph {
            for c0 in (0..pw).step_by(16) {
                let n = (pw - c0).min(16);
                let m = low(n);
                let at = py * pw + c0;
                let corner = 2 * py * w + 2 * c0;
                let named = 2 * py * iw + 2 * c0;
                // Whole-register loads where the slices have room (see `split`); lanes past n
                // are masked out of every comparison and store below.
                let whole = at + 16 <= grad.len();
                // Which window position (0..4) each lane's index names, as four lane masks.
                let mut hits = [0u16; 4];
                for half in 0..2 {
                    let hm = (m >> (8 * half)) as u8;
                    if hm == 0 {
                        continue;
                    }
                    // SAFETY: the unmasked lanes at + 8 * half .. at + n lie inside indices, and
                    // all 16 from `at` when `whole` (indices and grad have the same length).
                    let idx = unsafe {
                        let p = indices.as_ptr().wrapping_add(at + 8 * half);
                        if whole {
                            _mm512_loadu_si512(p.cast())
                        } else {
                            _mm512_maskz_loadu_epi64(hm, p)
                        }
                    };
                    let base =
                        _mm512_add_epi64(_mm512_set1_epi64((named + 16 * half) as i64), lane2);
                    let rel = _mm512_sub_epi64(idx, base);
                    let mut ok = _mm512_cmpeq_epi64_mask(idx, cut);
                    for (hit, o) in hits.iter_mut().zip(&offsets) {
                        let k = _mm512_mask_cmpeq_epi64_mask(hm, rel, *o);
                        *hit |= (k as u16) << (8 * half);
                        ok |= k;
                    }
                    if ok & hm != hm {
                        return false;
                    }
                }
                // SAFETY: at + n <= grad.len(), and at + 16 <= grad.len() when `whole`.
                let g = unsafe {
                    let p = grad.as_ptr().add(at);
                    if whole {
                        _mm512_loadu_ps(p)
                    } else {
                        _mm512_maskz_loadu_ps(m, p)
                    }
                };
                // The generic path adds each gradient onto a zeroed element: 0.0 + g, which
                // turns -0.0 into +0.0.
                let g = _mm512_add_ps(zero, g);
                let [tl, tr, bl, br] = hits.map(|k| _mm512_maskz_mov_ps(k, g));
                let (m_lo, m_hi) = pair_masks(n);
                for (row, (left, right)) in [(tl, tr), (bl, br)].into_iter().enumerate() {
                    let p = dst.as_mut_ptr().wrapping_add(corner + row * w);
                    // SAFETY: row 2py + row < h and columns 2c0 .. 2c0 + 2n <= w lie in dst; the
                    // second store's address is only past the slice when its mask is empty.
                    unsafe {
                        _mm512_mask_storeu_ps(p, m_lo, _mm512_permutex2var_ps(left, zip_lo, right));
                        _mm512_mask_storeu_ps(
                            p.wrapping_add(16),
                            m_hi,
                            _mm512_permutex2var_ps(left, zip_hi, right),
                        );
                    }
                }
            }
            if w % 2 == 1 {
                dst[2 * py * w + w - 1] = 0.0;
                dst[(2 * py + 1) * w + w - 1] = 0.0;
            }
        }
        // Rows no window covers (an odd height).
        dst[2 * ph * w..].fill(0.0);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with ties, zeros of both signs, negatives (cut by the ReLU) and NaN.
    fn plane(h: usize, w: usize, seed: usize) -> Vec<f32> {
        (0..h * w)
            .map(|i| match (i * 7 + seed * 13) % 23 {
                0 => f32::NAN,
                1 => -0.0,
                2 => 0.0,
                k => (k % 9) as f32 * 0.5 - 2.0,
            })
            .collect()
    }

    const SIZES: [(usize, usize); 9] = [
        (2, 2),
        (3, 3),
        (4, 5),
        (26, 26),
        (11, 11),
        (5, 33),
        (6, 40),
        (3, 65),
        (8, 2),
    ];

    #[test]
    fn pooling_matches_the_generic_body() {
        if !crate::isa::avx512_active() {
            return;
        }
        for (seed, &(h, w)) in SIZES.iter().enumerate() {
            for add in [0.0f32, -0.75, 1.5] {
                let src = plane(h, w, seed);
                let n = (h / 2) * (w / 2);
                let (mut o, mut ix) = (vec![f32::NAN; n], vec![7i64; n]);
                assert!(relu_pool2(&src, add, w, w, &mut o, &mut ix), "{h}x{w}");
                let (mut want_o, mut want_ix) = (vec![0f32; n], vec![0i64; n]);
                super::super::relu_pool2::<f32>(&src, add, w, w, &mut want_o, &mut want_ix);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&o), bits(&want_o), "{h}x{w} add {add}");
                assert_eq!(ix, want_ix, "{h}x{w} add {add}");
            }
        }
    }

    /// The generic scatter: each gradient added onto a zeroed plane at its index.
    fn scatter(grad: &[f32], ix: &[i64], len: usize) -> Vec<f32> {
        let mut d = vec![0f32; len];
        for (&g, &j) in grad.iter().zip(ix) {
            if j >= 0 {
                d[j as usize] += g;
            }
        }
        d
    }

    #[test]
    fn unpooling_writes_the_whole_plane_as_the_generic_scatter() {
        if !crate::isa::avx512_active() {
            return;
        }
        for (seed, &(h, w)) in SIZES.iter().enumerate() {
            let src = plane(h, w, seed);
            let n = (h / 2) * (w / 2);
            let (mut o, mut ix) = (vec![0f32; n], vec![0i64; n]);
            super::super::relu_pool2::<f32>(&src, 0.0, w, w, &mut o, &mut ix);
            let grad: Vec<f32> = (0..n)
                .map(|i| if i % 5 == 0 { -0.0 } else { i as f32 - 3.0 })
                .collect();
            let mut dst = vec![f32::NAN; h * w];
            assert!(unpool2(&grad, &ix, h, w, w, &mut dst), "{h}x{w}");
            let want = scatter(&grad, &ix, h * w);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dst), bits(&want), "{h}x{w}");
        }
    }

    #[test]
    fn unpooling_declines_indices_outside_their_window() {
        if !crate::isa::avx512_active() {
            return;
        }
        let (h, w) = (6, 40);
        let n = (h / 2) * (w / 2);
        let grad = vec![1f32; n];
        for (at, bad) in [(0, 2), (5, 0), (n - 1, (h * w) as i64), (17, -2)] {
            let mut ix: Vec<i64> = (0..n)
                .map(|q| (2 * (q / (w / 2)) * w + 2 * (q % (w / 2))) as i64)
                .collect();
            let mut dst = vec![0f32; h * w];
            assert!(unpool2(&grad, &ix, h, w, w, &mut dst));
            ix[at] = bad;
            assert!(
                !unpool2(&grad, &ix, h, w, w, &mut dst),
                "index {bad} at {at}"
            );
        }
    }
}
