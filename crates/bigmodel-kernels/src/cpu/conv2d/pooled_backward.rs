//! Backward of the fused Conv2d-ReLU-MaxPool2d from the window maxima alone.
//!
//! Of each 2x2 window only its maximum, and only where the ReLU let it through, receives a
//! gradient: three quarters of the dense `cog x P` output gradient that the GEMM backward
//! multiplies are zeros (more after the ReLU). This backward walks the pooled gradient instead.
//! Each surviving entry (image `n`, channel `co`, gradient `g`, output pixel `(r, c)`) adds
//!
//! ```text
//! grad weight   W̄[co, :, ki, kj] += g * x[n, :, r*sh + ki*dh - pt, c*sw + kj*dw - pl]
//! grad input    x̄[n, :, r*sh + ki*dh - pt, c*sw + kj*dw - pl] += g * W[co, :, ki, kj]
//! ```
//!
//! so the arithmetic is a quarter of the dense one, and neither an unpooled gradient, nor a
//! column matrix, nor col2im is formed. Both sums run over channels-last data, where the
//! channels of a kernel row are contiguous (`kw * C` floats when the dilation is 1), cut into
//! blocks of 16 lanes (a block may run past its segment: the 60-float kernel row of a 20-channel
//! 3x3 layer is three whole blocks and one of 12 lanes, whose other 4 are read and dropped for the
//! weight gradient, and masked off for the input gradient). [`applies`] says which layers take
//! this path: the dense GEMM backward keeps the rest.
//!
//! One pass over the images, each task a fixed range of them: per image the input is copied
//! channels-last and zero-padded (it stays in L1), and per output channel the surviving
//! entries are listed once and used twice, by [`sparse_rows`] (the weight gradient: the
//! entries' patches, scaled and summed into the task's partial) and by [`scatter_rows`] (the
//! input gradient: the channel's weight row, scaled and added onto each entry's patch of a
//! channels-last image gradient, then stored as NCHW). The partials are summed in task order,
//! so results do not depend on scheduling; they differ from the dense path's in rounding only.

use super::{Conv2dParams, Scratch, CUT};
use crate::element::{Element, Real};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Lanes per block.
const LANES: usize = 16;
/// The largest padded image (elements) the entry-wise backward takes: 256 KiB of f32, L2-sized
/// (the seed CNNs' pooled layers are 22-29 KiB).
const MAX_IMAGE_ELEMS: usize = 64 << 10;
/// Image tasks per thread: more than one lets a thread slowed by a neighbour shed work.
const TASKS_PER_THREAD: usize = 2;

/// One block of a weight-gradient row.
#[derive(Clone, Copy)]
struct Block {
    /// Offset in an image copy from a patch's top-left tap.
    at: usize,
    /// Offset in the channels-last row (`(ki * kw + kj) * C + ci`).
    row_at: usize,
    /// Lanes that belong to the row (the rest run past its segment).
    lanes: usize,
}

/// Where each part of the backward reads and writes, in the padded channels-last layout.
struct Layout {
    c: usize,
    kh: usize,
    kw: usize,
    /// Padded plane of the channels-last image copies.
    hp: usize,
    wp: usize,
    /// The (cropped) convolution output's width and its pooled plane.
    ow: usize,
    pooled: usize,
    /// Offset in an image copy of each output pixel's patch (its top-left tap).
    patch_at: Vec<usize>,
    /// The blocks of one weight-gradient row, in order.
    blocks: Vec<Block>,
}

