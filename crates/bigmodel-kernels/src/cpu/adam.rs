//! Fused multi-tensor Adam / AdamW step.
//!
//! One call updates every tensor of a parameter group in a single pass over memory: for each
//! element it reads param, grad, exp_avg, exp_avg_sq (and max_exp_avg_sq with amsgrad) and writes
//! them back, which is the minimum traffic the algorithm allows (28 bytes per fp32 element).
//! The arithmetic follows torch.optim.Adam's for-loop implementation operation for operation:
//!
//! ```text
//! g  = grad / grad_scale            (only with AMP; the unscaled grad is written back)
//! g  = -g                           (maximize)
//! g  = g + weight_decay * p         (Adam's L2 penalty)
//! p  = p * (1 - lr * weight_decay)  (AdamW's decoupled decay)
//! m  = m + (1 - beta1) * (g - m)
//! v  = beta2 * v + (1 - beta2) * g * g
//! vm = max(vm, v)                   (amsgrad; the denominator then uses vm)
//! p  = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
//! ```
//!
//! Parallelism: every tensor is cut into chunks of at most [`CHUNK`] elements and the chunks of
//! all tensors are spread over the pool together, so 2,000 small tensors cost one parallel
//! region, not 2,000. SIMD: the element loop is instantiated per instruction set
//! ([`crate::isa`]); flags that change the loop's shape (amsgrad, AMP unscale) are const
//! generics so that each variant stays branch-free.

use crate::element::{Element, Real};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Elements per parallel work item: big enough that rayon's per-task cost vanishes (about 1 MB of
/// traffic in fp32), small enough that two threads share a 16M-element group evenly.
pub const CHUNK: usize = 1 << 15;

/// The group's hyper-parameters, as torch stores them in a param_group.
#[derive(Clone, Copy, Debug)]
pub struct AdamParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW: decay the parameter itself instead of adding an L2 term to the gradient.
    pub decoupled_weight_decay: bool,
    pub amsgrad: bool,
    pub maximize: bool,
    /// AMP: the gradients are multiplied by this scale; divide it out (and store the result).
    pub grad_scale: Option<f64>,
}

impl AdamParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| Error::Value(format!("Invalid {what}: {v}"));
        if self.lr.is_nan() || self.lr < 0.0 {
            return Err(bad("learning rate", self.lr));
        }
        if self.eps.is_nan() || self.eps < 0.0 {
            return Err(bad("epsilon value", self.eps));
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return Err(bad("beta parameter at index 0", self.beta1));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return Err(bad("beta parameter at index 1", self.beta2));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(bad("weight_decay value", self.weight_decay));
        }
        Ok(())
    }
}

/// One parameter tensor and its state, as flat slices of equal length.
pub struct AdamTensor<'a, T> {
    pub param: &'a mut [T],
    pub grad: &'a mut [T],
    pub exp_avg: &'a mut [T],
    pub exp_avg_sq: &'a mut [T],
    /// Present exactly when amsgrad is on.
    pub max_exp_avg_sq: Option<&'a mut [T]>,
    /// The step count after this step's increment (1 on the first step).
    pub step: f64,
}

/// Per-tensor constants of one step, in the arithmetic type.
#[derive(Clone, Copy)]
struct StepConsts<A> {
    inv_scale: A,
    sign: A,
    l2: A,
    decay: A,
    one_minus_beta1: A,
    beta2: A,
    one_minus_beta2: A,
    neg_step_size: A,
    /// 1 / sqrt(bias_correction2): a multiply where torch divides. The division units are the
    /// bottleneck of this loop with AVX-512 (two divisions and a square root per element); the
    /// product differs from the quotient by at most one rounding.
    inv_bc2_sqrt: A,
    eps: A,
}

