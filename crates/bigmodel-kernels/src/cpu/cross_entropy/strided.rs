//! Cross-entropy over `(N, C, d1, ..., dk)` logits, where a row's classes are `inner` apart.
//!
//! Reading a row along its stride would defeat SIMD, so the kernel vectorises across rows
//! instead: a tile is up to [`DB`] neighbouring positions `d` of one sample `n`, whose logits for
//! each class are contiguous. The forward makes two passes over a tile (the maximum, then the
//! sums relative to it); a tile is `C * DB` elements and is still in cache for the second pass.
//! The backward writes `g (A exp(x - lse) - a_c)` tile by tile and patches the target entries.
//!
//! Parallelism: the forward splits the rows (positions) into runs, since it only reads the
//! logits. The backward writes them, so its tasks own disjoint memory: whole samples `n` when
//! there are enough of them, otherwise each sample's positions are cut into segments and a task
//! owns that segment of each of the C class rows (built with `split_at_mut`, no raw pointers).

use super::*;

/// Positions per tile.
const DB: usize = 64;

pub(super) fn forward<T: CeElement>(
    job: &Job<'_, T>,
    mode: u8,
    x: &[T],
    lse: &mut [T::Acc],
    asum: &mut [T::Acc],
    loss: &mut [T],
) -> f64 {
    let per = (TASK_ELEMS / job.classes.max(1)).max(DB);
    run_all(split_rows(lse, asum, loss, per), |out| {
        fwd_task(job, mode, x, out)
    })
}

crate::dispatch_isa! {
    fn fwd_task<T: CeElement>(job: &Job<'_, T>, mode: u8, x: &[T], out: RowOut<'_, T>) -> f64 {
        match (mode, job.w.is_empty()) {
            (PLAIN, _) => fwd_run::<T, PLAIN, false>(job, x, out),
            (SMOOTH, true) => fwd_run::<T, SMOOTH, false>(job, x, out),
            (SMOOTH, false) => fwd_run::<T, SMOOTH, true>(job, x, out),
            (_, true) => fwd_run::<T, PROB, false>(job, x, out),
            (_, false) => fwd_run::<T, PROB, true>(job, x, out),
        }
    }
}

#[inline(always)]
fn fwd_run<T: CeElement, const M: u8, const W: bool>(
    job: &Job<'_, T>,
    x: &[T],
    out: RowOut<'_, T>,
) -> f64 {
    let d = job.inner;
    let end = out.r0 + out.lse.len();
    let mut r = out.r0;
    let mut sum = 0.0;
    while r < end {
        let (n, d0) = (r / d, r % d);
        let nl = DB.min(d - d0).min(end - r);
        let i = r - out.r0;
        sum += fwd_tile::<T, M, W>(
            job,
            x,
            n,
            d0,
            &mut out.lse[i..i + nl],
            if M == PROB {
                &mut out.asum[i..i + nl]
            } else {
                &mut []
            },
            if out.loss.is_empty() {
                &mut []
            } else {
                &mut out.loss[i..i + nl]
            },
        );
        r += nl;
    }
    sum
}

