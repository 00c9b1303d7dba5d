//! im2col and col2im for one (image, group) slab.
//!
//! The column matrix has one row per (input channel, kernel row, kernel column) of the group,
//! `K = cg * kh * kw` rows, and one column per output pixel. Several images of a block share one
//! column matrix side by side: image `i` of the block owns columns `i * P .. (i + 1) * P` of a
//! matrix whose leading dimension is `ld = nb * P`. The valid range of output columns for each
//! kernel tap is computed up front, so the inner loops carry no bounds branches and the
//! stride-1 case is a plain copy that vectorises.

use super::{row_col2im, tiny_plane};
use super::{same, same_mut};
use crate::element::{Element, Real};

/// Output rows narrower than this are gathered (im2col) or scattered (col2im) through the
/// offset table rather than walked row by row: a row of 3 elements costs its loop
/// overhead thrice over, while on 11-wide rows the contiguous loops were measured twice as fast
/// (and fixed-width block copies, `copy_line`, faster still; on 3-wide rows they lose to the
/// gather, measured 26% against 19% of a 5x5 forward).
const GATHER_BELOW_WIDTH: usize = 8;

/// The geometry of one convolution, as the kernels need it (all already validated).
#[derive(Clone, Copy, Debug)]
pub struct Geom {
    /// Input channels per group.
    pub cg: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    /// Zero padding before the first row / column (the far side needs no number: reads past the
    /// input's end are zeros).
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geom {
    /// Rows of the column matrix.
    pub fn k(&self) -> usize {
        self.cg * self.kh * self.kw
    }

    /// Output pixels of one image.
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// Input elements of one image and group.
    pub fn slab(&self) -> usize {
        self.cg * self.h * self.w
    }

    /// For every output pixel of `nb` images (image stride `img`), the input offset its (0, 0)
    /// tap reads, before padding: the gather table of [`im2col`]'s interior taps.
    pub fn block_offsets(&self, nb: usize, img: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(nb * self.p());
        for i in 0..nb {
            for oy in 0..self.oh {
                for ox in 0..self.ow {
                    out.push(i * img + oy * self.sh * self.w + ox * self.sw);
                }
            }
        }
        out
    }

    /// The offset of tap (ki, kj) within a channel plane when every output pixel reads inside the
    /// input (no padding touched), else None.
    #[inline(always)]
    fn interior_offset(&self, ki: usize, kj: usize) -> Option<usize> {
        let y = (ki * self.dh).checked_sub(self.pt)?;
        let x = (kj * self.dw).checked_sub(self.pl)?;
        let fits = self.oh > 0
            && self.ow > 0
            && (self.oh - 1) * self.sh + y < self.h
            && (self.ow - 1) * self.sw + x < self.w;
        fits.then_some(y * self.w + x)
    }

    /// The output positions `[lo, hi)` along one axis whose input index `o * s + off` falls
    /// inside `[0, n)`.
    #[inline(always)]
    fn valid(out: usize, s: usize, off: isize, n: usize) -> (usize, usize) {
        let lo = if off >= 0 {
            0
        } else {
            ((-off) as usize).div_ceil(s)
        };
        let end = n as isize - off;
        let hi = if end <= 0 {
            0
        } else {
            (end as usize).div_ceil(s)
        };
        let hi = hi.min(out);
        (lo.min(hi), hi)
    }
}

/// One row of one image's column matrix: kernel tap (ki, kj) of channel plane `plane`, every
/// output pixel, zeros where the tap reads padding.
#[inline(always)]
fn fill_row<E: Element>(g: &Geom, plane: &[E], dst: &mut [E::Acc], ki: usize, kj: usize) {
    let zero = <E::Acc as Real>::ZERO;
    let offy = (ki * g.dh) as isize - g.pt as isize;
    let (ylo, yhi) = Geom::valid(g.oh, g.sh, offy, g.h);
    let offx = (kj * g.dw) as isize - g.pl as isize;
    let (xlo, xhi) = Geom::valid(g.ow, g.sw, offx, g.w);
    dst[..ylo * g.ow].fill(zero);
    dst[yhi * g.ow..].fill(zero);
    for oy in ylo..yhi {
        let iy = (oy * g.sh) as isize + offy;
        let line = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
        let out = &mut dst[oy * g.ow..(oy + 1) * g.ow];
        out[..xlo].fill(zero);
        out[xhi..].fill(zero);
        if xlo < xhi {
            let ix0 = ((xlo * g.sw) as isize + offx) as usize;
            if g.sw == 1 {
                for (o, s) in out[xlo..xhi].iter_mut().zip(&line[ix0..ix0 + xhi - xlo]) {
                    *o = s.load();
                }
            } else {
                for (j, o) in out[xlo..xhi].iter_mut().enumerate() {
                    *o = line[ix0 + j * g.sw].load();
                }
            }
        }
    }
}

/// Converts `line` into `out` element by element.
#[inline(always)]
fn copy_exact<E: Element>(line: &[E], out: &mut [E::Acc]) {
    for (o, v) in out.iter_mut().zip(line) {
        *o = v.load();
    }
}

/// Copies the `len <= N` elements of `src[from..]` to `dst[to..]` as one fixed-width block of
/// `N` when both slices have room for it, else exactly. The block spills up to `N - len` values
/// past the line into `dst`: callers fill `dst` in increasing order, so the lines after this one
/// overwrite them. Why: output rows of inner layers are 11-15 wide, and a variable-length copy
/// that short becomes a `memmove` call per row (measured ~9% of a 13x13 forward); a fixed block
/// is two vector loads and stores.
#[inline(always)]
fn copy_line<E: Element, const N: usize>(
    src: &[E],
    from: usize,
    dst: &mut [E::Acc],
    to: usize,
    len: usize,
) {
    match (
        src[from..].first_chunk::<N>(),
        dst[to..].first_chunk_mut::<N>(),
    ) {
        (Some(line), Some(out)) => {
            for (o, v) in out.iter_mut().zip(line) {
                *o = v.load();
            }
        }
        _ => copy_line_exact(&src[from..from + len], &mut dst[to..to + len]),
    }
}

/// [`copy_exact`] kept out of line for [`copy_line`]'s rare last lines: inlined, LLVM merged it
/// with the fixed-width block into one `memcpy` call of variable size (measured 13% of a 13x13
/// forward), instead of the block's two vector moves.
#[inline(never)]
fn copy_line_exact<E: Element>(line: &[E], out: &mut [E::Acc]) {
    copy_exact(line, out)
}

crate::dispatch_isa! {
    fn im2col_body<E: Element>(g: &Geom, src: &[E], img: usize, nbk: usize, idx: &[usize], col: &mut [E::Acc], ld: usize) {
        let (hw, p) = (g.h * g.w, g.p());
        // The largest table entry, found once: it bounds every gather of a row.
        let idx_max = idx.iter().take(nbk * p).copied().max().unwrap_or(0);
        for c in 0..g.cg {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let row = (c * g.kh + ki) * g.kw + kj;
                    let dst = &mut col[row * ld..row * ld + nbk * p];
                    match g.interior_offset(ki, kj) {
                        // Interior tap, unit stride, rows of at least GATHER_BELOW_WIDTH: straight
                        // line copies, no padding logic; rows up to 32 wide as fixed-width blocks
                        // (see `copy_line`).
                        Some(off) if g.sw == 1 && g.ow >= GATHER_BELOW_WIDTH => {
                            for i in 0..nbk {
                                for oy in 0..g.oh {
                                    let from = i * img + c * hw + off + oy * g.sh * g.w;
                                    let to = i * p + oy * g.ow;
                                    match g.ow {
                                        0..=16 => copy_line::<E, 16>(src, from, dst, to, g.ow),
                                        17..=32 => copy_line::<E, 32>(src, from, dst, to, g.ow),
                                        _ => copy_exact(&src[from..from + g.ow], &mut dst[to..to + g.ow]),
                                    }
                                }
                            }
                        }
                        // Interior tap (every pixel of every image reads inside the input) with short
                        // rows: one gather over the whole block instead of many tiny copies.
                        Some(off) if g.ow < GATHER_BELOW_WIDTH && idx.len() >= nbk * p => {
                            let base = &src[c * hw + off..];
                            let idx = &idx[..nbk * p];
                            if idx_max < base.len() {
                                for (d, &j) in dst.iter_mut().zip(idx) {
                                    // SAFETY: j <= idx_max < base.len() (checked above).
                                    *d = unsafe { base.get_unchecked(j) }.load();
                                }
                            } else {
                                for (d, &j) in dst.iter_mut().zip(idx) {
                                    *d = base[j].load();
                                }
                            }
                        }
                        _ => {
                            for i in 0..nbk {
                                let plane = &src[i * img + c * hw..i * img + (c + 1) * hw];
                                fill_row::<E>(g, plane, &mut dst[i * p..(i + 1) * p], ki, kj);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds one row of one image's column matrix (tap (ki, kj), every output pixel) back onto the
/// channel plane it was read from.
#[inline(always)]
fn add_row<A: Real>(g: &Geom, src: &[A], plane: &mut [A], ki: usize, kj: usize) {
    let offy = (ki * g.dh) as isize - g.pt as isize;
    let (ylo, yhi) = Geom::valid(g.oh, g.sh, offy, g.h);
    let offx = (kj * g.dw) as isize - g.pl as isize;
    let (xlo, xhi) = Geom::valid(g.ow, g.sw, offx, g.w);
    if xlo >= xhi {
        return;
    }
    for oy in ylo..yhi {
        let iy = ((oy * g.sh) as isize + offy) as usize;
        let line = &mut plane[iy * g.w..(iy + 1) * g.w];
        let s = &src[oy * g.ow + xlo..oy * g.ow + xhi];
        let ix0 = ((xlo * g.sw) as isize + offx) as usize;
        if g.sw == 1 {
            for (d, v) in line[ix0..ix0 + s.len()].iter_mut().zip(s) {
                *d = *d + *v;
            }
        } else {
            for (j, v) in s.iter().enumerate() {
                let d = &mut line[ix0 + j * g.sw];
                *d = *d + *v;
            }
        }
    }
}

crate::dispatch_isa! {
    fn col2im_body<A: Real>(g: &Geom, col: &[A], ld: usize, nbk: usize, idx: &[usize], img: usize, dst: &mut [A]) {
        let (hw, p) = (g.h * g.w, g.p());
        let idx_max = idx.iter().take(nbk * p).copied().max().unwrap_or(0);
        for c in 0..g.cg {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    let row = (c * g.kh + ki) * g.kw + kj;
                    let src = &col[row * ld..row * ld + nbk * p];
                    match g.interior_offset(ki, kj) {
                        // Interior tap, short rows: one scatter over the block (the mirror of
                        // im2col's gather). Within one tap no two pixels hit the same input.
                        Some(off) if g.ow < GATHER_BELOW_WIDTH && idx.len() >= nbk * p => {
                            let base = &mut dst[c * hw + off..];
                            let idx = &idx[..nbk * p];
                            if idx_max < base.len() {
                                for (&j, v) in idx.iter().zip(src) {
                                    // SAFETY: j <= idx_max < base.len() (checked above).
                                    let d = unsafe { base.get_unchecked_mut(j) };
                                    *d = *d + *v;
                                }
                            } else {
                                for (&j, v) in idx.iter().zip(src) {
                                    base[j] = base[j] + *v;
                                }
                            }
                        }
                        _ => {
                            for i in 0..nbk {
                                let plane = &mut dst[i * img + c * hw..i * img + (c + 1) * hw];
                                add_row(g, &src[i * p..(i + 1) * p], plane, ki, kj);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Writes the column matrix of `nbk` images into the first `nbk * P` columns of `col` (`K` rows
/// of leading dimension `ld`), converted to the compute type. `src` starts at the first image's
/// group slab; image `i`'s slab starts `i * img` elements later. `idx` is [`Geom::block_offsets`]
/// for at least `nbk` images (or empty, which takes the per-image path everywhere).
#[allow(clippy::too_many_arguments)]
pub fn im2col<E: Element>(
    g: &Geom,
    src: &[E],
    img: usize,
    nbk: usize,
    idx: &[usize],
    col: &mut [E::Acc],
    ld: usize,
) {
    debug_assert!(nbk * g.p() <= ld && col.len() >= g.k() * ld);
    if let (Some(src), Some(col)) = (same::<E, f32>(src), same_mut::<E::Acc, f32>(col)) {
        if tiny_plane::im2col(g, src, img, nbk, col, ld) {
            return;
        }
    }
    im2col_body::<E>(g, src, img, nbk, idx, col, ld)
}

/// Adds the first `nbk * P` columns of the column matrix `col` back onto `nbk` input-shaped
/// slabs: every input pixel gathers the contributions of every tap that read it. `dst` starts at
/// the first image's group slab, image `i`'s `i * img` elements later, and must start zeroed (or
/// hold what the sums should start from). `idx` as for [`im2col`].
#[allow(clippy::too_many_arguments)]
pub fn col2im<A: Real>(
    g: &Geom,
    col: &[A],
    ld: usize,
    nbk: usize,
    idx: &[usize],
    img: usize,
    dst: &mut [A],
) {
    debug_assert!(nbk * g.p() <= ld && col.len() >= g.k() * ld);
    if let (Some(col), Some(dst)) = (same::<A, f32>(col), same_mut::<A, f32>(dst)) {
        if tiny_plane::col2im(g, col, ld, nbk, img, dst)
            || row_col2im::col2im(g, col, ld, nbk, img, dst)
        {
            return;
        }
    }
    col2im_body::<A>(g, col, ld, nbk, idx, img, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn geom(
        h: usize,
        w: usize,
        k: usize,
        s: usize,
        d: usize,
        pt: usize,
        pl: usize,
        pad_far: usize,
    ) -> Geom {
        let oh = (h + pt + pad_far - d * (k - 1) - 1) / s + 1;
        let ow = (w + pl + pad_far - d * (k - 1) - 1) / s + 1;
        Geom {
            cg: 2,
            h,
            w,
            kh: k,
            kw: k,
            sh: s,
            sw: s,
            dh: d,
            dw: d,
            pt,
            pl,
            oh,
            ow,
        }
    }

    /// The definition, one element at a time.
    fn naive_col(g: &Geom, src: &[f64]) -> Vec<f64> {
        let mut col = vec![0.0; g.k() * g.p()];
        for c in 0..g.cg {
            for ki in 0..g.kh {
                for kj in 0..g.kw {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let iy = (oy * g.sh + ki * g.dh) as isize - g.pt as isize;
                            let ix = (ox * g.sw + kj * g.dw) as isize - g.pl as isize;
                            let row = (c * g.kh + ki) * g.kw + kj;
                            if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                                col[row * g.p() + oy * g.ow + ox] =
                                    src[c * g.h * g.w + iy as usize * g.w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_matches_definition_and_col2im_is_its_adjoint() {
        for &(h, w, k, s, d, pt, pl, far) in &[
            (5, 7, 3, 1, 1, 0, 0, 0),
            (5, 7, 3, 2, 1, 1, 2, 1),
            (6, 6, 1, 3, 1, 0, 0, 0),
            (9, 8, 3, 1, 2, 2, 2, 2),
            (4, 4, 2, 5, 1, 0, 1, 0),
            (3, 3, 3, 1, 1, 3, 3, 3),
            (11, 13, 3, 1, 1, 1, 1, 0),
            // Unit-stride rows of every block width (3, 5, 18 and 38 output columns).
            (5, 5, 3, 1, 1, 0, 0, 0),
            (4, 20, 3, 1, 1, 0, 0, 0),
            (3, 40, 3, 1, 1, 0, 0, 0),
        ] {
            let g = geom(h, w, k, s, d, pt, pl, far);
            // Three images, written into a matrix wider than they need to exercise ld; once
            // through the gather table, once through the per-image path.
            let src: Vec<f64> = (0..3 * g.slab()).map(|i| (i as f64) * 0.37 - 3.0).collect();
            let ld = 3 * g.p() + 2;
            for idx in [g.block_offsets(3, g.slab()), Vec::new()] {
                let mut col = vec![f64::NAN; g.k() * ld];
                im2col::<f64>(&g, &src, g.slab(), 3, &idx, &mut col, ld);
                for i in 0..3 {
                    let want = naive_col(&g, &src[i * g.slab()..(i + 1) * g.slab()]);
                    for r in 0..g.k() {
                        let got = &col[r * ld + i * g.p()..r * ld + (i + 1) * g.p()];
                        assert_eq!(got, &want[r * g.p()..(r + 1) * g.p()]);
                    }
                }
            }
            // <im2col(x), y> == <x, col2im(y)> over the three images, both paths.
            let y: Vec<f64> = (0..g.k() * ld)
                .map(|i| ((i * 7) % 11) as f64 - 5.0)
                .collect();
            let mut lhs = 0.0;
            for i in 0..3 {
                let want = naive_col(&g, &src[i * g.slab()..(i + 1) * g.slab()]);
                for r in 0..g.k() {
                    for j in 0..g.p() {
                        lhs += want[r * g.p() + j] * y[r * ld + i * g.p() + j];
                    }
                }
            }
            for idx in [g.block_offsets(3, g.slab()), Vec::new()] {
                let mut back = vec![0.0; 3 * g.slab()];
                col2im(&g, &y, ld, 3, &idx, g.slab(), &mut back);
                let rhs: f64 = src.iter().zip(&back).map(|(a, b)| a * b).sum();
                assert!(
                    (lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0),
                    "{lhs} vs {rhs}"
                );
            }
        }
    }
}
