//! Launch side of conv2d on CUDA: im2col / col2im kernels (`kernels/conv2d.cu`, whose header states
//! the layouts) around cuBLAS GEMMs ([`crate::blas`]), on torch's stream and torch's memory.
//!
//! Per chunk of `chunk` images (one chunk unless the column matrix would exceed the caller's
//! budget), every product is a single cuBLAS call batched over groups. Forward: im2col into `col`
//! ([C*KH*KW, chunk*L]), one GEMM into an fp32 `tmp` [O, chunk*L], then `conv_scatter_*` writes
//! the output with the bias added (fused, one rounding). Backward: the bias gradient by a two-pass
//! deterministic reduction; per chunk, the output gradient gathered to [O, chunk*L], the weight
//! gradient (im2col, one GEMM accumulating over chunks into an fp32 buffer), then the input
//! gradient (one GEMM into an fp32 column matrix, folded back by col2im). Buffers are allocated by
//! the caller (torch) with the sizes of [`Plan`].

use crate::adam::DType;
use crate::blas::{self, Blas, Elem, Gemm};
use crate::error::{Error, Result};
use crate::runtime::{check_ptr, Device, Function};
use std::ffi::c_void;

pub const THREADS: u32 = 256;
/// Elementwise kernels beyond this many blocks use their grid-stride loops.
const MAX_GRID: u64 = 1 << 16;

const KERNELS: [&str; 21] = [
    "conv_im2col_f32",
    "conv_im2col_bf16",
    "conv_im2col_f16",
    "conv_col2im_f32",
    "conv_col2im_bf16",
    "conv_col2im_f16",
    "conv_scatter_f32",
    "conv_scatter_bf16",
    "conv_scatter_f16",
    "conv_gather_f32",
    "conv_gather_bf16",
    "conv_gather_f16",
    "conv_bias_grad_partial_f32",
    "conv_bias_grad_partial_bf16",
    "conv_bias_grad_partial_f16",
    "conv_bias_grad_final_f32",
    "conv_bias_grad_final_bf16",
    "conv_bias_grad_final_f16",
    "conv_cast_f32",
    "conv_cast_bf16",
    "conv_cast_f16",
];

fn suffix(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
    }
}

/// Kernel parameter of `conv_im2col_*` / `conv_col2im_*` (layout shared with `struct ConvGeom`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvGeom {
    pub x: u64,
    pub col: u64,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub oh: i32,
    pub ow: i32,
    pub b0: i32,
    pub nb: i32,
    pub kh: i32,
    pub kw: i32,
    pub sh: i32,
    pub sw: i32,
    pub ph: i32,
    pub pw: i32,
    pub dh: i32,
    pub dw: i32,
    pub pad: i32,
}

/// Kernel parameter of `conv_scatter_*` (layout shared with `struct ConvScatter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvScatter {
    pub tmp: u64,
    pub bias: u64,
    pub out: u64,
    pub o: i32,
    pub l: i32,
    pub b0: i32,
    pub nb: i32,
}

/// Kernel parameter of `conv_gather_*` (layout shared with `struct ConvGather`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvGather {
    pub src: u64,
    pub dst: u64,
    pub o: i32,
    pub l: i32,
    pub b0: i32,
    pub nb: i32,
}

/// Kernel parameter of `conv_bias_grad_*` (layout shared with `struct ConvBiasGrad`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvBiasGrad {
    pub grad_out: u64,
    pub partial: u64,
    pub grad_bias: u64,
    pub n: i64,
    pub o: i64,
    pub l: i64,
    pub slices: i64,
}

/// Kernel parameter of `conv_cast_*` (layout shared with `struct ConvCast`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvCast {
    pub src: u64,
    pub dst: u64,
    pub n: i64,
}

/// A 2-D convolution's shape: input [n, c, h, w], weight [o, c / groups, kh, kw], padding
/// [top, bottom, left, right].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: i64,
    pub c: i64,
    pub h: i64,
    pub w: i64,
    pub o: i64,
    pub kh: i64,
    pub kw: i64,
    pub groups: i64,
    pub stride: [i64; 2],
    pub padding: [i64; 4],
    pub dilation: [i64; 2],
}

