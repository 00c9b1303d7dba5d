//! 2-D convolution (torch's `conv2d`: NCHW, groups, stride, dilation, zero padding) forward and
//! backward, by im2col and faer's matmul.
//!
//! For image `b` and group `g`, with `K = cg * kh * kw` rows of the column matrix and `P = oh * ow`
//! output pixels:
//!
//! ```text
//! forward       out[b, g]  (cog x P) = W[g] (cog x K) * col(x[b, g]) (K x P) + bias
//! grad input    x̄[b, g]   = col2im( W[g]^T (K x cog) * ḡ[b, g] (cog x P) )
//! grad weight   W̄[g]      = sum_b ḡ[b, g] (cog x P) * col(x[b, g])^T (P x K)
//! grad bias     b̄[c]      = sum_{b, p} ḡ[b, c, p]
//! ```
//!
//! Plan ([`Plan`]): images are grouped into blocks of `nb` whose column matrices sit side by side
//! (`K x nb*P`), so that a layer with few output pixels (5x5 images) still feeds the GEMM wide
//! enough panels; blocks are spread over the pool, one GEMM per (block, group) with the GEMM
//! itself single-threaded. When there are fewer blocks than threads (batch 1, unbatched input)
//! the loop runs serially and each GEMM uses the whole pool instead. The weight and bias
//! gradients are summed into one partial buffer per task over a fixed split of the blocks, then
//! reduced in a fixed order, so results do not depend on scheduling. Column matrices and
//! gathered gradients live in per-thread scratch buffers reused across calls.
//!
//! A pointwise convolution (1x1, stride 1, no padding) of one image skips im2col: the input
//! already is its column matrix. bf16 and f16 are converted to f32 on the way into the column
//! matrix and stored back once per output element, as torch's CPU path computes them in f32.

mod im2col;
mod matmul;
mod pool_lanes;
mod pooled_backward;
mod row_col2im;
mod tiny_plane;

pub use im2col::{col2im, im2col, Geom};
pub use matmul::{matmul, Mat, Scratch};

use crate::element::{Element, Real};
use crate::error::{Error, Result};
use faer::Par;
use rayon::prelude::*;
use std::any::TypeId;

/// Output columns one GEMM should at least see before blocking more images into it. Only layers
/// with fewer output pixels per image block: wider blocks measured slower in a training-like
/// setting (fresh output tensors each call), as their column matrix and gathered gradients crowd
/// L2 (32->64 channels on 15x15, fwd+bwd, EPYC Zen 4: 7.82 ms at 512 columns (4 images), 7.62
/// at one image; the pooled 13x13 layer 4.56 -> 4.28 ms at two). 144 = 16 blocks of the 5x5
/// layer's 9 pixels: at 128 its blocks of 11 images ran its forward 8% slower.
const TARGET_COLS: usize = 144;
/// Upper bound on one column matrix (bytes) when blocking images; keeps it near L2.
const MAX_COL_BYTES: usize = 2 << 20;
/// Backward tasks per thread, at least and at most: more than one lets a thread that was slowed
/// down by a neighbour shed work to the other; each task costs one partial weight gradient.
const MIN_TASKS_PER_THREAD: usize = 2;
const MAX_TASKS_PER_THREAD: usize = 8;
/// Bytes of partial weight/bias gradients the backward may allocate before capping its tasks.
const PARTIAL_BYTES: usize = 1 << 20;

/// Shapes and hyper-parameters of one convolution. `out` is the output's spatial size, which the
/// caller computes (it differs from the symmetric formula under asymmetric "same" padding);
/// reads outside the input are zeros, so any `out` is memory-safe.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dParams {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub groups: usize,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Zero padding before the first row and the first column.
    pub pad: [usize; 2],
    pub out: [usize; 2],
}

fn mul(xs: &[usize]) -> Result<usize> {
    xs.iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .filter(|&n| n <= isize::MAX as usize / 8)
        .ok_or_else(|| Error::Value(format!("conv2d: sizes {xs:?} overflow")))
}

