//! FlashAttention-2 backward: recomputes the probabilities tile by tile from the saved
//! log-sum-exp, never holding an L x S matrix.
//!
//! `Delta_i = rowsum(dO_i * O_i)` first (one pass over the output). Then one rayon task per
//! (batch, key/value head, chunk of keys) owns the dK/dV rows of its chunk; for each key tile it
//! walks every query head of its group and every query tile that can see the tile (causal:
//! the rows from the key tile's first one on) and accumulates, with `P = 2^(S - lse log2 e)`:
//! `dV += dropout(P)^T dO`, `dP = dropout'(dO V^T)`, `dS = P (dP - Delta)`,
//! `dK += scale dS^T Q` in the task's buffers and `dQ += scale dS K` in the task's own fp32/fp64
//! dQ partial (one per query head of the group, O(L D) each). The partials of a head's chunks
//! are summed in a final parallel pass; with one chunk per head (the usual case when there are
//! more heads than threads) that sum is a single conversion.

use super::tile::{fix_scores, matmul, view, Acc, AttnElement, TileFix, LOG2E};
use super::Plan;
use crate::dispatch_isa;
use crate::element::{Element, Real};
use rayon::prelude::*;

/// Gradients of q, k, v: `dq` like q, `dk` like k, `dv` like v (kv heads already grouped), and
/// optionally of the scores, `(B * Hq, L, S)` in the arithmetic type: the gradient of an additive
/// mask before it is summed over the mask's broadcast dimensions.
pub(super) struct Grads<'a, T: Element> {
    pub dq: &'a mut [T],
    pub dk: &'a mut [T],
    pub dv: &'a mut [T],
    pub scores: Option<&'a mut [T::Acc]>,
}

/// The scores' gradient, written tile by tile by the key-chunk tasks through a shared pointer.
struct ScoreSink<R> {
    ptr: *mut R,
    len: usize,
    len_q: usize,
    len_kv: usize,
}

// SAFETY: the sink is only written through `write`, whose callers write disjoint elements (see
// there); R itself is a plain float.
unsafe impl<R: Send> Send for ScoreSink<R> {}
// SAFETY: as above.
unsafe impl<R: Send> Sync for ScoreSink<R> {}

impl<R: Copy> ScoreSink<R> {
    /// Stores the `rows x cols` tile (row stride `rs`) at rows `row0..`, columns `col0..` of
    /// query head `bh`.
    ///
    /// # Safety
    /// No other thread may access those elements meanwhile. The key-chunk tasks guarantee it:
    /// element (bh, i, j) belongs to the one task that owns key j of bh's kv head, and that task
    /// visits each (bh, query tile) once.
    unsafe fn write(
        &self,
        bh: usize,
        row0: usize,
        col0: usize,
        tile: (usize, usize, usize),
        src: &[R],
    ) {
        let (rows, cols, rs) = tile;
        for r in 0..rows {
            let start = (bh * self.len_q + row0 + r) * self.len_kv + col0;
            assert!(start + cols <= self.len && r * rs + cols <= src.len());
            // SAFETY: in bounds (asserted); exclusive by this function's contract.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), cols) };
            dst.copy_from_slice(&src[r * rs..r * rs + cols]);
        }
    }
}

/// The forward's inputs and results that the backward reads.
pub(super) struct Saved<'a, T: Element> {
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    pub out: &'a [T],
    pub lse: &'a [T::Acc],
    pub grad_out: &'a [T],
}