impl Layout {
    fn new(p: &Conv2dParams) -> Option<Layout> {
        let (c, [sh, sw], [dh, dw], [pt, pl]) = (p.c_in, p.stride, p.dilation, p.pad);
        let [oh, ow] = p.out;
        // The padded copy must hold every tap of every output pixel, and the input itself.
        let reach = |o: usize, s: usize, k: usize, d: usize| (o - 1) * s + (k - 1) * d + 1;
        let hp = reach(oh, sh, p.kh, dh).max(pt + p.h);
        let wp = reach(ow, sw, p.kw, dw).max(pl + p.w);
        hp.checked_mul(wp)?.checked_mul(c)?;
        let patch_at = (0..oh * ow)
            .map(|px| ((px / ow) * sh * wp + (px % ow) * sw) * c)
            .collect();
        let mut blocks = Vec::new();
        let mut segment = |at: usize, row_at: usize, len: usize| {
            for s in (0..len).step_by(LANES) {
                blocks.push(Block {
                    at: at + s,
                    row_at: row_at + s,
                    lanes: LANES.min(len - s),
                });
            }
        };
        for ki in 0..p.kh {
            if dw == 1 {
                segment(ki * dh * wp * c, ki * p.kw * c, p.kw * c);
            } else {
                for kj in 0..p.kw {
                    segment((ki * dh * wp + kj * dw) * c, (ki * p.kw + kj) * c, c);
                }
            }
        }
        Some(Layout {
            c,
            kh: p.kh,
            kw: p.kw,
            hp,
            wp,
            ow,
            pooled: (oh / 2) * (ow / 2),
            patch_at,
            blocks,
        })
    }

    /// Elements of a row in the block layout.
    fn row_len(&self) -> usize {
        self.blocks.len() * LANES
    }

    fn image_len(&self) -> usize {
        self.hp * self.wp * self.c
    }
}

/// Whether [`pooled_backward`] serves these parameters (`p` cropped to the windows): one group,
/// at least a block's worth of input channels (a 1-channel first layer fills 3 of a block's 16
/// lanes, where the dense GEMM backward is faster), images whose channels-last copy stays near
/// the core (the per-image design; the dense path blocks larger ones for the cache itself), and
/// an x86 CPU with AVX2 or AVX-512 (S3's second layer: 1.7 ms with AVX-512, 2.5 with AVX2, 29
/// in baseline code, against 3.2 dense).
pub(super) fn applies(p: &Conv2dParams) -> bool {
    crate::isa::active() >= crate::isa::Isa::Avx2
        && p.groups == 1
        && p.c_in >= LANES
        && p.out[0] >= 2
        && p.out[1] >= 2
        && Layout::new(p).is_some_and(|l| l.image_len() <= MAX_IMAGE_ELEMS)
}

/// Whether every element of `xs` is finite. The dense backward multiplies the zero gradients of
/// non-maximum pixels too, and `0 * inf` is NaN: with an infinite or NaN input or weight its
/// gradients (and torch's) hold NaNs that leaving out the zero terms would not produce, so such
/// calls take the dense path.
pub(super) fn all_finite<E: Element>(xs: &[E]) -> bool {
    xs.par_chunks(1 << 14).all(|c| finite_chunk::<E>(c))
}

crate::dispatch_isa! {
    fn finite_chunk<E: Element>(xs: &[E]) -> bool {
        // 0 * x is 0 for a finite x and NaN otherwise; sixteen lanes so that it vectorises.
        let zero = <E::Acc as Real>::ZERO;
        let mut acc = [zero; LANES];
        let mut chunks = xs.chunks_exact(LANES);
        for c in &mut chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                let x = v.load();
                *a = *a + zero * x;
            }
        }
        for (a, v) in acc.iter_mut().zip(chunks.remainder()) {
            let x = v.load();
            *a = *a + zero * x;
        }
        acc.iter().all(|&a| a == zero)
    }
}