impl<A: Real> StepConsts<A> {
    fn new(p: &AdamParams, step: f64) -> Self {
        let bias_correction1 = 1.0 - p.beta1.powf(step);
        let bias_correction2 = 1.0 - p.beta2.powf(step);
        let (l2, decay) = if p.decoupled_weight_decay {
            (0.0, 1.0 - p.lr * p.weight_decay)
        } else {
            (p.weight_decay, 1.0)
        };
        StepConsts {
            inv_scale: A::from_f64(p.grad_scale.unwrap_or(1.0)),
            sign: A::from_f64(if p.maximize { -1.0 } else { 1.0 }),
            l2: A::from_f64(l2),
            decay: A::from_f64(decay),
            one_minus_beta1: A::from_f64(1.0 - p.beta1),
            beta2: A::from_f64(p.beta2),
            one_minus_beta2: A::from_f64(1.0 - p.beta2),
            neg_step_size: A::from_f64(-(p.lr / bias_correction1)),
            inv_bc2_sqrt: A::from_f64(1.0 / bias_correction2.sqrt()),
            eps: A::from_f64(p.eps),
        }
    }
}

/// A slice of one tensor's elements: the unit of parallel work.
struct Chunk<'a, T> {
    param: &'a mut [T],
    grad: &'a mut [T],
    exp_avg: &'a mut [T],
    exp_avg_sq: &'a mut [T],
    max_exp_avg_sq: Option<&'a mut [T]>,
    consts: usize,
}

/// Applies one Adam step to every tensor of a group.
pub fn adam_step<T: Element>(params: &AdamParams, tensors: Vec<AdamTensor<'_, T>>) -> Result<()> {
    params.validate()?;
    let mut consts = Vec::with_capacity(tensors.len());
    let mut chunks = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.into_iter().enumerate() {
        let n = t.param.len();
        if t.grad.len() != n
            || t.exp_avg.len() != n
            || t.exp_avg_sq.len() != n
            || t.max_exp_avg_sq.as_ref().is_some_and(|m| m.len() != n)
        {
            return Err(Error::Shape(format!(
                "adam_step: tensor {i} has param, grad and state of different lengths"
            )));
        }
        if params.amsgrad != t.max_exp_avg_sq.is_some() {
            return Err(Error::Value(format!(
                "adam_step: tensor {i}: max_exp_avg_sq must be given exactly when amsgrad is on"
            )));
        }
        if t.step.is_nan() || t.step < 1.0 {
            return Err(Error::Value(format!(
                "adam_step: tensor {i}: step must be >= 1 after the increment, got {}",
                t.step
            )));
        }
        consts.push(StepConsts::<T::Acc>::new(params, t.step));
        let mut max_chunks = t.max_exp_avg_sq.map(|m| m.chunks_mut(CHUNK));
        for (((p, g), m), v) in t
            .param
            .chunks_mut(CHUNK)
            .zip(t.grad.chunks_mut(CHUNK))
            .zip(t.exp_avg.chunks_mut(CHUNK))
            .zip(t.exp_avg_sq.chunks_mut(CHUNK))
        {
            chunks.push(Chunk {
                param: p,
                grad: g,
                exp_avg: m,
                exp_avg_sq: v,
                max_exp_avg_sq: max_chunks.as_mut().and_then(|it| it.next()),
                consts: i,
            });
        }
    }
    let unscale = params.grad_scale.is_some();
    chunks.into_par_iter().for_each(|c| {
        update(
            c.param,
            c.grad,
            c.exp_avg,
            c.exp_avg_sq,
            c.max_exp_avg_sq,
            &consts[c.consts],
            unscale,
        )
    });
    Ok(())
}

crate::dispatch_isa! {
    fn update<T: Element>(
        param: &mut [T],
        grad: &mut [T],
        exp_avg: &mut [T],
        exp_avg_sq: &mut [T],
        max_exp_avg_sq: Option<&mut [T]>,
        k: &StepConsts<T::Acc>,
        unscale: bool,
    ) {
        match (max_exp_avg_sq, unscale) {
            (None, false) => update_loop::<T, false, false>(param, grad, exp_avg, exp_avg_sq, &mut [], k),
            (None, true) => update_loop::<T, false, true>(param, grad, exp_avg, exp_avg_sq, &mut [], k),
            (Some(vm), false) => update_loop::<T, true, false>(param, grad, exp_avg, exp_avg_sq, vm, k),
            (Some(vm), true) => update_loop::<T, true, true>(param, grad, exp_avg, exp_avg_sq, vm, k),
        }
    }
}