/// Sizes derived from a [`ConvShape`] and a chunk of images; buffer sizes are in elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub oh: i64,
    pub ow: i64,
    /// Output pixels per image and channel.
    pub l: i64,
    /// Input channels per group.
    pub cg: i64,
    /// Output channels per group.
    pub og: i64,
    /// GEMM depth of the forward: cg * kh * kw.
    pub k: i64,
    /// Images per chunk.
    pub chunk: i64,
    /// Column-matrix elements of one chunk: c * kh * kw * chunk * l.
    pub col: i64,
    /// Elements of one chunk's [O, chunk*L] matrix: the forward's fp32 `tmp`, the backward's
    /// gathered output gradient.
    pub gather: i64,
    /// Slices per channel of the bias-gradient reduction.
    pub bias_slices: i64,
}

fn bad(msg: String) -> Error {
    Error::Value(format!("conv2d (CUDA): {msg}"))
}

fn mul(a: i64, b: i64) -> Result<i64> {
    a.checked_mul(b)
        .ok_or_else(|| bad("sizes overflow 64-bit indices".into()))
}

impl ConvShape {
    /// Checks the shape (torch's rules; the Python layer raised torch's messages already) and
    /// returns its plan for chunks of `chunk` images (clamped to [1, n]).
    pub fn plan(&self, chunk: i64) -> Result<Plan> {
        let s = self;
        if [s.n, s.c, s.h, s.w, s.o, s.kh, s.kw].iter().any(|&v| v < 0)
            || s.groups <= 0
            || s.stride.iter().chain(&s.dilation).any(|&v| v <= 0)
            || s.padding.iter().any(|&v| v < 0)
            || s.kh == 0
            || s.kw == 0
        {
            return Err(bad(format!("invalid shape {s:?}")));
        }
        if s.o % s.groups != 0 || s.c % s.groups != 0 || s.o == 0 {
            return Err(bad(format!(
                "channels ({} in, {} out) not divisible by groups={}",
                s.c, s.o, s.groups
            )));
        }
        let span_h = mul(s.dilation[0], s.kh - 1)? + 1;
        let span_w = mul(s.dilation[1], s.kw - 1)? + 1;
        let ph = s.h + s.padding[0] + s.padding[1];
        let pw = s.w + s.padding[2] + s.padding[3];
        if ph < span_h || pw < span_w {
            return Err(bad(format!(
                "kernel ({span_h} x {span_w}) larger than the padded input ({ph} x {pw})"
            )));
        }
        let oh = (ph - span_h) / s.stride[0] + 1;
        let ow = (pw - span_w) / s.stride[1] + 1;
        let l = mul(oh, ow)?;
        let cg = s.c / s.groups;
        let og = s.o / s.groups;
        let k = mul(mul(cg, s.kh)?, s.kw)?;
        let chunk = chunk.clamp(1, s.n.max(1));
        let cols = mul(chunk, l)?;
        let col = mul(mul(mul(s.c, s.kh)?, s.kw)?, cols)?;
        let gather = mul(s.o, cols)?;
        let out = mul(mul(s.n, s.o)?, l)?;
        let narrow = |v: i64| v > i32::MAX as i64;
        let geometry = [
            s.n,
            s.c,
            s.h,
            s.w,
            s.o,
            s.kh,
            s.kw,
            oh,
            ow,
            l,
            k,
            ph,
            pw,
            s.stride[0],
            s.stride[1],
            s.dilation[0],
            s.dilation[1],
            span_h,
            span_w,
        ];
        if geometry.iter().any(|&v| narrow(v)) {
            return Err(bad(format!("a size exceeds 32 bits: {s:?}")));
        }
        // The kernels index one chunk with 32-bit integers.
        let chunk_in = mul(mul(chunk, s.c)?, mul(s.h, s.w)?)?;
        if narrow(cols) || narrow(col) || narrow(gather) || narrow(chunk_in) {
            return Err(bad(format!(
                "one chunk of {chunk} images exceeds 2^31 elements (column matrix {col}, input {chunk_in})"
            )));
        }
        let per = mul(s.n, l)?;
        let bias_slices = if out == 0 {
            1
        } else {
            (per / 4096).clamp(1, (1024 / s.o.max(1)).max(1))
        };
        Ok(Plan {
            oh,
            ow,
            l,
            cg,
            og,
            k,
            chunk,
            col,
            gather,
            bias_slices,
        })
    }