impl Conv2dParams {
    pub fn validate(&self) -> Result<()> {
        let nonpos = |what: &str| {
            Err(Error::Shape(format!(
                "non-positive {what} is not supported"
            )))
        };
        if self.groups == 0 {
            return nonpos("groups");
        }
        if self.stride.contains(&0) {
            return nonpos("stride");
        }
        if self.dilation.contains(&0) {
            return nonpos("dilation");
        }
        if self.kh == 0 || self.kw == 0 || self.c_out == 0 {
            return Err(Error::Shape(format!(
                "conv2d: weight of size [{}, {}, {}, {}] is empty",
                self.c_out,
                self.c_in / self.groups.max(1),
                self.kh,
                self.kw
            )));
        }
        if !self.c_in.is_multiple_of(self.groups) || !self.c_out.is_multiple_of(self.groups) {
            return Err(Error::Shape(format!(
                "conv2d: {} input and {} output channels are not divisible by groups={}",
                self.c_in, self.c_out, self.groups
            )));
        }
        // Every index the kernels form must fit comfortably in isize.
        mul(&[self.batch, self.c_in, self.h, self.w])?;
        mul(&[self.batch, self.c_out, self.out[0], self.out[1]])?;
        mul(&[
            self.c_in,
            self.kh,
            self.kw,
            self.batch.max(1),
            self.out[0],
            self.out[1],
        ])?;
        for a in 0..2 {
            let k = [self.kh, self.kw][a];
            let reach = self.out[a]
                .checked_mul(self.stride[a])
                .and_then(|x| x.checked_add(k.checked_mul(self.dilation[a])?))
                .and_then(|x| x.checked_add(self.pad[a]));
            if reach.is_none_or(|r| r > isize::MAX as usize / 8) {
                return Err(Error::Value("conv2d: spatial sizes overflow".into()));
            }
        }
        Ok(())
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.c_in * self.h * self.w
    }

    pub fn weight_len(&self) -> usize {
        self.c_out * (self.c_in / self.groups) * self.kh * self.kw
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.c_out * self.out[0] * self.out[1]
    }

    pub fn geom(&self) -> Geom {
        Geom {
            cg: self.c_in / self.groups,
            h: self.h,
            w: self.w,
            kh: self.kh,
            kw: self.kw,
            sh: self.stride[0],
            sw: self.stride[1],
            dh: self.dilation[0],
            dw: self.dilation[1],
            pt: self.pad[0],
            pl: self.pad[1],
            oh: self.out[0],
            ow: self.out[1],
        }
    }

    /// The input is its own column matrix: 1x1 kernel, stride 1, no padding, same spatial size.
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && self.out == [self.h, self.w]
    }
}

/// How the work is cut: `nb` images per block, `blocks` blocks, and whether each GEMM runs on
/// the whole pool (only when there are fewer blocks than threads).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub nb: usize,
    pub blocks: usize,
    pub inner: Par,
}

impl Plan {
    pub fn new(p: &Conv2dParams, threads: usize, elem_bytes: usize) -> Plan {
        let g = p.geom();
        let pix = g.p().max(1);
        let threads = threads.max(1);
        let batch = p.batch.max(1);
        let by_cols = TARGET_COLS.div_ceil(pix);
        let by_cache = (MAX_COL_BYTES / (g.k() * pix * elem_bytes).max(1)).max(1);
        // At least two blocks per thread when the batch allows: on a shared machine a thread that
        // loses its core for a while leaves its second block to be stolen rather than waited for.
        let mut nb = by_cols
            .min(by_cache)
            .min(batch.div_ceil(2 * threads))
            .max(1);
        // Round the block count up to a multiple of the thread count so no thread idles at the end.
        let mut blocks = batch.div_ceil(nb);
        if blocks > 1 && !blocks.is_multiple_of(threads) {
            blocks = blocks.div_ceil(threads) * threads;
            nb = batch.div_ceil(blocks);
            blocks = batch.div_ceil(nb);
        }
        let inner = if blocks >= threads || threads == 1 {
            Par::Seq
        } else {
            Par::rayon(threads)
        };
        Plan { nb, blocks, inner }
    }
}

/// `s` as a slice of `A` when `E` is `A` itself (f32 and f64 need no conversion).
fn same<E: 'static, A: 'static>(s: &[E]) -> Option<&[A]> {
    if TypeId::of::<E>() == TypeId::of::<A>() {
        // SAFETY: E and A are the same type, so the memory, length and lifetime carry over.
        Some(unsafe { std::slice::from_raw_parts(s.as_ptr() as *const A, s.len()) })
    } else {
        None
    }
}

