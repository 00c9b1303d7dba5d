//! Launch side of the fused multi-tensor Adam / AdamW kernel (`kernels/adam.cu`, whose header
//! states the algorithm).
//!
//! A parameter group becomes a list of launch batches: each holds at most [`MAX_TENSORS`] tensors
//! and [`MAX_BLOCKS`] chunks of [`CHUNK`] elements, in a table passed by value as the kernel's
//! parameter (no device allocation, no host-to-device copy: capturable in a CUDA graph). A tensor
//! larger than one batch continues in the next. Device step counters are incremented by a
//! one-block kernel queued before the batch that first holds the tensor, so each counter moves
//! exactly once per step and every block of the update reads the new count.

use crate::error::{Error, Result};
use crate::runtime::{self, check_ptr};
use std::ffi::c_void;

// A launch must fill the GPU: with 32 tensors of a few chunks each, one launch had fewer blocks
// than an H100 has multiprocessors and the step ran at a quarter of copy bandwidth. 192 tensors and
// 1536 blocks make a 22 KiB table, which needs the large kernel parameters of CUDA 12.1+ on
// sm_70+ (up to 32764 bytes).
pub const MAX_TENSORS: usize = 192;
pub const MAX_BLOCKS: usize = 1536;
pub const CHUNK: u64 = 65536;
pub const THREADS: u32 = 512;

const KERNELS: [&str; 4] = [
    "adam_bump_steps",
    "adam_step_f32",
    "adam_step_bf16",
    "adam_step_f16",
];

/// The launch table (layout shared with `struct AdamBatch` in adam.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AdamBatch {
    pub param: [u64; MAX_TENSORS],
    pub grad: [u64; MAX_TENSORS],
    pub exp_avg: [u64; MAX_TENSORS],
    pub exp_avg_sq: [u64; MAX_TENSORS],
    pub max_exp_avg_sq: [u64; MAX_TENSORS],
    pub step: [u64; MAX_TENSORS],
    pub numel: [i64; MAX_TENSORS],
    pub host_step: [f64; MAX_TENSORS],
    pub step_kind: [u8; MAX_TENSORS],
    pub bump: [u8; MAX_TENSORS],
    pub block_tensor: [u16; MAX_BLOCKS],
    pub block_chunk: [u32; MAX_BLOCKS],
}

/// The hyper-parameters (layout shared with `struct AdamHyper` in adam.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AdamHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Device address of a float32 scalar (AMP's scale), or 0.
    pub grad_scale: u64,
    /// Device address of a float32 scalar (AMP's overflow flag, 1.0 skips the step), or 0.
    pub found_inf: u64,
    pub amsgrad: i32,
    pub maximize: i32,
    pub decoupled: i32,
    /// Filled in per batch.
    pub n_tensors: i32,
}

/// Where a tensor's step counter lives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepCounter {
    /// On the host, already incremented by the caller: the count after this step's increment.
    Host(f64),
    /// A float32 scalar on the device, incremented on the stream.
    DeviceF32(u64),
    /// A float64 scalar on the device, incremented on the stream.
    DeviceF64(u64),
}

/// Parameter storage type (the math is fp32 for all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
    fn kernel(self) -> &'static str {
        match self {
            DType::F32 => "adam_step_f32",
            DType::BF16 => "adam_step_bf16",
            DType::F16 => "adam_step_f16",
        }
    }
}

/// Device addresses of one parameter and its state (all of `numel` elements of one dtype).
#[derive(Clone, Copy, Debug)]
pub struct AdamTensor {
    pub param: u64,
    pub grad: u64,
    pub exp_avg: u64,
    pub exp_avg_sq: u64,
    /// 0 unless amsgrad.
    pub max_exp_avg_sq: u64,
    pub numel: u64,
    pub step: StepCounter,
}

fn empty_batch() -> AdamBatch {
    AdamBatch {
        param: [0; MAX_TENSORS],
        grad: [0; MAX_TENSORS],
        exp_avg: [0; MAX_TENSORS],
        exp_avg_sq: [0; MAX_TENSORS],
        max_exp_avg_sq: [0; MAX_TENSORS],
        step: [0; MAX_TENSORS],
        numel: [0; MAX_TENSORS],
        host_step: [0.0; MAX_TENSORS],
        step_kind: [0; MAX_TENSORS],
        bump: [0; MAX_TENSORS],
        block_tensor: [0; MAX_BLOCKS],
        block_chunk: [0; MAX_BLOCKS],
    }
}

