//! col2im for unit horizontal stride, by rows of the input gradient summed in registers.
//!
//! The generic col2im adds each tap's row of the column matrix onto the input planes: for a 3x3
//! kernel nine read-modify-write passes over every plane, in rows as short as the output (13
//! floats for the CIFAR CNN's second layer), which 16-lane vectors only partly fill. Here each
//! 16-wide chunk of an input-gradient row is loaded once, gets the contributions of every tap
//! that reads it as one masked load each (shifted so that lane `x` holds output pixel
//! `x + pl - kj * dw`; lanes outside the output row, i.e. padding, masked off) and is stored
//! once. Taps are added in the generic path's order (row-major over the kernel), so the sums
//! agree with it bit for bit.

use super::im2col::Geom;
use super::tiny_plane::fits;

/// [`super::col2im`] for f32 and unit horizontal stride; false (nothing written) on a CPU
/// without AVX-512, for other strides, or where the sizes break the bounds the kernel relies on.
pub fn col2im(g: &Geom, col: &[f32], ld: usize, nbk: usize, img: usize, dst: &mut [f32]) -> bool {
    if !crate::isa::avx512_active() || g.sw != 1 || !fits(g, dst.len(), img, nbk, col.len(), ld) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is available (checked above), and `fits` bounds every plane of the `nbk`
    // images inside `dst` and every column row's first `nbk * P` entries inside `col`, which is
    // all the kernel touches.
    unsafe {
        avx512::col2im(g, col, ld, nbk, img, dst)
    };
    true
}

/// One kernel column's contribution to one 16-wide chunk of an input row.
#[derive(Clone, Copy)]
struct Shift {
    /// Output column read by lane 0 (negative where the chunk starts in the left padding).
    ox0: isize,
    /// Lanes whose output column lies inside the output row.
    lanes: u16,
}

