//! Scaled dot-product attention, FlashAttention-2 style, forward and backward.
//!
//! Inputs are contiguous `q: (B, Hq, L, E)`, `k: (B, Hkv, S, E)`, `v: (B, Hkv, S, Ev)` with
//! `Hq = G * Hkv` (grouped-query attention; G = 1 is ordinary multi-head attention). Queries are
//! processed in tiles of query rows against tiles of keys with an online
//! softmax ([`forward`]); the L x S score matrix never exists, and the forward saves only the
//! per-row log-sum-exp, from which [`backward`] recomputes each probability tile. Causal tiles
//! above the diagonal are skipped, not masked. Products go through faer's matmul, one
//! single-threaded call per tile, inside rayon tasks over (batch, head, query tile) forward and
//! (batch, kv head, key chunk) backward; the softmax and fix-up loops are compiled per ISA
//! ([`crate::isa`]). fp32 and fp64 compute natively, bf16 and fp16 in fp32 (tiles converted on load).
//!
//! Semantics follow `torch.nn.functional.scaled_dot_product_attention`: a boolean mask keeps
//! `true` entries, an additive mask is added to the scaled scores, `causal` is the top-left
//! aligned lower triangle (`key <= query`, torch's alignment when L != S), rows that see no key
//! give zeros, dropout scales kept probabilities by 1 / (1 - p). The dropout stream is
//! counter-based ([`tile::Dropout`]): the backward regenerates the forward's mask from the seed.

mod backward;
mod forward;
#[cfg(target_arch = "x86_64")]
mod simd;
mod tile;

pub use tile::{Acc, AttnElement};

use crate::{Error, Result};
use tile::{Dropout, HeadMask};

/// Backward tiles: a key tile of 64 against query tiles of 512 rows. The dK and dV products then
/// run 512 deep, and under a causal mask the query tiles start at the key tile's first row, so
/// the masked part computed is one 64 x 64 triangle per key tile. Measured on the 2-core EPYC
/// (Zen 4), interleaved medians against 128 x 128 tiles aligned to multiples of 128: causal
/// 4x8x2048x64 backward 257 -> 241 ms, causal 8x8x512x64 42 -> 38 ms, non-causal 8x8x512x64
/// unchanged (query tiles of 256-2048 rows within 2% of each other).
pub const BLOCK_Q: usize = 512;
/// Keys per tile (backward).
pub const BLOCK_KV: usize = 64;
/// Forward tiles: wide key tiles amortise each gemm call's packing. Measured on the 2-core
/// Xeon (CPU time, 8x8x512x64 and 2x8x2048x64, causal and not): 128 x 512 beat 64 x 64 by up
/// to 1.5x. Under a causal mask the key tile on the diagonal is taken in 64-row bands (see
/// `forward::query_tile`), which on the EPYC (Zen 4) measured like 64-row tiles there (causal
/// 8x8x512x64 forward 17.8 -> 16.1 ms, the char-LM's 32x8x128x16 4.0 -> 3.5 ms) while the
/// other key tiles keep their packing shared by 128 rows.
const FWD_BLOCK_Q: usize = 128;
const FWD_BLOCK_KV: usize = 512;

/// Sizes of one call; every tensor is contiguous in the layout of the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub heads_q: usize,
    pub heads_kv: usize,
    pub len_q: usize,
    pub len_kv: usize,
    pub dim_qk: usize,
    pub dim_v: usize,
}

impl Shape {
    fn numel(&self, heads: usize, len: usize, dim: usize) -> Result<usize> {
        [self.batch, heads, len, dim]
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .ok_or_else(|| Error::Shape("attention: tensor sizes overflow".into()))
    }
}

/// Everything but the tensors.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Multiplier of `q k^T` (torch's default is 1 / sqrt(E), chosen by the caller).
    pub scale: f64,
    pub causal: bool,
    /// Probability of dropping an attention weight, in [0, 1).
    pub dropout_p: f64,
    /// Seed of the dropout stream (drawn from torch's generator by the caller).
    pub seed: u64,
}

