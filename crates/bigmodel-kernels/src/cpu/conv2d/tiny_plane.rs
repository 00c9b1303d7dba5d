//! im2col and col2im for tiny channel planes, by AVX-512 lane permutes.
//!
//! The seed CNN's last convolution reads 5x5 planes and writes 3x3 pixels: each row of its column
//! matrix is 9 values picked from one 25-element plane, which the generic path gathers one
//! element at a time (measured ~19% of that layer's forward). A plane of at most 32 f32 fits in
//! two zmm registers, and a tap's row of at most 16 pixels is then one two-source permute
//! (`vpermt2ps`), the lanes that read padding zeroed by its mask, written with a masked store.
//! col2im runs the same table backwards: within one tap no two pixels read the same input
//! element, so each tap's row scatters onto the plane by a one-source permute and a masked add,
//! in tap order, which gives the generic path's sums bit for bit.

use super::im2col::Geom;

/// Largest channel plane (h * w) the tables handle: two zmm registers of f32.
const MAX_PLANE: usize = 32;
/// Largest output (oh * ow) the tables handle: one zmm register of f32.
const MAX_PIXELS: usize = 16;

/// Per kernel tap, where each output pixel reads in the plane and back.
struct TapTable {
    /// Plane index (0..32) each pixel lane reads; meaningful where `reads` is set.
    gather: Vec<[i32; 16]>,
    /// Pixel lanes whose tap lands inside the plane (the others read zero padding).
    reads: Vec<u16>,
    /// For plane elements 0..16 and 16..32, the pixel lane that reads it under this tap.
    scatter: Vec<[[i32; 16]; 2]>,
    /// Plane elements (per half) that some pixel reads under this tap.
    written: Vec<[u16; 2]>,
}

impl TapTable {
    /// The table of `g`, or None when its planes or outputs are too large for it.
    fn new(g: &Geom) -> Option<TapTable> {
        let (hw, p) = (g.h * g.w, g.p());
        if hw > MAX_PLANE || p > MAX_PIXELS || p == 0 {
            return None;
        }
        let taps = g.kh * g.kw;
        let mut t = TapTable {
            gather: vec![[0; 16]; taps],
            reads: vec![0; taps],
            scatter: vec![[[0; 16]; 2]; taps],
            written: vec![[0; 2]; taps],
        };
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let tap = ki * g.kw + kj;
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let iy = (oy * g.sh + ki * g.dh).checked_sub(g.pt);
                        let ix = (ox * g.sw + kj * g.dw).checked_sub(g.pl);
                        let (Some(iy), Some(ix)) = (iy, ix) else {
                            continue;
                        };
                        if iy >= g.h || ix >= g.w {
                            continue;
                        }
                        let (lane, q) = (oy * g.ow + ox, iy * g.w + ix);
                        t.gather[tap][lane] = q as i32;
                        t.reads[tap] |= 1 << lane;
                        t.scatter[tap][q / 16][q % 16] = lane as i32;
                        t.written[tap][q / 16] |= 1 << (q % 16);
                    }
                }
            }
        }
        Some(t)
    }
}

