//! The kernels against a direct f64 transcription of torch's definitions, on every mode, layout,
//! instruction set, and both parallel splits.

use super::*;
use crate::isa::{self, Isa};
use crate::pool;
use half::bf16;

fn pseudo_random(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(17);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

#[derive(Clone)]
enum RefTarget {
    Index(Vec<i64>),
    Prob(Vec<f64>),
}

/// torch's formulas in f64: per-row loss, total weight, and the gradient for upstream `go`
/// (per row, already divided for mean).
fn reference(
    p: &CeParams,
    x: &[f64],
    t: &RefTarget,
    w: Option<&[f64]>,
    go: &[f64],
) -> (Vec<f64>, f64, Vec<f64>) {
    let (c, d) = (p.classes, p.inner);
    let ls = p.label_smoothing.max(0.0);
    let wc = |k: usize| w.map_or(1.0, |w| w[k]);
    let (mut loss, mut total, mut grad) = (vec![], 0.0, vec![0.0; x.len()]);
    for n in 0..p.outer {
        for k in 0..d {
            let r = n * d + k;
            let at = |ci: usize| (n * c + ci) * d + k;
            let m = (0..c).map(|ci| x[at(ci)]).fold(f64::NEG_INFINITY, f64::max);
            let lse = m + (0..c).map(|ci| (x[at(ci)] - m).exp()).sum::<f64>().ln();
            let mut a = vec![0.0; c];
            match t {
                RefTarget::Index(ti) if ti[r] == p.ignore_index => {}
                RefTarget::Index(ti) => {
                    let tc = ti[r] as usize;
                    total += wc(tc);
                    a[tc] += (1.0 - ls) * wc(tc);
                    for (ci, ac) in a.iter_mut().enumerate() {
                        *ac += ls / c as f64 * wc(ci);
                    }
                }
                RefTarget::Prob(pr) => {
                    total += 1.0;
                    for (ci, ac) in a.iter_mut().enumerate() {
                        *ac = wc(ci) * ((1.0 - ls) * pr[at(ci)] + ls / c as f64);
                    }
                }
            }
            let big_a: f64 = a.iter().sum();
            loss.push((0..c).map(|ci| -a[ci] * (x[at(ci)] - lse)).sum());
            for ci in 0..c {
                grad[at(ci)] = go[r] * (big_a * (x[at(ci)] - lse).exp() - a[ci]);
            }
        }
    }
    (loss, total, grad)
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0) || (a.is_nan() && b.is_nan())
}

