//! Gradients that exist only with probability targets (torch differentiates both): with respect
//! to the targets themselves, and with respect to the class weights.

use super::*;

/// Gradient with respect to probability targets: `g (1 - ls) w_c (lse - x_c)`.
pub fn target_backward<T: CeElement>(
    p: &CeParams,
    grad_output: &[T],
    input: &[T],
    weight: Option<&[T]>,
    lse: &[T::Acc],
    total_weight: &[T::Acc],
    grad_target: &mut [T],
) -> Result<()> {
    let (rows, numel, ls) = (p.rows()?, p.numel()?, p.smoothing()?);
    let per_row = p.reduction == Reduction::None;
    if input.len() != numel
        || grad_target.len() != numel
        || lse.len() != rows
        || weight.is_some_and(|w| w.len() != p.classes)
        || total_weight.len() != 1
        || grad_output.len() != if per_row { rows } else { 1 }
    {
        return Err(Error::Shape(
            "cross_entropy target backward: buffers have the wrong sizes".into(),
        ));
    }
    let keep = T::Acc::from_f64(1.0 - ls);
    let up = Upstream::new(p.reduction, grad_output, total_weight);
    let (c, d) = (p.classes, p.inner);
    if numel == 0 {
        return Ok(());
    }
    let per_sample = |(n, slab): (usize, &mut [T])| {
        for (ci, out) in slab.chunks_mut(d).enumerate() {
            let w = weight.map_or(<T::Acc as Real>::ONE, |w| w[ci].load());
            let xs = &input[(n * c + ci) * d..(n * c + ci + 1) * d];
            for (k, (o, v)) in out.iter_mut().zip(xs).enumerate() {
                let r = n * d + k;
                *o = T::store(up.of(grad_output, r) * keep * w * (lse[r] - v.load()));
            }
        }
    };
    if p.is_serial() {
        grad_target
            .chunks_mut(c * d)
            .enumerate()
            .for_each(per_sample);
    } else {
        grad_target
            .par_chunks_mut(c * d)
            .enumerate()
            .for_each(per_sample);
    }
    Ok(())
}

/// Gradient with respect to the class weights under probability targets:
/// `sum_r g_r t'_rc (lse_r - x_rc)`, with `t' = (1 - ls) t + ls / C` the smoothed target.
///
/// Samples are cut into a fixed number of blocks (from the sizes alone, not the thread count);
/// each block sums its rows into a partial per class, in f64, and the partials are added in block
/// order, so the result does not depend on scheduling.
#[allow(clippy::too_many_arguments)]
pub fn weight_backward<T: CeElement>(
    p: &CeParams,
    grad_output: &[T],
    input: &[T],
    target: &[T],
    lse: &[T::Acc],
    total_weight: &[T::Acc],
    grad_weight: &mut [T],
) -> Result<()> {
    let (rows, numel, ls) = (p.rows()?, p.numel()?, p.smoothing()?);
    let per_row = p.reduction == Reduction::None;
    if input.len() != numel
        || target.len() != numel
        || grad_weight.len() != p.classes
        || lse.len() != rows
        || total_weight.len() != 1
        || grad_output.len() != if per_row { rows } else { 1 }
    {
        return Err(Error::Shape(
            "cross_entropy weight backward: buffers have the wrong sizes".into(),
        ));
    }
    let (c, d) = (p.classes, p.inner);
    let up = Upstream::new(p.reduction, grad_output, total_weight);
    let (keep, add) = (1.0 - ls, if c > 0 { ls / c as f64 } else { 0.0 });
    let sample = c * d;
    let per_block = TASK_ELEMS.div_ceil(sample.max(1)).max(1);
    let partial = |n0: usize| {
        let mut acc = vec![0.0f64; c];
        for n in n0..(n0 + per_block).min(p.outer) {
            for (ci, a) in acc.iter_mut().enumerate() {
                let base = (n * c + ci) * d;
                for k in 0..d {
                    let r = n * d + k;
                    let t = keep * target[base + k].load().to_f64() + add;
                    let lp = (lse[r] - input[base + k].load()).to_f64();
                    *a += up.of(grad_output, r).to_f64() * t * lp;
                }
            }
        }
        acc
    };
    let starts: Vec<usize> = (0..p.outer).step_by(per_block).collect();
    let parts: Vec<Vec<f64>> = if p.is_serial() {
        starts.iter().map(|&n0| partial(n0)).collect()
    } else {
        starts.par_iter().map(|&n0| partial(n0)).collect()
    };
    for (ci, g) in grad_weight.iter_mut().enumerate() {
        let total = parts.iter().fold(0.0, |s, part| s + part[ci]);
        *g = T::store(<T::Acc as Real>::from_f64(total));
    }
    Ok(())
}