/// An attention mask broadcast over (B, Hq, L, S): contiguous data of shape `dims`, each entry
/// 1 (broadcast) or the full size.
#[derive(Clone, Copy)]
pub enum Mask<'a, R> {
    None,
    /// Non-zero where attention is allowed (torch's bool mask).
    Bool {
        data: &'a [u8],
        dims: [usize; 4],
    },
    /// Added to the scaled scores (torch's float mask), in the arithmetic type.
    Additive {
        data: &'a [R],
        dims: [usize; 4],
    },
}

impl<'a, R: Copy> Mask<'a, R> {
    fn dims(&self) -> Option<([usize; 4], usize)> {
        match self {
            Mask::None => None,
            Mask::Bool { data, dims } => Some((*dims, data.len())),
            Mask::Additive { data, dims } => Some((*dims, data.len())),
        }
    }

    /// The mask rows of query head `h` of batch `b`.
    fn head(&self, b: usize, h: usize) -> HeadMask<'a, R> {
        let pick = |dims: [usize; 4]| {
            let bi = if dims[0] == 1 { 0 } else { b };
            let hi = if dims[1] == 1 { 0 } else { h };
            let per = dims[2] * dims[3];
            ((bi * dims[1] + hi) * per, per)
        };
        match *self {
            Mask::None => HeadMask::None,
            Mask::Bool { data, dims } => {
                let (off, per) = pick(dims);
                HeadMask::Bool {
                    data: &data[off..off + per],
                    rows: dims[2],
                    cols: dims[3],
                }
            }
            Mask::Additive { data, dims } => {
                let (off, per) = pick(dims);
                HeadMask::Additive {
                    data: &data[off..off + per],
                    rows: dims[2],
                    cols: dims[3],
                }
            }
        }
    }
}

/// A validated call: shape, parameters, mask and tile sizes.
pub(crate) struct Plan<'a, R> {
    shape: Shape,
    scale: f64,
    causal: bool,
    dropout_p: f64,
    dropout: Option<Dropout>,
    mask: Mask<'a, R>,
    block_q: usize,
    block_kv: usize,
}

impl<R> Plan<'_, R> {
    fn group(&self) -> usize {
        self.shape.heads_q / self.shape.heads_kv
    }
}

fn plan<'a, R: Copy>(shape: &Shape, params: &Params, mask: Mask<'a, R>) -> Result<Plan<'a, R>> {
    let s = shape;
    if s.heads_kv == 0 || !s.heads_q.is_multiple_of(s.heads_kv) {
        return Err(Error::Shape(format!(
            "Number of heads in key and value must divide the number of heads in query \
             (query heads {}, key/value heads {})",
            s.heads_q, s.heads_kv
        )));
    }
    if s.dim_qk == 0 || s.dim_v == 0 {
        return Err(Error::Shape(
            "attention: head dimensions must be at least 1".into(),
        ));
    }
    if !params.scale.is_finite() {
        return Err(Error::Value(format!(
            "attention: scale must be finite, got {}",
            params.scale
        )));
    }
    if !(0.0..1.0).contains(&params.dropout_p) {
        return Err(Error::Value(format!(
            "attention kernel: dropout probability must be in [0, 1), got {}",
            params.dropout_p
        )));
    }
    if params.causal && !matches!(mask, Mask::None) {
        return Err(Error::Shape(
            "_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True".into(),
        ));
    }
    if let Some((dims, len)) = mask.dims() {
        let full = [s.batch, s.heads_q, s.len_q, s.len_kv];
        if dims.iter().zip(full).any(|(&d, f)| d != 1 && d != f) {
            return Err(Error::Shape(format!(
                "attention: mask of shape {dims:?} does not broadcast to {full:?}"
            )));
        }
        let need = dims.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
        if need != Some(len) {
            return Err(Error::Shape(format!(
                "attention: mask of shape {dims:?} has {len} elements"
            )));
        }
    }
    Ok(Plan {
        shape: *shape,
        scale: params.scale,
        causal: params.causal,
        dropout_p: params.dropout_p,
        dropout: (params.dropout_p > 0.0)
            .then(|| Dropout::new(params.dropout_p, params.seed, s.len_kv)),
        mask,
        block_q: BLOCK_Q,
        block_kv: BLOCK_KV,
    })
}

