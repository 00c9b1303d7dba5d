//! The contiguous `(N, C)` layout: one row per sample, its classes adjacent.
//!
//! The forward reads each row once in L1-sized blocks ([`seg_stats`]); the backward writes
//! `g (A exp(x - lse) - a_c)` row by row and patches the target entry. When there are fewer
//! rows than twice the threads and rows are long, each row's columns are split into blocks
//! handled by different threads and their (max, sums) merged.

use super::*;

/// Whether few long rows make the forward split each row's columns across threads.
fn splits_columns<T: CeElement>(job: &Job<'_, T>, rows: usize) -> Option<usize> {
    if job.classes >= 2 * COL_BLOCK {
        let threads = rayon::current_num_threads();
        if rows < 2 * threads && threads > 1 {
            return Some(threads);
        }
    }
    None
}

/// Rows per task: at least [`TASK_ELEMS`] logits.
fn rows_per_task(classes: usize) -> usize {
    TASK_ELEMS.div_ceil(classes.max(1)).max(1)
}

pub(super) fn forward<T: CeElement>(
    job: &Job<'_, T>,
    mode: u8,
    x: &[T],
    lse: &mut [T::Acc],
    asum: &mut [T::Acc],
    loss: &mut [T],
) -> f64 {
    if let Some(threads) = splits_columns(job, lse.len()) {
        return forward_split_columns(job, mode, x, lse, asum, loss, threads);
    }
    run_all(
        split_rows(lse, asum, loss, rows_per_task(job.classes)),
        |out| fwd_chunk(job, mode, x, out),
    )
}

/// Whether [`forward_grad`] applies: whole rows per task (not split across threads).
pub(super) fn fusable<T: CeElement>(job: &Job<'_, T>, rows: usize) -> bool {
    job.classes > 0 && splits_columns(job, rows).is_none()
}

/// The forward of each run of rows followed at once by its gradient (upstream `up`), while the
/// run (at least [`TASK_ELEMS`] logits, a few hundred KiB at most) is still in cache.
///
/// Each row's `exp(x - max)` is stored by the forward's sum and then only rescaled
/// ([`fused_rows`]): one `exp` per logit instead of two. f32 and f64 store it straight into the
/// gradient buffer; bf16 and f16, which would round it there, into a row of f32 scratch.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_grad<T: CeElement>(
    job: &Job<'_, T>,
    mode: u8,
    up: &Upstream<T::Acc>,
    x: &[T],
    lse: &mut [T::Acc],
    asum: &mut [T::Acc],
    loss: &mut [T],
    grad: &mut [T],
) -> f64 {
    let c = job.classes; // > 0 (`fusable`)
    let per = rows_per_task(c);
    let outs = split_rows(lse, asum, loss, per);
    let tasks: Vec<_> = outs.into_iter().zip(grad.chunks_mut(per * c)).collect();
    let full_precision = std::mem::size_of::<T>() == std::mem::size_of::<T::Acc>();
    run_all(tasks, |(out, dst)| {
        let mut scratch = Vec::new();
        if !full_precision && c >= math::LANES {
            scratch.resize(c, <T::Acc as Real>::ZERO);
        }
        fused_chunk(job, mode, up, x, out, dst, &mut scratch)
    })
}

crate::dispatch_isa! {
    fn fused_chunk<T: CeElement>(job: &Job<'_, T>, mode: u8, up: &Upstream<T::Acc>, x: &[T], out: RowOut<'_, T>, dst: &mut [T], scratch: &mut [T::Acc]) -> f64 {
        match (mode, job.w.is_empty()) {
            (PLAIN, _) => fused_rows::<T, PLAIN, false>(job, up, x, out, dst, scratch),
            (SMOOTH, true) => fused_rows::<T, SMOOTH, false>(job, up, x, out, dst, scratch),
            (SMOOTH, false) => fused_rows::<T, SMOOTH, true>(job, up, x, out, dst, scratch),
            (_, true) => fused_rows::<T, PROB, false>(job, up, x, out, dst, scratch),
            (_, false) => fused_rows::<T, PROB, true>(job, up, x, out, dst, scratch),
        }
    }
}

