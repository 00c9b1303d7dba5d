//! Libraries, NVRTC compilation, and the per-(device, process) cache of loaded kernels.
//!
//! Order of checks, so that nothing panics: the library is looked up by soname first
//! (`is_culib_present`; cudarc panics when asked for a symbol of a library it cannot open), then
//! NVRTC's version (>= 12: the cubin API and C++17), then the driver calls, each returning
//! [`Error`]. As a last guard, every entry point runs inside `catch_unwind`.
//!
//! Kernels are compiled to a cubin for the device's own `sm_XY` rather than to PTX: a cubin built
//! by a newer NVRTC of the same major version loads on an older driver, PTX from it may not (the
//! driver cannot JIT a newer PTX ISA). The PTX path serves the compile check only.

use crate::error::{Error, Result};
use cudarc::driver::{result as cu, sys as cusys};
use cudarc::nvrtc::{result as rtc, sys as rtcsys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The prelude NVRTC sees in front of every kernel source (element types and conversions), so
/// that no include path is needed.
pub const COMMON_SRC: &str = include_str!("../kernels/common.cuh");
pub const ADAM_SRC: &str = include_str!("../kernels/adam.cu");
pub const CROSS_ENTROPY_SRC: &str = include_str!("../kernels/cross_entropy.cu");
pub const CONV2D_SRC: &str = include_str!("../kernels/conv2d.cu");
pub const ATTENTION_SRC: &str = include_str!("../kernels/attention.cu");

/// Runs `f`, turning a panic inside cudarc (a missing symbol, say) into an error.
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Error::Unavailable(format!(
            "CUDA library call failed: {msg}"
        )))
    })
}

/// Whether libnvrtc can be opened (by soname: preload torch's copy first, see `_cuda.py`).
///
/// A positive answer is cached: the lookup tries many candidate names, each a failed `dlopen`
/// that searches the library path (hundreds of microseconds), and a library found once stays
/// loaded (cudarc keeps it open).
pub fn nvrtc_present() -> bool {
    static FOUND: AtomicBool = AtomicBool::new(false);
    // SAFETY: only tries to dlopen the library by its candidate names; loads no symbol.
    cached(&FOUND, || unsafe { rtcsys::is_culib_present() })
}

/// `probe()`, remembered once it has said yes.
pub(crate) fn cached(found: &AtomicBool, probe: impl FnOnce() -> bool) -> bool {
    if found.load(Ordering::Relaxed) {
        return true;
    }
    let yes = probe();
    if yes {
        found.store(true, Ordering::Relaxed);
    }
    yes
}

/// Whether libcuda (the driver) can be opened.
pub fn driver_present() -> bool {
    static FOUND: AtomicBool = AtomicBool::new(false);
    // SAFETY: as above, for libcuda.
    cached(&FOUND, || unsafe {
        cudarc::driver::sys::is_culib_present()
    })
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(Error::Unavailable(
            "libnvrtc is not loadable: install a CUDA build of torch (its wheel ships libnvrtc) and import \
             bigmodel_native._cuda, which preloads it"
                .into(),
        ));
    }
    guard(|| {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: the library is present; the two out-pointers are valid for writes.
        unsafe { rtcsys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| Error::Unavailable(format!("nvrtcVersion failed: {e:?}")))?;
        if major < 12 {
            return Err(Error::Unavailable(format!(
                "NVRTC {major}.{minor} is too old; bigmodel_native's kernels need NVRTC 12 or newer"
            )));
        }
        Ok((major, minor))
    })
}

/// What NVRTC should produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// PTX for the virtual architecture `compute_XY`.
    Ptx,
    /// A cubin for the real architecture `sm_XY`.
    Cubin,
}

/// Compiles one kernel source, [`COMMON_SRC`] in front, for architecture `arch` (e.g. 90 for
/// sm_90). The log of a refused source comes back in [`Error::Compile`].
pub fn compile(name: &str, source: &str, arch: u32, out: Output) -> Result<Vec<u8>> {
    nvrtc_version()?;
    let src = CString::new(format!("{COMMON_SRC}{source}"))
        .map_err(|_| Error::Value(format!("{name}: source holds a NUL byte")))?;
    let cname = CString::new(format!("{name}.cu")).expect("no NUL in a kernel name");
    let arch_opt = match out {
        Output::Ptx => format!("--gpu-architecture=compute_{arch}"),
        Output::Cubin => format!("--gpu-architecture=sm_{arch}"),
    };
    let opts = [arch_opt.as_str(), "-std=c++17", "--fmad=true"];
    guard(|| {
        let prog = rtc::create_program(&src, Some(&cname))
            .map_err(|e| Error::Compile(format!("{name}: nvrtcCreateProgram failed: {e:?}")))?;
        // SAFETY: `prog` was just created and is destroyed exactly once below; `src` and `cname`
        // outlive it.
        let result = unsafe {
            match rtc::compile_program(prog, &opts) {
                Ok(()) => read_output(prog, out),
                Err(e) => {
                    let log = rtc::get_program_log(prog)
                        .map(|l| c_chars_to_string(&l))
                        .unwrap_or_default();
                    Err(Error::Compile(format!(
                        "NVRTC could not compile {name}.cu for sm_{arch} ({e:?}):\n{log}"
                    )))
                }
            }
        };
        // SAFETY: created above, not destroyed before.
        let _ = unsafe { rtc::destroy_program(prog) };
        result
    })
}

