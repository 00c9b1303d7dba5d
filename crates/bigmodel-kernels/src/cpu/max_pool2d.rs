//! 2-D max pooling with indices (torch's `max_pool2d_with_indices`), forward and backward, over
//! contiguous NCHW planes.
//!
//! Every (image, channel) plane is independent, so planes are split over the pool in chunks of
//! at least [`TASK_ELEMS`] input elements. The forward visits each window's in-bounds elements in
//! row-major order and keeps the first strict maximum, except that NaN always wins (so the last
//! NaN of a window is the one reported), exactly as torch's CPU kernel does; the index is the
//! element's flat position `y * W + x` within its plane. Implicit padding is -inf and never read.
//! The backward scatters each output gradient to its index; overlapping windows add up. Indices
//! are checked against the plane, so corrupted ones give an error, never an out-of-bounds write.
//!
//! The common 2x2 / stride 2 / no padding case (every pooling layer of the seed CNNs) has its own
//! loop without the per-window bounds arithmetic.

use crate::element::{Element, Real};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Input elements one task should at least see.
const TASK_ELEMS: usize = 1 << 15;

/// Shapes and options of one pooling: `planes = N * C` planes of `h x w` pooled into `out`.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2dParams {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    /// The output's spatial size, as the caller computed it (torch's formula, ceil_mode included).
    pub out: [usize; 2],
}

impl MaxPool2dParams {
    pub fn validate(&self) -> Result<()> {
        if self.kernel.contains(&0) || self.stride.contains(&0) || self.dilation.contains(&0) {
            return Err(Error::Value(format!(
                "max_pool2d: kernel {:?}, stride {:?} and dilation {:?} must be positive",
                self.kernel, self.stride, self.dilation
            )));
        }
        let fits = |xs: &[usize]| {
            xs.iter()
                .try_fold(1usize, |a, &x| a.checked_mul(x))
                .is_some_and(|n| n <= isize::MAX as usize / 8)
        };
        let reach = |a: usize| {
            self.out[a]
                .checked_mul(self.stride[a])
                .and_then(|r| r.checked_add(self.kernel[a].checked_mul(self.dilation[a])?))
                .is_some_and(|r| r <= isize::MAX as usize / 8)
        };
        if !fits(&[self.planes, self.h, self.w])
            || !fits(&[self.planes, self.out[0], self.out[1]])
            || !reach(0)
            || !reach(1)
            || self.pad.iter().any(|&p| p > isize::MAX as usize / 8)
        {
            return Err(Error::Value("max_pool2d: sizes overflow".into()));
        }
        Ok(())
    }

    fn plane_in(&self) -> usize {
        self.h * self.w
    }

    fn plane_out(&self) -> usize {
        self.out[0] * self.out[1]
    }

    /// 2x2 windows at stride 2 that all lie inside the plane (ceil_mode may add a partial one).
    fn is_2x2(&self) -> bool {
        self.kernel == [2, 2]
            && self.stride == [2, 2]
            && self.pad == [0, 0]
            && self.dilation == [1, 1]
            && 2 * self.out[0] <= self.h
            && 2 * self.out[1] <= self.w
    }

    /// Planes per task.
    fn chunk(&self) -> usize {
        TASK_ELEMS.div_ceil(self.plane_in().max(self.plane_out()).max(1))
    }

    /// The in-bounds rows (or columns, `a = 1`) of window `o` along axis `a`: first index, one past
    /// the last, and the step (torch's `start`/`end` loop bounds).
    #[inline(always)]
    fn span(&self, a: usize, o: usize) -> (usize, usize, usize) {
        let (size, k, s, p, d) = (
            [self.h, self.w][a],
            self.kernel[a],
            self.stride[a],
            self.pad[a],
            self.dilation[a],
        );
        let start = (o * s) as isize - p as isize;
        let end = (start + ((k - 1) * d) as isize + 1).min(size as isize);
        // The first tap at or after row 0 on the dilation grid.
        let first = if start < 0 {
            (start + ((start.unsigned_abs()).div_ceil(d) * d) as isize) as usize
        } else {
            start as usize
        };
        (first, (end.max(0) as usize).max(first), d)
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Shape(format!(
            "max_pool2d: {what} has {got} elements, expected {want}"
        )));
    }
    Ok(())
}

/// `out` and `indices` (both `planes x out[0] x out[1]`) from `input` (`planes x h x w`).
pub fn max_pool2d_forward<E: Element>(
    p: &MaxPool2dParams,
    input: &[E],
    out: &mut [E],
    indices: &mut [i64],
) -> Result<()> {
    p.validate()?;
    check_len("input", input.len(), p.planes * p.plane_in())?;
    check_len("output", out.len(), p.planes * p.plane_out())?;
    check_len("indices", indices.len(), p.planes * p.plane_out())?;
    let (pi, po) = (p.plane_in(), p.plane_out());
    if po == 0 {
        return Ok(());
    }
    if pi == 0 {
        return Err(Error::Shape(
            "max_pool2d: windows over an empty input plane".into(),
        ));
    }
    let c = p.chunk();
    out.par_chunks_mut(c * po)
        .zip(indices.par_chunks_mut(c * po))
        .zip(input.par_chunks(c * pi))
        .for_each(|((o, ix), x)| forward_planes(p, x, o, ix));
    Ok(())
}

