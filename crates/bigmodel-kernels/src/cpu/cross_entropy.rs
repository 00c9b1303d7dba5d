//! Fused softmax cross-entropy: `torch.nn.functional.cross_entropy`'s forward and backward.
//!
//! Logits have the layout `(outer, classes, inner)`: `(N, C)` is `inner = 1`, `(C,)` is
//! `outer = inner = 1`, `(N, C, d1, ..., dk)` is `inner = d1 * ... * dk`. A *row* is one
//! `(n, d)` position, `rows = outer * inner`. Every loss torch defines is, per row,
//!
//! ```text
//! loss_r = sum_c a_c (lse_r - x_c),       lse_r = log sum_c exp(x_c)
//! grad_c = g_r (A_r softmax_c - a_c),     A_r = sum_c a_c
//! ```
//!
//! with the coefficients `a_c` of the three modes:
//! - plain class index `t`: `a_c = w_t [c = t]` (torch's `nll_loss(log_softmax(x))`);
//! - class index with label smoothing `ls`: `a_c = (1 - ls) w_t [c = t] + ls / C * w_c`
//!   (torch's `(1 - ls) * nll + ls / C * smooth`, both normalised by the same total weight);
//! - class probabilities `p`: `a_c = w_c ((1 - ls) p_c + ls / C)`.
//!
//! `w` is the class weight (1 without one). Rows whose target is `ignore_index` add nothing to
//! the loss and get the gradient `0 * softmax`, which, as in torch, is 0 unless the row holds a
//! NaN or +inf. `mean` divides by the total weight `sum_r w_{t_r}` over rows not ignored (plain
//! and smoothing) or by the row count (probabilities); `g_r` is the upstream gradient divided
//! by that total for `mean`.
//!
//! **Forward**, one pass over the logits: each row is read in blocks of [`BLOCK`] elements; the
//! block's maximum (from L1) moves the running maximum `m`, rescaling the running
//! `s = sum exp(x - m)` and `sa = sum a_c (x_c - m)`, then the block adds its terms. The loss is
//! `A log s - sa` (`w_t (m + log s - x_t)` in plain mode); only `lse = m + log s` per row (and
//! `A` per row for probabilities) is kept for the backward, never a softmax.
//!
//! **Backward**, one pass writing `g (A exp(x - lse) - a_c)`, with the class-index term patched
//! at the target afterwards; in place over the logits when asked.
//!
//! **Parallelism**: rows are spread over the pool in tasks of at least [`TASK_ELEMS`] elements;
//! when there are fewer rows than twice the threads and a row is long, each row's columns are
//! split into blocks instead and the blocks' (max, sums) merged. The `(N, C, d...)` layout goes
//! to [`strided`], which vectorises across the contiguous `d` positions.
//!
//! **SIMD**: the loops are instantiated per instruction set ([`crate::isa`]) with a branch-free
//! exp and multi-accumulator sums ([`math`]); the mode and the presence of a weight are const
//! generics so that each variant stays branch-free. Arithmetic is in `T::Acc` (f32 for
//! bf16/f16). Targets are validated before any work: an index outside `[0, C)` that is not
//! `ignore_index` is an [`Error::Index`] and nothing is read at it.

pub mod math;
mod rows;
mod strided;
mod target;
#[cfg(test)]
mod tests;

use crate::element::Real;
use crate::error::{Error, Result};
use math::CeElement;
use rayon::prelude::*;
pub use target::{target_backward, weight_backward};

/// Elements of a row read per step of the online maximum (16 KB of f32: stays in L1).
pub const BLOCK: usize = 4096;
/// Least number of logits per parallel task.
pub const TASK_ELEMS: usize = 1 << 15;
/// Least number of columns per block when a row is split across threads.
pub const COL_BLOCK: usize = 1 << 14;

/// torch's reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    None,
    Mean,
    Sum,
}