/// The element loop; `AMSGRAD` and `UNSCALE` are const so that each variant is branch-free and
/// vectorises. Inlined into the per-ISA wrappers of [`update`].
#[inline(always)]
fn update_loop<T: Element, const AMSGRAD: bool, const UNSCALE: bool>(
    param: &mut [T],
    grad: &mut [T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
    max_exp_avg_sq: &mut [T],
    k: &StepConsts<T::Acc>,
) {
    let n = param.len();
    // Re-slicing to `n` lets LLVM drop the bounds checks inside the loop.
    let (grad, exp_avg, exp_avg_sq) = (&mut grad[..n], &mut exp_avg[..n], &mut exp_avg_sq[..n]);
    let k = *k;
    if AMSGRAD {
        let vmax = &mut max_exp_avg_sq[..n];
        for i in 0..n {
            step_one(
                &mut param[i],
                &mut grad[i],
                &mut exp_avg[i],
                &mut exp_avg_sq[i],
                UNSCALE,
                &k,
                Some(&mut vmax[i]),
            );
        }
    } else {
        for i in 0..n {
            step_one(
                &mut param[i],
                &mut grad[i],
                &mut exp_avg[i],
                &mut exp_avg_sq[i],
                UNSCALE,
                &k,
                None,
            );
        }
    }
}

#[inline(always)]
fn step_one<T: Element>(
    p: &mut T,
    g: &mut T,
    m: &mut T,
    v: &mut T,
    unscale: bool,
    k: &StepConsts<T::Acc>,
    vmax: Option<&mut T>,
) {
    let mut grad = g.load();
    if unscale {
        grad = grad / k.inv_scale;
        *g = T::store(grad);
    }
    let mut param = p.load();
    let grad = k.sign * grad + k.l2 * param;
    param = param * k.decay;
    let mut exp_avg = m.load();
    exp_avg = exp_avg + k.one_minus_beta1 * (grad - exp_avg);
    let exp_avg_sq = k.beta2 * v.load() + k.one_minus_beta2 * grad * grad;
    let second = match vmax {
        Some(vm) => {
            let mx = vm.load().max_nan(exp_avg_sq);
            *vm = T::store(mx);
            mx
        }
        None => exp_avg_sq,
    };
    let denom = second.sqrt() * k.inv_bc2_sqrt + k.eps;
    param = param + k.neg_step_size * (exp_avg / denom);
    *m = T::store(exp_avg);
    *v = T::store(exp_avg_sq);
    *p = T::store(param);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::{self, Isa};
    use half::bf16;

    /// Straight transcription of torch's `_single_tensor_adam` in f64, the reference.
    fn reference(p: &AdamParams, steps: usize, x0: &[f64], grads: &[Vec<f64>]) -> Vec<f64> {
        let n = x0.len();
        let (mut x, mut m, mut v, mut vm) = (
            x0.to_vec(),
            vec![0.0f64; n],
            vec![0.0f64; n],
            vec![0.0f64; n],
        );
        for s in 1..=steps {
            let g_all = &grads[s - 1];
            for i in 0..n {
                let mut g = g_all[i] / p.grad_scale.unwrap_or(1.0);
                if p.maximize {
                    g = -g;
                }
                if p.decoupled_weight_decay {
                    x[i] *= 1.0 - p.lr * p.weight_decay;
                } else {
                    g += p.weight_decay * x[i];
                }
                m[i] += (1.0 - p.beta1) * (g - m[i]);
                v[i] = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
                let bc1 = 1.0 - p.beta1.powi(s as i32);
                let bc2 = 1.0 - p.beta2.powi(s as i32);
                let second = if p.amsgrad {
                    vm[i] = vm[i].max(v[i]);
                    vm[i]
                } else {
                    v[i]
                };
                x[i] -= (p.lr / bc1) * m[i] / (second.sqrt() / bc2.sqrt() + p.eps);
            }
        }
        x
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn run<T: Element>(
        p: &AdamParams,
        sizes: &[usize],
        steps: usize,
        to: fn(f64) -> T,
    ) -> Vec<Vec<f64>>
    where
        T::Acc: Real,
    {
        let mut state: Vec<[Vec<T>; 5]> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let x: Vec<T> = pseudo_random(n, i as u64).into_iter().map(to).collect();
                [
                    x,
                    vec![to(0.0); n],
                    vec![to(0.0); n],
                    vec![to(0.0); n],
                    vec![to(0.0); n],
                ]
            })
            .collect();
        for s in 1..=steps {
            let mut grads: Vec<Vec<T>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    pseudo_random(n, 1000 * s as u64 + i as u64)
                        .into_iter()
                        .map(to)
                        .collect()
                })
                .collect();
            let tensors = state
                .iter_mut()
                .zip(grads.iter_mut())
                .map(|([x, _, m, v, vm], g)| AdamTensor {
                    param: x.as_mut_slice(),
                    grad: g.as_mut_slice(),
                    exp_avg: m.as_mut_slice(),
                    exp_avg_sq: v.as_mut_slice(),
                    max_exp_avg_sq: p.amsgrad.then_some(vm.as_mut_slice()),
                    step: s as f64,
                })
                .collect();
            adam_step(p, tensors).unwrap();
        }
        state
            .into_iter()
            .map(|[x, ..]| x.into_iter().map(|e| e.load().to_f64()).collect())
            .collect()
    }

    fn base() -> AdamParams {
        AdamParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            amsgrad: false,
            maximize: false,
            grad_scale: None,
        }
    }

    /// Sizes at the tails: empty, below and not a multiple of every vector width, across chunks.
    const SIZES: [usize; 6] = [0, 1, 7, 17, 1000, CHUNK + 3];

    #[test]
    fn matches_reference_every_option_every_isa() {
        let variants = [
            base(),
            AdamParams {
                weight_decay: 0.1,
                ..base()
            },
            AdamParams {
                weight_decay: 0.1,
                decoupled_weight_decay: true,
                ..base()
            },
            AdamParams {
                amsgrad: true,
                maximize: true,
                ..base()
            },
            AdamParams {
                grad_scale: Some(64.0),
                amsgrad: true,
                ..base()
            },
        ];
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            if isa::set_override(Some(isa)).is_err() {
                continue;
            }
            for p in &variants {
                let ours = run::<f64>(p, &SIZES, 5, |x| x);
                for (i, &n) in SIZES.iter().enumerate() {
                    let x0 = pseudo_random(n, i as u64);
                    let grads: Vec<Vec<f64>> = (1..=5)
                        .map(|s| pseudo_random(n, 1000 * s as u64 + i as u64))
                        .collect();
                    let want = reference(p, 5, &x0, &grads);
                    for (a, b) in ours[i].iter().zip(&want) {
                        assert!(
                            (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                            "{isa:?} {p:?}: {a} vs {b}"
                        );
                    }
                }
                let ours32 = run::<f32>(p, &SIZES, 5, |x| x as f32);
                let ours64 = run::<f64>(p, &SIZES, 5, |x| x);
                for (a, b) in ours32.iter().flatten().zip(ours64.iter().flatten()) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{isa:?} f32: {a} vs {b}"
                    );
                }
                let ours16 = run::<bf16>(p, &SIZES[..5], 5, bf16::from_f64);
                for (a, b) in ours16.iter().flatten().zip(ours64.iter().flatten()) {
                    assert!(
                        (a - b).abs() <= 2e-2 * b.abs().max(1.0),
                        "{isa:?} bf16: {a} vs {b}"
                    );
                }
            }
        }
        isa::set_override(None).unwrap();
    }

    #[test]
    fn rejects_bad_input() {
        let (mut a, mut b, mut c, mut d) =
            (vec![0f32; 3], vec![0f32; 2], vec![0f32; 3], vec![0f32; 3]);
        let t = AdamTensor {
            param: &mut a,
            grad: &mut b,
            exp_avg: &mut c,
            exp_avg_sq: &mut d,
            max_exp_avg_sq: None,
            step: 1.0,
        };
        assert!(matches!(adam_step(&base(), vec![t]), Err(Error::Shape(_))));
        let bad_lr = AdamParams { lr: -1.0, ..base() };
        assert!(matches!(
            adam_step::<f32>(&bad_lr, vec![]),
            Err(Error::Value(_))
        ));
        let (mut a, mut b) = (vec![0f32; 3], vec![0f32; 3]);
        let t = AdamTensor {
            param: &mut a,
            grad: &mut b,
            exp_avg: &mut c,
            exp_avg_sq: &mut d,
            max_exp_avg_sq: None,
            step: 0.0,
        };
        assert!(matches!(adam_step(&base(), vec![t]), Err(Error::Value(_))));
    }
}