/// Mutable counterpart of [`same`].
fn same_mut<E: 'static, A: 'static>(s: &mut [E]) -> Option<&mut [A]> {
    if TypeId::of::<E>() == TypeId::of::<A>() {
        // SAFETY: as in `same`; the exclusive borrow of `s` moves to the result.
        Some(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut A, s.len()) })
    } else {
        None
    }
}

crate::dispatch_isa! {
    fn store_row<E: Element>(dst: &mut [E], src: &[E::Acc], add: E::Acc) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = E::store(*s + add);
        }
    }
}

crate::dispatch_isa! {
    fn store_row_relu<E: Element>(dst: &mut [E], src: &[E::Acc], add: E::Acc) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = relu_stored::<E>(*s + add);
        }
    }
}

crate::dispatch_isa! {
    fn relu_in_place<A: Real>(x: &mut [A]) {
        for v in x.iter_mut() {
            *v = relu(*v);
        }
    }
}

crate::dispatch_isa! {
    fn relu_pool2<E: Element>(
        src: &[E::Acc],
        add: E::Acc,
        w: usize,
        iw: usize,
        o: &mut [E],
        ix: &mut [i64],
    ) {
        // One plane of conv output (before the bias; rows of `w`) into its 2x2, stride-2 max
        // pooling of relu(conv + bias): each value is the stored activation's (rounded to E,
        // then the ReLU), and windows keep their first strict maximum unless a NaN comes,
        // exactly as `max_pool2d` does (`cpu::max_pool2d::take`). The index is the maximum's
        // flat position in the full output plane (rows of `iw >= w`, see `cropped_for_pooling`),
        // or -1 where the ReLU cuts the gradient (a maximum <= 0): all the backward needs, so
        // that it keeps no activation.
        let pw = w / 2;
        if pw == 0 {
            return;
        }
        let zero = <E::Acc as Real>::ZERO;
        let act = |x: E::Acc| relu_stored::<E>(x + add).load();
        let wide = iw as i64;
        let rows = o.chunks_exact_mut(pw).zip(ix.chunks_exact_mut(pw));
        for (py, (orow, irow)) in rows.enumerate() {
            let r0 = src[2 * py * w..][..2 * pw].chunks_exact(2);
            let r1 = src[(2 * py + 1) * w..][..2 * pw].chunks_exact(2);
            let base = (2 * py * iw) as i64;
            // `take`'s rule as selects, without branches.
            let windows = orow.iter_mut().zip(irow.iter_mut()).zip(r0).zip(r1);
            for (px, (((ov, iv), top), bottom)) in windows.enumerate() {
                let mut best = act(top[0]);
                let mut off = 0;
                let rest = [(act(top[1]), 1), (act(bottom[0]), wide), (act(bottom[1]), wide + 1)];
                for (v, at) in rest {
                    #[allow(clippy::eq_op)] // `v != v`: NaN wins, as in `max_pool2d::take`
                    let take = v > best || v != v;
                    best = if take { v } else { best };
                    off = if take { at } else { off };
                }
                *ov = E::store(best);
                *iv = if best <= zero { CUT } else { base + 2 * px as i64 + off };
            }
        }
    }
}

/// [`relu_pool2`], by [`pool_lanes`] for f32 on AVX-512.
fn relu_pool2_any<E: Element>(
    src: &[E::Acc],
    add: E::Acc,
    w: usize,
    iw: usize,
    o: &mut [E],
    ix: &mut [i64],
) {
    let add32 = same::<E::Acc, f32>(std::slice::from_ref(&add)).and_then(|a| a.first());
    if let (Some(s), Some(&a), Some(o32)) = (same::<E::Acc, f32>(src), add32, same_mut::<E, f32>(o))
    {
        if pool_lanes::relu_pool2(s, a, w, iw, o32, ix) {
            return;
        }
    }
    relu_pool2::<E>(src, add, w, iw, o, ix);
}

/// The convolution a pooled (2x2, stride 2, floor) forward or backward computes: `p` with its
/// output cropped to the `2 * (oh / 2) x 2 * (ow / 2)` pixels the windows read. An odd output
/// size's last row and column reach no window, so neither their products nor their (zero)
/// gradients are formed: ~17% of the seed CNN's second convolution (11x11 -> 10x10). Indices
/// still name positions in the full `oh x ow` plane, as torch's do.
fn cropped_for_pooling(p: &Conv2dParams) -> Conv2dParams {
    Conv2dParams {
        out: [2 * (p.out[0] / 2), 2 * (p.out[1] / 2)],
        ..*p
    }
}