/// The targets: class indices (one per row) or class probabilities (shaped like the logits).
#[derive(Clone, Copy)]
pub enum Target<'a, T> {
    Index(&'a [i64]),
    Prob(&'a [T]),
}

/// Shapes and options of one call.
#[derive(Clone, Copy, Debug)]
pub struct CeParams {
    pub outer: usize,
    pub classes: usize,
    pub inner: usize,
    pub ignore_index: i64,
    /// Applied when > 0 (torch ignores a negative value); must be <= 1.
    pub label_smoothing: f64,
    pub reduction: Reduction,
}

impl CeParams {
    /// Whether the call is short enough to run on the calling thread: below [`TASK_ELEMS`]
    /// logits every path makes one task and never touches the pool, whose wake-up would cost
    /// more than the work. Bindings then skip `pool::install`.
    pub fn is_serial(&self) -> bool {
        self.numel().is_ok_and(|n| n < TASK_ELEMS)
    }

    fn rows(&self) -> Result<usize> {
        self.outer
            .checked_mul(self.inner)
            .ok_or_else(|| Error::Shape("cross_entropy: shape overflows".into()))
    }

    fn numel(&self) -> Result<usize> {
        self.rows()?
            .checked_mul(self.classes)
            .ok_or_else(|| Error::Shape("cross_entropy: shape overflows".into()))
    }

    fn smoothing(&self) -> Result<f64> {
        if self.label_smoothing > 1.0 {
            return Err(Error::Value(format!(
                "label_smoothing must be between 0.0 and 1.0. Got: {}",
                self.label_smoothing
            )));
        }
        Ok(if self.label_smoothing > 0.0 {
            self.label_smoothing
        } else {
            0.0
        })
    }
}

/// Buffers of the forward. `loss` has one element per row with `Reduction::None`, else one.
pub struct Forward<'a, T: CeElement> {
    pub input: &'a [T],
    pub target: Target<'a, T>,
    pub weight: Option<&'a [T]>,
    pub loss: &'a mut [T],
    /// Per-row log-sum-exp, saved for the backward.
    pub lse: &'a mut [T::Acc],
    /// Per-row `A` (probability targets only; empty otherwise).
    pub asum: &'a mut [T::Acc],
    /// One element: the divisor of `mean`.
    pub total_weight: &'a mut [T::Acc],
}

/// Buffers of the backward. Without `input`, `grad_input` holds the logits on entry and is
/// overwritten by their gradient (the in-place mode).
pub struct Backward<'a, T: CeElement> {
    pub grad_output: &'a [T],
    pub input: Option<&'a [T]>,
    pub grad_input: &'a mut [T],
    pub target: Target<'a, T>,
    pub weight: Option<&'a [T]>,
    pub lse: &'a [T::Acc],
    pub asum: &'a [T::Acc],
    pub total_weight: &'a [T::Acc],
}

pub(crate) const PLAIN: u8 = 0;
pub(crate) const SMOOTH: u8 = 1;
pub(crate) const PROB: u8 = 2;

/// Everything a row needs besides its own data.
pub(crate) struct Job<'a, T: CeElement> {
    pub classes: usize,
    pub inner: usize,
    pub idx: &'a [i64],
    pub prob: &'a [T],
    /// Empty when there is no weight.
    pub w: &'a [T],
    pub ignore: i64,
    /// `1 - ls` and `ls / C`.
    pub keep: T::Acc,
    pub add: T::Acc,
    /// `sum_c w_c` (C without weight): `A` of a smoothed row is `keep * w_t + add * wsum`.
    pub wsum: T::Acc,
}

impl<T: CeElement> Job<'_, T> {
    /// The target class of row `r`, or None if ignored (validated before any kernel runs).
    #[inline(always)]
    pub fn class(&self, r: usize) -> Option<usize> {
        let t = self.idx[r];
        (t != self.ignore).then_some(t as usize)
    }

    #[inline(always)]
    pub fn weight_of(&self, c: usize) -> T::Acc {
        if self.w.is_empty() {
            <T::Acc as Real>::ONE
        } else {
            self.w[c].load()
        }
    }
}

/// The coefficient `a` of one element: `w` and `p` are the weight and probability slices at
/// the element's class and position (each empty when absent).
#[inline(always)]
pub(crate) fn coef<T: CeElement, const M: u8, const W: bool>(
    w: &[T],
    p: &[T],
    j: usize,
    keep: T::Acc,
    add: T::Acc,
) -> T::Acc {
    let w = if W {
        w[j].load()
    } else {
        <T::Acc as Real>::ONE
    };
    match M {
        PROB => w * (p[j].load() * keep + add),
        SMOOTH => w,
        _ => <T::Acc as Real>::ZERO,
    }
}

