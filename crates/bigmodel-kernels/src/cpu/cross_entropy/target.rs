//! The gradient with respect to probability targets (torch differentiates those too).

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
    let up = Upstream {
        per_row,
        scale: match p.reduction {
            Reduction::None => <T::Acc as Real>::ZERO,
            Reduction::Sum => grad_output[0].load(),
            Reduction::Mean => grad_output[0].load() / total_weight[0],
        },
    };
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