/// The gradients of `conv2d_relu_pool2_forward` given the pooled gradient and its indices.
/// `p` is cropped to the windows (`2 ph x 2 pw` output pixels), `index_plane` the full output
/// plane the indices name positions in; the lengths were checked by the caller.
#[allow(clippy::too_many_arguments)]
pub(super) fn pooled_backward<E: Element>(
    p: &Conv2dParams,
    index_plane: [usize; 2],
    grad: &[E],
    indices: &[i64],
    input: &[E],
    weight: &[E],
    grad_input: Option<&mut [E]>,
    grad_weight: Option<&mut [E]>,
    grad_bias: Option<&mut [E]>,
) -> Result<()>
where
    E::Acc: Scratch,
{
    let l = Layout::new(p).ok_or_else(|| {
        Error::Value("conv2d: input plane too large for the pooled backward".into())
    })?;
    let zero = <E::Acc as Real>::ZERO;
    let row_len = l.row_len();
    let threads = rayon::current_num_threads().max(1);
    let ntasks = (TASKS_PER_THREAD * threads).min(p.batch).max(1);
    let (wlen, blen) = (
        if grad_weight.is_some() {
            p.c_out * row_len
        } else {
            0
        },
        if grad_bias.is_some() { p.c_out } else { 0 },
    );
    let wt_len = if grad_input.is_some() {
        p.c_out * row_len
    } else {
        0
    };
    let img = p.c_in * p.h * p.w;
    E::Acc::with_scratch(wt_len + ntasks * (wlen + blen), |buf| {
        let (wt, partials) = buf.split_at_mut(wt_len);
        weight_rows(&l, weight, wt);
        partials.fill(zero);
        // Task t: images [t * batch / ntasks, (t + 1) * batch / ntasks), their slice of
        // grad_input (none when not wanted) and one partial (none when neither is wanted).
        let mut rest_in: &mut [E] = grad_input.unwrap_or(&mut []);
        let mut parts = partials.chunks_mut((wlen + blen).max(1));
        let mut tasks = Vec::with_capacity(ntasks);
        for t in 0..ntasks {
            let images = t * p.batch / ntasks..(t + 1) * p.batch / ntasks;
            let take = if rest_in.is_empty() {
                0
            } else {
                images.len() * img
            };
            let (mine, r) = std::mem::take(&mut rest_in).split_at_mut(take);
            rest_in = r;
            tasks.push((images, mine, parts.next().unwrap_or_default()));
        }
        let job = Job {
            p,
            l: &l,
            index_plane,
            grad,
            indices,
            input,
            wt,
            wlen,
            blen,
        };
        tasks
            .into_par_iter()
            .try_for_each(|(images, gi, part)| job.run(images, gi, part))?;
        // Sum the partials in task order, then back to torch's layouts.
        let (first, rest) = partials.split_at_mut((wlen + blen).min(partials.len()));
        for part in rest.chunks((wlen + blen).max(1)) {
            for (a, &v) in first.iter_mut().zip(part) {
                *a += v;
            }
        }
        let (sum_w, sum_b) = first.split_at(wlen);
        if let Some(gw) = grad_weight {
            store_weight_gradient(&l, sum_w, gw);
        }
        if let Some(gb) = grad_bias {
            for (d, &v) in gb.iter_mut().zip(sum_b) {
                *d = E::store(v);
            }
        }
        Ok(())
    })
}

/// The weight in the block layout the input gradient reads: row `co` holds block `b`'s lanes at
/// `b * LANES`, zeros past each block's own lanes.
fn weight_rows<E: Element>(l: &Layout, weight: &[E], wt: &mut [E::Acc]) {
    let row_len = l.row_len();
    let taps = l.kh * l.kw;
    for (co, row) in wt.chunks_exact_mut(row_len).enumerate() {
        row.fill(<E::Acc as Real>::ZERO);
        let w = &weight[co * l.c * taps..(co + 1) * l.c * taps];
        for_each_lane(l, |i, ci, tap| row[i] = w[ci * taps + tap].load());
    }
}

/// The summed weight gradient, in the block layout, back to torch's `(co, ci, ki, kj)`.
fn store_weight_gradient<E: Element>(l: &Layout, sum: &[E::Acc], gw: &mut [E]) {
    let row_len = l.row_len();
    let taps = l.kh * l.kw;
    for (row, out) in sum
        .chunks_exact(row_len)
        .zip(gw.chunks_exact_mut(l.c * taps))
    {
        for_each_lane(l, |i, ci, tap| out[ci * taps + tap] = E::store(row[i]));
    }
}