/// Running (max, sums) of a row or part of one. While `m` is -inf (nothing finite seen) the
/// sums are kept relative to 0 instead, so that -inf - -inf never appears.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stats<A> {
    pub m: A,
    pub s: A,
    pub sa: A,
    pub asum: A,
}

impl<A: Real> Stats<A> {
    #[inline(always)]
    pub fn empty<T: CeElement<Acc = A>>() -> Self {
        Stats {
            m: T::NEG_INF,
            s: A::ZERO,
            sa: A::ZERO,
            asum: A::ZERO,
        }
    }

    /// The reference point the sums are relative to.
    #[inline(always)]
    pub fn reference<T: CeElement<Acc = A>>(&self) -> A {
        if self.m == T::NEG_INF {
            A::ZERO
        } else {
            self.m
        }
    }

    /// Moves the reference to `new` (a larger maximum, or NaN).
    #[inline(always)]
    pub fn rebase<T: CeElement<Acc = A>>(&mut self, new: A) {
        let old = self.reference::<T>();
        if self.m != T::NEG_INF {
            self.s = self.s * T::exp_acc(old - new);
        }
        self.sa = self.sa + (old - new) * self.asum;
        self.m = new;
    }

    pub fn merge<T: CeElement<Acc = A>>(mut self, mut other: Self) -> Self {
        let m = self.m.max_nan(other.m);
        for st in [&mut self, &mut other] {
            if !(st.m == m) {
                st.rebase::<T>(m);
            }
        }
        Stats {
            m,
            s: self.s + other.s,
            sa: self.sa + other.sa,
            asum: self.asum + other.asum,
        }
    }
}

/// (max, sums) of `x`, a contiguous part of a row; `w` / `p` are aligned with it.
#[inline(always)]
pub(crate) fn seg_stats<T: CeElement, const M: u8, const W: bool>(
    x: &[T],
    w: &[T],
    p: &[T],
    keep: T::Acc,
    add: T::Acc,
) -> Stats<T::Acc> {
    let mut st = Stats::empty::<T>();
    let mut off = 0;
    while off < x.len() {
        let end = (off + BLOCK).min(x.len());
        let xb = &x[off..end];
        let bm = math::max(xb);
        if bm > st.m || bm.partial_cmp(&bm).is_none() {
            st.rebase::<T>(bm);
        }
        let r = st.reference::<T>();
        if M == PLAIN {
            st.s = st.s + math::sum_exp(xb, r);
        } else {
            let wb = if W { &w[off..end] } else { w };
            let pb = if M == PROB { &p[off..end] } else { p };
            let (s, sa, asum) =
                math::sum_exp_weighted(xb, r, |j| coef::<T, M, W>(wb, pb, j, keep, add));
            st.s = st.s + s;
            st.sa = st.sa + sa;
            st.asum = st.asum + asum;
        }
        off = end;
    }
    st
}

/// A row's loss, its lse and its `A`, from its stats. `xt` is the target logit (index modes).
#[inline(always)]
pub(crate) fn finalize<T: CeElement, const M: u8>(
    st: &Stats<T::Acc>,
    job: &Job<'_, T>,
    target: Option<(usize, T::Acc)>,
) -> (T::Acc, T::Acc) {
    let zero = <T::Acc as Real>::ZERO;
    let ln_s = T::ln_acc(st.s);
    let lse = st.m + ln_s;
    let loss = match (M, target) {
        (PROB, _) if job.classes == 0 => zero,
        (PROB, _) => st.asum * ln_s - st.sa,
        (_, None) => zero,
        (PLAIN, Some((t, xt))) => job.weight_of(t) * (lse - xt),
        (_, Some((t, xt))) => {
            job.keep * job.weight_of(t) * (lse - xt) + job.add * (st.asum * ln_s - st.sa)
        }
    };
    (loss, lse)
}

/// Splits the first `n` elements off `s`.
pub(crate) fn take<'a, X>(s: &mut &'a mut [X], n: usize) -> &'a mut [X] {
    let n = n.min(s.len());
    let (a, b) = std::mem::take(s).split_at_mut(n);
    *s = b;
    a
}

/// Per-row outputs of a run of rows starting at `r0`; `loss` and `asum` may be empty.
pub(crate) struct RowOut<'a, T: CeElement> {
    pub r0: usize,
    pub lse: &'a mut [T::Acc],
    pub asum: &'a mut [T::Acc],
    pub loss: &'a mut [T],
}

