//! cuBLAS through cudarc's `sys` layer: one handle per (device, process), created on first use in
//! the device's primary context (torch's), its stream and workspace set on every call to the
//! caller's (torch's current stream, a workspace tensor from torch's allocator), so nothing runs on
//! a stream torch does not know about and cuBLAS allocates nothing itself (which keeps the calls
//! legal inside CUDA-graph capture). GEMMs are `cublasGemmStridedBatchedEx` with fp32 compute.
//!
//! cuBLAS is column-major; the callers in [`crate::conv2d`] state each product in those terms.

use crate::adam::DType;
use crate::error::{Error, Result};
use crate::runtime::{self, Device};
use cudarc::cublas::sys as cb;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// Whether libcublas can be opened (by soname: `_cuda.py` preloads torch's copy).
pub fn cublas_present() -> bool {
    static FOUND: AtomicBool = AtomicBool::new(false);
    // SAFETY: only tries to dlopen the library by its candidate names; loads no symbol.
    runtime::cached(&FOUND, || unsafe { cb::is_culib_present() })
}

/// A cuBLAS handle (see [`handle`]).
pub struct Handle(cb::cublasHandle_t);
// SAFETY: a cuBLAS handle may be used from any thread as long as calls on it do not overlap; every
// use goes through the `Mutex` that holds it. It is never destroyed (it lives as long as the
// process, like the primary context it belongs to).
unsafe impl Send for Handle {}

type HandleMap = HashMap<i32, Arc<Mutex<Handle>>>;
static HANDLES: Mutex<Option<(u32, HandleMap)>> = Mutex::new(None);

fn status(what: &str, s: cb::cublasStatus_t) -> Result<()> {
    if s == cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Driver(format!("{what} failed: {s:?}")))
    }
}

/// The element type of a GEMM operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    BF16,
    F16,
}

impl From<DType> for Elem {
    fn from(d: DType) -> Self {
        match d {
            DType::F32 => Elem::F32,
            DType::BF16 => Elem::BF16,
            DType::F16 => Elem::F16,
        }
    }
}

impl Elem {
    fn cuda(self) -> cb::cudaDataType {
        match self {
            Elem::F32 => cb::cudaDataType::CUDA_R_32F,
            Elem::BF16 => cb::cudaDataType::CUDA_R_16BF,
            Elem::F16 => cb::cudaDataType::CUDA_R_16F,
        }
    }
}

/// One strided-batched GEMM, column-major: `C_i = alpha * op(A_i) op(B_i) + beta * C_i` for
/// `i < batch`, with `op(A_i)` m x k, `op(B_i)` k x n, `C_i` m x n; operand `X_i` starts at
/// `X + i * stride_x` elements.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: i64,
    pub n: i64,
    pub k: i64,
    pub a: u64,
    pub lda: i64,
    pub stride_a: i64,
    pub b: u64,
    pub ldb: i64,
    pub stride_b: i64,
    pub c: u64,
    pub ldc: i64,
    pub stride_c: i64,
    pub batch: i64,
    pub beta: f32,
}

impl Gemm {
    /// The checks cuBLAS would make (sizes in `int`, leading dimensions at least the rows).
    pub fn validate(&self) -> Result<()> {
        let fits = |v: i64| (0..=i32::MAX as i64).contains(&v);
        let rows_a = if self.trans_a { self.k } else { self.m };
        let rows_b = if self.trans_b { self.n } else { self.k };
        let ok = [
            self.m, self.n, self.k, self.lda, self.ldb, self.ldc, self.batch,
        ]
        .iter()
        .all(|&v| fits(v))
            && self.lda >= rows_a.max(1)
            && self.ldb >= rows_b.max(1)
            && self.ldc >= self.m.max(1)
            && self.stride_a >= 0
            && self.stride_b >= 0
            && self.stride_c >= 0;
        if ok {
            Ok(())
        } else {
            Err(Error::Value(format!(
                "GEMM out of cuBLAS's range: {self:?}"
            )))
        }
    }
}

/// A locked cuBLAS handle bound to one stream and workspace for a sequence of GEMMs.
pub struct Blas<'a> {
    handle: std::sync::MutexGuard<'a, Handle>,
    dev: &'a Device,
}

