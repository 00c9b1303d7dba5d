//! FlashAttention-2 forward: one rayon task per (batch, head, query tile).
//!
//! A task keeps its query tile, the running row maxima `m`, row sums `l` and the unnormalised
//! output in cache-sized buffers and streams the key/value tiles past them:
//! `S = scale log2(e) Q K^T` (gemm), mask and causal edge, `m' = max(m, rowmax S)`,
//! `P = 2^(S - m')`, `l = 2^(m - m') l + rowsum P`, `O = 2^(m - m') O + dropout(P) V` (gemm).
//! Causal tiles entirely above the diagonal are never visited, and the key tile on the diagonal
//! is taken in bands of rows, each against only the keys it sees. At the end `O /= l` and the
//! per-row log-sum-exp `(m + log2 l) ln 2` is the only thing saved for the backward pass.
//! Rows with every key masked get a zero output and a log-sum-exp of -inf, as torch does.

// `dispatch_isa!` bodies cannot carry attributes; the softmax step takes the tile and the three
// per-row running states separately so that their borrows stay disjoint.
#![allow(clippy::too_many_arguments)]

use super::tile::{fix_scores, matmul, view, Acc, AttnElement, HeadMask, TileFix, LOG2E};
use super::Plan;
use crate::dispatch_isa;
use crate::element::Real;
use rayon::prelude::*;

/// Runs the forward pass; `out` is (B, Hq, L, Dv) and `lse` is (B, Hq, L).
pub(super) fn run<T: AttnElement>(
    plan: &Plan<'_, T::Acc>,
    q: &[T],
    k: &[T],
    v: &[T],
    out: &mut [T],
    lse: &mut [T::Acc],
) {
    let s = plan.shape;
    if s.len_q == 0 || s.batch * s.heads_q == 0 {
        return;
    }
    let dv = s.dim_v;
    let br = plan.block_q;
    out.par_chunks_mut(s.len_q * dv)
        .zip(lse.par_chunks_mut(s.len_q))
        .enumerate()
        .for_each(|(bh, (o_head, lse_head))| {
            o_head
                .par_chunks_mut(br * dv)
                .zip(lse_head.par_chunks_mut(br))
                .enumerate()
                .for_each(|(i, (o_tile, lse_tile))| {
                    query_tile(plan, q, k, v, bh, i * br, o_tile, lse_tile, dv);
                });
        });
}

/// Rows of a causal query tile's diagonal key tile computed together (see `query_tile`).
const CAUSAL_BAND: usize = 64;

/// Per-task buffers: bf16/fp16 tiles converted to the arithmetic type, and the running state.
struct Scratch<R> {
    q: Vec<R>,
    k: Vec<R>,
    v: Vec<R>,
    state: State<R>,
}

/// What a query tile carries from key tile to key tile: the score tile (row stride
/// `plan.block_kv`) and per row the running maximum `m`, sum `l` and unnormalised output `o` (row
/// stride `dim_v`).
struct State<R> {
    s: Vec<R>,
    o: Vec<R>,
    m: Vec<R>,
    l: Vec<R>,
}

/// Rows `rows` of a query tile, the first of them query `row0`, against keys `col0..col0 + cols`.
struct Band {
    rows: std::ops::Range<usize>,
    row0: usize,
    col0: usize,
    cols: usize,
}

#[allow(clippy::too_many_arguments)]
fn query_tile<T: AttnElement>(
    plan: &Plan<'_, T::Acc>,
    q: &[T],
    k: &[T],
    v: &[T],
    bh: usize,
    row0: usize,
    o_tile: &mut [T],
    lse_tile: &mut [T::Acc],
    dv: usize,
) {
    let sh = plan.shape;
    let (d, bc) = (sh.dim_qk, plan.block_kv);
    let rows = lse_tile.len();
    let (b, h) = (bh / sh.heads_q, bh % sh.heads_q);
    let bhk = b * sh.heads_kv + h / plan.group();
    let mut sc = Scratch::<T::Acc> {
        q: Vec::new(),
        k: Vec::new(),
        v: Vec::new(),
        state: State {
            s: vec![T::Acc::ZERO; rows * bc],
            o: vec![T::Acc::ZERO; rows * dv],
            m: vec![T::Acc::NEG_INF; rows],
            l: vec![T::Acc::ZERO; rows],
        },
    };
    let q_off = (bh * sh.len_q + row0) * d;
    let mut q_conv = std::mem::take(&mut sc.q);
    let qt = view(&q[q_off..q_off + rows * d], &mut q_conv);
    let beta = T::Acc::from_f64(plan.scale * LOG2E);
    let inv_keep = T::Acc::from_f64(1.0 / (1.0 - plan.dropout_p));
    // Causal: keys after the tile's last row are masked for every row of the tile.
    let kv_end = if plan.causal {
        sh.len_kv.min(row0 + rows)
    } else {
        sh.len_kv
    };
    let head_mask = plan.mask.head(b, h);
    let mut col0 = 0;
    while col0 < kv_end {
        let cols = bc.min(kv_end - col0);
        let k_off = (bhk * sh.len_kv + col0) * d;
        let kt = view(&k[k_off..k_off + cols * d], &mut sc.k);
        let v_off = (bhk * sh.len_kv + col0) * dv;
        let vt = view(&v[v_off..v_off + cols * dv], &mut sc.v);
        // Causal: the key tile that meets the diagonal is taken in bands of CAUSAL_BAND rows,
        // each against only the keys its last row sees, so the masked triangle computed there
        // is a band wide rather than the query tile's height (which stays large so that the
        // other key tiles' packing is shared by many rows).
        let banded = plan.causal && col0 + cols == kv_end;
        let mut r0 = 0;
        while r0 < rows {
            let (r1, seen) = if banded {
                let r1 = (r0 + CAUSAL_BAND).min(rows);
                (r1, cols.min((row0 + r1).saturating_sub(col0)))
            } else {
                (rows, cols)
            };
            if seen > 0 {
                let band = Band {
                    rows: r0..r1,
                    row0: row0 + r0,
                    col0,
                    cols: seen,
                };
                let q_band = &qt[r0 * d..r1 * d];
                kv_band::<T::Acc>(
                    plan,
                    &band,
                    (bh, head_mask),
                    q_band,
                    kt,
                    vt,
                    beta,
                    inv_keep,
                    &mut sc.state,
                );
            }
            r0 = r1;
        }
        col0 += cols;
    }
    let ln2 = T::Acc::from_f64(std::f64::consts::LN_2);
    let st = &sc.state;
    for r in 0..rows {
        let l = st.l[r];
        if l == T::Acc::ZERO {
            // Every key masked (or no keys): torch returns zeros.
            for x in &mut o_tile[r * dv..(r + 1) * dv] {
                *x = T::store(T::Acc::ZERO);
            }
            lse_tile[r] = T::Acc::NEG_INF;
        } else {
            let inv = T::Acc::ONE / l;
            for (x, &acc) in o_tile[r * dv..(r + 1) * dv]
                .iter_mut()
                .zip(&st.o[r * dv..(r + 1) * dv])
            {
                *x = T::store(acc * inv);
            }
            lse_tile[r] = (st.m[r] + T::Acc::log2(l)) * ln2;
        }
    }
}