/// For every chunk (outer) and kernel column (inner): the [`Shift`] of unit horizontal stride.
fn shifts(g: &Geom) -> Vec<Shift> {
    let mut out = Vec::with_capacity(g.w.div_ceil(16) * g.kw);
    for x0 in (0..g.w).step_by(16) {
        let n = (g.w - x0).min(16) as isize;
        for kj in 0..g.kw {
            let ox0 = (x0 + g.pl) as isize - (kj * g.dw) as isize;
            let lo = (-ox0).clamp(0, n);
            let hi = (g.ow as isize - ox0).clamp(lo, n);
            let lanes = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16;
            out.push(Shift { ox0, lanes });
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{shifts, Geom};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F; `super::fits` holds for these arguments and `g.sw == 1`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn col2im(
        g: &Geom,
        col: &[f32],
        ld: usize,
        nbk: usize,
        img: usize,
        dst: &mut [f32],
    ) {
        let (hw, p) = (g.h * g.w, g.p());
        let table = shifts(g);
        // Kernel rows that read input row iy, with the output row they read it for.
        let mut rows: Vec<(usize, usize)> = Vec::with_capacity(g.kh);
        for i in 0..nbk {
            for c in 0..g.cg {
                let plane = dst.as_mut_ptr().wrapping_add(i * img + c * hw);
                for iy in 0..g.h {
                    rows.clear();
                    for ki in 0..g.kh {
                        let Some(t) = (iy + g.pt).checked_sub(ki * g.dh) else {
                            break; // later kernel rows start further down
                        };
                        if t % g.sh == 0 && t / g.sh < g.oh {
                            rows.push((ki, t / g.sh));
                        }
                    }
                    for (chunk, x0) in (0..g.w).step_by(16).enumerate() {
                        let keep = ((1u32 << (g.w - x0).min(16)) - 1) as u16;
                        let out = plane.wrapping_add(iy * g.w + x0);
                        // SAFETY: lanes x0..x0 + 16 of row iy, masked to the row's width, lie in
                        // plane (i, c), which `fits` keeps inside dst.
                        let mut acc = unsafe { _mm512_maskz_loadu_ps(keep, out) };
                        for &(ki, oy) in &rows {
                            let taps = &table[chunk * g.kw..(chunk + 1) * g.kw];
                            for (kj, s) in taps.iter().enumerate() {
                                let row = (c * g.kh + ki) * g.kw + kj;
                                let at = (row * ld + i * p + oy * g.ow) as isize + s.ox0;
                                // SAFETY: an enabled lane l reads output pixel (oy, ox0 + l) with
                                // 0 <= ox0 + l < ow of image i in column row `row`: inside the
                                // row's first nbk * P entries, which `fits` keeps inside col.
                                // Disabled lanes are not accessed (their faults are suppressed),
                                // so the pointer may point before the row: hence wrapping_offset.
                                let v = unsafe {
                                    _mm512_maskz_loadu_ps(s.lanes, col.as_ptr().wrapping_offset(at))
                                };
                                acc = _mm512_mask_add_ps(acc, s.lanes, acc, v);
                            }
                        }
                        // SAFETY: as the load of `acc`.
                        unsafe { _mm512_mask_storeu_ps(out, keep, acc) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (h, w, kh, kw, stride_h, dilation, pad): valid, "same", vertical stride, dilated, rows
    /// wider than one vector, kernel wider than the padded row's interior.
    const CASES: [(usize, usize, usize, usize, usize, usize, usize); 7] = [
        (15, 15, 3, 3, 1, 1, 0),
        (13, 13, 3, 3, 1, 1, 1),
        (9, 11, 3, 3, 2, 1, 1),
        (10, 12, 3, 2, 1, 2, 0),
        (7, 37, 3, 5, 1, 1, 2),
        (4, 5, 5, 7, 1, 1, 3),
        (32, 32, 1, 1, 1, 1, 0),
    ];

    #[test]
    fn rows_match_the_definition_bit_for_bit() {
        if !crate::isa::avx512_active() {
            return;
        }
        for &(h, w, kh, kw, sh, d, pad) in &CASES {
            let out = |n: usize, k: usize, s: usize| (n + 2 * pad - d * (k - 1) - 1) / s + 1;
            let g = Geom {
                cg: 3,
                h,
                w,
                kh,
                kw,
                sh,
                sw: 1,
                dh: d,
                dw: d,
                pt: pad,
                pl: pad,
                oh: out(h, kh, sh),
                ow: out(w, kw, 1),
            };
            let (hw, p, nbk) = (h * w, g.p(), 3);
            let img = g.cg * hw + 5; // images further apart than their planes
            let ld = nbk * p + 2;
            let col: Vec<f32> = (0..g.k() * ld)
                .map(|i| ((i * 7) % 11) as f32 * 0.37 - 1.9)
                .collect();
            let start: Vec<f32> = (0..nbk * img).map(|i| (i % 3) as f32 - 1.0).collect();
            let mut got = start.clone();
            assert!(col2im(&g, &col, ld, nbk, img, &mut got));
            // The definition, in tap order.
            let mut want = start;
            for i in 0..nbk {
                for c in 0..g.cg {
                    for ki in 0..kh {
                        for kj in 0..kw {
                            let row = (c * kh + ki) * kw + kj;
                            for oy in 0..g.oh {
                                for ox in 0..g.ow {
                                    let iy = (oy * sh + ki * d).checked_sub(pad);
                                    let ix = (ox + kj * d).checked_sub(pad);
                                    let (Some(iy), Some(ix)) = (iy, ix) else {
                                        continue;
                                    };
                                    if iy < h && ix < w {
                                        want[i * img + c * hw + iy * w + ix] +=
                                            col[row * ld + i * p + oy * g.ow + ox];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            assert_eq!(got, want, "{:?}", (h, w, kh, kw, sh, d, pad));
        }
    }

    #[test]
    fn other_strides_are_declined() {
        let g = Geom {
            cg: 1,
            h: 8,
            w: 8,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 2,
            dh: 1,
            dw: 1,
            pt: 0,
            pl: 0,
            oh: 6,
            ow: 3,
        };
        let mut dst = vec![0.0f32; 64];
        assert!(!col2im(&g, &[0.0; 9 * 18], 18, 1, 64, &mut dst));
    }
}