/// One launch: its table, how many tensor slots and blocks it uses, whether any counter moves.
#[derive(Clone, Debug)]
pub struct Launch {
    pub batch: AdamBatch,
    pub n_tensors: usize,
    pub n_blocks: usize,
    pub bumps: bool,
}

/// Cuts a group into launches (pure: unit-tested without a GPU).
pub fn plan(tensors: &[AdamTensor]) -> Vec<Launch> {
    let mut out = Vec::new();
    let mut cur = Launch {
        batch: empty_batch(),
        n_tensors: 0,
        n_blocks: 0,
        bumps: false,
    };
    for t in tensors {
        let chunks = t.numel.div_ceil(CHUNK);
        let mut next_chunk = 0u64;
        let mut first = true;
        loop {
            if cur.n_tensors == MAX_TENSORS || (cur.n_blocks == MAX_BLOCKS && next_chunk < chunks) {
                out.push(std::mem::replace(
                    &mut cur,
                    Launch {
                        batch: empty_batch(),
                        n_tensors: 0,
                        n_blocks: 0,
                        bumps: false,
                    },
                ));
            }
            let s = cur.n_tensors;
            let b = &mut cur.batch;
            b.param[s] = t.param;
            b.grad[s] = t.grad;
            b.exp_avg[s] = t.exp_avg;
            b.exp_avg_sq[s] = t.exp_avg_sq;
            b.max_exp_avg_sq[s] = t.max_exp_avg_sq;
            b.numel[s] = t.numel as i64;
            (b.step_kind[s], b.step[s], b.host_step[s]) = match t.step {
                StepCounter::Host(v) => (0, 0, v),
                StepCounter::DeviceF32(p) => (1, p, 0.0),
                StepCounter::DeviceF64(p) => (2, p, 0.0),
            };
            if first && b.step_kind[s] != 0 {
                b.bump[s] = 1;
                cur.bumps = true;
            }
            first = false;
            cur.n_tensors += 1;
            while next_chunk < chunks && cur.n_blocks < MAX_BLOCKS {
                cur.batch.block_tensor[cur.n_blocks] = s as u16;
                cur.batch.block_chunk[cur.n_blocks] = next_chunk as u32;
                cur.n_blocks += 1;
                next_chunk += 1;
            }
            if next_chunk == chunks {
                break;
            }
        }
    }
    if cur.n_tensors > 0 {
        out.push(cur);
    }
    out
}

/// Checks every address the kernel will touch.
pub fn validate(dtype: DType, hyper: &AdamHyper, tensors: &[AdamTensor]) -> Result<()> {
    let a = dtype.size();
    for (i, t) in tensors.iter().enumerate() {
        if t.numel == 0 {
            // torch gives empty tensors a null address; no block reads them, only the counter moves.
            match t.step {
                StepCounter::DeviceF32(p) => check_ptr(&format!("adam: state_steps[{i}]"), p, 4)?,
                StepCounter::DeviceF64(p) => check_ptr(&format!("adam: state_steps[{i}]"), p, 8)?,
                StepCounter::Host(_) => {}
            }
            continue;
        }
        check_ptr(&format!("adam: param {i}"), t.param, a)?;
        check_ptr(&format!("adam: grad {i}"), t.grad, a)?;
        check_ptr(&format!("adam: exp_avg {i}"), t.exp_avg, a)?;
        check_ptr(&format!("adam: exp_avg_sq {i}"), t.exp_avg_sq, a)?;
        if hyper.amsgrad != 0 {
            check_ptr(&format!("adam: max_exp_avg_sq {i}"), t.max_exp_avg_sq, a)?;
        } else if t.max_exp_avg_sq != 0 {
            return Err(Error::Value(format!(
                "adam: max_exp_avg_sq {i} given without amsgrad"
            )));
        }
        match t.step {
            StepCounter::Host(v) if v.is_nan() || v < 1.0 => {
                return Err(Error::Value(format!(
                    "adam: step {i} is {v}; the count after the increment is >= 1"
                )))
            }
            StepCounter::DeviceF32(p) => check_ptr(&format!("adam: state_steps[{i}]"), p, 4)?,
            StepCounter::DeviceF64(p) => check_ptr(&format!("adam: state_steps[{i}]"), p, 8)?,
            StepCounter::Host(_) => {}
        }
    }
    for (what, p) in [
        ("grad_scale", hyper.grad_scale),
        ("found_inf", hyper.found_inf),
    ] {
        if p != 0 {
            check_ptr(&format!("adam: {what}"), p, 4)?;
        }
    }
    Ok(())
}