/// One band of a query tile against one key tile: `S = beta Q K^T`, mask and causal edge,
/// softmax update, dropout, `O += P V`, for query head `bh` (whose mask is `mask`). `q` holds the
/// band's rows; `kt`, `vt` at least its keys.
#[allow(clippy::too_many_arguments)]
fn kv_band<R: Acc>(
    plan: &Plan<'_, R>,
    band: &Band,
    (bh, mask): (usize, HeadMask<'_, R>),
    q: &[R],
    kt: &[R],
    vt: &[R],
    beta: R,
    inv_keep: R,
    st: &mut State<R>,
) {
    let State { s, o, m, l } = st;
    let (bc, dv, d) = (plan.block_kv, plan.shape.dim_v, plan.shape.dim_qk);
    let fix = TileFix {
        mask,
        mask_scale: R::from_f64(LOG2E),
        causal: plan.causal,
        row0: band.row0,
        col0: band.col0,
    };
    let (r0, r1) = (band.rows.start, band.rows.end);
    let (n, cols) = (r1 - r0, band.cols);
    let s = &mut s[r0 * bc..];
    // S = beta * Q K^T, K^T read through swapped strides.
    matmul((n, cols, d), s, bc, false, q, (d, 1), kt, (1, d), beta);
    let o = &mut o[r0 * dv..r1 * dv];
    softmax_step::<R>(s, bc, n, cols, &fix, &mut m[r0..r1], &mut l[r0..r1], o, dv);
    if let Some(drop) = plan.dropout {
        for r in 0..n {
            let row = &mut s[r * bc..r * bc + cols];
            drop.apply(row, bh, band.row0 + r, band.col0, inv_keep);
        }
    }
    matmul((n, dv, cols), o, dv, true, s, (bc, 1), vt, (dv, 1), R::ONE);
}

dispatch_isa! {
    fn softmax_step<R: Acc>(
        s: &mut [R],
        rs: usize,
        rows: usize,
        cols: usize,
        fix: &TileFix<'_, R>,
        m: &mut [R],
        l: &mut [R],
        o: &mut [R],
        dv: usize,
    ) {
        fix_scores(s, rs, rows, cols, fix);
        if R::softmax_rows_simd(s, rs, rows, cols, m, l, o, dv) {
            return;
        }
        for r in 0..rows {
            let row = &mut s[r * rs..r * rs + cols];
            let m_new = row_max(row).max_nan(m[r]);
            if m_new.is_neg_inf() {
                // Every key so far masked: nothing to add, and 2^(-inf - -inf) must not appear.
                row.fill(R::ZERO);
                continue;
            }
            let alpha = R::exp2(m[r] - m_new);
            let mut sum = [R::ZERO; 16];
            let mut chunks = row.chunks_exact_mut(16);
            for c in &mut chunks {
                for (x, acc) in c.iter_mut().zip(sum.iter_mut()) {
                    *x = R::exp2(*x - m_new);
                    *acc += *x;
                }
            }
            let mut tail = R::ZERO;
            for x in chunks.into_remainder() {
                *x = R::exp2(*x - m_new);
                tail += *x;
            }
            l[r] = l[r] * alpha + sum.iter().fold(tail, |a, &b| a + b);
            m[r] = m_new;
            if alpha != R::ONE {
                o[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= alpha);
            }
        }
    }
}

/// Maximum of a row, NaN-propagating, in 16 independent lanes so that it vectorises.
#[inline(always)]
pub(super) fn row_max<R: Acc>(row: &[R]) -> R {
    let mut lanes = [R::NEG_INF; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (acc, &x) in lanes.iter_mut().zip(c) {
            *acc = x.max_nan(*acc);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(R::NEG_INF, |a, &x| x.max_nan(a));
    lanes.iter().fold(tail, |a, &x| x.max_nan(a))
}