/// # Safety
/// `prog` must be a live, successfully compiled program.
unsafe fn read_output(prog: rtcsys::nvrtcProgram, out: Output) -> Result<Vec<u8>> {
    let fail = |what: &str, e: rtcsys::nvrtcResult| Error::Compile(format!("{what} failed: {e:?}"));
    match out {
        Output::Ptx => {
            let ptx = rtc::get_ptx(prog).map_err(|e| fail("nvrtcGetPTX", e.0))?;
            Ok(ptx.iter().map(|&c| c as u8).collect())
        }
        Output::Cubin => {
            let mut size = 0usize;
            rtcsys::nvrtcGetCUBINSize(prog, &mut size)
                .result()
                .map_err(|e| fail("nvrtcGetCUBINSize", e.0))?;
            let mut buf = vec![0u8; size];
            rtcsys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
                .result()
                .map_err(|e| fail("nvrtcGetCUBIN", e.0))?;
            Ok(buf)
        }
    }
}

fn c_chars_to_string(v: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A loaded module's kernels.
struct Module {
    functions: HashMap<&'static str, Function>,
}

/// A kernel handle.
#[derive(Clone, Copy, Debug)]
pub struct Function(cusys::CUfunction);

// SAFETY: CUDA driver handles (contexts, modules, functions) may be used from any thread; the
// driver API is thread-safe. The handles are never freed (the cache lives as long as the process).
unsafe impl Send for Function {}
unsafe impl Sync for Function {}

/// One device, as this process sees it.
pub struct Device {
    ordinal: i32,
    ctx: Ctx,
    /// Compute capability as major * 10 + minor (90 on H100).
    pub arch: u32,
    modules: Mutex<HashMap<&'static str, Arc<Module>>>,
}

#[derive(Clone, Copy)]
struct Ctx(cusys::CUcontext);
// SAFETY: see `Function`.
unsafe impl Send for Ctx {}
unsafe impl Sync for Ctx {}

/// Devices by ordinal, for the process that initialised them (a forked child starts afresh, and
/// gets the driver's own error there).
type DeviceMap = HashMap<i32, Arc<Device>>;
static DEVICES: Mutex<Option<(u32, DeviceMap)>> = Mutex::new(None);

/// Whether a CUDA device can be used: the driver library loads, initialises, and reports a device.
pub fn cuda_available() -> bool {
    device_count().map(|n| n > 0).unwrap_or(false)
}

/// Number of CUDA devices (an error when the driver is absent).
pub fn device_count() -> Result<i32> {
    if !driver_present() {
        return Err(Error::Unavailable(
            "CUDA is not available: the driver library libcuda.so.1 cannot be loaded (no NVIDIA driver on \
             this machine)"
                .into(),
        ));
    }
    guard(|| {
        cu::init().map_err(|e| Error::driver("cuInit", e))?;
        cu::device::get_count().map_err(|e| Error::driver("cuDeviceGetCount", e))
    })
}

/// The device `ordinal`, its primary context (the one torch uses) retained for the process.
pub fn device(ordinal: i32) -> Result<Arc<Device>> {
    let n = device_count()?;
    if ordinal < 0 || ordinal >= n {
        return Err(Error::Value(format!(
            "CUDA device {ordinal} does not exist ({n} devices)"
        )));
    }
    let mut lock = DEVICES.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    if lock.as_ref().map(|(p, _)| *p) != Some(pid) {
        *lock = Some((pid, HashMap::new()));
    }
    let map = &mut lock.as_mut().expect("set just above").1;
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = guard(|| {
        let dev = cu::device::get(ordinal).map_err(|e| Error::driver("cuDeviceGet", e))?;
        let attr = |a| {
            // SAFETY: `dev` comes from cuDeviceGet.
            unsafe { cu::device::get_attribute(dev, a) }
                .map_err(|e| Error::driver("cuDeviceGetAttribute", e))
        };
        let major = attr(cusys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(cusys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        // SAFETY: `dev` comes from cuDeviceGet. The reference is kept for the life of the process,
        // so the context outlives every module loaded into it.
        let ctx = unsafe { cu::primary_ctx::retain(dev) }
            .map_err(|e| Error::driver("cuDevicePrimaryCtxRetain", e))?;
        Ok(Device {
            ordinal,
            ctx: Ctx(ctx),
            arch: (major * 10 + minor) as u32,
            modules: Mutex::new(HashMap::new()),
        })
    })?;
    let d = Arc::new(d);
    map.insert(ordinal, d.clone());
    Ok(d)
}

/// Makes `ctx` current on this thread for the duration of `f`, then restores what was current
/// (torch's runtime keeps its own notion of the current device; leave it as found).
fn with_context<T>(ctx: Ctx, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let prev = cu::ctx::get_current().map_err(|e| Error::driver("cuCtxGetCurrent", e))?;
    let switch = prev != Some(ctx.0);
    if switch {
        // SAFETY: `ctx` is a primary context retained for the life of the process.
        unsafe { cu::ctx::set_current(ctx.0) }.map_err(|e| Error::driver("cuCtxSetCurrent", e))?;
    }
    let out = f();
    if switch {
        // SAFETY: restores the context that was current (or none) before the call.
        unsafe { cu::ctx::set_current(prev.unwrap_or(std::ptr::null_mut())) }
            .map_err(|e| Error::driver("cuCtxSetCurrent", e))?;
    }
    out
}

impl Device {
    pub fn ordinal(&self) -> i32 {
        self.ordinal
    }

    /// Runs `f` with this device's primary context current on the thread (restoring what was
    /// current afterwards): for library calls (cuBLAS) that act on the current context.
    pub fn with_current<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        with_context(self.ctx, || guard(f))
    }

    /// Kernel `kernel` of source `source` (one of [`crate::SOURCES`]), compiling and loading the
    /// source on first use.
    pub fn function(
        &self,
        source: &'static str,
        kernels: &[&'static str],
        kernel: &str,
    ) -> Result<Function> {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = modules.get(source).and_then(|m| m.functions.get(kernel)) {
            return Ok(*f);
        }
        let text = crate::SOURCES
            .iter()
            .find(|(n, _)| *n == source)
            .map(|(_, t)| *t)
            .ok_or_else(|| Error::Value(format!("unknown kernel source {source}")))?;
        let cubin = compile(source, text, self.arch, Output::Cubin)?;
        let module = with_context(self.ctx, || {
            guard(|| {
                // SAFETY: `cubin` is a complete cubin image from NVRTC, alive for the call.
                let m = unsafe { cu::module::load_data(cubin.as_ptr() as *const c_void) }.map_err(
                    |e| Error::driver(&format!("loading {source}'s cubin for sm_{}", self.arch), e),
                )?;
                let mut functions = HashMap::new();
                for &k in kernels {
                    let name = CString::new(k).expect("kernel names hold no NUL");
                    // SAFETY: `m` was just loaded and is never unloaded.
                    let f = unsafe { cu::module::get_function(m, name) }
                        .map_err(|e| Error::driver(&format!("cuModuleGetFunction({k})"), e))?;
                    functions.insert(k, Function(f));
                }
                Ok(Module { functions })
            })
        })?;
        let module = Arc::new(module);
        modules.insert(source, module.clone());
        module
            .functions
            .get(kernel)
            .copied()
            .ok_or_else(|| Error::Value(format!("{source} has no kernel {kernel}")))
    }

    /// Launches `f` on torch's stream `stream` (a `cudaStream_t` as an integer; 0 is the legacy
    /// default stream). Asynchronous: returns once the launch is queued.
    ///
    /// # Safety
    /// `args` must point at values whose types and order match the kernel's parameters, and every
    /// device address inside them must be valid for the accesses the kernel makes, on `stream`,
    /// until the kernel has run (torch's caching allocator guarantees that for tensors the caller
    /// keeps alive through the launch on their own stream).
    pub unsafe fn launch(
        &self,
        f: Function,
        grid: u32,
        block: u32,
        stream: u64,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.launch_2d(f, (grid, 1), block, 0, stream, args)
    }

    /// As [`Device::launch`], with a two-dimensional grid and `smem` bytes of dynamic shared
    /// memory (above 48 KiB the kernel's limit is raised first, as the driver requires).
    ///
    /// # Safety
    /// As [`Device::launch`]; `smem` must be what the kernel expects of its dynamic shared memory.
    pub unsafe fn launch_2d(
        &self,
        f: Function,
        grid: (u32, u32),
        block: u32,
        smem: u32,
        stream: u64,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        with_context(self.ctx, || {
            guard(|| {
                if smem > 48 * 1024 {
                    cu::function::set_function_attribute(
                        f.0,
                        cusys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        smem as i32,
                    )
                    .map_err(|e| Error::driver("cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)", e))?;
                }
                cu::launch_kernel(
                    f.0,
                    (grid.0, grid.1, 1),
                    (block, 1, 1),
                    smem,
                    stream as cusys::CUstream,
                    args,
                )
                .map_err(|e| Error::driver("cuLaunchKernel", e))
            })
        })
    }
}

/// Checks a tensor address the kernels will use: non-null and aligned to its element.
pub fn check_ptr(what: &str, ptr: u64, align: u64) -> Result<()> {
    if ptr == 0 {
        return Err(Error::Value(format!("{what}: null device pointer")));
    }
    if !ptr.is_multiple_of(align) {
        return Err(Error::Value(format!(
            "{what}: device pointer {ptr:#x} is not aligned to {align} bytes"
        )));
    }
    Ok(())
}