/// Calls `f(i, ci, tap)` for each lane `i` of a block-layout row that belongs to its block:
/// channel `ci` of kernel tap `tap` (without a division per lane).
fn for_each_lane(l: &Layout, mut f: impl FnMut(usize, usize, usize)) {
    for (b, block) in l.blocks.iter().enumerate() {
        let (mut tap, mut ci) = (block.row_at / l.c, block.row_at % l.c);
        for lane in 0..block.lanes {
            f(b * LANES + lane, ci, tap);
            ci += 1;
            if ci == l.c {
                (tap, ci) = (tap + 1, 0);
            }
        }
    }
}

/// What every image task reads.
struct Job<'a, E: Element> {
    p: &'a Conv2dParams,
    l: &'a Layout,
    index_plane: [usize; 2],
    grad: &'a [E],
    indices: &'a [i64],
    input: &'a [E],
    /// The weight rows (empty when the input gradient is not wanted).
    wt: &'a [E::Acc],
    wlen: usize,
    blen: usize,
}

impl<E: Element> Job<'_, E> {
    /// Images `images`: their input gradient into `gi` (empty when not wanted), their weight and
    /// bias gradients added onto `part`.
    fn run(&self, images: std::ops::Range<usize>, gi: &mut [E], part: &mut [E::Acc]) -> Result<()> {
        let (p, l) = (self.p, self.l);
        let zero = <E::Acc as Real>::ZERO;
        let row_len = l.row_len();
        let (pw, pb) = part.split_at_mut(self.wlen);
        // The image and its gradient, channels-last and padded, followed by the lanes a last
        // block may reach past them.
        let mut x = vec![zero; l.image_len() + LANES];
        let mut dx = vec![
            zero;
            if gi.is_empty() {
                0
            } else {
                l.image_len() + LANES
            }
        ];
        let mut list: Vec<(E::Acc, usize)> = Vec::with_capacity(l.pooled);
        let img = p.c_in * p.h * p.w;
        for (i, n) in images.enumerate() {
            if self.wlen > 0 {
                channels_last(p, l, &self.input[n * img..(n + 1) * img], &mut x);
            }
            dx.fill(zero);
            for co in 0..p.c_out {
                let at = (n * p.c_out + co) * l.pooled;
                let sum = self.entries(at, &mut list)?;
                if self.blen > 0 {
                    pb[co] = pb[co] + sum;
                }
                if list.is_empty() {
                    continue;
                }
                if self.wlen > 0 {
                    sparse_rows::<E::Acc>(
                        &mut pw[co * row_len..(co + 1) * row_len],
                        &l.blocks,
                        &list,
                        &x,
                    );
                }
                if !dx.is_empty() {
                    let w = &self.wt[co * row_len..(co + 1) * row_len];
                    scatter_rows::<E::Acc>(&mut dx, &l.blocks, w, &list);
                }
            }
            if !dx.is_empty() {
                channels_first(p, l, &dx, &mut gi[i * img..(i + 1) * img]);
            }
        }
        Ok(())
    }

    /// The surviving entries of the pooled plane at `at` as (gradient, patch offset), and the sum
    /// of their gradients (the bias gradient's share); an index outside its window is refused
    /// as the dense path's `gather_row` refuses it.
    fn entries(&self, at: usize, list: &mut Vec<(E::Acc, usize)>) -> Result<E::Acc> {
        let l = self.l;
        let [ih, iw] = self.index_plane;
        let pw = l.ow / 2;
        let iw = iw as i64;
        let zero = <E::Acc as Real>::ZERO;
        let grads = &self.grad[at..at + l.pooled];
        let ix = &self.indices[at..at + l.pooled];
        list.clear();
        let mut sum = zero;
        // Row by row: the window's four pixels without a division per entry.
        for (pr, (g, ix)) in grads.chunks_exact(pw).zip(ix.chunks_exact(pw)).enumerate() {
            let r0 = 2 * pr;
            for (pc, (g, &j)) in g.iter().zip(ix).enumerate() {
                if j == CUT {
                    continue; // the ReLU stopped this gradient
                }
                let c0 = 2 * pc;
                let step = j - (r0 as i64 * iw + c0 as i64);
                let dr = (step >= iw) as i64;
                let dc = step - dr * iw;
                if !(0..=1).contains(&dc) {
                    return Err(window_error(j, ih * iw as usize, pr * pw + pc, pw));
                }
                // < oh * ow: the window lies in the cropped plane.
                let px = (r0 + dr as usize) * l.ow + c0 + dc as usize;
                let g = g.load();
                sum = sum + g;
                list.push((g, l.patch_at[px]));
            }
        }
        Ok(sum)
    }
}