    /// Images per chunk so that the fp32 column matrix stays within `budget_bytes` (at least one
    /// image, at most the batch).
    pub fn chunk_for(&self, budget_bytes: u64) -> Result<i64> {
        let p = self.plan(1)?;
        let per_image = (p.col as u64).saturating_mul(4).max(1);
        let by_budget = (budget_bytes / per_image) as i64;
        // Every per-chunk matrix below 2^31 elements (32-bit indices in the kernels).
        let per = [p.col, p.gather, self.c * self.h * self.w, p.l];
        let by_int = per
            .iter()
            .map(|&v| (i32::MAX as i64) / v.max(1))
            .min()
            .unwrap_or(1);
        Ok(by_budget.min(by_int).clamp(1, self.n.max(1)))
    }

    /// The geometry of chunk `b0 .. b0 + nb` (every field checked to fit 32 bits by [`Self::plan`]).
    fn geom(&self, p: &Plan, x: u64, col: u64, b0: i64, nb: i64) -> ConvGeom {
        ConvGeom {
            x,
            col,
            c: self.c as i32,
            h: self.h as i32,
            w: self.w as i32,
            oh: p.oh as i32,
            ow: p.ow as i32,
            b0: b0 as i32,
            nb: nb as i32,
            kh: self.kh as i32,
            kw: self.kw as i32,
            sh: self.stride[0] as i32,
            sw: self.stride[1] as i32,
            ph: self.padding[0] as i32,
            pw: self.padding[2] as i32,
            dh: self.dilation[0] as i32,
            dw: self.dilation[1] as i32,
            pad: 0,
        }
    }
}

/// Device addresses of a forward call. `bias` is 0 without bias; `col` holds `col_bytes` bytes
/// (at least `plan.col` elements of the dtype), `tmp` `tmp_bytes` (at least `plan.gather` fp32);
/// `workspace` (0 for cuBLAS's own) `ws_bytes`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardArgs {
    pub x: u64,
    pub weight: u64,
    pub bias: u64,
    pub out: u64,
    pub col: u64,
    pub col_bytes: u64,
    pub tmp: u64,
    pub tmp_bytes: u64,
    pub workspace: u64,
    pub ws_bytes: u64,
    pub chunk: i64,
    pub tf32: bool,
}

/// Device addresses of a backward call; 0 for a gradient not asked for. `grad_weight_acc` is an
/// fp32 buffer of the weight's size (the weight gradient itself when the dtype is fp32); `col`
/// holds at least `plan.col` fp32 elements and `gather` `plan.gather` elements of the dtype (both
/// needed with the input or weight gradient), `partial` `o * plan.bias_slices` fp32 (with the bias
/// gradient).
#[derive(Clone, Copy, Debug, Default)]
pub struct BackwardArgs {
    pub grad_out: u64,
    pub x: u64,
    pub weight: u64,
    pub grad_x: u64,
    pub grad_weight: u64,
    pub grad_weight_acc: u64,
    pub grad_bias: u64,
    pub partial: u64,
    pub col: u64,
    pub col_bytes: u64,
    pub gather: u64,
    pub gather_bytes: u64,
    pub workspace: u64,
    pub ws_bytes: u64,
    pub chunk: i64,
    pub tf32: bool,
}

fn need(what: &str, have: u64, want_elems: i64, size: u64) -> Result<()> {
    let want = (want_elems as u64).saturating_mul(size);
    if have < want {
        return Err(bad(format!(
            "{what} holds {have} bytes, the plan needs {want}"
        )));
    }
    Ok(())
}

/// The plan of a convolution with images and input channels (an empty batch or zero input
/// channels involve no GEMM: the caller fills such outputs and gradients itself).
fn nonempty(s: &ConvShape, chunk: i64) -> Result<Plan> {
    let p = s.plan(chunk)?;
    if s.n == 0 || p.k == 0 {
        return Err(bad(format!(
            "empty convolution (batch {}, {} input channels): nothing for the kernels to do",
            s.n, s.c
        )));
    }
    Ok(p)
}