/// One tile: positions `d0 .. d0 + lse.len()` of sample `n`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_tile<T: CeElement, const M: u8, const W: bool>(
    job: &Job<'_, T>,
    x: &[T],
    n: usize,
    d0: usize,
    lse: &mut [T::Acc],
    asum_out: &mut [T::Acc],
    loss: &mut [T],
) -> f64 {
    let (c, d, nl) = (job.classes, job.inner, lse.len().min(DB));
    let zero = <T::Acc as Real>::ZERO;
    let base = n * c * d + d0;
    let mut m = [T::NEG_INF; DB];
    for ci in 0..c {
        let xs = &x[base + ci * d..base + ci * d + nl];
        for (ml, v) in m[..nl].iter_mut().zip(xs) {
            *ml = ml.max_nan(v.load());
        }
    }
    let (mut s, mut sa, mut asum) = ([zero; DB], [zero; DB], [zero; DB]);
    for ci in 0..c {
        let off = base + ci * d;
        let xs = &x[off..off + nl];
        let wc = if W {
            job.w[ci].load()
        } else {
            <T::Acc as Real>::ONE
        };
        if M == PLAIN {
            for l in 0..nl {
                s[l] = s[l] + T::exp_acc(xs[l].load() - m[l]);
            }
        } else {
            let ps = if M == PROB {
                &job.prob[off..off + nl]
            } else {
                &[]
            };
            for l in 0..nl {
                let v = xs[l].load() - m[l];
                let a = if M == PROB {
                    wc * (ps[l].load() * job.keep + job.add)
                } else {
                    wc
                };
                s[l] = s[l] + T::exp_acc(v);
                sa[l] = sa[l] + a * v;
                asum[l] = asum[l] + a;
            }
        }
    }
    let mut sum = 0.0;
    for l in 0..nl {
        let st = Stats {
            m: m[l],
            s: s[l],
            sa: sa[l],
            asum: asum[l],
        };
        let r = n * d + d0 + l;
        let target = if M == PROB {
            None
        } else {
            job.class(r).map(|t| (t, x[base + t * d + l].load()))
        };
        let (lo, e) = finalize::<T, M>(&st, job, target);
        lse[l] = e;
        if M == PROB {
            asum_out[l] = st.asum;
        }
        if let Some(o) = loss.get_mut(l) {
            *o = T::store(lo);
        }
        sum += lo.to_f64();
    }
    sum
}

/// The memory a backward task owns.
enum Dst<'a, T> {
    /// Whole samples: `count * C * D` elements.
    Slab(&'a mut [T]),
    /// One segment of positions of one sample: one piece per class.
    Pieces(Vec<&'a mut [T]>),
}

impl<T> Dst<'_, T> {
    /// The `nl` outputs of class `ci` of relative sample `nn`, from position `off` of the task.
    #[inline(always)]
    fn row(&mut self, nn: usize, ci: usize, c: usize, d: usize, off: usize, nl: usize) -> &mut [T] {
        match self {
            Dst::Slab(s) => {
                let b = (nn * c + ci) * d + off;
                &mut s[b..b + nl]
            }
            Dst::Pieces(p) => &mut p[ci][off..off + nl],
        }
    }
}

/// A backward task: samples `n0 .. n0 + count`, positions `d0 .. d1` of each.
struct Task<'a, T> {
    n0: usize,
    count: usize,
    d0: usize,
    d1: usize,
    dst: Dst<'a, T>,
}

pub(super) fn backward<T: CeElement>(g: &BwdArgs<'_, T>, x: Option<&[T]>, dst: &mut [T]) {
    let (c, d) = (g.job.classes, g.job.inner);
    if c == 0 || d == 0 || dst.is_empty() {
        return;
    }
    let slab = c * d;
    let outer = dst.len() / slab;
    let mut tasks = Vec::new();
    // Short calls run outside the pool (see `CeParams::is_serial`) and never consult it.
    let whole = d <= DB || dst.len() < TASK_ELEMS || {
        let threads = rayon::current_num_threads();
        outer >= 2 * threads || threads == 1
    };
    if whole {
        let per = (TASK_ELEMS / slab).max(1);
        for (i, chunk) in dst.chunks_mut(per * slab).enumerate() {
            tasks.push(Task {
                n0: i * per,
                count: chunk.len() / slab,
                d0: 0,
                d1: d,
                dst: Dst::Slab(chunk),
            });
        }
    } else {
        let nseg = (4 * rayon::current_num_threads()).min(d.div_ceil(DB));
        let seg = d.div_ceil(nseg).div_ceil(DB) * DB;
        let nseg = d.div_ceil(seg);
        for (n, sample) in dst.chunks_mut(slab).enumerate() {
            let mut per_seg: Vec<Vec<&mut [T]>> =
                (0..nseg).map(|_| Vec::with_capacity(c)).collect();
            for mut row in sample.chunks_mut(d) {
                for pieces in per_seg.iter_mut() {
                    pieces.push(take(&mut row, seg));
                }
            }
            for (s, pieces) in per_seg.into_iter().enumerate() {
                tasks.push(Task {
                    n0: n,
                    count: 1,
                    d0: s * seg,
                    d1: ((s + 1) * seg).min(d),
                    dst: Dst::Pieces(pieces),
                });
            }
        }
    }
    run_all(tasks, |mut t| {
        bwd_task(g, x, &mut t);
        0.0
    });
}

