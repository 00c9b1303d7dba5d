//! conv2d backward: input, weight and bias gradients in one pass over the batch.
//!
//! Each task owns a fixed range of image blocks, the matching slice of the input gradient and one
//! partial weight/bias gradient. Per block and group it gathers the output gradient into a
//! `cog x nb*P` matrix (a view of grad_output itself for one f32/f64 image), rebuilds the column
//! matrix of the input for the weight gradient, then reuses that buffer for `W^T * grad` and
//! scatters it back with col2im. The partials are summed in task order at the end.
//! Each group's partial weight gradient is stored transposed (K x cog), see `backward_task`.

use super::{
    check_len, col2im, cropped_for_pooling, im2col, load_row, load_row_relu, matmul, same,
    same_mut, store_row, to_acc, Conv2dGrads, Conv2dParams, Mat, Plan, Scratch,
    MAX_TASKS_PER_THREAD, MIN_TASKS_PER_THREAD, PARTIAL_BYTES,
};
use crate::element::{Element, Real};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::any::TypeId;

crate::dispatch_isa! {
    fn row_sum<A: Real>(x: &[A]) -> A {
        // Sixteen independent partial sums: a single running sum is a serial dependency chain
        // that LLVM may not reorder, which made the bias gradient cost as much as a GEMM.
        let mut acc = [A::ZERO; 16];
        let mut chunks = x.chunks_exact(16);
        for c in &mut chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *a = *a + *v;
            }
        }
        for (a, v) in acc.iter_mut().zip(chunks.remainder()) {
            *a = *a + *v;
        }
        acc.iter().fold(A::ZERO, |s, a| s + *a)
    }
}

/// One task's share: blocks `[b0, b1)`, its slice of grad_input (empty when not wanted) and its
/// partial weight and bias gradients.
struct Task<'a, E, A> {
    b0: usize,
    b1: usize,
    grad_in: &'a mut [E],
    partial: &'a mut [A],
}

/// The gradient arriving at the forward's stored output, by [`Epilogue`](super::Epilogue).
#[derive(Clone, Copy)]
pub enum Upstream<'a, E> {
    /// The gradient of the convolution's output.
    Conv(&'a [E]),
    /// The gradient of `relu(conv)`, and that output: the gradient passes where it is > 0 (or
    /// NaN), as torch's `threshold_backward` lets it.
    Relu { grad: &'a [E], out: &'a [E] },
    /// The gradient of `max_pool2d(relu(conv), 2)` and the pooled forward's indices: each
    /// pooled gradient goes to its window's index, or nowhere where the index is
    /// [`CUT`](super::CUT).
    ReluPool2 { grad: &'a [E], indices: &'a [i64] },
}