/// Checks a forward call: shape, plan, addresses, buffer sizes. Returns the plan.
pub fn validate_forward(dtype: DType, s: &ConvShape, a: &ForwardArgs) -> Result<Plan> {
    let p = nonempty(s, a.chunk)?;
    let es = dtype.size();
    check_ptr("conv2d: output", a.out, es)?;
    if a.bias != 0 {
        check_ptr("conv2d: bias", a.bias, es)?;
    }
    check_ptr("conv2d: input", a.x, es)?;
    check_ptr("conv2d: weight", a.weight, es)?;
    check_ptr("conv2d: column buffer", a.col, 16)?;
    need("the column buffer", a.col_bytes, p.col, es)?;
    check_ptr("conv2d: GEMM output buffer", a.tmp, 16)?;
    need("the GEMM output buffer", a.tmp_bytes, p.gather, 4)?;
    if a.workspace != 0 {
        check_ptr("conv2d: cuBLAS workspace", a.workspace, 256)?;
    }
    Ok(p)
}

/// Checks a backward call. Returns the plan.
pub fn validate_backward(dtype: DType, s: &ConvShape, a: &BackwardArgs) -> Result<Plan> {
    let p = nonempty(s, a.chunk)?;
    let es = dtype.size();
    if a.grad_x != 0 {
        check_ptr("conv2d: grad_input", a.grad_x, es)?;
    }
    if a.grad_weight != 0 {
        check_ptr("conv2d: grad_weight", a.grad_weight, es)?;
        check_ptr("conv2d: grad_weight accumulator", a.grad_weight_acc, 4)?;
    }
    if a.grad_bias != 0 {
        check_ptr("conv2d: grad_bias", a.grad_bias, es)?;
    }
    if a.grad_x != 0 || a.grad_weight != 0 || a.grad_bias != 0 {
        check_ptr("conv2d: grad_output", a.grad_out, es)?;
    }
    if a.grad_bias != 0 {
        check_ptr("conv2d: bias partial sums", a.partial, 4)?;
    }
    if a.grad_x != 0 || a.grad_weight != 0 {
        check_ptr("conv2d: weight", a.weight, es)?;
        check_ptr("conv2d: column buffer", a.col, 16)?;
        need("the column buffer", a.col_bytes, p.col, 4)?;
        check_ptr("conv2d: gather buffer", a.gather, 16)?;
        need("the gather buffer", a.gather_bytes, p.gather, es)?;
    }
    if a.grad_weight != 0 {
        check_ptr("conv2d: input", a.x, es)?;
    }
    if a.workspace != 0 {
        check_ptr("conv2d: cuBLAS workspace", a.workspace, 256)?;
    }
    Ok(p)
}

fn grid(total: i64) -> u32 {
    ((total.max(1) as u64).div_ceil(THREADS as u64)).min(MAX_GRID) as u32
}

struct Launcher<'a> {
    dev: &'a Device,
    stream: u64,
    sfx: &'static str,
}

impl Launcher<'_> {
    fn function(&self, base: &str) -> Result<Function> {
        self.dev
            .function("conv2d", &KERNELS, &format!("{base}_{}", self.sfx))
    }

    /// # Safety
    /// `P` must be the parameter struct of kernel `base`, with addresses valid for its accesses.
    unsafe fn run<P>(&self, base: &str, blocks: u32, mut p: P) -> Result<()> {
        let f = self.function(base)?;
        let mut args = [(&mut p as *mut P).cast::<c_void>()];
        self.dev.launch(f, blocks, THREADS, self.stream, &mut args)
    }
}

/// Compiles and loads the kernels and creates the cuBLAS handle of `ordinal` (so that a failure
/// there is reported before anything is queued).
pub fn prepare(ordinal: i32, dtype: DType) -> Result<()> {
    let (dev, _) = blas::device_and_handle(ordinal)?;
    dev.function(
        "conv2d",
        &KERNELS,
        &format!("conv_im2col_{}", suffix(dtype)),
    )?;
    Ok(())
}