/// Runs forward (none / sum / mean) and backward (none with random upstream, mean, in place)
/// for one configuration and element type, checking everything against the reference.
fn check<T: CeElement>(p: CeParams, w: bool, prob: bool, tol: f64, to: fn(f64) -> T) {
    let rows = p.outer * p.inner;
    let numel = rows * p.classes;
    let x64: Vec<f64> = pseudo_random(numel, 1).iter().map(|v| v * 6.0).collect();
    let x: Vec<T> = x64.iter().map(|&v| to(v)).collect();
    let x64: Vec<f64> = x.iter().map(|v| v.load().to_f64()).collect();
    let w64: Option<Vec<f64>> = w.then(|| {
        pseudo_random(p.classes, 2)
            .iter()
            .map(|v| v.abs() + 0.1)
            .collect()
    });
    let wt: Option<Vec<T>> = w64.as_ref().map(|w| w.iter().map(|&v| to(v)).collect());
    let w64 = wt
        .as_ref()
        .map(|w| w.iter().map(|v| v.load().to_f64()).collect::<Vec<_>>());
    let (rt, idx, pr): (RefTarget, Vec<i64>, Vec<T>) = if prob {
        let raw: Vec<T> = pseudo_random(numel, 3)
            .iter()
            .map(|v| to(v.abs()))
            .collect();
        let raw64 = raw.iter().map(|v| v.load().to_f64()).collect();
        (RefTarget::Prob(raw64), vec![], raw)
    } else {
        let idx: Vec<i64> = (0..rows)
            .map(|r| {
                if r % 7 == 3 {
                    p.ignore_index
                } else {
                    ((r * 31 + 5) % p.classes) as i64
                }
            })
            .collect();
        (RefTarget::Index(idx.clone()), idx, vec![])
    };
    let target = if prob {
        Target::Prob(&pr[..])
    } else {
        Target::Index(&idx[..])
    };
    let go64: Vec<f64> = pseudo_random(rows, 4)
        .iter()
        .map(|&v| to(v).load().to_f64())
        .collect();
    let (want, total, want_grad) = reference(&p, &x64, &rt, w64.as_deref(), &go64);
    let (_, _, unit_grad) = reference(&p, &x64, &rt, w64.as_deref(), &vec![1.0; rows]);
    let mut lse = vec![<T::Acc as Real>::ZERO; rows];
    let mut asum = vec![<T::Acc as Real>::ZERO; if prob { rows } else { 0 }];
    let mut tw = [<T::Acc as Real>::ZERO];
    for red in [Reduction::None, Reduction::Sum, Reduction::Mean] {
        let q = CeParams {
            reduction: red,
            ..p
        };
        let mut loss = vec![to(0.0); if red == Reduction::None { rows } else { 1 }];
        forward(
            &q,
            Forward {
                input: &x,
                target,
                weight: wt.as_deref(),
                loss: &mut loss,
                lse: &mut lse,
                asum: &mut asum,
                total_weight: &mut tw,
            },
        )
        .unwrap();
        assert!(close(tw[0].to_f64(), total, 1e-6));
        let sum: f64 = want.iter().sum();
        let expect = match red {
            Reduction::None => want.clone(),
            Reduction::Sum => vec![sum],
            Reduction::Mean => vec![sum / total],
        };
        for (i, (a, b)) in loss.iter().zip(&expect).enumerate() {
            let a = a.load().to_f64();
            assert!(
                close(a, *b, tol),
                "{p:?} w={w} prob={prob} {red:?} row {i}: {a} vs {b}"
            );
        }
        // The forward that also writes the gradient for an upstream 1: the same loss and
        // statistics, and the gradient (divided by the total weight for mean).
        let (mut loss2, mut lse2, mut asum2, mut tw2) = (
            vec![to(7.0); loss.len()],
            lse.clone(),
            asum.clone(),
            [tw[0]],
        );
        let mut grad = vec![to(7.0); numel];
        forward_grad(
            &q,
            Forward {
                input: &x,
                target,
                weight: wt.as_deref(),
                loss: &mut loss2,
                lse: &mut lse2,
                asum: &mut asum2,
                total_weight: &mut tw2,
            },
            &mut grad,
        )
        .unwrap();
        // Same statistics and loss up to rounding (the fused rows take the row's maximum first
        // instead of the running one).
        let same = |a: &[T::Acc], b: &[T::Acc]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(u, v)| close(u.to_f64(), v.to_f64(), tol))
        };
        assert!(same(&lse2, &lse) && same(&asum2, &asum) && same(&tw2, &tw));
        for (a, b) in loss2.iter().zip(&loss) {
            assert!(close(a.load().to_f64(), b.load().to_f64(), tol));
        }
        let div = if red == Reduction::Mean { total } else { 1.0 };
        for (i, (a, b)) in grad.iter().zip(&unit_grad).enumerate() {
            let (a, b) = (a.load().to_f64(), b / div);
            assert!(
                close(a, b, tol),
                "{p:?} w={w} prob={prob} {red:?} forward_grad {i}: {a} vs {b}"
            );
        }
    }
    // Backward with a per-row upstream gradient, out of place and in place.
    let q = CeParams {
        reduction: Reduction::None,
        ..p
    };
    let go: Vec<T> = go64.iter().map(|&v| to(v)).collect();
    for inplace in [false, true] {
        let mut grad = if inplace {
            x.clone()
        } else {
            vec![to(0.0); numel]
        };
        backward(
            &q,
            Backward {
                grad_output: &go,
                input: (!inplace).then_some(&x[..]),
                grad_input: &mut grad,
                target,
                weight: wt.as_deref(),
                lse: &lse,
                asum: &asum,
                total_weight: &tw,
            },
        )
        .unwrap();
        for (i, (a, b)) in grad.iter().zip(&want_grad).enumerate() {
            let a = a.load().to_f64();
            assert!(
                close(a, *b, tol),
                "{p:?} w={w} prob={prob} inplace={inplace} grad {i}: {a} vs {b}"
            );
        }
    }
}