/// Row `c` of the row-major `dst` (rows of `pix`) set to `values[c]`: the bias a GEMM then
/// accumulates onto.
fn fill_rows<A: Copy>(dst: &mut [A], pix: usize, values: &[A]) {
    for (row, &v) in dst.chunks_mut(pix).zip(values) {
        row.fill(v);
    }
}

/// torch's ReLU of a value stored as E: rounded first (a tiny negative float16 result is -0.0,
/// which the ReLU keeps), then clamped.
#[inline(always)]
fn relu_stored<E: Element>(v: E::Acc) -> E {
    let e = E::store(v);
    if e.load() < <E::Acc as Real>::ZERO {
        E::store(<E::Acc as Real>::ZERO)
    } else {
        e
    }
}

/// torch's ReLU: negatives to 0, while NaN and -0.0 pass unchanged (`clamp_min(x, 0)`).
#[inline(always)]
fn relu<A: Real>(v: A) -> A {
    if v < A::ZERO {
        A::ZERO
    } else {
        v
    }
}

crate::dispatch_isa! {
    fn load_row<E: Element>(dst: &mut [E::Acc], src: &[E]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.load();
        }
    }
}

// The gradient through a ReLU whose output was `y`: torch's `threshold_backward(g, y, 0)`, zero
// where `y <= 0` (a NaN output lets the gradient through).
crate::dispatch_isa! {
    fn load_row_relu<E: Element>(dst: &mut [E::Acc], src: &[E], y: &[E]) {
        let zero = <E::Acc as Real>::ZERO;
        for ((d, s), y) in dst.iter_mut().zip(src).zip(y) {
            *d = if y.load() <= zero { zero } else { s.load() };
        }
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Shape(format!(
            "conv2d: {what} has {got} elements, expected {want}"
        )));
    }
    Ok(())
}

/// `weight` in the compute type: borrowed for f32/f64, converted once otherwise.
fn to_acc<E: Element>(x: &[E], buf: &mut Vec<E::Acc>) -> bool {
    if same::<E, E::Acc>(x).is_some() {
        return false;
    }
    buf.clear();
    buf.extend(x.iter().map(|v| v.load()));
    true
}

/// The pooled forward's index for a window whose gradient the ReLU cuts (its maximum is <= 0).
pub const CUT: i64 = -1;

/// What the forward stores after the bias: the convolution, its ReLU, or the 2x2 max pooling
/// (stride 2, floor) of its ReLU with the pooling's indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    Relu,
    ReluPool2,
}

/// out = conv2d(input, weight) + bias, every slice contiguous NCHW / OIHW; with `relu`,
/// out = relu(conv2d(input, weight) + bias), the activation applied while each output row is
/// still in cache instead of in a second pass over the output.
pub fn conv2d_forward<E: Element>(
    p: &Conv2dParams,
    input: &[E],
    weight: &[E],
    bias: Option<&[E]>,
    relu: bool,
    out: &mut [E],
) -> Result<()>
where
    E::Acc: Scratch,
{
    let epi = if relu { Epilogue::Relu } else { Epilogue::None };
    forward_with(p, input, weight, bias, epi, out, &mut [])
}

/// `max_pool2d(relu(conv2d(input, weight) + bias), 2)` into `pooled` and `indices` (each
/// `N x C_out x (OH / 2) x (OW / 2)`; an index is the flat position of its window's maximum in
/// the `OH x OW` plane, as torch's `max_pool2d_with_indices` reports it, or [`CUT`] where that
/// maximum is <= 0 and the ReLU stops the gradient): the convolution's output never leaves the
/// cache, and the pooling sees exactly the values (rounded to the element type) that
/// [`conv2d_forward`] with `relu` would have stored.
pub fn conv2d_relu_pool2_forward<E: Element>(
    p: &Conv2dParams,
    input: &[E],
    weight: &[E],
    bias: Option<&[E]>,
    pooled: &mut [E],
    indices: &mut [i64],
) -> Result<()>
where
    E::Acc: Scratch,
{
    forward_with(p, input, weight, bias, Epilogue::ReluPool2, pooled, indices)
}