impl<T: CeElement> RowOut<'_, T> {
    /// Stores row `r0 + i`'s log-sum-exp, its `A` (probability targets) and its loss (where
    /// kept per row); returns the loss, for the sum.
    #[inline(always)]
    pub fn put<const M: u8>(
        &mut self,
        i: usize,
        st: &Stats<T::Acc>,
        loss: T::Acc,
        lse: T::Acc,
    ) -> f64 {
        self.lse[i] = lse;
        if M == PROB {
            self.asum[i] = st.asum;
        }
        if let Some(l) = self.loss.get_mut(i) {
            *l = T::store(loss);
        }
        loss.to_f64()
    }
}

/// Splits the per-row outputs into runs of `per` rows.
pub(crate) fn split_rows<'a, T: CeElement>(
    mut lse: &'a mut [T::Acc],
    mut asum: &'a mut [T::Acc],
    mut loss: &'a mut [T],
    per: usize,
) -> Vec<RowOut<'a, T>> {
    let rows = lse.len();
    let mut out = Vec::with_capacity(rows.div_ceil(per.max(1)));
    let mut r0 = 0;
    while r0 < rows {
        let n = per.min(rows - r0);
        out.push(RowOut {
            r0,
            lse: take(&mut lse, n),
            asum: take(&mut asum, n),
            loss: take(&mut loss, n),
        });
        r0 += n;
    }
    out
}

/// Validates class targets and returns the total weight of the rows not ignored.
fn check_targets<T: CeElement>(job: &Job<'_, T>) -> Result<f64> {
    let mut total = 0.0f64;
    for &t in job.idx {
        if t == job.ignore {
            continue;
        }
        if t < 0 || t as u64 >= job.classes as u64 {
            return Err(Error::Index(format!("Target {t} is out of bounds.")));
        }
        total += job.weight_of(t as usize).to_f64();
    }
    Ok(total)
}

/// The shared set-up of forward and backward: shape checks, target validation, constants.
fn prepare<'a, T: CeElement>(
    p: &CeParams,
    input_len: usize,
    target: Target<'a, T>,
    weight: Option<&'a [T]>,
) -> Result<(Job<'a, T>, u8, f64)> {
    let (rows, numel, ls) = (p.rows()?, p.numel()?, p.smoothing()?);
    if input_len != numel {
        return Err(Error::Shape(format!(
            "cross_entropy: input has {input_len} elements, expected {numel}"
        )));
    }
    if weight.is_some_and(|w| w.len() != p.classes) {
        return Err(Error::Shape(format!(
            "cross_entropy: weight must have {} elements",
            p.classes
        )));
    }
    let (idx, prob, mode): (&[i64], &[T], u8) = match target {
        Target::Index(t) if t.len() == rows => (t, &[], if ls > 0.0 { SMOOTH } else { PLAIN }),
        Target::Prob(t) if t.len() == numel => (&[], t, PROB),
        _ => {
            return Err(Error::Shape(
                "cross_entropy: target does not match the input's shape".into(),
            ))
        }
    };
    let w = weight.unwrap_or(&[]);
    let wsum = if w.is_empty() {
        p.classes as f64
    } else {
        w.iter().map(|v| v.load().to_f64()).sum()
    };
    let job = Job {
        classes: p.classes,
        inner: p.inner,
        idx,
        prob,
        w,
        ignore: p.ignore_index,
        keep: T::Acc::from_f64(1.0 - ls),
        add: T::Acc::from_f64(if p.classes > 0 {
            ls / p.classes as f64
        } else {
            0.0
        }),
        wsum: T::Acc::from_f64(wsum),
    };
    // torch's mean over probability targets divides by the row count, and is NaN when the
    // input has no elements at all (even with rows, as C = 0).
    let total = if mode == PROB {
        if numel == 0 {
            0.0
        } else {
            rows as f64
        }
    } else {
        check_targets(&job)?
    };
    Ok((job, mode, total))
}

/// Forward: fills `loss`, `lse`, `asum` and `total_weight`.
pub fn forward<T: CeElement>(p: &CeParams, f: Forward<'_, T>) -> Result<()> {
    forward_impl(p, f, None)
}