/// One NCHW image into the padded channels-last layout (the padding stays zero: `x` is only
/// ever written here, at the same places).
fn channels_last<E: Element>(p: &Conv2dParams, l: &Layout, src: &[E], x: &mut [E::Acc]) {
    let [pt, pl] = p.pad;
    let plane = p.h * p.w;
    for y in 0..p.h {
        let row = &mut x[((y + pt) * l.wp + pl) * l.c..][..p.w * l.c];
        for (xi, px) in row.chunks_exact_mut(l.c).enumerate() {
            let at = y * p.w + xi;
            for (d, s) in px.iter_mut().zip(src[at..].iter().step_by(plane)) {
                *d = s.load();
            }
        }
    }
}

/// A padded channels-last image gradient into one NCHW image, padding dropped.
fn channels_first<E: Element>(p: &Conv2dParams, l: &Layout, dx: &[E::Acc], gi: &mut [E]) {
    let [pt, pl] = p.pad;
    let plane = p.h * p.w;
    for y in 0..p.h {
        let row = &dx[((y + pt) * l.wp + pl) * l.c..][..p.w * l.c];
        for (ci, line) in gi
            .chunks_exact_mut(plane)
            .map(|s| &mut s[y * p.w..(y + 1) * p.w])
            .enumerate()
        {
            for (xi, d) in line.iter_mut().enumerate() {
                *d = E::store(row[xi * l.c + ci]);
            }
        }
    }
}

/// The error for index `j` of pooled entry `q` (rows of `pw` windows), as `gather_row` words it.
fn window_error(j: i64, plane: usize, q: usize, pw: usize) -> Error {
    let what = "conv2d_relu_max_pool2d backward: index";
    if usize::try_from(j).is_ok_and(|j| j < plane) {
        Error::Index(format!(
            "{what} {j} is outside its 2x2 window (pooled row {}, column {})",
            q / pw,
            q % pw
        ))
    } else {
        Error::Index(format!("{what} {j} is outside a plane of {plane} elements"))
    }
}

/// `out[b] += sum over (g, at) of list: g * m[at + blocks[b].at..][..LANES]`, for each block `b` of
/// `LANES` lanes: the weight gradient's kernel (the entries' patches of an image, scaled and
/// summed). An entry whose blocks would pass the end of `m` adds nothing (callers rule it out).
fn sparse_rows<A: Real>(out: &mut [A], blocks: &[Block], list: &[(A, usize)], m: &[A]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512_active() {
        if let (Some(o), Some(l), Some(m)) = (
            super::same_mut::<A, f32>(out),
            super::same::<(A, usize), (f32, usize)>(list),
            super::same::<A, f32>(m),
        ) {
            // SAFETY: `active()` reports AVX-512 only where the CPU has it.
            unsafe { lanes::sparse_rows(o, blocks, l, m) };
            return;
        }
    }
    sparse_rows_any::<A>(out, blocks, list, m);
}