/// Elements of one image's stored output under `epi`.
fn image_len(p: &Conv2dParams, epi: Epilogue) -> usize {
    match epi {
        Epilogue::ReluPool2 => p.c_out * (p.out[0] / 2) * (p.out[1] / 2),
        _ => p.c_out * p.out[0] * p.out[1],
    }
}

fn forward_with<E: Element>(
    p: &Conv2dParams,
    input: &[E],
    weight: &[E],
    bias: Option<&[E]>,
    epi: Epilogue,
    out: &mut [E],
    indices: &mut [i64],
) -> Result<()>
where
    E::Acc: Scratch,
{
    p.validate()?;
    check_len("input", input.len(), p.input_len())?;
    check_len("weight", weight.len(), p.weight_len())?;
    let per_image = image_len(p, epi);
    check_len("output", out.len(), p.batch * per_image)?;
    let pooled = epi == Epilogue::ReluPool2;
    check_len("indices", indices.len(), if pooled { out.len() } else { 0 })?;
    if let Some(b) = bias {
        check_len("bias", b.len(), p.c_out)?;
    }
    if out.is_empty() {
        return Ok(());
    }
    let index_width = p.out[1];
    let cropped = cropped_for_pooling(p);
    let p = if pooled { &cropped } else { p };
    let plan = Plan::new(
        p,
        rayon::current_num_threads(),
        std::mem::size_of::<E::Acc>(),
    );
    let mut wbuf = Vec::new();
    let wa: &[E::Acc] = if to_acc(weight, &mut wbuf) {
        &wbuf
    } else {
        same(weight).unwrap_or(&[])
    };
    let ba: Option<Vec<E::Acc>> = bias.map(|b| b.iter().map(|v| v.load()).collect());
    // One f32/f64 image per GEMM, with a bias and a column matrix of our own: the bias rides
    // along as an extra weight column against a row of ones under the column matrix, so the GEMM
    // writes each output once. Filling the output with the bias and accumulating onto it cost ~8%
    // of the first layers' forward (1->32 28x28, 3->32 32x32: K of 9 and 27).
    let native = TypeId::of::<E>() == TypeId::of::<E::Acc>();
    let wb: Option<Vec<E::Acc>> = match &ba {
        Some(b) if native && plan.nb == 1 && !p.pointwise() => {
            let k = p.weight_len() / p.c_out;
            let mut w = Vec::with_capacity(p.c_out * (k + 1));
            for (row, &bias) in wa.chunks_exact(k).zip(b) {
                w.extend_from_slice(row);
                w.push(bias);
            }
            Some(w)
        }
        _ => None,
    };
    let idx = p.geom().block_offsets(plan.nb, p.c_in * p.h * p.w);
    let chunk = plan.nb * per_image;
    // One (possibly empty) slice of indices per block, so both outputs split alike.
    let ix: Vec<&mut [i64]> = if pooled {
        indices.chunks_mut(chunk).collect()
    } else {
        (0..out.len().div_ceil(chunk))
            .map(|_| Default::default())
            .collect()
    };
    out.par_chunks_mut(chunk)
        .zip(ix)
        .enumerate()
        .try_for_each(|(blk, (o, ix))| {
            let nbk = o.len() / per_image;
            let block = Block {
                blk,
                nbk,
                epi,
                index_width,
            };
            let weights = Weights {
                plain: wa,
                bias: ba.as_deref(),
                with_bias: wb.as_deref(),
            };
            forward_block(p, &plan, &idx, block, input, &weights, o, ix)
        })
}

/// The forward's weights in the compute type: as given (c_out x K), the bias, and where built,
/// the weights with the bias appended to each row (c_out x (K + 1), see `forward_with`): only
/// when every block is one f32/f64 image with a column matrix of its own.
struct Weights<'a, A> {
    plain: &'a [A],
    bias: Option<&'a [A]>,
    with_bias: Option<&'a [A]>,
}

/// One block of images of the forward: its number, its size, what it stores, and the width of
/// the plane a pooled output's indices refer to.
struct Block {
    blk: usize,
    nbk: usize,
    epi: Epilogue,
    index_width: usize,
}