/// Compiles and loads the kernels `dtype` needs on device `ordinal` (a no-op once cached), so that
/// a caller can fail before changing anything.
pub fn prepare(ordinal: i32, dtype: DType) -> Result<()> {
    let dev = runtime::device(ordinal)?;
    dev.function("adam", &KERNELS, "adam_bump_steps")?;
    dev.function("adam", &KERNELS, dtype.kernel())?;
    Ok(())
}

/// Queues one Adam/AdamW step over `tensors` (all of `dtype`) on device `ordinal`'s stream
/// `stream`. Never synchronises.
///
/// # Safety
/// Every address in `tensors` and `hyper` must be device memory of device `ordinal` holding
/// `numel` elements of `dtype` (scalars for the counters, grad_scale and found_inf), kept alive by
/// the caller until the stream has run the kernels, and no two tensors may overlap.
pub unsafe fn adam_step(
    ordinal: i32,
    stream: u64,
    dtype: DType,
    hyper: AdamHyper,
    tensors: &[AdamTensor],
) -> Result<()> {
    validate(dtype, &hyper, tensors)?;
    let dev = runtime::device(ordinal)?;
    let bump = dev.function("adam", &KERNELS, "adam_bump_steps")?;
    let step = dev.function("adam", &KERNELS, dtype.kernel())?;
    for mut l in plan(tensors) {
        let mut h = hyper;
        h.n_tensors = l.n_tensors as i32;
        let mut args = [
            (&mut l.batch as *mut AdamBatch).cast::<c_void>(),
            (&mut h as *mut AdamHyper).cast::<c_void>(),
        ];
        if l.bumps {
            dev.launch(bump, 1, MAX_TENSORS as u32, stream, &mut args)?;
        }
        if l.n_blocks > 0 {
            dev.launch(step, l.n_blocks as u32, THREADS, stream, &mut args)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `#define NAME value` in a kernel source.
    pub(crate) fn define(src: &str, name: &str) -> u64 {
        let pat = format!("#define {name} ");
        let line = src
            .lines()
            .find(|l| l.starts_with(&pat))
            .unwrap_or_else(|| panic!("{name} missing"));
        line[pat.len()..].trim().parse().unwrap()
    }

    #[test]
    fn layout_matches_the_cuda_source() {
        let src = include_str!("../kernels/adam.cu");
        assert_eq!(define(src, "ADAM_MAX_TENSORS"), MAX_TENSORS as u64);
        assert_eq!(define(src, "ADAM_MAX_BLOCKS"), MAX_BLOCKS as u64);
        assert_eq!(define(src, "ADAM_CHUNK"), CHUNK);
        assert_eq!(define(src, "ADAM_THREADS"), THREADS as u64);
        // 8 arrays of 8-byte slots, 2 of bytes, then u16 and u32 per block: C's layout, no padding.
        let expected = MAX_TENSORS * (8 * 8 + 2) + MAX_BLOCKS * (2 + 4);
        assert_eq!(std::mem::size_of::<AdamBatch>(), expected);
        assert_eq!(std::mem::size_of::<AdamHyper>(), 5 * 8 + 2 * 8 + 4 * 4);
        // Both arguments together fit the large kernel-parameter limit (CUDA 12.1+, sm_70+).
        assert!(std::mem::size_of::<AdamBatch>() + std::mem::size_of::<AdamHyper>() <= 32764);
    }

    fn t(i: u64, numel: u64, step: StepCounter) -> AdamTensor {
        AdamTensor {
            param: 0x1000 * (5 * i + 1),
            grad: 0x1000 * (5 * i + 2),
            exp_avg: 0x1000 * (5 * i + 3),
            exp_avg_sq: 0x1000 * (5 * i + 4),
            max_exp_avg_sq: 0,
            numel,
            step,
        }
    }

    /// Every chunk of every tensor appears exactly once, and every device counter is bumped once.
    fn check_cover(tensors: &[AdamTensor], launches: &[Launch]) {
        let mut seen = std::collections::HashMap::<(u64, u32), usize>::new();
        let mut bumps = std::collections::HashMap::<u64, usize>::new();
        for l in launches {
            assert!(l.n_tensors <= MAX_TENSORS && l.n_blocks <= MAX_BLOCKS);
            for b in 0..l.n_blocks {
                let s = l.batch.block_tensor[b] as usize;
                assert!(s < l.n_tensors);
                *seen
                    .entry((l.batch.param[s], l.batch.block_chunk[b]))
                    .or_default() += 1;
            }
            for s in 0..l.n_tensors {
                if l.batch.bump[s] == 1 {
                    *bumps.entry(l.batch.step[s]).or_default() += 1;
                }
            }
        }
        for t in tensors {
            for c in 0..t.numel.div_ceil(CHUNK) as u32 {
                assert_eq!(
                    seen.get(&(t.param, c)),
                    Some(&1),
                    "chunk {c} of {:#x}",
                    t.param
                );
            }
            if let StepCounter::DeviceF32(p) | StepCounter::DeviceF64(p) = t.step {
                assert_eq!(bumps.get(&p), Some(&1));
            }
        }
        let total: u64 = tensors.iter().map(|t| t.numel.div_ceil(CHUNK)).sum();
        assert_eq!(seen.len() as u64, total);
    }

    #[test]
    fn many_small_tensors_fill_tensor_slots() {
        let n = 2 * MAX_TENSORS as u64 + 4;
        let ts: Vec<_> = (0..n)
            .map(|i| t(i, 1000 + i, StepCounter::DeviceF32(0x9000_0000 + 8 * i)))
            .collect();
        let plan = plan(&ts);
        assert_eq!(plan.len(), 3); // MAX_TENSORS + MAX_TENSORS + 4 tensors
        check_cover(&ts, &plan);
    }

    #[test]
    fn huge_tensor_spans_launches_and_bumps_once() {
        let ts = vec![
            t(0, 3, StepCounter::DeviceF64(0xa000)),
            t(
                1,
                CHUNK * (2 * MAX_BLOCKS as u64 + 88) + 7,
                StepCounter::DeviceF64(0xa008),
            ),
            t(2, CHUNK, StepCounter::Host(3.0)),
        ];
        let plan = plan(&ts);
        assert_eq!(plan.len(), 3); // 1 + (2 * MAX_BLOCKS + 89) + 1 blocks over MAX_BLOCKS-block launches
        check_cover(&ts, &plan);
        assert!(!plan[1].bumps && !plan[2].bumps);
        assert_eq!(plan[2].batch.host_step[1], 3.0);
    }

    #[test]
    fn empty_tensors_still_count_their_step() {
        let ts = vec![
            t(0, 0, StepCounter::DeviceF32(0xb000)),
            t(1, 0, StepCounter::Host(1.0)),
        ];
        let plan = plan(&ts);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].n_blocks, 0);
        assert!(plan[0].bumps);
        check_cover(&ts, &plan);
        assert!(plan_is_empty_for_nothing());
    }

    fn plan_is_empty_for_nothing() -> bool {
        plan(&[]).is_empty()
    }

    #[test]
    fn validation_refuses_bad_addresses() {
        let hyper = AdamHyper::default();
        let mut x = t(0, 10, StepCounter::Host(1.0));
        assert!(validate(DType::F32, &hyper, &[x]).is_ok());
        x.grad = 0;
        assert!(matches!(
            validate(DType::F32, &hyper, &[x]),
            Err(Error::Value(_))
        ));
        x.grad = 0x2002;
        assert!(validate(DType::F32, &hyper, &[x]).is_err());
        assert!(validate(DType::BF16, &hyper, &[x]).is_ok());
        x.step = StepCounter::Host(0.0);
        assert!(validate(DType::BF16, &hyper, &[x]).is_err());
        let y = t(0, 10, StepCounter::Host(1.0));
        let ams = AdamHyper {
            amsgrad: 1,
            ..hyper
        };
        assert!(validate(DType::F32, &ams, &[y]).is_err());
    }
}