/// Loss and gradient of whole rows from `out.r0` (`dst` holds their gradient), three passes
/// per row: the maximum (the row's one read from memory), `e_c = exp(x_c - max)` summed and
/// stored (in `dst`, or in `scratch` when it is a row long), then `dst_c = g A e_c / s - g a_c`
/// (`exp(x - lse) = e / s`). The row and its exps stay in cache across the passes.
///
/// Special values end as in the backward: a row of only -inf has `s = 0` and a NaN or +inf
/// logit makes `s` NaN, so `A e / s` is NaN across the row (torch's softmax there); an ignored
/// row (`g A = 0`) is `0 * e / s`, 0 unless `s` is 0 or NaN.
#[inline(always)]
fn fused_rows<T: CeElement, const M: u8, const W: bool>(
    job: &Job<'_, T>,
    up: &Upstream<T::Acc>,
    x: &[T],
    mut out: RowOut<'_, T>,
    dst: &mut [T],
    scratch: &mut [T::Acc],
) -> f64 {
    let c = job.classes;
    if c < math::LANES {
        return short_rows::<T, M, W>(job, x, out, Some((up, dst)));
    }
    let in_scratch = scratch.len() == c;
    let w = if W { job.w } else { &[] };
    let mut sum = 0.0f64;
    for (i, gd) in dst.chunks_exact_mut(c).enumerate() {
        let r = out.r0 + i;
        let (xr, pr) = (&x[r * c..(r + 1) * c], prob_row::<T, M>(job, r));
        let coef = |j: usize| coef::<T, M, W>(w, pr, j, job.keep, job.add);
        let mut st = Stats::empty::<T>();
        st.m = math::max(xr);
        let m = st.reference::<T>();
        (st.s, st.sa, st.asum) = match (M == PLAIN, in_scratch) {
            (true, false) => (math::sum_exp_store(xr, m, gd, T::store), st.sa, st.asum),
            (true, true) => (math::sum_exp_store(xr, m, scratch, |v| v), st.sa, st.asum),
            (false, false) => math::sum_exp_weighted_store(xr, m, coef, gd, T::store),
            (false, true) => math::sum_exp_weighted_store(xr, m, coef, scratch, |v| v),
        };
        let (loss, lse) = row_result::<T, M>(&st, job, r, xr);
        sum += out.put::<M>(i, &st, loss, lse);

        let (gr, a, t) = row_grad_consts::<T, M>(job, r, up.scale, || st.asum);
        let k = gr * a / st.s;
        let gc = if M == SMOOTH { gr * job.add } else { gr };
        let e_of = |gd: &[T], j: usize| if in_scratch { scratch[j] } else { gd[j].load() };
        let et = t.map(|t| e_of(gd, t));
        if in_scratch {
            for (j, (o, &v)) in gd.iter_mut().zip(scratch.iter()).enumerate() {
                *o = T::store(k * v - gc * coef(j));
            }
        } else {
            for (j, o) in gd.iter_mut().enumerate() {
                *o = T::store(k * o.load() - gc * coef(j));
            }
        }
        if let (Some(t), Some(et)) = (t, et) {
            gd[t] = T::store(k * et - gc * coef(t) - gr * job.keep * job.weight_of(t));
        }
    }
    sum
}

crate::dispatch_isa! {
    fn fwd_chunk<T: CeElement>(job: &Job<'_, T>, mode: u8, x: &[T], out: RowOut<'_, T>) -> f64 {
        match (mode, job.w.is_empty()) {
            // Plain mode reads the weight only at the target, outside the vector loops.
            (PLAIN, _) => fwd_rows::<T, PLAIN, false>(job, x, out),
            (SMOOTH, true) => fwd_rows::<T, SMOOTH, false>(job, x, out),
            (SMOOTH, false) => fwd_rows::<T, SMOOTH, true>(job, x, out),
            (_, true) => fwd_rows::<T, PROB, false>(job, x, out),
            (_, false) => fwd_rows::<T, PROB, true>(job, x, out),
        }
    }
}

