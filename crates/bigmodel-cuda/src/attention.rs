//! Launch side of scaled dot-product attention (`kernels/attention.cu`, whose header states the
//! algorithms): validation, the choice between the tensor-core and the SIMT kernels, grids and
//! shared-memory sizes, and the launch sequences of the forward and the backward.
//!
//! The forward is one kernel. The backward is `attn_delta` (Delta = rowsum(dO * O)), then either
//! the tensor-core kernel (dK, dV, and dQ accumulated in an fp32 workspace the caller zeroes)
//! followed by `attn_dq_convert`, or the two SIMT kernels (dQ; dK and dV). Everything is queued
//! on the caller's stream; nothing synchronises.

use crate::adam::DType;
use crate::error::{Error, Result};
use crate::runtime::{self, check_ptr};
use std::ffi::c_void;

const SIMT_WARPS: u64 = 4;
const MAX_SIMT_DIM: u64 = 256;
const FWD_WARPS: u32 = 4;
const FWD_BQ: u64 = 128;
const FWD_BK: u64 = 32;
const BWD_WARPS: u32 = 8;
const BWD_BQ: u64 = 64;
const BWD_BK: u64 = BWD_WARPS as u64 * 16;
/// Largest grid y (the tile dimension of every 2-D launch).
const MAX_GRID_Y: u64 = 65_535;
const CONVERT_THREADS: u32 = 256;

const KERNELS: [&str; 23] = [
    "attn_fwd_simt_f32",
    "attn_fwd_simt_bf16",
    "attn_fwd_simt_f16",
    "attn_bwd_dq_simt_f32",
    "attn_bwd_dq_simt_bf16",
    "attn_bwd_dq_simt_f16",
    "attn_bwd_dkv_simt_f32",
    "attn_bwd_dkv_simt_bf16",
    "attn_bwd_dkv_simt_f16",
    "attn_delta_f32",
    "attn_delta_bf16",
    "attn_delta_f16",
    "attn_dq_convert_f32",
    "attn_dq_convert_bf16",
    "attn_dq_convert_f16",
    "attn_fwd_mma64_bf16",
    "attn_fwd_mma128_bf16",
    "attn_fwd_mma64_f16",
    "attn_fwd_mma128_f16",
    "attn_bwd_mma64_bf16",
    "attn_bwd_mma128_bf16",
    "attn_bwd_mma64_f16",
    "attn_bwd_mma128_f16",
];

fn suffix(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
    }
}

/// Kernel parameter of every attention kernel (layout shared with `struct AttnParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub out: u64,
    pub lse: u64,
    pub dout: u64,
    pub delta: u64,
    pub dq_acc: u64,
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
    pub mask: u64,
    pub seed: u64,
    pub mask_dims: [i64; 4],
    pub batch: i32,
    pub heads_q: i32,
    pub heads_kv: i32,
    pub len_q: i32,
    pub len_kv: i32,
    pub dim_qk: i32,
    pub dim_v: i32,
    pub mask_kind: i32,
    pub causal: i32,
    pub scale: f32,
    pub dropout_p: f32,
    pub inv_keep: f32,
    pub drop_threshold: u32,
    pub pad: i32,
}

/// Sizes of one call: q (B, Hq, L, E), k (B, Hkv, S, E), v (B, Hkv, S, Ev), all contiguous.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub batch: u64,
    pub heads_q: u64,
    pub heads_kv: u64,
    pub len_q: u64,
    pub len_kv: u64,
    pub dim_qk: u64,
    pub dim_v: u64,
}

/// The attention mask: absent, boolean (u8, non-zero keeps) or additive (fp32), compact 4-D
/// with each dimension 1 (broadcast) or the full size of (B, Hq, L, S).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MaskKind {
    #[default]
    None,
    Bool,
    Additive,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Mask {
    pub kind: MaskKind,
    pub ptr: u64,
    pub dims: [u64; 4],
}

/// Everything but the tensors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub scale: f64,
    pub causal: bool,
    pub dropout_p: f64,
    pub seed: u64,
}

/// Which kernels serve a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Tensor cores (bf16 / fp16 with E = Ev = the head dim here: 64 or 128).
    Mma(u64),
    /// One warp per row, any dtype, head dims up to 256.
    Simt,
}