pub(super) fn run<T: AttnElement>(plan: &Plan<'_, T::Acc>, x: &Saved<'_, T>, mut g: Grads<'_, T>) {
    let sh = plan.shape;
    // Entries no tile reaches (causal tiles skipped, empty sequences) have a zero gradient.
    if let Some(s) = g.scores.as_deref_mut() {
        s.fill(T::Acc::ZERO);
    }
    if sh.batch * sh.heads_kv == 0 {
        return;
    }
    let (d, dv, lq) = (sh.dim_qk, sh.dim_v, sh.len_q);
    if lq == 0 || sh.len_kv == 0 {
        // No query sees a key: every gradient is zero.
        g.dq.iter_mut().for_each(|x| *x = T::store(T::Acc::ZERO));
        g.dk.iter_mut().for_each(|x| *x = T::store(T::Acc::ZERO));
        g.dv.iter_mut().for_each(|x| *x = T::store(T::Acc::ZERO));
        return;
    }
    let mut delta = vec![T::Acc::ZERO; sh.batch * sh.heads_q * lq];
    delta.par_chunks_mut(lq).enumerate().for_each(|(bh, dl)| {
        for (r, out) in dl.iter_mut().enumerate() {
            let off = (bh * lq + r) * dv;
            *out = x.out[off..off + dv]
                .iter()
                .zip(&x.grad_out[off..off + dv])
                .fold(T::Acc::ZERO, |a, (&o, &go)| a + o.load() * go.load());
        }
    });

    // Enough tasks to keep every thread busy even with few heads.
    let tiles = sh.len_kv.div_ceil(plan.block_kv);
    let want = (2 * rayon::current_num_threads()).div_ceil(sh.batch * sh.heads_kv);
    let chunks = want.clamp(1, tiles);
    let chunk_rows = tiles.div_ceil(chunks) * plan.block_kv;
    let chunks = sh.len_kv.div_ceil(chunk_rows);
    let delta = &delta;
    let sink = g.scores.map(|s| ScoreSink {
        ptr: s.as_mut_ptr(),
        len: s.len(),
        len_q: lq,
        len_kv: sh.len_kv,
    });
    let sink = sink.as_ref();
    let partials: Vec<Vec<T::Acc>> =
        g.dk.par_chunks_mut(sh.len_kv * d)
            .zip(g.dv.par_chunks_mut(sh.len_kv * dv))
            .enumerate()
            .flat_map(|(bhk, (dk_head, dv_head))| {
                dk_head
                    .par_chunks_mut(chunk_rows * d)
                    .zip(dv_head.par_chunks_mut(chunk_rows * dv))
                    .enumerate()
                    .map(move |(c, (dk_c, dv_c))| {
                        key_chunk(plan, x, delta, sink, bhk, c * chunk_rows, dk_c, dv_c)
                    })
            })
            .collect();

    let group = plan.group();
    g.dq.par_chunks_mut(group * lq * d)
        .enumerate()
        .for_each(|(bhk, dq_block)| {
            let parts = &partials[bhk * chunks..(bhk + 1) * chunks];
            for (i, out) in dq_block.iter_mut().enumerate() {
                *out = T::store(parts.iter().fold(T::Acc::ZERO, |a, p| a + p[i]));
            }
        });
}

/// Per-task buffers, all in the arithmetic type.
#[derive(Default)]
struct Scratch<R> {
    k: Vec<R>,
    v: Vec<R>,
    q: Vec<R>,
    go: Vec<R>,
    p: Vec<R>,
    p_drop: Vec<R>,
    dp: Vec<R>,
    dk: Vec<R>,
    dv: Vec<R>,
}