crate::dispatch_isa! {
    fn forward_planes<E: Element>(p: &MaxPool2dParams, x: &[E], o: &mut [E], ix: &mut [i64]) {
        let (pi, po) = (p.plane_in(), p.plane_out());
        for ((xp, op), ip) in x.chunks(pi).zip(o.chunks_mut(po)).zip(ix.chunks_mut(po)) {
            if p.is_2x2() {
                plane_2x2(p, xp, op, ip);
            } else {
                plane_general(p, xp, op, ip);
            }
        }
    }
}

/// Keeps `(v, i)` over `(best, at)` when torch would: a strictly larger value, or NaN.
#[inline(always)]
#[allow(clippy::eq_op)] // `v != v` is the NaN test `Real` offers without a branch.
fn take<A: Real>(best: &mut A, at: &mut usize, v: A, i: usize) {
    if v > *best || v != v {
        *best = v;
        *at = i;
    }
}

#[inline(always)]
fn plane_general<E: Element>(p: &MaxPool2dParams, x: &[E], o: &mut [E], ix: &mut [i64]) {
    let [oh, ow] = p.out;
    for oy in 0..oh {
        let (y0, y1, dy) = p.span(0, oy);
        for ox in 0..ow {
            let (x0, x1, dx) = p.span(1, ox);
            let mut best = <E::Acc as Real>::from_f64(f64::NEG_INFINITY);
            // torch reports the window's first in-bounds element when nothing beats -inf.
            let mut at = y0 * p.w + x0;
            for yy in (y0..y1).step_by(dy) {
                for xx in (x0..x1).step_by(dx) {
                    let i = yy * p.w + xx;
                    take(&mut best, &mut at, x[i].load(), i);
                }
            }
            o[oy * ow + ox] = E::store(best);
            ix[oy * ow + ox] = at as i64;
        }
    }
}

/// 2x2 windows, stride 2, no padding: every window lies inside the plane.
#[inline(always)]
fn plane_2x2<E: Element>(p: &MaxPool2dParams, x: &[E], o: &mut [E], ix: &mut [i64]) {
    let [oh, ow] = p.out;
    let w = p.w;
    for oy in 0..oh {
        let r0 = &x[2 * oy * w..][..2 * ow];
        let r1 = &x[(2 * oy + 1) * w..][..2 * ow];
        let base = 2 * oy * w;
        let orow = &mut o[oy * ow..][..ow];
        let irow = &mut ix[oy * ow..][..ow];
        for ox in 0..ow {
            let c = 2 * ox;
            let mut best = r0[c].load();
            let mut at = base + c;
            take(&mut best, &mut at, r0[c + 1].load(), base + c + 1);
            take(&mut best, &mut at, r1[c].load(), base + w + c);
            take(&mut best, &mut at, r1[c + 1].load(), base + w + c + 1);
            orow[ox] = E::store(best);
            irow[ox] = at as i64;
        }
    }
}

/// `grad_input` (`planes x h x w`, overwritten) from `grad_output` and the forward's `indices`.
pub fn max_pool2d_backward<E: Element>(
    p: &MaxPool2dParams,
    grad_output: &[E],
    indices: &[i64],
    grad_input: &mut [E],
) -> Result<()> {
    p.validate()?;
    check_len("grad_input", grad_input.len(), p.planes * p.plane_in())?;
    check_len("grad_output", grad_output.len(), p.planes * p.plane_out())?;
    check_len("indices", indices.len(), p.planes * p.plane_out())?;
    let (pi, po) = (p.plane_in(), p.plane_out());
    if pi == 0 {
        return Ok(());
    }
    if po == 0 {
        grad_input.fill(E::store(<E::Acc as Real>::ZERO));
        return Ok(());
    }
    let c = p.chunk();
    grad_input
        .par_chunks_mut(c * pi)
        .zip(grad_output.par_chunks(c * po))
        .zip(indices.par_chunks(c * po))
        .try_for_each(|((gx, gy), ix)| backward_planes(pi, po, gy, ix, gx))
}