crate::dispatch_isa! {
    fn sparse_rows_any<A: Real>(out: &mut [A], blocks: &[Block], list: &[(A, usize)], m: &[A]) {
        // One block of lanes at a time, in four chains of additions (one chain is bound by the
        // addition's latency). Several blocks per pass were vectorised across the blocks, into
        // gathers and scatters; `lanes::sparse_rows` keeps them in registers by hand.
        for (block, out) in blocks.iter().zip(out.chunks_exact_mut(LANES)) {
            let o = block.at;
            let mut sums = [[A::ZERO; LANES]; 4];
            let mut quads = list.chunks_exact(4);
            for quad in &mut quads {
                for (sum, &(g, at)) in sums.iter_mut().zip(quad) {
                    add_scaled(sum, g, m.get(at + o..at + o + LANES));
                }
            }
            for (sum, &(g, at)) in sums.iter_mut().zip(quads.remainder()) {
                add_scaled(sum, g, m.get(at + o..at + o + LANES));
            }
            for (i, d) in out.iter_mut().enumerate() {
                *d = *d + ((sums[0][i] + sums[1][i]) + (sums[2][i] + sums[3][i]));
            }
        }
    }
}

/// `r += g * src`.
#[inline(always)]
fn add_scaled<A: Real>(r: &mut [A; LANES], g: A, src: Option<&[A]>) {
    if let Some(src) = src {
        for (r, &v) in r.iter_mut().zip(src) {
            *r = *r + g * v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod lanes {
    use super::{Block, LANES};
    use std::arch::x86_64::*;

    /// Calls `$group::<B>($bs, $rest...)` with `B = $bs.len()` (1 to 8) as a constant, so that
    /// the group's blocks are registers.
    macro_rules! by_blocks {
        ($group:ident, $bs:expr, $($rest:expr),*) => {
            match $bs.len() {
                1 => $group::<1>($bs, $($rest),*),
                2 => $group::<2>($bs, $($rest),*),
                3 => $group::<3>($bs, $($rest),*),
                4 => $group::<4>($bs, $($rest),*),
                5 => $group::<5>($bs, $($rest),*),
                6 => $group::<6>($bs, $($rest),*),
                7 => $group::<7>($bs, $($rest),*),
                _ => $group::<8>($bs, $($rest),*),
            }
        };
    }

    /// `super::sparse_rows` for f32 on AVX-512: up to eight blocks per pass over the list, each
    /// a register, so an entry's gradient and address are loaded once for eight FMAs.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sparse_rows(out: &mut [f32], blocks: &[Block], list: &[(f32, usize)], m: &[f32]) {
        for (bs, out) in blocks.chunks(8).zip(out.chunks_mut(8 * LANES)) {
            by_blocks!(group, bs, out, list, m);
        }
    }

    /// `super::scatter_rows` for f32 on AVX-512: up to eight blocks of the weight row held in
    /// registers across the list, each entry a load, an FMA and a store per block (masked to
    /// the block's own lanes where it is shorter than LANES).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scatter_rows(
        image: &mut [f32],
        blocks: &[Block],
        row: &[f32],
        list: &[(f32, usize)],
    ) {
        for (bs, w) in blocks.chunks(8).zip(row.chunks(8 * LANES)) {
            by_blocks!(scatter_group, bs, image, w, list);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn scatter_group<const B: usize>(
        blocks: &[Block],
        image: &mut [f32],
        row: &[f32],
        list: &[(f32, usize)],
    ) {
        if row.len() < B * LANES {
            return; // the caller passes B whole blocks of the row
        }
        let at: [usize; B] = std::array::from_fn(|b| blocks[b].at);
        let mask: [__mmask16; B] =
            std::array::from_fn(|b| ((1u32 << blocks[b].lanes.min(LANES)) - 1) as __mmask16);
        let full = blocks[..B].iter().all(|b| b.lanes == LANES);
        // SAFETY: `row` holds at least B * LANES f32 (checked above).
        let w: [__m512; B] =
            std::array::from_fn(|b| unsafe { _mm512_loadu_ps(row.as_ptr().add(b * LANES)) });
        let span = at.iter().max().map_or(0, |&a| a + LANES);
        let ptr = image.as_mut_ptr();
        for &(g, base) in list {
            // Callers rule this out (every patch lies in the image); skip rather than write.
            if base.checked_add(span).is_none_or(|end| end > image.len()) {
                continue;
            }
            let g = _mm512_set1_ps(g);
            for b in 0..B {
                // SAFETY: `base + at[b] + LANES <= base + span <= image.len()`, checked above;
                // a partial block reads and writes only its own lanes.
                unsafe {
                    let p = ptr.add(base + at[b]);
                    if full {
                        _mm512_storeu_ps(p, _mm512_fmadd_ps(g, w[b], _mm512_loadu_ps(p)));
                    } else {
                        let v = _mm512_maskz_loadu_ps(mask[b], p);
                        _mm512_mask_storeu_ps(p, mask[b], _mm512_fmadd_ps(g, w[b], v));
                    }
                }
            }
        }
    }

    /// `B` blocks in registers, in two sets (even and odd entries) so that a few blocks still
    /// give the FMAs independent chains.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn group<const B: usize>(blocks: &[Block], out: &mut [f32], list: &[(f32, usize)], m: &[f32]) {
        let at: [usize; B] = std::array::from_fn(|b| blocks[b].at);
        let span = at.iter().max().map_or(0, |&a| a + LANES);
        let mut even = [_mm512_setzero_ps(); B];
        let mut odd = [_mm512_setzero_ps(); B];
        // A macro rather than a closure: a closure is not compiled with the function's target
        // features, and its intrinsics then ran as out-of-line calls.
        macro_rules! add {
            ($acc:ident, $g:expr, $base:expr) => {{
                let base: usize = $base;
                // Callers rule this out (every entry's blocks lie in `m`); skip rather than read.
                if base.checked_add(span).is_some_and(|end| end <= m.len()) {
                    let g = _mm512_set1_ps($g);
                    for b in 0..B {
                        // SAFETY: `base + at[b] + LANES <= base + span <= m.len()`, checked above.
                        let v = unsafe { _mm512_loadu_ps(m.as_ptr().add(base + at[b])) };
                        $acc[b] = _mm512_fmadd_ps(g, v, $acc[b]);
                    }
                }
            }};
        }
        let mut pairs = list.chunks_exact(2);
        for pair in &mut pairs {
            add!(even, pair[0].0, pair[0].1);
            add!(odd, pair[1].0, pair[1].1);
        }
        for &(g, base) in pairs.remainder() {
            add!(even, g, base);
        }
        for b in 0..B {
            let dst = &mut out[b * LANES..(b + 1) * LANES];
            // SAFETY: `dst` holds exactly LANES f32.
            unsafe {
                let sum = _mm512_add_ps(even[b], odd[b]);
                _mm512_storeu_ps(
                    dst.as_mut_ptr(),
                    _mm512_add_ps(_mm512_loadu_ps(dst.as_ptr()), sum),
                );
            }
        }
    }
}

/// `image[at + blocks[b].at..][..lanes] += g * row[b * LANES..][..lanes]` (`blocks[b].lanes`) for every
/// `(g, at)` of `list` and every block `b`. An entry whose blocks would pass the end of `image`
/// adds nothing (callers rule it out).
fn scatter_rows<A: Real>(image: &mut [A], blocks: &[Block], row: &[A], list: &[(A, usize)]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512_active() {
        if let (Some(i), Some(r), Some(l)) = (
            super::same_mut::<A, f32>(image),
            super::same::<A, f32>(row),
            super::same::<(A, usize), (f32, usize)>(list),
        ) {
            // SAFETY: `active()` reports AVX-512 only where the CPU has it.
            unsafe { lanes::scatter_rows(i, blocks, r, l) };
            return;
        }
    }
    scatter_rows_any::<A>(image, blocks, row, list);
}

crate::dispatch_isa! {
    fn scatter_rows_any<A: Real>(image: &mut [A], blocks: &[Block], row: &[A], list: &[(A, usize)]) {
        for &(g, base) in list {
            for (block, w) in blocks.iter().zip(row.chunks_exact(LANES)) {
                let at = base + block.at;
                if let Some(dst) = image.get_mut(at..at + block.lanes) {
                    for (d, &v) in dst.iter_mut().zip(w) {
                        *d = *d + g * v;
                    }
                }
            }
        }
    }
}