fn params(outer: usize, classes: usize, inner: usize, ls: f64) -> CeParams {
    CeParams {
        outer,
        classes,
        inner,
        ignore_index: -100,
        label_smoothing: ls,
        reduction: Reduction::Mean,
    }
}

/// Shapes at the tails: one class, short rows over several runs, vector-width tails, several
/// blocks, strided layouts with more positions than a tile.
const SHAPES: [(usize, usize, usize); 10] = [
    (5, 1, 1),
    (300, 1, 1),
    (100, 7, 1),
    (3, 7, 1),
    (4, 37, 1),
    (3, BLOCK + 45, 1),
    (2, 5, 3),
    (3, 11, 70),
    (1, 4, 200),
    (0, 5, 1),
];

#[test]
fn matches_reference_every_mode_isa_and_layout() {
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
        if isa::set_override(Some(isa)).is_err() {
            continue;
        }
        for threads in [1, 3] {
            pool::install(threads, || {
                for &(n, c, d) in &SHAPES {
                    for ls in [0.0, 0.3] {
                        for w in [false, true] {
                            for prob in [false, true] {
                                check::<f64>(params(n, c, d, ls), w, prob, 1e-12, |v| v);
                                check::<f32>(params(n, c, d, ls), w, prob, 2e-5, |v| v as f32);
                            }
                        }
                    }
                }
            });
        }
    }
    isa::set_override(None).unwrap();
}

#[test]
fn bf16_accumulates_in_f32() {
    for &(n, c, d) in &SHAPES[..6] {
        check::<bf16>(params(n, c, d, 0.1), true, false, 2e-2, bf16::from_f64);
        check::<bf16>(params(n, c, d, 0.0), false, true, 2e-2, bf16::from_f64);
    }
}

#[test]
fn few_long_rows_split_columns() {
    // Fewer rows than twice the threads and more than 2 * COL_BLOCK classes: column blocks.
    pool::install(2, || {
        for ls in [0.0, 0.2] {
            check::<f32>(
                params(1, 3 * COL_BLOCK + 17, 1, ls),
                true,
                false,
                2e-5,
                |v| v as f32,
            );
            check::<f64>(
                params(3, 2 * COL_BLOCK + 1, 1, ls),
                false,
                true,
                1e-11,
                |v| v,
            );
        }
    });
}

#[test]
fn out_of_range_targets_are_refused() {
    let p = params(2, 3, 1, 0.0);
    let x = [0f32; 6];
    for (bad, first) in [([0i64, 3], 3), ([-1, 0], -1), ([i64::MIN, 0], i64::MIN)] {
        let (mut loss, mut lse, mut tw) = ([0f32], [0f32; 2], [0f32]);
        let e = forward(
            &p,
            Forward {
                input: &x,
                target: Target::Index(&bad),
                weight: None,
                loss: &mut loss,
                lse: &mut lse,
                asum: &mut [],
                total_weight: &mut tw,
            },
        );
        assert_eq!(
            e,
            Err(Error::Index(format!("Target {first} is out of bounds.")))
        );
        let mut grad = [0f32; 6];
        let e = backward(
            &p,
            Backward {
                grad_output: &[1.0],
                input: Some(&x),
                grad_input: &mut grad,
                target: Target::Index(&bad),
                weight: None,
                lse: &lse,
                asum: &[],
                total_weight: &tw,
            },
        );
        assert!(matches!(e, Err(Error::Index(_))));
    }
}