/// Queues the forward on `stream`. Never synchronises.
///
/// # Safety
/// Every address must be device memory of device `ordinal`, contiguous with the shapes of `s`
/// (input, weight, bias [o], output [n, o, oh, ow]) in `dtype`, the buffers of the documented
/// sizes, all alive until the stream has run the queued work; the output and the column buffer
/// must not overlap anything else.
pub unsafe fn forward(
    ordinal: i32,
    stream: u64,
    dtype: DType,
    s: &ConvShape,
    a: &ForwardArgs,
) -> Result<()> {
    let p = validate_forward(dtype, s, a)?;
    let (dev, h) = blas::device_and_handle(ordinal)?;
    let run = Launcher {
        dev: &dev,
        stream,
        sfx: suffix(dtype),
    };
    let blas = Blas::bind(&dev, &h, stream, a.workspace, a.ws_bytes)?;
    let ab = Elem::from(dtype);
    let mut b0 = 0;
    while b0 < s.n {
        let nb = p.chunk.min(s.n - b0);
        let cols = nb * p.l;
        run.run(
            "conv_im2col",
            grid(s.c * cols),
            s.geom(&p, a.x, a.col, b0, nb),
        )?;
        // tmp[g*og + o][j] = sum_r W[g*og + o][r] col[g*k + r][j]: column-major
        // C (cols x og, ld cols) = A (cols x k: the col rows of group g, ld cols) * B (k x og: W_g,
        // ld k), batched over groups.
        blas.gemm(
            ab,
            Elem::F32,
            a.tf32,
            &Gemm {
                trans_a: false,
                trans_b: false,
                m: cols,
                n: p.og,
                k: p.k,
                a: a.col,
                lda: cols,
                stride_a: p.k * cols,
                b: a.weight,
                ldb: p.k,
                stride_b: p.og * p.k,
                c: a.tmp,
                ldc: cols,
                stride_c: p.og * cols,
                batch: s.groups,
                beta: 0.0,
            },
        )?;
        run.run(
            "conv_scatter",
            grid(s.o * cols),
            ConvScatter {
                tmp: a.tmp,
                bias: a.bias,
                out: a.out,
                o: s.o as i32,
                l: p.l as i32,
                b0: b0 as i32,
                nb: nb as i32,
            },
        )?;
        b0 += nb;
    }
    Ok(())
}