/// dK, dV of keys `[key0, key0 + dk_c.len() / d)` of kv head `bhk`; returns this chunk's dQ
/// contribution for the query heads of the group, (group, L, D).
#[allow(clippy::too_many_arguments)]
fn key_chunk<T: AttnElement>(
    plan: &Plan<'_, T::Acc>,
    x: &Saved<'_, T>,
    delta: &[T::Acc],
    sink: Option<&ScoreSink<T::Acc>>,
    bhk: usize,
    key0: usize,
    dk_c: &mut [T],
    dv_c: &mut [T],
) -> Vec<T::Acc> {
    let sh = plan.shape;
    let (d, dv, lq, lk) = (sh.dim_qk, sh.dim_v, sh.len_q, sh.len_kv);
    let (br, bc, group) = (plan.block_q, plan.block_kv, plan.group());
    let (b, hk) = (bhk / sh.heads_kv, bhk % sh.heads_kv);
    let n_keys = dk_c.len() / d;
    let zero = T::Acc::ZERO;
    let mut dq_part = vec![zero; group * lq * d];
    let mut sc = Scratch::<T::Acc> {
        p: vec![zero; br * bc],
        p_drop: vec![zero; br * bc],
        dp: vec![zero; br * bc],
        dk: vec![zero; bc * d],
        dv: vec![zero; bc * dv],
        ..Default::default()
    };
    let scale = T::Acc::from_f64(plan.scale);
    let beta = T::Acc::from_f64(plan.scale * LOG2E);
    let log2e = T::Acc::from_f64(LOG2E);
    let inv_keep = T::Acc::from_f64(1.0 / (1.0 - plan.dropout_p));
    let mut j = 0;
    while j < n_keys {
        let cols = bc.min(n_keys - j);
        let col0 = key0 + j;
        let k_off = (bhk * lk + col0) * d;
        let v_off = (bhk * lk + col0) * dv;
        let kt = view(&x.k[k_off..k_off + cols * d], &mut sc.k);
        let vt = view(&x.v[v_off..v_off + cols * dv], &mut sc.v);
        sc.dk.fill(zero);
        sc.dv.fill(zero);
        // Causal: query rows before col0 see none of these keys, so the query tiles start at
        // col0 itself (any row can start a tile; only the first one meets the diagonal).
        let first_row = if plan.causal { col0.min(lq) } else { 0 };
        for gi in 0..group {
            let h = hk * group + gi;
            let bh = b * sh.heads_q + h;
            let head_mask = plan.mask.head(b, h);
            let mut row0 = first_row;
            while row0 < lq {
                let rows = br.min(lq - row0);
                let q_off = (bh * lq + row0) * d;
                let o_off = (bh * lq + row0) * dv;
                let qt = view(&x.q[q_off..q_off + rows * d], &mut sc.q);
                let got = view(&x.grad_out[o_off..o_off + rows * dv], &mut sc.go);
                matmul(
                    (rows, cols, d),
                    &mut sc.p,
                    bc,
                    false,
                    qt,
                    (d, 1),
                    kt,
                    (1, d),
                    beta,
                );
                let fix = TileFix {
                    mask: head_mask,
                    mask_scale: log2e,
                    causal: plan.causal,
                    row0,
                    col0,
                };
                let lse = &x.lse[bh * lq + row0..bh * lq + row0 + rows];
                probs::<T::Acc>(&mut sc.p, bc, rows, cols, &fix, lse, log2e);
                // dP = dO V^T
                matmul(
                    (rows, cols, dv),
                    &mut sc.dp,
                    bc,
                    false,
                    got,
                    (dv, 1),
                    vt,
                    (1, dv),
                    T::Acc::ONE,
                );
                let p_for_v = if let Some(drop) = plan.dropout {
                    sc.p_drop[..rows * bc].copy_from_slice(&sc.p[..rows * bc]);
                    for r in 0..rows {
                        let (pr, dpr) = (r * bc..r * bc + cols, r * bc..r * bc + cols);
                        drop.apply(&mut sc.p_drop[pr], bh, row0 + r, col0, inv_keep);
                        drop.apply(&mut sc.dp[dpr], bh, row0 + r, col0, inv_keep);
                    }
                    &sc.p_drop
                } else {
                    &sc.p
                };
                // dV += P_dropped^T dO
                matmul(
                    (cols, dv, rows),
                    &mut sc.dv,
                    dv,
                    true,
                    p_for_v,
                    (1, bc),
                    got,
                    (dv, 1),
                    T::Acc::ONE,
                );
                let dl = &delta[bh * lq + row0..bh * lq + row0 + rows];
                grad_scores::<T::Acc>(&sc.p, &mut sc.dp, bc, rows, cols, dl);
                if let Some(sink) = sink {
                    // SAFETY: this task owns keys col0..col0 + cols of head bh's kv head and
                    // visits (bh, row0) once (see `ScoreSink::write`).
                    unsafe { sink.write(bh, row0, col0, (rows, cols, bc), &sc.dp) };
                }
                // dQ += scale dS K ; dK += scale dS^T Q
                let dq_off = (gi * lq + row0) * d;
                matmul(
                    (rows, d, cols),
                    &mut dq_part[dq_off..],
                    d,
                    true,
                    &sc.dp,
                    (bc, 1),
                    kt,
                    (d, 1),
                    scale,
                );
                matmul(
                    (cols, d, rows),
                    &mut sc.dk,
                    d,
                    true,
                    &sc.dp,
                    (1, bc),
                    qt,
                    (d, 1),
                    scale,
                );
                row0 += rows;
            }
        }
        for (o, &a) in dk_c[j * d..(j + cols) * d].iter_mut().zip(&sc.dk) {
            *o = T::store(a);
        }
        for (o, &a) in dv_c[j * dv..(j + cols) * dv].iter_mut().zip(&sc.dv) {
            *o = T::store(a);
        }
        j += cols;
    }
    dq_part
}

dispatch_isa! {
    fn probs<R: Acc>(
        s: &mut [R],
        rs: usize,
        rows: usize,
        cols: usize,
        fix: &TileFix<'_, R>,
        lse: &[R],
        log2e: R,
    ) {
        fix_scores(s, rs, rows, cols, fix);
        for r in 0..rows {
            let row = &mut s[r * rs..r * rs + cols];
            if lse[r].is_neg_inf() {
                row.fill(R::ZERO);
            } else {
                let l2 = lse[r] * log2e;
                if !R::exp2_sub_simd(row, l2) {
                    row.iter_mut().for_each(|x| *x = R::exp2(*x - l2));
                }
            }
        }
    }
}

dispatch_isa! {
    fn grad_scores<R: Acc>(p: &[R], dp: &mut [R], rs: usize, rows: usize, cols: usize, delta: &[R]) {
        for r in 0..rows {
            let dl = delta[r];
            let (pr, dpr) = (&p[r * rs..r * rs + cols], &mut dp[r * rs..r * rs + cols]);
            for (g, &pv) in dpr.iter_mut().zip(pr) {
                *g = pv * (*g - dl);
            }
        }
    }
}