#[inline(always)]
fn fwd_rows<T: CeElement, const M: u8, const W: bool>(
    job: &Job<'_, T>,
    x: &[T],
    mut out: RowOut<'_, T>,
) -> f64 {
    let c = job.classes;
    if (1..math::LANES).contains(&c) {
        return short_rows::<T, M, W>(job, x, out, None);
    }
    let mut sum = 0.0f64;
    for i in 0..out.lse.len() {
        let r = out.r0 + i;
        let (xr, pr) = (&x[r * c..(r + 1) * c], prob_row::<T, M>(job, r));
        let st = seg_stats::<T, M, W>(xr, job.w, pr, job.keep, job.add);
        let (loss, lse) = row_result::<T, M>(&st, job, r, xr);
        sum += out.put::<M>(i, &st, loss, lse);
    }
    sum
}

/// Elements of a run of short rows, whose exps are taken together (scratch on the stack).
const SHORT_RUN: usize = 256;

/// Rows shorter than a vector ([`math::LANES`]): a run of rows at a time, with the exps of the
/// whole run in one flat vector loop (one scalar `exp` per element otherwise: at (64, 10) that
/// was most of the call). With `grad`, also writes the rows' gradient as [`fused_rows`] does,
/// from the exps kept in `T::Acc`.
#[inline(always)]
fn short_rows<T: CeElement, const M: u8, const W: bool>(
    job: &Job<'_, T>,
    x: &[T],
    mut out: RowOut<'_, T>,
    mut grad: Option<(&Upstream<T::Acc>, &mut [T])>,
) -> f64 {
    let c = job.classes; // 1..LANES (callers check)
    let w = if W { job.w } else { &[] };
    let zero = <T::Acc as Real>::ZERO;
    let per = SHORT_RUN / c;
    let mut e = [zero; SHORT_RUN];
    let mut stats = [Stats::empty::<T>(); SHORT_RUN];
    let rows = out.lse.len();
    let mut sum = 0.0f64;
    let mut i0 = 0;
    while i0 < rows {
        let n = per.min(rows - i0);
        let r0 = out.r0 + i0;
        let row = |i: usize| (r0 + i) * c..(r0 + i + 1) * c;
        let prob = |i: usize| prob_row::<T, M>(job, r0 + i);
        let es = &mut e[..n * c];
        for (i, (st, er)) in stats.iter_mut().zip(es.chunks_exact_mut(c)).enumerate() {
            let (xr, pr) = (&x[row(i)], prob(i));
            *st = Stats::empty::<T>();
            st.m = math::max(xr);
            let m = st.reference::<T>();
            for (j, (d, v)) in er.iter_mut().zip(xr).enumerate() {
                *d = v.load() - m;
                if M != PLAIN {
                    let a = coef::<T, M, W>(w, pr, j, job.keep, job.add);
                    st.sa = st.sa + a * *d;
                    st.asum = st.asum + a;
                }
            }
        }
        math::exp_all::<T>(es);
        for (i, (st, er)) in stats.iter_mut().zip(es.chunks_exact(c)).enumerate() {
            let (r, xr, pr) = (r0 + i, &x[row(i)], prob(i));
            st.s = er.iter().fold(zero, |a, &v| a + v);
            let (loss, lse) = row_result::<T, M>(st, job, r, xr);
            sum += out.put::<M>(i0 + i, st, loss, lse);
            if let Some((up, dst)) = grad.as_mut() {
                let gd = &mut dst[(i0 + i) * c..(i0 + i + 1) * c];
                let (gr, a, t) = row_grad_consts::<T, M>(job, r, up.scale, || st.asum);
                let k = gr * a / st.s;
                let gc = if M == SMOOTH { gr * job.add } else { gr };
                let coef = |j: usize| coef::<T, M, W>(w, pr, j, job.keep, job.add);
                for (j, (o, &v)) in gd.iter_mut().zip(er).enumerate() {
                    *o = T::store(k * v - gc * coef(j));
                }
                if let Some(t) = t {
                    gd[t] = T::store(k * er[t] - gc * coef(t) - gr * job.keep * job.weight_of(t));
                }
            }
        }
        i0 += n;
    }
    sum
}

/// Row `r`'s target probabilities (probability mode), else nothing.
#[inline(always)]
fn prob_row<'a, T: CeElement, const M: u8>(job: &Job<'a, T>, r: usize) -> &'a [T] {
    let c = job.classes;
    if M == PROB {
        &job.prob[r * c..(r + 1) * c]
    } else {
        &[]
    }
}