/// Queues the backward on `stream`. Never synchronises.
///
/// # Safety
/// As [`forward`], for grad_output [n, o, oh, ow] and the gradients (shaped like input, weight and
/// bias) and buffers of [`BackwardArgs`]; outputs and buffers overlap nothing else.
pub unsafe fn backward(
    ordinal: i32,
    stream: u64,
    dtype: DType,
    s: &ConvShape,
    a: &BackwardArgs,
) -> Result<()> {
    let p = validate_backward(dtype, s, a)?;
    let (dev, h) = blas::device_and_handle(ordinal)?;
    let run = Launcher {
        dev: &dev,
        stream,
        sfx: suffix(dtype),
    };
    let w_elems = s.o * p.k;
    if a.grad_bias != 0 {
        bias_grad(&run, s, &p, a)?;
    }
    if a.grad_x == 0 && a.grad_weight == 0 {
        return Ok(());
    }
    let blas = Blas::bind(&dev, &h, stream, a.workspace, a.ws_bytes)?;
    let ab = Elem::from(dtype);
    let mut b0 = 0;
    while b0 < s.n {
        let nb = p.chunk.min(s.n - b0);
        let cols = nb * p.l;
        run.run(
            "conv_gather",
            grid(s.o * cols),
            ConvGather {
                src: a.grad_out,
                dst: a.gather,
                o: s.o as i32,
                l: p.l as i32,
                b0: b0 as i32,
                nb: nb as i32,
            },
        )?;
        if a.grad_weight != 0 {
            run.run(
                "conv_im2col",
                grid(s.c * cols),
                s.geom(&p, a.x, a.col, b0, nb),
            )?;
            // gW[g*og + o][r] (+)= sum_j col[g*k + r][j] gT[g*og + o][j]: column-major
            // C (k x og, ld k) = A^T (A: cols x k, the col rows of group g) * B (cols x og, gT),
            // batched over groups.
            blas.gemm(
                ab,
                Elem::F32,
                a.tf32,
                &Gemm {
                    trans_a: true,
                    trans_b: false,
                    m: p.k,
                    n: p.og,
                    k: cols,
                    a: a.col,
                    lda: cols,
                    stride_a: p.k * cols,
                    b: a.gather,
                    ldb: cols,
                    stride_b: p.og * cols,
                    c: a.grad_weight_acc,
                    ldc: p.k,
                    stride_c: p.og * p.k,
                    batch: s.groups,
                    beta: if b0 == 0 { 0.0 } else { 1.0 },
                },
            )?;
        }
        if a.grad_x != 0 {
            // gcol[g*k + r][j] = sum_o gT[g*og + o][j] W[g*og + o][r]: column-major
            // C (cols x k, ld cols, fp32) = A (cols x og: gT, ld cols) * B^T (B: k x og, W_g ld k),
            // batched over groups. Overwrites the column matrix the weight gradient has read.
            blas.gemm(
                ab,
                Elem::F32,
                a.tf32,
                &Gemm {
                    trans_a: false,
                    trans_b: true,
                    m: cols,
                    n: p.k,
                    k: p.og,
                    a: a.gather,
                    lda: cols,
                    stride_a: p.og * cols,
                    b: a.weight,
                    ldb: p.k,
                    stride_b: p.og * p.k,
                    c: a.col,
                    ldc: cols,
                    stride_c: p.k * cols,
                    batch: s.groups,
                    beta: 0.0,
                },
            )?;
            run.run(
                "conv_col2im",
                grid(nb * s.c * s.h * s.w),
                s.geom(&p, a.grad_x, a.col, b0, nb),
            )?;
        }
        b0 += nb;
    }
    if a.grad_weight != 0 && a.grad_weight_acc != a.grad_weight {
        run.run(
            "conv_cast",
            grid(w_elems),
            ConvCast {
                src: a.grad_weight_acc,
                dst: a.grad_weight,
                n: w_elems,
            },
        )?;
    }
    Ok(())
}