/// Forward that also writes the gradient of the logits for an upstream gradient of 1 (per row
/// with reduction "none"), as the backward would; the caller scales it by the real upstream
/// gradient when that is not 1.
///
/// Training computes the loss only to differentiate it, so the gradient can be written while
/// each run of rows is still in cache from the forward's read: the logits then cross the
/// memory bus once instead of twice. Runs of rows are fused in the `(N, C)` layout; the other
/// layouts, and few very long rows split across threads, run the forward and then the backward.
pub fn forward_grad<T: CeElement>(p: &CeParams, f: Forward<'_, T>, grad: &mut [T]) -> Result<()> {
    if grad.len() != f.input.len() {
        return Err(Error::Shape(
            "cross_entropy: the gradient buffer must have the input's size".into(),
        ));
    }
    forward_impl(p, f, Some(grad))
}

fn forward_impl<T: CeElement>(
    p: &CeParams,
    f: Forward<'_, T>,
    grad: Option<&mut [T]>,
) -> Result<()> {
    let rows = p.rows()?;
    let (job, mode, total) = prepare(p, f.input.len(), f.target, f.weight)?;
    let per_row = p.reduction == Reduction::None;
    if f.lse.len() != rows
        || f.asum.len() != if mode == PROB { rows } else { 0 }
        || f.loss.len() != if per_row { rows } else { 1 }
        || f.total_weight.len() != 1
    {
        return Err(Error::Shape(
            "cross_entropy: output buffers have the wrong sizes".into(),
        ));
    }
    let loss_rows: &mut [T] = if per_row { &mut *f.loss } else { &mut [] };
    // The gradient of an upstream 1: `1 / total` for mean (known before any row: `prepare`
    // summed the target weights), 1 for sum and for each row of "none".
    let up = Upstream {
        per_row: false,
        scale: if p.reduction == Reduction::Mean {
            <T::Acc as Real>::ONE / T::Acc::from_f64(total)
        } else {
            <T::Acc as Real>::ONE
        },
    };
    let (x, lse, asum) = (f.input, &mut *f.lse, &mut *f.asum);
    let sum = match grad {
        Some(grad) if p.inner == 1 && rows::fusable(&job, rows) => {
            crate::memory::advise_huge_pages(&mut *grad);
            rows::forward_grad(&job, mode, &up, x, lse, asum, loss_rows, grad)
        }
        Some(grad) => {
            crate::memory::advise_huge_pages(&mut *grad);
            let sum = forward_layout(p, &job, mode, x, lse, asum, loss_rows);
            let g = BwdArgs {
                job: &job,
                mode,
                up: &up,
                grad_output: &[],
                lse,
                asum,
                r_base: 0,
            };
            backward_layout(p, &g, Some(x), grad);
            sum
        }
        None => forward_layout(p, &job, mode, x, lse, asum, loss_rows),
    };
    f.total_weight[0] = T::Acc::from_f64(total);
    match p.reduction {
        Reduction::None => {}
        Reduction::Sum => f.loss[0] = T::store(T::Acc::from_f64(sum)),
        Reduction::Mean => f.loss[0] = T::store(T::Acc::from_f64(sum / total)),
    }
    Ok(())
}

/// The forward of the `(N, C)` layout ([`rows`]) or of the `(N, C, d...)` one ([`strided`]).
fn forward_layout<T: CeElement>(
    p: &CeParams,
    job: &Job<'_, T>,
    mode: u8,
    x: &[T],
    lse: &mut [T::Acc],
    asum: &mut [T::Acc],
    loss: &mut [T],
) -> f64 {
    if p.inner == 1 {
        rows::forward(job, mode, x, lse, asum, loss)
    } else {
        strided::forward(job, mode, x, lse, asum, loss)
    }
}

/// The backward of either layout, as [`forward_layout`].
fn backward_layout<T: CeElement>(p: &CeParams, g: &BwdArgs<'_, T>, x: Option<&[T]>, dst: &mut [T]) {
    if p.inner == 1 {
        rows::backward(g, x, dst);
    } else {
        strided::backward(g, x, dst);
    }
}