fn check_len(what: &str, len: usize, want: usize) -> Result<()> {
    if len != want {
        return Err(Error::Shape(format!(
            "attention: {what} has {len} elements, the shapes need {want}"
        )));
    }
    Ok(())
}

/// Forward pass: fills `out` (B, Hq, L, Ev) and the log-sum-exp `lse` (B, Hq, L) of each row
/// (natural log; -inf for a row that sees no key). Runs on the current rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: AttnElement>(
    shape: &Shape,
    params: &Params,
    q: &[T],
    k: &[T],
    v: &[T],
    mask: Mask<'_, T::Acc>,
    out: &mut [T],
    lse: &mut [T::Acc],
) -> Result<()> {
    let mut p = plan(shape, params, mask)?;
    p.block_kv = FWD_BLOCK_KV;
    p.block_q = FWD_BLOCK_Q;
    let s = shape;
    check_len("query", q.len(), s.numel(s.heads_q, s.len_q, s.dim_qk)?)?;
    check_len("key", k.len(), s.numel(s.heads_kv, s.len_kv, s.dim_qk)?)?;
    check_len("value", v.len(), s.numel(s.heads_kv, s.len_kv, s.dim_v)?)?;
    check_len("output", out.len(), s.numel(s.heads_q, s.len_q, s.dim_v)?)?;
    check_len("logsumexp", lse.len(), s.numel(s.heads_q, s.len_q, 1)?)?;
    forward::run(&p, q, k, v, out, lse);
    Ok(())
}

/// The tensors the backward pass reads.
pub struct BackwardInputs<'a, T: crate::element::Element> {
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    /// The forward's output and log-sum-exp (with the same params, mask and seed).
    pub out: &'a [T],
    pub lse: &'a [T::Acc],
    pub grad_out: &'a [T],
}

/// Backward pass: fills `dq`, `dk`, `dv` (shaped like q, k, v) and, if given, `d_scores`
/// (`B * Hq * L * S` in the arithmetic type: the gradient of an additive mask, before summing
/// over its broadcast dimensions). Runs on the current rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: AttnElement>(
    shape: &Shape,
    params: &Params,
    x: BackwardInputs<'_, T>,
    mask: Mask<'_, T::Acc>,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    d_scores: Option<&mut [T::Acc]>,
) -> Result<()> {
    let p = plan(shape, params, mask)?;
    let s = shape;
    let nq = s.numel(s.heads_q, s.len_q, s.dim_qk)?;
    let nk = s.numel(s.heads_kv, s.len_kv, s.dim_qk)?;
    let nv = s.numel(s.heads_kv, s.len_kv, s.dim_v)?;
    let no = s.numel(s.heads_q, s.len_q, s.dim_v)?;
    check_len("query", x.q.len(), nq)?;
    check_len("key", x.k.len(), nk)?;
    check_len("value", x.v.len(), nv)?;
    check_len("output", x.out.len(), no)?;
    check_len("grad_output", x.grad_out.len(), no)?;
    check_len("logsumexp", x.lse.len(), s.numel(s.heads_q, s.len_q, 1)?)?;
    check_len("grad_query", dq.len(), nq)?;
    check_len("grad_key", dk.len(), nk)?;
    check_len("grad_value", dv.len(), nv)?;
    if let Some(ds) = d_scores.as_deref() {
        check_len(
            "grad_scores",
            ds.len(),
            s.numel(s.heads_q, s.len_q, s.len_kv)?,
        )?;
    }
    let saved = backward::Saved {
        q: x.q,
        k: x.k,
        v: x.v,
        out: x.out,
        lse: x.lse,
        grad_out: x.grad_out,
    };
    let grads = backward::Grads {
        dq,
        dk,
        dv,
        scores: d_scores,
    };
    backward::run(&p, &saved, grads);
    Ok(())
}

#[cfg(test)]
mod tests;