#[test]
fn mismatched_buffers_are_refused() {
    let p = params(2, 3, 1, 0.0);
    let (mut loss, mut lse, mut tw) = ([0f32], [0f32; 2], [0f32]);
    let e = forward(
        &p,
        Forward {
            input: &[0f32; 5],
            target: Target::Index(&[0, 1]),
            weight: None,
            loss: &mut loss,
            lse: &mut lse,
            asum: &mut [],
            total_weight: &mut tw,
        },
    );
    assert!(matches!(e, Err(Error::Shape(_))));
    let e = forward(
        &p,
        Forward {
            input: &[0f32; 6],
            target: Target::Index(&[0, 1]),
            weight: Some(&[1.0; 2]),
            loss: &mut loss,
            lse: &mut lse,
            asum: &mut [],
            total_weight: &mut tw,
        },
    );
    assert!(matches!(e, Err(Error::Shape(_))));
    let bad_ls = CeParams {
        label_smoothing: 1.5,
        ..p
    };
    let e = forward(
        &bad_ls,
        Forward {
            input: &[0f32; 6],
            target: Target::Index(&[0, 1]),
            weight: None,
            loss: &mut loss,
            lse: &mut lse,
            asum: &mut [],
            total_weight: &mut tw,
        },
    );
    assert!(matches!(e, Err(Error::Value(_))));
}

#[test]
fn nan_and_inf_follow_torch() {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    // Rows: NaN, +inf, a -inf logit, all -inf; the second set is ignored.
    let x = [nan, 0.0, inf, 0.0, -inf, 0.0, -inf, -inf];
    let p = CeParams {
        reduction: Reduction::None,
        ..params(4, 2, 1, 0.0)
    };
    for (t, want_loss) in [
        ([0i64, 0, 1, 0], [nan, nan, 0.0, nan]),
        ([-100i64; 4], [0.0; 4]),
    ] {
        let (mut loss, mut lse, mut tw) = ([0f32; 4], [0f32; 4], [0f32]);
        forward(
            &p,
            Forward {
                input: &x,
                target: Target::Index(&t),
                weight: None,
                loss: &mut loss,
                lse: &mut lse,
                asum: &mut [],
                total_weight: &mut tw,
            },
        )
        .unwrap();
        for (a, b) in loss.iter().zip(want_loss) {
            assert!(a == &b || (a.is_nan() && b.is_nan()), "{loss:?}");
        }
        let mut grad = [0f32; 8];
        backward(
            &p,
            Backward {
                grad_output: &[1.0; 4],
                input: Some(&x),
                grad_input: &mut grad,
                target: Target::Index(&t),
                weight: None,
                lse: &lse,
                asum: &[],
                total_weight: &tw,
            },
        )
        .unwrap();
        // torch: NaN over rows with NaN or +inf or only -inf, finite elsewhere (0 if ignored).
        let nan_rows = [true, true, false, true];
        for (r, row) in grad.chunks(2).enumerate() {
            assert_eq!(row.iter().all(|v| v.is_nan()), nan_rows[r], "{grad:?}");
        }
        assert_eq!(grad[4..6], [0.0, 0.0]);
        // The forward that writes the gradient gives the same special values.
        let (mut loss2, mut lse2, mut tw2) = ([0f32; 4], [0f32; 4], [0f32]);
        let mut grad2 = [0f32; 8];
        forward_grad(
            &p,
            Forward {
                input: &x,
                target: Target::Index(&t),
                weight: None,
                loss: &mut loss2,
                lse: &mut lse2,
                asum: &mut [],
                total_weight: &mut tw2,
            },
            &mut grad2,
        )
        .unwrap();
        for (a, b) in loss2.iter().zip(want_loss).chain(grad2.iter().zip(grad)) {
            assert!(a == &b || (a.is_nan() && b.is_nan()), "{loss2:?} {grad2:?}");
        }
    }
}