/// Fills the requested gradients of the forward (`conv2d_forward` or
/// `conv2d_relu_pool2_forward`) given the gradient of what it stored (`up`).
pub fn conv2d_backward<E: Element>(
    p: &Conv2dParams,
    up: Upstream<'_, E>,
    input: &[E],
    weight: &[E],
    grads: Conv2dGrads<'_, E>,
) -> Result<()>
where
    E::Acc: Scratch,
{
    p.validate()?;
    let pooled_len = p.batch * p.c_out * (p.out[0] / 2) * (p.out[1] / 2);
    match up {
        Upstream::Conv(g) => check_len("grad_output", g.len(), p.output_len())?,
        Upstream::Relu { grad, out } => {
            check_len("grad_output", grad.len(), p.output_len())?;
            check_len("relu output", out.len(), p.output_len())?;
        }
        Upstream::ReluPool2 { grad, indices } => {
            check_len("grad_output", grad.len(), pooled_len)?;
            check_len("indices", indices.len(), pooled_len)?;
        }
    }
    check_len("input", input.len(), p.input_len())?;
    check_len("weight", weight.len(), p.weight_len())?;
    // A pooled forward formed only the pixels its windows read, and so does its backward; the
    // indices still name positions in the full output plane.
    let index_plane = p.out;
    let cropped = cropped_for_pooling(p);
    let p = match up {
        Upstream::ReluPool2 { .. } => &cropped,
        _ => p,
    };
    let Conv2dGrads {
        input: mut gin,
        weight: mut gw,
        bias: mut gb,
    } = grads;
    if let Some(g) = gin.as_deref() {
        check_len("grad_input", g.len(), p.input_len())?;
    }
    if let Some(g) = gw.as_deref() {
        check_len("grad_weight", g.len(), p.weight_len())?;
    }
    if let Some(g) = gb.as_deref() {
        check_len("grad_bias", g.len(), p.c_out)?;
    }
    let zero = <E::Acc as Real>::ZERO;
    if p.batch == 0 || p.out[0] * p.out[1] == 0 {
        // No output element: every gradient is zero.
        for g in [gin.as_deref_mut(), gw.as_deref_mut(), gb.as_deref_mut()]
            .into_iter()
            .flatten()
        {
            g.fill(E::store(zero));
        }
        return Ok(());
    }
    if let Upstream::ReluPool2 { grad, indices } = up {
        use super::pooled_backward::{all_finite, applies};
        if applies(p) && all_finite(weight) && all_finite(input) {
            return super::pooled_backward::pooled_backward(
                p,
                index_plane,
                grad,
                indices,
                input,
                weight,
                gin,
                gw,
                gb,
            );
        }
    }
    let threads = rayon::current_num_threads();
    let plan = Plan::new(p, threads, std::mem::size_of::<E::Acc>());
    let mut wbuf = Vec::new();
    let wa: &[E::Acc] = if to_acc(weight, &mut wbuf) {
        &wbuf
    } else {
        same(weight).unwrap_or(&[])
    };
    let wlen = if gw.is_some() { p.weight_len() } else { 0 };
    let blen = if gb.is_some() { p.c_out } else { 0 };
    let plen = wlen + blen;
    let ntasks = if plen == 0 {
        plan.blocks
    } else {
        let by_bytes = PARTIAL_BYTES / (plen * std::mem::size_of::<E::Acc>()).max(1);
        let per_thread = by_bytes.clamp(
            MIN_TASKS_PER_THREAD * threads,
            MAX_TASKS_PER_THREAD * threads,
        );
        plan.blocks.min(per_thread)
    };
    let mut partials = vec![zero; ntasks * plen];
    let img = p.c_in * p.h * p.w;
    let idx = p.geom().block_offsets(plan.nb, img);
    let mut tasks = Vec::with_capacity(ntasks);
    {
        let mut rest_in: &mut [E] = gin.unwrap_or(&mut []);
        let mut rest_p: &mut [E::Acc] = &mut partials;
        for t in 0..ntasks {
            let (b0, b1) = (t * plan.blocks / ntasks, (t + 1) * plan.blocks / ntasks);
            let images = (b1 * plan.nb).min(p.batch) - (b0 * plan.nb).min(p.batch);
            let take = if rest_in.is_empty() { 0 } else { images * img };
            let (mine, r) = std::mem::take(&mut rest_in).split_at_mut(take);
            rest_in = r;
            let (part, r) = std::mem::take(&mut rest_p).split_at_mut(plen);
            rest_p = r;
            tasks.push(Task {
                b0,
                b1,
                grad_in: mine,
                partial: part,
            });
        }
    }
    tasks.into_par_iter().try_for_each(|t| {
        let up = Incoming { up, index_plane };
        backward_task(p, &plan, &idx, t, up, input, wa, wlen, blen)
    })?;

    // Sum the partials over the tasks into the first one, in task order and contiguously (a
    // sum reading each output element's partials with a stride was ~4% of a 13x13 backward).
    const CHUNK: usize = 4096;
    let (sum, rest) = partials.split_at_mut(plen);
    let rest = &*rest;
    sum.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, d)| {
        for t in 0..ntasks.saturating_sub(1) {
            let src = &rest[t * plen + ci * CHUNK..][..d.len()];
            for (a, v) in d.iter_mut().zip(src) {
                *a += *v;
            }
        }
    });
    let (sum_w, sum_b) = sum.split_at(wlen);
    if let Some(g) = gw {
        // The partials hold each group's gradient transposed (K x cog); undo that.
        let (k, cog) = (p.weight_len() / p.c_out, p.c_out / p.groups);
        g.par_chunks_mut(k).enumerate().for_each(|(co, row)| {
            let base = (co / cog) * cog * k + co % cog;
            for (r, v) in row.iter_mut().enumerate() {
                *v = E::store(sum_w[base + r * cog]);
            }
        });
    }
    if let Some(g) = gb {
        for (v, &s) in g.iter_mut().zip(sum_b) {
            *v = E::store(s);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn backward_task<E: Element>(
    p: &Conv2dParams,
    plan: &Plan,
    idx: &[usize],
    t: Task<'_, E, E::Acc>,
    incoming: Incoming<'_, E>,
    input: &[E],
    wa: &[E::Acc],
    wlen: usize,
    blen: usize,
) -> Result<()>
where
    E::Acc: Scratch,
{
    let g = p.geom();
    let (k, pix, cog) = (g.k(), g.p(), p.c_out / p.groups);
    let img = p.c_in * p.h * p.w;
    let native = TypeId::of::<E>() == TypeId::of::<E::Acc>();
    let need_in = !t.grad_in.is_empty();
    let zero = <E::Acc as Real>::ZERO;
    let (pw, pb) = t.partial.split_at_mut(wlen);
    let ldmax = plan.nb * pix;
    let gacc_len = if need_in && !native { plan.nb * img } else { 0 };
    let grad_in = t.grad_in;
    let up = incoming.up;
    E::Acc::with_scratch(k * ldmax + cog * ldmax + gacc_len, |s| {
        let (col, rest) = s.split_at_mut(k * ldmax);
        let (dbuf, gacc) = rest.split_at_mut(cog * ldmax);
        for blk in t.b0..t.b1 {
            let i0 = (blk * plan.nb).min(p.batch);
            let i1 = ((blk + 1) * plan.nb).min(p.batch);
            let nbk = i1 - i0;
            if nbk == 0 {
                continue;
            }
            let ld = nbk * pix;
            // This block's grad_input in the compute type, zeroed.
            let local0 = (i0 - t.b0 * plan.nb) * img;
            let gi_block: &mut [E::Acc] = if !need_in {
                &mut []
            } else if native {
                same_mut(&mut grad_in[local0..local0 + nbk * img]).unwrap_or(&mut [])
            } else {
                &mut gacc[..nbk * img]
            };
            gi_block.fill(zero);
            for gi in 0..p.groups {
                // The gradient of the group's convolution output as a cog x ld matrix: a view
                // of grad_output for one f32/f64 image, else gathered (through the ReLU and the
                // pooling, if the forward applied them).
                let view = match up {
                    Upstream::Conv(g) if nbk == 1 && native => {
                        same(&g[((i0 * p.c_out) + gi * cog) * pix..][..cog * pix])
                    }
                    _ => None,
                };
                let d: &[E::Acc] = match view {
                    Some(x) => x,
                    None => {
                        for i in 0..nbk {
                            for c in 0..cog {
                                let plane = (i0 + i) * p.c_out + gi * cog + c;
                                let dst = &mut dbuf[c * ld + i * pix..][..pix];
                                gather_row(p, incoming, plane, dst)?;
                            }
                        }
                        &dbuf[..cog * ld]
                    }
                };
                let dmat = Mat::rows(d, cog, ld, ld);
                if blen > 0 {
                    for c in 0..cog {
                        let s = row_sum::<E::Acc>(&d[c * ld..c * ld + ld]);
                        pb[gi * cog + c] += s;
                    }
                }
                let slab = |i: usize| &input[(i0 + i) * img + gi * g.slab()..][..g.slab()];
                if wlen > 0 {
                    let cols: &[E::Acc] = match (nbk == 1 && native && p.pointwise())
                        .then(|| same(slab(0)))
                        .flatten()
                    {
                        Some(x) => x,
                        None => {
                            let src = &input[i0 * img + gi * g.slab()..];
                            im2col::<E>(&g, src, img, nbk, idx, col, ld);
                            &col[..k * ld]
                        }
                    };
                    // The partial is kept transposed (K x cog): with K as the output's row index
                    // this product runs faster (single-threaded, faer: 68 against 54 GFLOP/s for
                    // K = 9, 92 against 83 for K = 27, 112 against 104 for K = 288).
                    let dst = &mut pw[gi * cog * k..(gi + 1) * cog * k];
                    let rhs = Mat::transposed(d, ld, cog, ld);
                    matmul(dst, cog, true, Mat::rows(cols, k, ld, ld), rhs, plan.inner)?;
                }
                if need_in {
                    let wg = &wa[gi * cog * k..(gi + 1) * cog * k];
                    matmul(
                        &mut col[..k * ld],
                        ld,
                        false,
                        Mat::transposed(wg, k, cog, k),
                        dmat,
                        plan.inner,
                    )?;
                    let dst = &mut gi_block[gi * g.slab()..];
                    col2im(&g, col, ld, nbk, idx, img, dst);
                }
            }
            if need_in && !native {
                let dst = &mut grad_in[local0..local0 + nbk * img];
                store_row::<E>(dst, &gacc[..nbk * img], zero);
            }
        }
        Ok(())
    })
}

/// What arrives at the forward's stored output, and the `oh x ow` plane a pooled forward's
/// indices refer to (the full output, before `cropped_for_pooling`).
#[derive(Clone, Copy)]
struct Incoming<'a, E> {
    up: Upstream<'a, E>,
    index_plane: [usize; 2],
}

/// Row `plane` (an (image, channel) plane of the convolution's output) of the gradient of the
/// convolution's output, from what arrives at the forward's stored output.
fn gather_row<E: Element>(
    p: &Conv2dParams,
    incoming: Incoming<'_, E>,
    plane: usize,
    dst: &mut [E::Acc],
) -> Result<()> {
    let pix = dst.len();
    match incoming.up {
        Upstream::Conv(g) => load_row::<E>(dst, &g[plane * pix..][..pix]),
        Upstream::Relu { grad, out } => {
            let at = plane * pix;
            load_row_relu::<E>(dst, &grad[at..][..pix], &out[at..][..pix]);
        }
        Upstream::ReluPool2 { grad, indices } => {
            // `p` is cropped to the windows: `2 ph x 2 pw` pixels.
            let (w, pw) = (p.out[1], p.out[1] / 2);
            let [ih, iw] = incoming.index_plane;
            let n = (p.out[0] / 2) * pw;
            let at = plane * n;
            let (g, ix) = (&grad[at..at + n], &indices[at..at + n]);
            if let (Some(g32), Some(d32)) = (same::<E, f32>(g), same_mut::<E::Acc, f32>(dst)) {
                if super::pool_lanes::unpool2(g32, ix, p.out[0], w, iw, d32) {
                    return Ok(());
                }
            }
            dst.fill(<E::Acc as Real>::ZERO);
            for (q, (g, &j)) in g.iter().zip(ix).enumerate() {
                if j == super::CUT {
                    continue; // the ReLU stopped this gradient
                }
                let what = "conv2d_relu_max_pool2d backward: index";
                let Some(j) = usize::try_from(j).ok().filter(|&j| j < ih * iw) else {
                    return Err(Error::Index(format!(
                        "{what} {j} is outside a plane of {} elements",
                        ih * iw
                    )));
                };
                // A forward's index always lies in its own window; one elsewhere (which could
                // also be a pixel no window reads) is refused rather than guessed at.
                let (r, c) = (j / iw, j % iw);
                if (r / 2, c / 2) != (q / pw, q % pw) {
                    return Err(Error::Index(format!(
                        "{what} {j} is outside its 2x2 window (pooled row {}, column {})",
                        q / pw,
                        q % pw
                    )));
                }
                let d = &mut dst[r * w + c];
                *d = *d + g.load();
            }
        }
    }
    Ok(())
}