crate::dispatch_isa! {
    fn bwd_task<T: CeElement>(g: &BwdArgs<'_, T>, x: Option<&[T]>, t: &mut Task<'_, T>) {
        match (g.mode, g.job.w.is_empty(), x) {
            (PLAIN, _, Some(x)) => bwd_run::<T, PLAIN, false, false>(g, x, t),
            (PLAIN, _, None) => bwd_run::<T, PLAIN, false, true>(g, &[], t),
            (SMOOTH, true, Some(x)) => bwd_run::<T, SMOOTH, false, false>(g, x, t),
            (SMOOTH, true, None) => bwd_run::<T, SMOOTH, false, true>(g, &[], t),
            (SMOOTH, false, Some(x)) => bwd_run::<T, SMOOTH, true, false>(g, x, t),
            (SMOOTH, false, None) => bwd_run::<T, SMOOTH, true, true>(g, &[], t),
            (_, true, Some(x)) => bwd_run::<T, PROB, false, false>(g, x, t),
            (_, true, None) => bwd_run::<T, PROB, false, true>(g, &[], t),
            (_, false, Some(x)) => bwd_run::<T, PROB, true, false>(g, x, t),
            (_, false, None) => bwd_run::<T, PROB, true, true>(g, &[], t),
        }
    }
}

#[inline(always)]
fn bwd_run<T: CeElement, const M: u8, const W: bool, const INPLACE: bool>(
    g: &BwdArgs<'_, T>,
    x: &[T],
    t: &mut Task<'_, T>,
) {
    let job = g.job;
    let (c, d) = (job.classes, job.inner);
    let zero = <T::Acc as Real>::ZERO;
    for nn in 0..t.count {
        let n = t.n0 + nn;
        let mut p0 = t.d0;
        while p0 < t.d1 {
            let nl = DB.min(t.d1 - p0);
            let off = p0 - t.d0;
            // Per-lane constants: g A, the coefficient scale, the target and its logit.
            let (mut ga, mut gc, mut gr) = ([zero; DB], [zero; DB], [zero; DB]);
            let mut lse = [zero; DB];
            let mut tgt = [None; DB];
            for l in 0..nl {
                let r = n * d + p0 + l;
                let (g_r, a, tc) =
                    row_grad_consts::<T, M>(job, r, g.up.of(g.grad_output, r), || g.asum_of(r));
                ga[l] = g_r * a;
                gc[l] = if M == SMOOTH { g_r * job.add } else { g_r };
                gr[l] = g_r;
                lse[l] = g.lse_of(r);
                tgt[l] = tc.map(|tc| {
                    let xt = if INPLACE {
                        t.dst.row(nn, tc, c, d, off + l, 1)[0].load()
                    } else {
                        x[(n * c + tc) * d + p0 + l].load()
                    };
                    (tc, xt)
                });
            }
            for ci in 0..c {
                let src = (n * c + ci) * d + p0;
                let wc = if W {
                    job.w[ci].load()
                } else {
                    <T::Acc as Real>::ONE
                };
                let ps = if M == PROB {
                    &job.prob[src..src + nl]
                } else {
                    &[]
                };
                let out = t.dst.row(nn, ci, c, d, off, nl);
                let xs = if INPLACE { &[] } else { &x[src..src + nl] };
                for l in 0..nl {
                    let v = if INPLACE { out[l].load() } else { xs[l].load() };
                    let a = match M {
                        PROB => wc * (ps[l].load() * job.keep + job.add),
                        SMOOTH => wc,
                        _ => zero,
                    };
                    out[l] = T::store(ga[l] * T::exp_acc(v - lse[l]) - gc[l] * a);
                }
            }
            for l in 0..nl {
                if let Some((tc, xt)) = tgt[l] {
                    let wt = job.weight_of(tc);
                    let a = if M == SMOOTH { wt } else { zero };
                    let v = ga[l] * T::exp_acc(xt - lse[l]) - gc[l] * a - gr[l] * job.keep * wt;
                    t.dst.row(nn, tc, c, d, off + l, 1)[0] = T::store(v);
                }
            }
            p0 += nl;
        }
    }
}