/// [`finalize`] for row `r` of the contiguous layout (`xr` is the row).
#[inline(always)]
fn row_result<T: CeElement, const M: u8>(
    st: &Stats<T::Acc>,
    job: &Job<'_, T>,
    r: usize,
    xr: &[T],
) -> (T::Acc, T::Acc) {
    let target = if M == PROB {
        None
    } else {
        job.class(r).map(|t| (t, xr[t].load()))
    };
    finalize::<T, M>(st, job, target)
}

/// Few long rows: each row's columns are cut into blocks handled by different threads.
fn forward_split_columns<T: CeElement>(
    job: &Job<'_, T>,
    mode: u8,
    x: &[T],
    lse: &mut [T::Acc],
    asum: &mut [T::Acc],
    loss: &mut [T],
    threads: usize,
) -> f64 {
    let c = job.classes;
    let block = c.div_ceil(4 * threads).max(COL_BLOCK);
    let mut sum = 0.0;
    for r in 0..lse.len() {
        let xr = &x[r * c..(r + 1) * c];
        let parts: Vec<Stats<T::Acc>> = (0..c.div_ceil(block))
            .into_par_iter()
            .map(|b| {
                let (c0, c1) = (b * block, ((b + 1) * block).min(c));
                seg_chunk(job, mode, xr, r, c0, c1)
            })
            .collect();
        let st = parts
            .into_iter()
            .fold(Stats::empty::<T>(), |a, b| a.merge::<T>(b));
        let (l, e) = match mode {
            PLAIN => row_result::<T, PLAIN>(&st, job, r, xr),
            SMOOTH => row_result::<T, SMOOTH>(&st, job, r, xr),
            _ => row_result::<T, PROB>(&st, job, r, xr),
        };
        lse[r] = e;
        if mode == PROB {
            asum[r] = st.asum;
        }
        if let Some(v) = loss.get_mut(r) {
            *v = T::store(l);
        }
        sum += l.to_f64();
    }
    sum
}

crate::dispatch_isa! {
    fn seg_chunk<T: CeElement>(job: &Job<'_, T>, mode: u8, xr: &[T], r: usize, c0: usize, c1: usize) -> Stats<T::Acc> {
        let c = job.classes;
        let w = if job.w.is_empty() { job.w } else { &job.w[c0..c1] };
        let p = if mode == PROB { &job.prob[r * c + c0..r * c + c1] } else { job.prob };
        let xs = &xr[c0..c1];
        match (mode, job.w.is_empty()) {
            (PLAIN, _) => seg_stats::<T, PLAIN, false>(xs, w, p, job.keep, job.add),
            (SMOOTH, true) => seg_stats::<T, SMOOTH, false>(xs, w, p, job.keep, job.add),
            (SMOOTH, false) => seg_stats::<T, SMOOTH, true>(xs, w, p, job.keep, job.add),
            (_, true) => seg_stats::<T, PROB, false>(xs, w, p, job.keep, job.add),
            (_, false) => seg_stats::<T, PROB, true>(xs, w, p, job.keep, job.add),
        }
    }
}

pub(super) fn backward<T: CeElement>(g: &BwdArgs<'_, T>, x: Option<&[T]>, dst: &mut [T]) {
    let c = g.job.classes;
    let rows = g.lse.len();
    if c == 0 {
        return;
    }
    // Only long rows consult the pool (short calls run outside it, see `CeParams::is_serial`).
    let threads = if c >= 2 * COL_BLOCK {
        rayon::current_num_threads()
    } else {
        1
    };
    let block = if rows < 2 * threads && threads > 1 {
        c.div_ceil(4 * threads).max(COL_BLOCK)
    } else {
        c
    };
    let per = if block < c {
        1
    } else {
        TASK_ELEMS.div_ceil(c).max(1)
    };
    // Tasks are (first row, first column, piece of grad_input): whole runs of rows, or one
    // column block of one row when rows are split.
    let mut tasks = Vec::new();
    for (i, chunk) in dst.chunks_mut(per * c).enumerate() {
        if block < c {
            for (b, piece) in chunk.chunks_mut(block).enumerate() {
                tasks.push((i * per, b * block, piece));
            }
        } else {
            tasks.push((i * per, 0, chunk));
        }
    }
    run_all(tasks, |(r0, c0, piece)| {
        bwd_chunk(g, x, r0, c0, piece);
        0.0
    });
}