crate::dispatch_isa! {
    fn backward_planes<E: Element>(pi: usize, po: usize, gy: &[E], ix: &[i64], gx: &mut [E]) -> Result<()> {
        gx.fill(E::store(<E::Acc as Real>::ZERO));
        for ((gxp, gyp), ixp) in gx.chunks_mut(pi).zip(gy.chunks(po)).zip(ix.chunks(po)) {
            for (g, &i) in gyp.iter().zip(ixp) {
                let Some(dst) = usize::try_from(i).ok().and_then(|i| gxp.get_mut(i)) else {
                    return Err(Error::Index(format!(
                        "max_pool2d_backward: index {i} is outside a plane of {pi} elements"
                    )));
                };
                *dst = E::store(dst.load() + g.load());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        h: usize,
        w: usize,
        k: [usize; 2],
        s: [usize; 2],
        pad: [usize; 2],
        d: [usize; 2],
        ceil: bool,
    ) -> MaxPool2dParams {
        let o = |a: usize| {
            let size = [h, w][a] as isize;
            let eff = ((k[a] - 1) * d[a]) as isize + 1;
            let num = size + 2 * pad[a] as isize - eff + if ceil { s[a] as isize - 1 } else { 0 };
            let mut n = num.div_euclid(s[a] as isize) + 1;
            if ceil && (n - 1) * s[a] as isize >= size + pad[a] as isize {
                n -= 1;
            }
            n.max(0) as usize
        };
        MaxPool2dParams {
            planes: 3,
            h,
            w,
            kernel: k,
            stride: s,
            pad,
            dilation: d,
            out: [o(0), o(1)],
        }
    }

    /// Direct transcription of the definition, padding as -inf, torch's NaN rule.
    fn naive(p: &MaxPool2dParams, x: &[f64]) -> (Vec<f64>, Vec<i64>) {
        let (mut o, mut ix) = (vec![], vec![]);
        for pl in 0..p.planes {
            for oy in 0..p.out[0] {
                for ox in 0..p.out[1] {
                    let (mut best, mut at) = (f64::NEG_INFINITY, None);
                    for ky in 0..p.kernel[0] {
                        for kx in 0..p.kernel[1] {
                            let y = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                                - p.pad[0] as isize;
                            let xx = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                - p.pad[1] as isize;
                            if y < 0 || xx < 0 || y >= p.h as isize || xx >= p.w as isize {
                                continue;
                            }
                            let i = y as usize * p.w + xx as usize;
                            let v = x[pl * p.h * p.w + i];
                            at.get_or_insert(i);
                            if v > best || v.is_nan() {
                                best = v;
                                at = Some(i);
                            }
                        }
                    }
                    o.push(best);
                    ix.push(at.unwrap() as i64);
                }
            }
        }
        (o, ix)
    }

    #[test]
    fn forward_and_backward_match_the_definition() {
        let cases = [
            (7, 9, [2, 2], [2, 2], [0, 0], [1, 1], false),
            (7, 9, [2, 2], [2, 2], [0, 0], [1, 1], true),
            (8, 8, [3, 3], [1, 2], [1, 1], [1, 1], false),
            (10, 11, [3, 2], [2, 3], [1, 0], [2, 3], true),
            (5, 5, [5, 5], [1, 1], [2, 2], [1, 1], false),
            (6, 4, [1, 1], [3, 3], [0, 0], [1, 1], true),
        ];
        for (h, w, k, s, pad, d, ceil) in cases {
            let p = params(h, w, k, s, pad, d, ceil);
            let x: Vec<f64> = (0..p.planes * h * w)
                .map(|i| ((i * 7919) % 23) as f64 - 11.0)
                .collect();
            let (want, want_ix) = naive(&p, &x);
            let n = p.planes * p.plane_out();
            let (mut o, mut ix) = (vec![0.0; n], vec![0i64; n]);
            max_pool2d_forward(&p, &x, &mut o, &mut ix).unwrap();
            assert_eq!(
                (&o, &ix),
                (&want, &want_ix),
                "{h}x{w} k{k:?} s{s:?} p{pad:?} d{d:?} ceil {ceil}"
            );
            let gy: Vec<f64> = (0..n).map(|i| i as f64 + 1.0).collect();
            let mut gx = vec![f64::NAN; x.len()];
            max_pool2d_backward(&p, &gy, &ix, &mut gx).unwrap();
            let mut want_gx = vec![0.0; x.len()];
            for (j, (&g, &i)) in gy.iter().zip(&ix).enumerate() {
                want_gx[j / p.plane_out() * h * w + i as usize] += g;
            }
            assert_eq!(gx, want_gx);
        }
    }

    #[test]
    fn nan_wins_and_bad_indices_are_refused() {
        let p = params(2, 2, [2, 2], [2, 2], [0, 0], [1, 1], false);
        let mut x = vec![1.0f32; 12];
        x[5] = f32::NAN;
        x[6] = f32::NAN;
        let (mut o, mut ix) = (vec![0.0f32; 3], vec![0i64; 3]);
        max_pool2d_forward(&p, &x, &mut o, &mut ix).unwrap();
        assert!(o[1].is_nan());
        assert_eq!(ix, [0, 2, 0]);
        let mut gx = vec![0.0f32; 12];
        for bad in [-1i64, 4] {
            let err = max_pool2d_backward(&p, &[1.0; 3], &[0, bad, 0], &mut gx);
            assert!(matches!(err, Err(Error::Index(_))));
        }
    }
}