/// `(1 << n) - 1` for n <= 16.
fn low_lanes(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// The bounds every plane access and column-row access of `nbk` images stays within.
pub(super) fn fits(
    g: &Geom,
    src_len: usize,
    img: usize,
    nbk: usize,
    col_len: usize,
    ld: usize,
) -> bool {
    let (hw, p) = (g.h * g.w, g.p());
    if nbk == 0 || g.k() == 0 || nbk * p > ld {
        return false;
    }
    let last_plane = (nbk - 1) * img + g.cg * hw;
    let last_col = (g.k() - 1) * ld + nbk * p;
    last_plane <= src_len && last_col <= col_len
}

/// The table for a call on this CPU, or None (the caller takes the generic path) when the
/// permute kernels are unavailable, the sizes do not fit the bounds they rely on, or the planes
/// are too large: checked before the table is built, so the generic path allocates nothing here.
fn table_for(
    g: &Geom,
    plane_len: usize,
    img: usize,
    nbk: usize,
    col_len: usize,
    ld: usize,
) -> Option<TapTable> {
    if !crate::isa::avx512_active() || !fits(g, plane_len, img, nbk, col_len, ld) {
        return None;
    }
    TapTable::new(g)
}

/// [`super::im2col`] for f32 by permutes; false (nothing written) where [`table_for`] declines.
pub fn im2col(g: &Geom, src: &[f32], img: usize, nbk: usize, col: &mut [f32], ld: usize) -> bool {
    let Some(t) = table_for(g, src.len(), img, nbk, col.len(), ld) else {
        return false;
    };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `table_for` checked AVX-512F on this CPU and the bounds (`fits`) the kernel's
    // masked loads and stores stay within, and built `t` from `g`.
    unsafe {
        avx512::im2col(g, &t, src, img, nbk, col, ld)
    };
    true
}

/// [`super::col2im`] for f32 by permutes, under the same conditions as [`im2col`].
pub fn col2im(g: &Geom, col: &[f32], ld: usize, nbk: usize, img: usize, dst: &mut [f32]) -> bool {
    let Some(t) = table_for(g, dst.len(), img, nbk, col.len(), ld) else {
        return false;
    };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `im2col`.
    unsafe {
        avx512::col2im(g, &t, col, ld, nbk, img, dst)
    };
    true
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{low_lanes, Geom, TapTable};
    use std::arch::x86_64::*;

    /// Loads a plane of `hw <= 32` elements at `ptr` into two registers, zeros past its end.
    ///
    /// # Safety
    /// AVX-512F; `ptr..ptr + hw` readable. Masked-off lanes are not accessed (AVX-512 suppresses
    /// their faults), so the second load may point past the slice as long as its mask is empty.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_plane(ptr: *const f32, hw: usize) -> (__m512, __m512) {
        unsafe {
            (
                _mm512_maskz_loadu_ps(low_lanes(hw), ptr),
                _mm512_maskz_loadu_ps(low_lanes(hw.saturating_sub(16)), ptr.wrapping_add(16)),
            )
        }
    }

    /// # Safety
    /// AVX-512F; `super::fits` holds for these arguments and `t` was built from `g`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn im2col(
        g: &Geom,
        t: &TapTable,
        src: &[f32],
        img: usize,
        nbk: usize,
        col: &mut [f32],
        ld: usize,
    ) {
        let (hw, p, taps) = (g.h * g.w, g.p(), g.kh * g.kw);
        // SAFETY: unaligned loads of 16 i32 from arrays of 16.
        let gather: Vec<__m512i> = t
            .gather
            .iter()
            .map(|ix| unsafe { _mm512_loadu_si512(ix.as_ptr().cast()) })
            .collect();
        let store = low_lanes(p);
        for i in 0..nbk {
            for c in 0..g.cg {
                // SAFETY: plane (i, c) ends at i * img + (c + 1) * hw <= src.len() (`fits`).
                let (lo, hi) = unsafe { load_plane(src.as_ptr().add(i * img + c * hw), hw) };
                for (tap, (&reads, &ix)) in t.reads.iter().zip(&gather).enumerate() {
                    let v = _mm512_maskz_permutex2var_ps(reads, lo, ix, hi);
                    let at = (c * taps + tap) * ld + i * p;
                    // SAFETY: row c * taps + tap < K, columns i * p .. i * p + p <= nbk * p,
                    // so the p stored lanes end within (K - 1) * ld + nbk * p <= col.len().
                    unsafe { _mm512_mask_storeu_ps(col.as_mut_ptr().add(at), store, v) };
                }
            }
        }
    }

    /// # Safety
    /// As for [`im2col`], with `dst` in the role of `src`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn col2im(
        g: &Geom,
        t: &TapTable,
        col: &[f32],
        ld: usize,
        nbk: usize,
        img: usize,
        dst: &mut [f32],
    ) {
        let (hw, p, taps) = (g.h * g.w, g.p(), g.kh * g.kw);
        // SAFETY (both maps): unaligned loads of 16 i32 from arrays of 16.
        let scatter: Vec<[__m512i; 2]> = t
            .scatter
            .iter()
            .map(|s| unsafe { s.map(|h| _mm512_loadu_si512(h.as_ptr().cast())) })
            .collect();
        let (keep_lo, keep_hi) = (low_lanes(hw), low_lanes(hw.saturating_sub(16)));
        let pixels = low_lanes(p);
        for i in 0..nbk {
            for c in 0..g.cg {
                let plane = dst.as_mut_ptr().wrapping_add(i * img + c * hw);
                // SAFETY: plane (i, c) lies inside dst (`fits`).
                let (mut lo, mut hi) = unsafe { load_plane(plane, hw) };
                for (tap, (&[w_lo, w_hi], &[s_lo, s_hi])) in
                    t.written.iter().zip(&scatter).enumerate()
                {
                    let at = (c * taps + tap) * ld + i * p;
                    // SAFETY: the p lanes read lie inside col, as in `im2col`'s stores.
                    let row = unsafe { _mm512_maskz_loadu_ps(pixels, col.as_ptr().add(at)) };
                    lo = _mm512_mask_add_ps(lo, w_lo, lo, _mm512_permutexvar_ps(s_lo, row));
                    hi = _mm512_mask_add_ps(hi, w_hi, hi, _mm512_permutexvar_ps(s_hi, row));
                }
                // SAFETY: as the load above; lanes past hw are masked off.
                unsafe {
                    _mm512_mask_storeu_ps(plane, keep_lo, lo);
                    _mm512_mask_storeu_ps(plane.wrapping_add(16), keep_hi, hi);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (h, w, kh, kw, stride, dilation, pad): valid, padded, strided, dilated, kernel larger
    /// than the plane, a single-pixel output.
    const CASES: [(usize, usize, usize, usize, usize, usize, usize); 6] = [
        (5, 5, 3, 3, 1, 1, 0),
        (4, 4, 3, 3, 1, 1, 1),
        (6, 5, 3, 3, 2, 1, 1),
        (5, 6, 2, 2, 1, 2, 0),
        (4, 4, 7, 7, 1, 1, 3),
        (3, 3, 3, 3, 1, 1, 0),
    ];

    fn geom(
        &(h, w, kh, kw, s, d, pad): &(usize, usize, usize, usize, usize, usize, usize),
    ) -> Geom {
        let out = |n: usize, k: usize| (n + 2 * pad - d * (k - 1) - 1) / s + 1;
        Geom {
            cg: 3,
            h,
            w,
            kh,
            kw,
            sh: s,
            sw: s,
            dh: d,
            dw: d,
            pt: pad,
            pl: pad,
            oh: out(h, kh),
            ow: out(w, kw),
        }
    }

    /// The input index pixel (oy, ox) of tap (ki, kj) reads, or None in the padding.
    fn source(g: &Geom, ki: usize, kj: usize, oy: usize, ox: usize) -> Option<usize> {
        let iy = (oy * g.sh + ki * g.dh).checked_sub(g.pt)?;
        let ix = (ox * g.sw + kj * g.dw).checked_sub(g.pl)?;
        (iy < g.h && ix < g.w).then_some(iy * g.w + ix)
    }

    #[test]
    fn permutes_match_the_definition() {
        if !crate::isa::avx512_active() {
            return;
        }
        for case in &CASES {
            let g = geom(case);
            assert!(TapTable::new(&g).is_some(), "{case:?} fits the tables");
            let (hw, p, nbk) = (g.h * g.w, g.p(), 3);
            let img = g.cg * hw + 5; // images further apart than their planes
            let ld = nbk * p + 2;
            let src: Vec<f32> = (0..nbk * img).map(|i| i as f32 * 0.25 - 7.0).collect();
            let mut col = vec![f32::NAN; g.k() * ld];
            assert!(im2col(&g, &src, img, nbk, &mut col, ld));
            let rows: Vec<f32> = (0..g.k() * ld)
                .map(|i| ((i * 7) % 11) as f32 - 5.3)
                .collect();
            let mut back: Vec<f32> = (0..nbk * img).map(|i| (i % 3) as f32).collect();
            let mut want_back = back.clone();
            assert!(col2im(&g, &rows, ld, nbk, img, &mut back));
            for i in 0..nbk {
                for c in 0..g.cg {
                    for ki in 0..g.kh {
                        for kj in 0..g.kw {
                            let row = (c * g.kh + ki) * g.kw + kj;
                            for (lane, (oy, ox)) in (0..g.oh)
                                .flat_map(|oy| (0..g.ow).map(move |ox| (oy, ox)))
                                .enumerate()
                            {
                                let at = row * ld + i * p + lane;
                                let plane = i * img + c * hw;
                                match source(&g, ki, kj, oy, ox) {
                                    Some(q) => {
                                        assert_eq!(col[at], src[plane + q], "{case:?}");
                                        want_back[plane + q] += rows[at];
                                    }
                                    None => assert_eq!(col[at], 0.0, "{case:?}"),
                                }
                            }
                        }
                    }
                }
            }
            // Same sums in the same (tap) order: equal bits, and the gaps between images kept.
            assert_eq!(back, want_back, "{case:?}");
            assert!(col[nbk * p].is_nan(), "columns past the block untouched");
        }
    }

    #[test]
    fn too_large_geometries_have_no_table() {
        let g = geom(&(5, 5, 3, 3, 1, 1, 1)); // 25 output pixels
        assert!(TapTable::new(&g).is_none());
        let g = geom(&(7, 5, 3, 3, 2, 1, 0)); // 35-element planes
        assert!(TapTable::new(&g).is_none());
    }
}