/// # Safety
/// As [`backward`].
unsafe fn bias_grad(run: &Launcher<'_>, s: &ConvShape, p: &Plan, a: &BackwardArgs) -> Result<()> {
    let bg = ConvBiasGrad {
        grad_out: a.grad_out,
        partial: a.partial,
        grad_bias: a.grad_bias,
        n: s.n,
        o: s.o,
        l: p.l,
        slices: p.bias_slices,
    };
    run.run(
        "conv_bias_grad_partial",
        (s.o * p.bias_slices).clamp(1, MAX_GRID as i64) as u32,
        bg,
    )?;
    run.run("conv_bias_grad_final", grid(s.o), bg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ConvShape {
        ConvShape {
            n: 4,
            c: 6,
            h: 9,
            w: 8,
            o: 9,
            kh: 3,
            kw: 2,
            groups: 3,
            stride: [2, 1],
            padding: [1, 2, 0, 1],
            dilation: [1, 2],
        }
    }

    #[test]
    fn layouts_match_the_cuda_source() {
        let src = include_str!("../kernels/conv2d.cu");
        let line = src
            .lines()
            .find(|l| l.starts_with("#define CONV_THREADS "))
            .unwrap();
        assert_eq!(
            line["#define CONV_THREADS ".len()..]
                .trim()
                .parse::<u32>()
                .unwrap(),
            THREADS
        );
        use std::mem::size_of;
        assert_eq!(size_of::<ConvGeom>(), 2 * 8 + 16 * 4);
        assert_eq!(size_of::<ConvScatter>(), 3 * 8 + 4 * 4);
        assert_eq!(size_of::<ConvGather>(), 2 * 8 + 4 * 4);
        assert_eq!(size_of::<ConvBiasGrad>(), 3 * 8 + 4 * 8);
        assert_eq!(size_of::<ConvCast>(), 3 * 8);
        for k in KERNELS {
            let entry = k.rsplit_once('_').unwrap().0;
            assert!(
                src.contains(&format!("{entry}_##SUFFIX")),
                "{k} has no entry point"
            );
        }
    }

    #[test]
    fn plan_sizes() {
        let p = shape().plan(3).unwrap();
        // (9 + 3 - 3) / 2 + 1 = 5 rows; (8 + 1 - 3) / 1 + 1 = 7 columns.
        assert_eq!((p.oh, p.ow, p.l), (5, 7, 35));
        assert_eq!((p.cg, p.og, p.k), (2, 3, 12));
        assert_eq!(p.chunk, 3);
        assert_eq!(p.col, 6 * 3 * 2 * 3 * 35);
        assert_eq!(p.gather, 9 * 3 * 35);
        assert_eq!(shape().plan(100).unwrap().chunk, 4);
        assert_eq!(shape().plan(0).unwrap().chunk, 1);
    }

    #[test]
    fn chunks_fit_the_budget() {
        let s = shape();
        let per_image = 6 * 3 * 2 * 35 * 4;
        assert_eq!(s.chunk_for(per_image * 2).unwrap(), 2);
        assert_eq!(s.chunk_for(1).unwrap(), 1);
        assert_eq!(s.chunk_for(u64::MAX).unwrap(), 4);
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut s = shape();
        s.groups = 4;
        assert!(s.plan(1).is_err());
        let mut s = shape();
        s.h = 1;
        s.padding = [0; 4];
        assert!(s.plan(1).is_err());
        let mut s = shape();
        s.stride[0] = 0;
        assert!(s.plan(1).is_err());
        let mut s = shape();
        s.n = i64::MAX / 2;
        assert!(s.plan(1).is_err());
    }

    #[test]
    fn validation() {
        let s = shape();
        let f = ForwardArgs {
            x: 0x1000,
            weight: 0x2000,
            out: 0x3000,
            col: 0x4000,
            col_bytes: 1 << 20,
            tmp: 0x5000,
            tmp_bytes: 1 << 20,
            chunk: 4,
            ..Default::default()
        };
        assert!(validate_forward(DType::F32, &s, &f).is_ok());
        let mut g = f;
        g.tmp = 0;
        assert!(validate_forward(DType::F32, &s, &g).is_err());
        let mut g = f;
        g.col_bytes = 16;
        assert!(validate_forward(DType::F32, &s, &g).is_err());
        let mut g = f;
        g.out = 0x3002;
        assert!(validate_forward(DType::F32, &s, &g).is_err());
        assert!(validate_forward(DType::BF16, &s, &g).is_ok());
        let b = BackwardArgs {
            grad_out: 0x1000,
            x: 0x2000,
            weight: 0x3000,
            grad_x: 0x4000,
            col: 0x5000,
            col_bytes: 1 << 20,
            gather: 0x8000,
            gather_bytes: 1 << 20,
            chunk: 4,
            ..Default::default()
        };
        assert!(validate_backward(DType::F16, &s, &b).is_ok());
        let mut c = b;
        c.gather = 0;
        assert!(validate_backward(DType::F16, &s, &c).is_err());
        let mut c = b;
        c.grad_weight = 0x6000;
        assert!(validate_backward(DType::F16, &s, &c).is_err()); // no accumulator
        c.grad_weight_acc = 0x7000;
        assert!(validate_backward(DType::F16, &s, &c).is_ok());
        c.grad_bias = 0x9000;
        assert!(validate_backward(DType::F16, &s, &c).is_err()); // no partial sums
    }

    #[test]
    fn gemm_ranges() {
        let g = Gemm {
            m: 4,
            n: 3,
            k: 2,
            lda: 4,
            ldb: 2,
            ldc: 4,
            batch: 1,
            ..Default::default()
        };
        assert!(g.validate().is_ok());
        let mut h = g;
        h.lda = 3;
        assert!(h.validate().is_err());
        let mut h = g;
        h.trans_a = true;
        h.lda = 2;
        assert!(h.validate().is_ok());
        let mut h = g;
        h.m = 1 << 31;
        assert!(h.validate().is_err());
    }
}