crate::dispatch_isa! {
    fn bwd_chunk<T: CeElement>(g: &BwdArgs<'_, T>, x: Option<&[T]>, r0: usize, c0: usize, dst: &mut [T]) {
        match (g.mode, g.job.w.is_empty(), x) {
            (PLAIN, _, Some(x)) => bwd_rows::<T, PLAIN, false, false>(g, x, r0, c0, dst),
            (PLAIN, _, None) => bwd_rows::<T, PLAIN, false, true>(g, &[], r0, c0, dst),
            (SMOOTH, true, Some(x)) => bwd_rows::<T, SMOOTH, false, false>(g, x, r0, c0, dst),
            (SMOOTH, true, None) => bwd_rows::<T, SMOOTH, false, true>(g, &[], r0, c0, dst),
            (SMOOTH, false, Some(x)) => bwd_rows::<T, SMOOTH, true, false>(g, x, r0, c0, dst),
            (SMOOTH, false, None) => bwd_rows::<T, SMOOTH, true, true>(g, &[], r0, c0, dst),
            (_, true, Some(x)) => bwd_rows::<T, PROB, false, false>(g, x, r0, c0, dst),
            (_, true, None) => bwd_rows::<T, PROB, false, true>(g, &[], r0, c0, dst),
            (_, false, Some(x)) => bwd_rows::<T, PROB, true, false>(g, x, r0, c0, dst),
            (_, false, None) => bwd_rows::<T, PROB, true, true>(g, &[], r0, c0, dst),
        }
    }
}

/// Gradient of whole rows from `r0` (`c0 = 0`, `dst` a multiple of C long), or of the column
/// block `[c0, c0 + dst.len())` of row `r0`. In place when `INPLACE` (then `x` is unused).
#[inline(always)]
fn bwd_rows<T: CeElement, const M: u8, const W: bool, const INPLACE: bool>(
    g: &BwdArgs<'_, T>,
    x: &[T],
    r0: usize,
    c0: usize,
    dst: &mut [T],
) {
    let job = g.job;
    let c = job.classes;
    let width = if c0 == 0 && dst.len() >= c {
        c
    } else {
        dst.len()
    };
    for (i, out) in dst.chunks_mut(width).enumerate() {
        let r = r0 + i;
        let base = r * c + c0;
        let n = out.len();
        let (gr, a, t) =
            row_grad_consts::<T, M>(job, r, g.up.of(g.grad_output, r), || g.asum_of(r));
        let t = t.filter(|&t| t >= c0 && t < c0 + n).map(|t| t - c0);
        let xt = t.map(|t| {
            if INPLACE {
                out[t].load()
            } else {
                x[base + t].load()
            }
        });
        let lse = g.lse_of(r);
        let w = if W { &job.w[c0..c0 + n] } else { &[] };
        let p = if M == PROB {
            &job.prob[base..base + n]
        } else {
            &[]
        };
        let ga = gr * a;
        // coef() gives w_c for smoothing (the forward scales the smooth sum by ls / C once).
        let gc = if M == SMOOTH { gr * job.add } else { gr };
        let f = |j: usize, v: T::Acc| {
            ga * T::exp_acc(v - lse) - gc * coef::<T, M, W>(w, p, j, job.keep, job.add)
        };
        if INPLACE {
            for (j, o) in out.iter_mut().enumerate() {
                *o = T::store(f(j, o.load()));
            }
        } else {
            let xs = &x[base..base + n];
            for (j, (o, v)) in out.iter_mut().zip(xs).enumerate() {
                *o = T::store(f(j, v.load()));
            }
        }
        if let (Some(t), Some(xt)) = (t, xt) {
            let wt = job.weight_of(t + c0);
            out[t] = T::store(f(t, xt) - gr * job.keep * wt);
        }
    }
}