#[allow(clippy::too_many_arguments)]
fn forward_block<E: Element>(
    p: &Conv2dParams,
    plan: &Plan,
    idx: &[usize],
    b: Block,
    input: &[E],
    weights: &Weights<'_, E::Acc>,
    o: &mut [E],
    ix: &mut [i64],
) -> Result<()>
where
    E::Acc: Scratch,
{
    let g = p.geom();
    let (k, pix, cog) = (g.k(), g.p(), p.c_out / p.groups);
    let nbk = b.nbk;
    let b0 = b.blk * plan.nb;
    let ld = nbk * pix;
    let img = p.c_in * p.h * p.w;
    // One f32/f64 image: the GEMM accumulates onto the bias, straight into the output (or, for
    // a pooled output, into scratch with the same arithmetic, so both give the same bits).
    let bias_first = nbk == 1 && TypeId::of::<E>() == TypeId::of::<E::Acc>();
    let direct = bias_first && b.epi != Epilogue::ReluPool2;
    let borrow_input = bias_first && p.pointwise();
    let ba = weights.bias;
    // The bias as a row of ones times an extra weight column, where `forward_with` built one.
    let bias_row = weights.with_bias.is_some();
    debug_assert!(!bias_row || (bias_first && !borrow_input));
    let (wsrc, wk) = match weights.with_bias {
        Some(w) => (w, k + 1),
        None => (weights.plain, k),
    };
    let fill_bias = bias_first && !bias_row;
    let col_len = if borrow_input { 0 } else { wk * ld };
    let y_len = if direct { 0 } else { cog * ld };
    let pooled = (p.out[0] / 2) * (p.out[1] / 2);
    E::Acc::with_scratch(col_len + y_len, |s| {
        let (col, y) = s.split_at_mut(col_len);
        for gi in 0..p.groups {
            let slab = |i: usize| &input[(b0 + i) * img + gi * g.slab()..][..g.slab()];
            let cols: &[E::Acc] = match borrow_input.then(|| same(slab(0))).flatten() {
                Some(x) => x,
                None => {
                    let src = &input[b0 * img + gi * g.slab()..];
                    im2col::<E>(&g, src, img, nbk, idx, col, ld);
                    if bias_row {
                        col[k * ld..(k + 1) * ld].fill(<E::Acc as Real>::ONE);
                    }
                    col
                }
            };
            let wg = Mat::rows(&wsrc[gi * cog * wk..(gi + 1) * cog * wk], cog, wk, wk);
            let rhs = Mat::rows(cols, wk, ld, ld);
            // (`direct` never holds for a pooled output, which is smaller than `cog * pix`.)
            if let Some(dst) = direct
                .then(|| same_mut::<E, E::Acc>(&mut o[gi * cog * pix..][..cog * pix]))
                .flatten()
            {
                if let (true, Some(b)) = (fill_bias, ba) {
                    fill_rows(dst, pix, &b[gi * cog..(gi + 1) * cog]);
                }
                matmul(dst, pix, fill_bias && ba.is_some(), wg, rhs, plan.inner)?;
                if b.epi == Epilogue::Relu {
                    relu_in_place::<E::Acc>(dst);
                }
            } else {
                if let (true, Some(b)) = (fill_bias, ba) {
                    fill_rows(y, pix, &b[gi * cog..(gi + 1) * cog]);
                }
                matmul(y, ld, fill_bias && ba.is_some(), wg, rhs, plan.inner)?;
                for i in 0..nbk {
                    for c in 0..cog {
                        let add = match ba {
                            Some(b) if !bias_first => b[gi * cog + c],
                            _ => <E::Acc as Real>::ZERO,
                        };
                        let src = &y[c * ld + i * pix..][..pix];
                        let at = i * p.c_out + gi * cog + c;
                        match b.epi {
                            Epilogue::None => store_row::<E>(&mut o[at * pix..][..pix], src, add),
                            Epilogue::Relu => {
                                store_row_relu::<E>(&mut o[at * pix..][..pix], src, add)
                            }
                            Epilogue::ReluPool2 => {
                                let at = at * pooled;
                                relu_pool2_any::<E>(
                                    src,
                                    add,
                                    p.out[1],
                                    b.index_width,
                                    &mut o[at..at + pooled],
                                    &mut ix[at..at + pooled],
                                );
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    })
}

/// The gradients `conv2d_backward` fills; `None` for those not wanted.
pub struct Conv2dGrads<'a, E> {
    pub input: Option<&'a mut [E]>,
    pub weight: Option<&'a mut [E]>,
    pub bias: Option<&'a mut [E]>,
}

mod backward;
pub use backward::{conv2d_backward, Upstream};

#[cfg(test)]
mod tests;