/// Runs `work` over the items, in parallel unless there is only one.
pub(crate) fn run_all<I: Send, F: Fn(I) -> f64 + Sync + Send>(items: Vec<I>, work: F) -> f64 {
    if items.len() == 1 {
        return items.into_iter().map(work).sum();
    }
    let parts: Vec<f64> = items.into_par_iter().map(work).collect();
    parts.into_iter().sum()
}

/// The per-row constants of the backward: `(g, A, target)` with `g` already divided for mean.
#[inline(always)]
pub(crate) fn row_grad_consts<T: CeElement, const M: u8>(
    job: &Job<'_, T>,
    r: usize,
    g: T::Acc,
    asum: impl FnOnce() -> T::Acc,
) -> (T::Acc, T::Acc, Option<usize>) {
    let zero = <T::Acc as Real>::ZERO;
    if M == PROB {
        return (g, asum(), None);
    }
    match job.class(r) {
        // Ignored: the gradient is 0 * softmax, NaN where the row's softmax is.
        None => (zero, zero, None),
        Some(t) => {
            let wt = job.weight_of(t);
            let a = if M == SMOOTH {
                job.keep * wt + job.add * job.wsum
            } else {
                wt
            };
            (g, a, Some(t))
        }
    }
}

/// The upstream gradient of row `r`.
pub(crate) struct Upstream<A> {
    pub per_row: bool,
    pub scale: A,
}

impl<A: Real> Upstream<A> {
    /// From the loss's gradient (one per row with reduction "none", else one) and the "mean"
    /// divisor; the sizes are the caller's to check.
    pub fn new<T: CeElement<Acc = A>>(
        reduction: Reduction,
        grad_output: &[T],
        total_weight: &[A],
    ) -> Self {
        Upstream {
            per_row: reduction == Reduction::None,
            scale: match reduction {
                Reduction::None => A::ZERO,
                Reduction::Sum => grad_output[0].load(),
                Reduction::Mean => grad_output[0].load() / total_weight[0],
            },
        }
    }

    #[inline(always)]
    pub fn of<T: CeElement<Acc = A>>(&self, grad_output: &[T], r: usize) -> A {
        if self.per_row {
            grad_output[r].load()
        } else {
            self.scale
        }
    }
}

/// Backward: writes the gradient of the logits into `grad_input`.
pub fn backward<T: CeElement>(p: &CeParams, b: Backward<'_, T>) -> Result<()> {
    let rows = p.rows()?;
    let (job, mode, _) = prepare(p, b.grad_input.len(), b.target, b.weight)?;
    let per_row = p.reduction == Reduction::None;
    if b.input.is_some_and(|x| x.len() != b.grad_input.len())
        || b.lse.len() != rows
        || b.asum.len() != if mode == PROB { rows } else { 0 }
        || b.grad_output.len() != if per_row { rows } else { 1 }
        || b.total_weight.len() != 1
    {
        return Err(Error::Shape(
            "cross_entropy_backward: buffers have the wrong sizes".into(),
        ));
    }
    let up = Upstream::new(p.reduction, b.grad_output, b.total_weight);
    let g = BwdArgs {
        job: &job,
        mode,
        up: &up,
        grad_output: b.grad_output,
        lse: b.lse,
        asum: b.asum,
        r_base: 0,
    };
    if b.input.is_some() {
        // A separate gradient buffer is usually freshly allocated: fault it in as huge pages.
        crate::memory::advise_huge_pages(&mut *b.grad_input);
    }
    backward_layout(p, &g, b.input, b.grad_input);
    Ok(())
}

/// What every backward task reads.
pub(crate) struct BwdArgs<'a, T: CeElement> {
    pub job: &'a Job<'a, T>,
    pub mode: u8,
    pub up: &'a Upstream<T::Acc>,
    pub grad_output: &'a [T],
    /// Per-row statistics of rows `r_base..`: all rows (`r_base = 0`) in a backward, the task's
    /// own rows when the forward writes the gradient.
    pub lse: &'a [T::Acc],
    pub asum: &'a [T::Acc],
    pub r_base: usize,
}

impl<T: CeElement> BwdArgs<'_, T> {
    #[inline(always)]
    pub fn lse_of(&self, r: usize) -> T::Acc {
        self.lse[r - self.r_base]
    }

    /// `A` of row `r` (probability targets).
    #[inline(always)]
    pub fn asum_of(&self, r: usize) -> T::Acc {
        self.asum[r - self.r_base]
    }
}