/// The kernels a call of this dtype and shape runs on.
pub fn path(dtype: DType, s: &Shape) -> Path {
    if dtype != DType::F32 && s.dim_qk == s.dim_v && (s.dim_qk == 64 || s.dim_qk == 128) {
        Path::Mma(s.dim_qk)
    } else {
        Path::Simt
    }
}

/// Whether the backward of this call needs the zeroed fp32 dQ workspace (B, Hq, L, E).
pub fn needs_dq_workspace(dtype: DType, s: &Shape) -> bool {
    matches!(path(dtype, s), Path::Mma(_))
}

/// Bytes of dynamic shared memory of the tensor-core forward for head dim `d`.
pub fn fwd_smem(d: u64) -> u32 {
    ((FWD_BQ + 4 * FWD_BK) * (d + 8) * 2) as u32
}

/// Bytes of dynamic shared memory of the tensor-core backward for head dim `d`.
pub fn bwd_smem(d: u64) -> u32 {
    let ld = d + 8;
    let lds = BWD_BK + 8;
    ((2 * BWD_BK * ld + 4 * BWD_BQ * ld + BWD_BQ * lds) * 2 + 4 * BWD_BQ * 4) as u32
}

/// Device addresses of a forward call: `out` (B, Hq, L, Ev) and `lse` (B, Hq, L) fp32 are written.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardArgs {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub out: u64,
    pub lse: u64,
}

/// Device addresses of a backward call. `delta` is an fp32 (B, Hq, L) workspace; `dq_acc` an fp32
/// workspace shaped like q, zeroed, when [`needs_dq_workspace`] (else 0).
#[derive(Clone, Copy, Debug, Default)]
pub struct BackwardArgs {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub out: u64,
    pub lse: u64,
    pub dout: u64,
    pub delta: u64,
    pub dq_acc: u64,
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
}

fn to_i32(what: &str, x: u64) -> Result<i32> {
    i32::try_from(x).map_err(|_| {
        Error::Value(format!(
            "attention (CUDA): {what} = {x} is too large for the kernels"
        ))
    })
}