/// The handle of device `dev` (created on first use).
pub fn handle(dev: &Device) -> Result<Arc<Mutex<Handle>>> {
    if !cublas_present() {
        return Err(Error::Unavailable(
            "libcublas is not loadable: install a CUDA build of torch (its wheel ships libcublas) and \
             import bigmodel_native._cuda, which preloads it"
                .into(),
        ));
    }
    let mut lock = HANDLES.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if lock.as_ref().map(|(p, _)| *p) != Some(pid) {
        *lock = Some((pid, HashMap::new()));
    }
    let map = &mut lock.as_mut().expect("set just above").1;
    if let Some(h) = map.get(&dev.ordinal()) {
        return Ok(h.clone());
    }
    let h = dev.with_current(|| {
        let mut h: cb::cublasHandle_t = std::ptr::null_mut();
        // SAFETY: the library is present, the device's context is current, `h` is a valid
        // out-pointer.
        status("cublasCreate", unsafe { cb::cublasCreate_v2(&mut h) })?;
        Ok(Handle(h))
    })?;
    let h = Arc::new(Mutex::new(h));
    map.insert(dev.ordinal(), h.clone());
    Ok(h)
}

impl<'a> Blas<'a> {
    /// Locks `h` and binds it to `stream` with the caller's `workspace` (`ws_bytes` bytes of device
    /// memory, alive until the stream has run every GEMM queued through this value; 0 / 0 lets
    /// cuBLAS use its own default workspace).
    ///
    /// # Safety
    /// `stream` must be a live stream of `dev` (or 0) and `workspace` device memory of `dev`.
    pub unsafe fn bind(
        dev: &'a Device,
        h: &'a Mutex<Handle>,
        stream: u64,
        workspace: u64,
        ws_bytes: u64,
    ) -> Result<Self> {
        let handle = h.lock().unwrap_or_else(|p| p.into_inner());
        let raw = handle.0;
        dev.with_current(|| {
            status(
                "cublasSetStream",
                cb::cublasSetStream_v2(raw, stream as usize as cb::cudaStream_t),
            )?;
            if workspace != 0 && ws_bytes != 0 {
                status(
                    "cublasSetWorkspace",
                    cb::cublasSetWorkspace_v2(
                        raw,
                        workspace as usize as *mut c_void,
                        ws_bytes as usize,
                    ),
                )?;
            }
            Ok(())
        })?;
        Ok(Blas { handle, dev })
    }

    /// Queues `g` with A and B of type `ab`, C of type `c`, fp32 compute (TF32 tensor cores for
    /// fp32 operands when `tf32`), alpha = 1.
    ///
    /// # Safety
    /// Every operand address, with its leading dimension, strides and batch, must lie inside live
    /// device memory of this device that stays alive until the stream has run the GEMM; C must not
    /// overlap A or B.
    pub unsafe fn gemm(&self, ab: Elem, c: Elem, tf32: bool, g: &Gemm) -> Result<()> {
        g.validate()?;
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                cb::cublasOperation_t::CUBLAS_OP_T
            } else {
                cb::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let compute = if tf32 && ab == Elem::F32 {
            cb::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            cb::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let alpha = 1.0f32;
        let beta = g.beta;
        let raw = self.handle.0;
        self.dev.with_current(|| {
            status(
                "cublasGemmStridedBatchedEx",
                cb::cublasGemmStridedBatchedEx(
                    raw,
                    op(g.trans_a),
                    op(g.trans_b),
                    g.m as i32,
                    g.n as i32,
                    g.k as i32,
                    (&alpha as *const f32).cast(),
                    g.a as usize as *const c_void,
                    ab.cuda(),
                    g.lda as i32,
                    g.stride_a,
                    g.b as usize as *const c_void,
                    ab.cuda(),
                    g.ldb as i32,
                    g.stride_b,
                    (&beta as *const f32).cast(),
                    g.c as usize as *mut c_void,
                    c.cuda(),
                    g.ldc as i32,
                    g.stride_c,
                    g.batch as i32,
                    compute,
                    cb::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                ),
            )
        })
    }
}

/// Device `ordinal` and its cuBLAS handle.
pub fn device_and_handle(ordinal: i32) -> Result<(Arc<Device>, Arc<Mutex<Handle>>)> {
    let dev = runtime::device(ordinal)?;
    let h = handle(&dev)?;
    Ok((dev, h))
}