fn div_up(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

/// Checks shapes, options and mask, and builds the kernel parameter (pointers left 0).
pub fn params(s: &Shape, o: &Options, mask: &Mask) -> Result<AttnParams> {
    if s.heads_kv == 0 || !s.heads_q.is_multiple_of(s.heads_kv) {
        return Err(Error::Value(format!(
            "Number of heads in key and value must divide the number of heads in query \
             (query heads {}, key/value heads {})",
            s.heads_q, s.heads_kv
        )));
    }
    if s.dim_qk == 0 || s.dim_v == 0 {
        return Err(Error::Value(
            "attention (CUDA): head dimensions must be at least 1".into(),
        ));
    }
    if s.dim_qk > MAX_SIMT_DIM || s.dim_v > MAX_SIMT_DIM {
        return Err(Error::Value(format!(
            "attention (CUDA): head dimensions above {MAX_SIMT_DIM} are not supported (got E = {}, Ev = {})",
            s.dim_qk, s.dim_v
        )));
    }
    if !o.scale.is_finite() {
        return Err(Error::Value(format!(
            "attention: scale must be finite, got {}",
            o.scale
        )));
    }
    if !(0.0..1.0).contains(&o.dropout_p) {
        return Err(Error::Value(format!(
            "attention kernel: dropout probability must be in [0, 1), got {}",
            o.dropout_p
        )));
    }
    if o.causal && mask.kind != MaskKind::None {
        return Err(Error::Value(
            "_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True"
                .into(),
        ));
    }
    let full = [s.batch, s.heads_q, s.len_q, s.len_kv];
    let mut mask_dims = [1i64; 4];
    if mask.kind != MaskKind::None {
        for (i, (&d, f)) in mask.dims.iter().zip(full).enumerate() {
            if d != 1 && d != f {
                return Err(Error::Value(format!(
                    "attention: mask of shape {:?} does not broadcast to {full:?}",
                    mask.dims
                )));
            }
            mask_dims[i] = d as i64;
        }
    }
    // Element counts must fit the kernels' 64-bit offsets; rows and heads their 32-bit fields.
    for (heads, len, dim) in [
        (s.heads_q, s.len_q, s.dim_qk.max(s.dim_v)),
        (s.heads_kv, s.len_kv, s.dim_qk.max(s.dim_v)),
    ] {
        [s.batch, heads, len, dim]
            .iter()
            .try_fold(1u64, |a, &x| a.checked_mul(x))
            .filter(|&n| n < (1u64 << 62))
            .ok_or_else(|| Error::Value("attention (CUDA): tensor sizes overflow".into()))?;
    }
    let bh = s
        .batch
        .checked_mul(s.heads_q)
        .ok_or_else(|| Error::Value("attention (CUDA): tensor sizes overflow".into()))?;
    to_i32("batch * query heads", bh)?;
    Ok(AttnParams {
        mask_dims,
        batch: to_i32("batch", s.batch)?,
        heads_q: to_i32("query heads", s.heads_q)?,
        heads_kv: to_i32("key/value heads", s.heads_kv)?,
        len_q: to_i32("query length", s.len_q)?,
        len_kv: to_i32("key length", s.len_kv)?,
        dim_qk: s.dim_qk as i32,
        dim_v: s.dim_v as i32,
        mask_kind: match mask.kind {
            MaskKind::None => 0,
            MaskKind::Bool => 1,
            MaskKind::Additive => 2,
        },
        mask: if mask.kind == MaskKind::None {
            0
        } else {
            mask.ptr
        },
        causal: o.causal as i32,
        scale: o.scale as f32,
        dropout_p: o.dropout_p as f32,
        inv_keep: (1.0 / (1.0 - o.dropout_p)) as f32,
        drop_threshold: (o.dropout_p * (1u64 << 24) as f64).round() as u32,
        seed: o.seed,
        ..Default::default()
    })
}

/// A 2-D grid of (rows of x, tiles of y), refused when y is past the hardware limit.
fn grid(x: u64, y: u64) -> Result<(u32, u32)> {
    if y > MAX_GRID_Y {
        return Err(Error::Value(format!(
            "attention (CUDA): sequence too long for the launch grid ({y} tiles > {MAX_GRID_Y})"
        )));
    }
    Ok((x as u32, y as u32))
}

/// A 1-D grid of `rows * tiles` blocks (the tensor-core kernels decode (row, tile) themselves,
/// tiles of one head adjacent so that they share K and V, or Q and dO, in L2).
fn flat_grid(rows: u64, tiles: u64) -> Result<(u32, u32)> {
    match rows.checked_mul(tiles) {
        Some(n) if n <= i32::MAX as u64 => Ok((n as u32, 1)),
        _ => Err(Error::Value(format!(
            "attention (CUDA): {rows} heads x {tiles} tiles is too many blocks for one launch"
        ))),
    }
}

fn check_common(
    dtype: DType,
    s: &Shape,
    mask: &Mask,
    q: u64,
    k: u64,
    v: u64,
    lse: u64,
) -> Result<()> {
    let a = match path(dtype, s) {
        Path::Mma(_) => 16, // cp.async moves 16 bytes
        Path::Simt => dtype.size(),
    };
    check_ptr("attention: query", q, a)?;
    if s.len_kv > 0 {
        check_ptr("attention: key", k, a)?;
        check_ptr("attention: value", v, a)?;
    }
    check_ptr("attention: logsumexp", lse, 4)?;
    match mask.kind {
        MaskKind::None => {}
        MaskKind::Bool => check_ptr("attention: mask", mask.ptr, 1)?,
        MaskKind::Additive => check_ptr("attention: mask", mask.ptr, 4)?,
    }
    Ok(())
}

fn align(dtype: DType, s: &Shape) -> u64 {
    match path(dtype, s) {
        Path::Mma(_) => 16,
        Path::Simt => dtype.size(),
    }
}

/// Checks a forward call; returns the kernel parameter. Nothing to run when it has no rows.
pub fn validate_forward(
    dtype: DType,
    s: &Shape,
    o: &Options,
    mask: &Mask,
    f: &ForwardArgs,
) -> Result<AttnParams> {
    let mut p = params(s, o, mask)?;
    if s.batch * s.heads_q * s.len_q > 0 {
        check_common(dtype, s, mask, f.q, f.k, f.v, f.lse)?;
        check_ptr("attention: output", f.out, align(dtype, s))?;
    }
    p.q = f.q;
    p.k = f.k;
    p.v = f.v;
    p.out = f.out;
    p.lse = f.lse;
    Ok(p)
}

/// Queues the forward on `stream`. Never synchronises.
///
/// # Safety
/// Every address must be device memory of device `ordinal` with the documented shape, dtype and
/// contiguity (the mask compact 4-D of `mask.dims`), alive until the stream has run the kernel;
/// `out` and `lse` must not overlap the inputs.
pub unsafe fn forward(
    ordinal: i32,
    stream: u64,
    dtype: DType,
    s: &Shape,
    o: &Options,
    mask: &Mask,
    f: &ForwardArgs,
) -> Result<()> {
    let mut p = validate_forward(dtype, s, o, mask, f)?;
    let rows = s.batch * s.heads_q;
    if rows == 0 || s.len_q == 0 {
        return Ok(());
    }
    let dev = runtime::device(ordinal)?;
    let sfx = suffix(dtype);
    let (name, g, block, smem) = match path(dtype, s) {
        Path::Mma(d) => (
            format!("attn_fwd_mma{d}_{sfx}"),
            flat_grid(rows, div_up(s.len_q, FWD_BQ))?,
            FWD_WARPS * 32,
            fwd_smem(d),
        ),
        Path::Simt => (
            format!("attn_fwd_simt_{sfx}"),
            grid(rows, div_up(s.len_q, SIMT_WARPS))?,
            SIMT_WARPS as u32 * 32,
            0,
        ),
    };
    let func = dev.function("attention", &KERNELS, &name)?;
    let mut args = [(&mut p as *mut AttnParams).cast::<c_void>()];
    dev.launch_2d(func, g, block, smem, stream, &mut args)
}

/// Checks a backward call; returns the kernel parameter.
pub fn validate_backward(
    dtype: DType,
    s: &Shape,
    o: &Options,
    mask: &Mask,
    b: &BackwardArgs,
) -> Result<AttnParams> {
    let mut p = params(s, o, mask)?;
    let a = align(dtype, s);
    let nq = s.batch * s.heads_q * s.len_q;
    if nq > 0 {
        check_common(dtype, s, mask, b.q, b.k, b.v, b.lse)?;
        check_ptr("attention: output", b.out, a)?;
        check_ptr("attention: grad_output", b.dout, a)?;
        check_ptr("attention: delta workspace", b.delta, 4)?;
        check_ptr("attention: grad_query", b.dq, a)?;
        if needs_dq_workspace(dtype, s) {
            check_ptr("attention: dq workspace", b.dq_acc, 4)?;
        }
    }
    if s.batch * s.heads_kv * s.len_kv > 0 {
        check_ptr("attention: grad_key", b.dk, a)?;
        check_ptr("attention: grad_value", b.dv, a)?;
        if nq > 0 {
            check_ptr("attention: key", b.k, a)?;
            check_ptr("attention: value", b.v, a)?;
        }
    }
    p.q = b.q;
    p.k = b.k;
    p.v = b.v;
    p.out = b.out;
    p.lse = b.lse;
    p.dout = b.dout;
    p.delta = b.delta;
    p.dq_acc = b.dq_acc;
    p.dq = b.dq;
    p.dk = b.dk;
    p.dv = b.dv;
    Ok(p)
}

/// Queues the backward on `stream`. Never synchronises. With no query rows the caller zeroes
/// dK and dV itself (nothing is launched).
///
/// # Safety
/// As [`forward`]; `out` and `lse` are the forward's (same options, mask and seed); the
/// gradients and workspaces do not overlap anything else; `dq_acc` is zeroed on `stream`.
pub unsafe fn backward(
    ordinal: i32,
    stream: u64,
    dtype: DType,
    s: &Shape,
    o: &Options,
    mask: &Mask,
    b: &BackwardArgs,
) -> Result<()> {
    let mut p = validate_backward(dtype, s, o, mask, b)?;
    let rows_q = s.batch * s.heads_q;
    let rows_kv = s.batch * s.heads_kv;
    if rows_q == 0 || s.len_q == 0 {
        return Ok(());
    }
    let dev = runtime::device(ordinal)?;
    let sfx = suffix(dtype);
    let f = |n: String| dev.function("attention", &KERNELS, &n);
    let pp = (&mut p as *mut AttnParams).cast::<c_void>();
    let simt = SIMT_WARPS as u32 * 32;
    let n_rows = rows_q * s.len_q;
    dev.launch_2d(
        f(format!("attn_delta_{sfx}"))?,
        (div_up(n_rows, SIMT_WARPS).min(u32::MAX as u64) as u32, 1),
        simt,
        0,
        stream,
        &mut [pp],
    )?;
    match path(dtype, s) {
        Path::Mma(d) => {
            if s.len_kv > 0 {
                dev.launch_2d(
                    f(format!("attn_bwd_mma{d}_{sfx}"))?,
                    flat_grid(rows_kv, div_up(s.len_kv, BWD_BK))?,
                    BWD_WARPS * 32,
                    bwd_smem(d),
                    stream,
                    &mut [pp],
                )?;
            }
            let n = n_rows * s.dim_qk;
            dev.launch_2d(
                f(format!("attn_dq_convert_{sfx}"))?,
                (
                    div_up(n, CONVERT_THREADS as u64).clamp(1, 1 << 20) as u32,
                    1,
                ),
                CONVERT_THREADS,
                0,
                stream,
                &mut [pp],
            )
        }
        Path::Simt => {
            dev.launch_2d(
                f(format!("attn_bwd_dq_simt_{sfx}"))?,
                grid(rows_q, div_up(s.len_q, SIMT_WARPS))?,
                simt,
                0,
                stream,
                &mut [pp],
            )?;
            if s.len_kv > 0 {
                dev.launch_2d(
                    f(format!("attn_bwd_dkv_simt_{sfx}"))?,
                    grid(rows_kv, div_up(s.len_kv, SIMT_WARPS))?,
                    simt,
                    0,
                    stream,
                    &mut [pp],
                )?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn define(src: &str, name: &str) -> u64 {
        let key = format!("#define {name} ");
        let line = src.lines().find(|l| l.starts_with(&key)).unwrap();
        line[key.len()..].trim().parse().unwrap()
    }

    #[test]
    fn constants_and_layout_match_the_cuda_source() {
        let src = include_str!("../kernels/attention.cu");
        assert_eq!(define(src, "ATTN_SIMT_WARPS"), SIMT_WARPS);
        assert_eq!(define(src, "ATTN_MAX_SIMT_DIM"), MAX_SIMT_DIM);
        assert_eq!(define(src, "ATTN_FWD_WARPS"), FWD_WARPS as u64);
        assert_eq!(define(src, "ATTN_FWD_BQ"), FWD_BQ);
        assert_eq!(define(src, "ATTN_FWD_BK"), FWD_BK);
        assert_eq!(define(src, "ATTN_BWD_WARPS"), BWD_WARPS as u64);
        assert_eq!(define(src, "ATTN_BWD_BQ"), BWD_BQ);
        assert_eq!(std::mem::size_of::<AttnParams>(), 13 * 8 + 4 * 8 + 14 * 4);
        for k in KERNELS {
            let stem = k
                .trim_end_matches("_f32")
                .trim_end_matches("_bf16")
                .trim_end_matches("_f16");
            let stem = stem
                .trim_end_matches("64")
                .trim_end_matches("128")
                .to_string();
            assert!(src.contains(&stem), "{k} has no entry point");
        }
    }

    #[test]
    fn shared_memory_fits_an_h100_block() {
        // 227 KiB is the per-block opt-in limit on sm_90 (163 KiB on sm_80).
        for d in [64, 128] {
            assert!(fwd_smem(d) <= 163 * 1024, "fwd {d}: {}", fwd_smem(d));
            assert!(bwd_smem(d) <= 163 * 1024, "bwd {d}: {}", bwd_smem(d));
        }
        assert_eq!(fwd_smem(128), 256 * 136 * 2);
    }

    fn shape(e: u64, ev: u64) -> Shape {
        Shape {
            batch: 2,
            heads_q: 8,
            heads_kv: 2,
            len_q: 100,
            len_kv: 130,
            dim_qk: e,
            dim_v: ev,
        }
    }

    #[test]
    fn path_choice() {
        assert_eq!(path(DType::BF16, &shape(64, 64)), Path::Mma(64));
        assert_eq!(path(DType::F16, &shape(128, 128)), Path::Mma(128));
        assert_eq!(path(DType::BF16, &shape(128, 64)), Path::Simt);
        assert_eq!(path(DType::BF16, &shape(96, 96)), Path::Simt);
        assert_eq!(path(DType::F32, &shape(64, 64)), Path::Simt);
        assert!(needs_dq_workspace(DType::BF16, &shape(64, 64)));
        assert!(!needs_dq_workspace(DType::F32, &shape(64, 64)));
    }

    fn opts() -> Options {
        Options {
            scale: 0.125,
            causal: false,
            dropout_p: 0.0,
            seed: 0,
        }
    }

    #[test]
    fn validation() {
        let s = shape(64, 64);
        let f = ForwardArgs {
            q: 0x1000,
            k: 0x2000,
            v: 0x3000,
            out: 0x4000,
            lse: 0x5000,
        };
        let none = Mask::default();
        assert!(validate_forward(DType::BF16, &s, &opts(), &none, &f).is_ok());
        let mut bad = f;
        bad.q = 0x1008; // 8-byte aligned: enough for SIMT, not for cp.async
        assert!(validate_forward(DType::BF16, &s, &opts(), &none, &bad).is_err());
        assert!(validate_forward(DType::F32, &s, &opts(), &none, &bad).is_ok());
        let mut s2 = s;
        s2.heads_kv = 3;
        assert!(validate_forward(DType::BF16, &s2, &opts(), &none, &f).is_err());
        s2 = s;
        s2.dim_qk = 512;
        assert!(validate_forward(DType::BF16, &s2, &opts(), &none, &f).is_err());
        let mut o = opts();
        o.dropout_p = 1.0;
        assert!(validate_forward(DType::BF16, &s, &o, &none, &f).is_err());
        o = opts();
        o.causal = true;
        let m = Mask {
            kind: MaskKind::Bool,
            ptr: 0x6000,
            dims: [1, 1, 100, 130],
        };
        assert!(validate_forward(DType::BF16, &s, &o, &m, &f).is_err());
        let p = validate_forward(DType::BF16, &s, &opts(), &m, &f).unwrap();
        assert_eq!(p.mask_dims, [1, 1, 100, 130]);
        assert_eq!(p.mask_kind, 1);
        let m2 = Mask {
            dims: [1, 1, 99, 130],
            ..m
        };
        assert!(validate_forward(DType::BF16, &s, &opts(), &m2, &f).is_err());
        o = opts();
        o.dropout_p = 0.25;
        let p = validate_forward(DType::F32, &s, &o, &none, &f).unwrap();
        assert_eq!(p.drop_threshold, 1 << 22);
        assert!((p.inv_keep - 4.0 / 3.0).abs() < 1e-6);
        let b = BackwardArgs {
            q: 0x1000,
            k: 0x2000,
            v: 0x3000,
            out: 0x4000,
            lse: 0x5000,
            dout: 0x6000,
            delta: 0x7000,
            dq_acc: 0,
            dq: 0x9000,
            dk: 0xa000,
            dv: 0xb000,
        };
        assert!(validate_backward(DType::F32, &s, &opts(), &none, &b).is_ok());
        assert!(validate_backward(DType::BF16, &s, &opts(), &none, &b).is_err()); // needs dq_acc
        let b2 = BackwardArgs {
            dq_acc: 0x8000,
            ..b
        };
        assert!(validate_backward(DType::BF16, &s, &opts(), &none, &b2).is_ok());
    }

    #[test]
    fn long_sequences_are_refused_not_truncated() {
        assert!(grid(4, MAX_GRID_Y).is_ok());
        assert!(grid(4, MAX_GRID_Y + 1).is_err());
        assert_eq!(flat_grid(64, 32).unwrap(), (2048, 1));
        assert!(flat_grid(1 << 20, 1 << 12).is_err());
    }
}
