//! The tiled kernels against a naive fp64 reference (full score matrix), on shapes chosen to hit
//! partial tiles, causal edges, masks, GQA and dropout.

use super::tile::{Dropout, LOG2E};
use super::*;

fn data(n: usize, seed: u64) -> Vec<f64> {
    (0..n)
        .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 500.0 - 1.0)
        .collect()
}

struct Case {
    shape: Shape,
    params: Params,
    bool_mask: Option<(Vec<u8>, [usize; 4])>,
}

/// Naive attention in f64 with the kernel's semantics; returns (out, dq, dk, dv) for grad_out.
fn reference(c: &Case, q: &[f64], k: &[f64], v: &[f64], go: &[f64]) -> [Vec<f64>; 4] {
    let s = c.shape;
    let (d, e, lq, lk, g) = (s.dim_qk, s.dim_v, s.len_q, s.len_kv, s.heads_q / s.heads_kv);
    let mut out = vec![0.0; s.batch * s.heads_q * lq * e];
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let drop =
        (c.params.dropout_p > 0.0).then(|| Dropout::new(c.params.dropout_p, c.params.seed, lk));
    for b in 0..s.batch {
        for h in 0..s.heads_q {
            let bh = b * s.heads_q + h;
            let bhk = b * s.heads_kv + h / g;
            for i in 0..lq {
                let allowed = |j: usize| {
                    if c.params.causal && j > i {
                        return false;
                    }
                    match &c.bool_mask {
                        None => true,
                        Some((m, dims)) => {
                            let idx = [b, h, i, j];
                            let mut off = 0;
                            for t in 0..4 {
                                off = off * dims[t] + if dims[t] == 1 { 0 } else { idx[t] };
                            }
                            m[off] != 0
                        }
                    }
                };
                let sc: Vec<f64> = (0..lk)
                    .map(|j| {
                        if !allowed(j) {
                            return f64::NEG_INFINITY;
                        }
                        c.params.scale
                            * (0..d)
                                .map(|t| q[(bh * lq + i) * d + t] * k[(bhk * lk + j) * d + t])
                                .sum::<f64>()
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if mx == f64::NEG_INFINITY {
                    continue;
                }
                let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                let p: Vec<f64> = sc.iter().map(|x| (x - mx).exp() / z).collect();
                let mut keep = vec![1.0; lk];
                if let Some(dr) = &drop {
                    dr.apply(&mut keep, bh, i, 0, 1.0 / (1.0 - c.params.dropout_p));
                }
                let o = &mut out[(bh * lq + i) * e..(bh * lq + i + 1) * e];
                for j in 0..lk {
                    for t in 0..e {
                        o[t] += p[j] * keep[j] * v[(bhk * lk + j) * e + t];
                    }
                }
                let gor = &go[(bh * lq + i) * e..(bh * lq + i + 1) * e];
                let dpd: Vec<f64> = (0..lk)
                    .map(|j| {
                        keep[j]
                            * (0..e)
                                .map(|t| gor[t] * v[(bhk * lk + j) * e + t])
                                .sum::<f64>()
                    })
                    .collect();
                let delta: f64 = (0..lk).map(|j| p[j] * dpd[j]).sum();
                for j in 0..lk {
                    let ds = p[j] * (dpd[j] - delta) * c.params.scale;
                    for t in 0..e {
                        dv[(bhk * lk + j) * e + t] += p[j] * keep[j] * gor[t];
                    }
                    for t in 0..d {
                        dq[(bh * lq + i) * d + t] += ds * k[(bhk * lk + j) * d + t];
                        dk[(bhk * lk + j) * d + t] += ds * q[(bh * lq + i) * d + t];
                    }
                }
            }
        }
    }
    [out, dq, dk, dv]
}

fn run_case<T: AttnElement>(c: &Case, to: impl Fn(f64) -> T, from: impl Fn(T) -> f64, tol: f64) {
    let s = c.shape;
    let q = data(s.batch * s.heads_q * s.len_q * s.dim_qk, 1);
    let k = data(s.batch * s.heads_kv * s.len_kv * s.dim_qk, 2);
    let v = data(s.batch * s.heads_kv * s.len_kv * s.dim_v, 3);
    let go = data(s.batch * s.heads_q * s.len_q * s.dim_v, 4);
    let want = reference(c, &q, &k, &v, &go);
    let cv = |x: &[f64]| x.iter().map(|&y| to(y)).collect::<Vec<T>>();
    let (qt, kt, vt, got) = (cv(&q), cv(&k), cv(&v), cv(&go));
    let mask = match &c.bool_mask {
        None => Mask::None,
        Some((m, dims)) => Mask::Bool {
            data: m,
            dims: *dims,
        },
    };
    let mut out = cv(&want[0]);
    let mut lse = vec![<T::Acc as crate::element::Real>::ZERO; s.batch * s.heads_q * s.len_q];
    forward(&s, &c.params, &qt, &kt, &vt, mask, &mut out, &mut lse).unwrap();
    let (mut dq, mut dk, mut dv) = (cv(&want[1]), cv(&want[2]), cv(&want[3]));
    let x = BackwardInputs {
        q: &qt,
        k: &kt,
        v: &vt,
        out: &out,
        lse: &lse,
        grad_out: &got,
    };
    backward(&s, &c.params, x, mask, &mut dq, &mut dk, &mut dv, None).unwrap();
    for (name, got, want) in [
        ("out", &out, &want[0]),
        ("dq", &dq, &want[1]),
        ("dk", &dk, &want[2]),
        ("dv", &dv, &want[3]),
    ] {
        for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
            let g = from(g);
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "{name}[{i}]: {g} vs {w} ({:?})",
                c.shape
            );
        }
    }
}

fn shape(batch: usize, hq: usize, hkv: usize, lq: usize, lk: usize, d: usize, e: usize) -> Shape {
    Shape {
        batch,
        heads_q: hq,
        heads_kv: hkv,
        len_q: lq,
        len_kv: lk,
        dim_qk: d,
        dim_v: e,
    }
}

fn params(d: usize, causal: bool, dropout_p: f64) -> Params {
    Params {
        scale: 1.0 / (d as f64).sqrt(),
        causal,
        dropout_p,
        seed: 7,
    }
}

#[test]
fn matches_reference_fp64_and_fp32() {
    for (sh, causal) in [
        (shape(1, 2, 2, 1, 1, 8, 8), false),
        (shape(2, 2, 1, 70, 133, 16, 8), false),
        (shape(1, 4, 2, 130, 77, 8, 12), true),
        (shape(1, 1, 1, 65, 200, 32, 32), true),
        (shape(1, 1, 1, 200, 65, 8, 8), true),
        (shape(1, 1, 1, 150, 1100, 8, 8), false),
        (shape(1, 1, 1, 300, 700, 8, 8), true),
    ] {
        let c = Case {
            shape: sh,
            params: params(sh.dim_qk, causal, 0.0),
            bool_mask: None,
        };
        run_case::<f64>(&c, |x| x, |x| x, 1e-10);
        run_case::<f32>(&c, |x| x as f32, |x| x as f64, 2e-4);
        run_case::<half::bf16>(&c, half::bf16::from_f64, |x| x.to_f64(), 0.1);
        run_case::<half::f16>(&c, half::f16::from_f64, |x| x.to_f64(), 0.02);
    }
}

#[test]
fn bool_mask_with_fully_masked_rows_and_dropout() {
    let sh = shape(2, 2, 2, 67, 90, 8, 8);
    let (lq, lk) = (sh.len_q, sh.len_kv);
    let mut m = vec![0u8; 2 * lq * lk];
    for (i, x) in m.iter_mut().enumerate() {
        let row = (i / lk) % lq;
        *x = u8::from(row % 5 != 0 && (i * 7) % 3 != 0);
    }
    let c = Case {
        shape: sh,
        params: params(8, false, 0.0),
        bool_mask: Some((m.clone(), [2, 1, lq, lk])),
    };
    run_case::<f64>(&c, |x| x, |x| x, 1e-10);
    let c = Case {
        shape: sh,
        params: params(8, false, 0.25),
        bool_mask: Some((m, [2, 1, lq, lk])),
    };
    run_case::<f64>(&c, |x| x, |x| x, 1e-10);
    let c = Case {
        shape: sh,
        params: params(8, true, 0.4),
        bool_mask: None,
    };
    run_case::<f32>(&c, |x| x as f32, |x| x as f64, 2e-4);
}

#[test]
fn rejects_bad_input() {
    let sh = shape(1, 3, 2, 4, 4, 8, 8);
    let z = vec![0.0f32; 1000];
    let mut o = vec![0.0f32; 3 * 4 * 8];
    let mut l = vec![0.0f32; 12];
    let r = forward(
        &sh,
        &params(8, false, 0.0),
        &z[..96],
        &z[..64],
        &z[..64],
        Mask::None,
        &mut o,
        &mut l,
    );
    assert!(matches!(r, Err(Error::Shape(_))));
    let sh = shape(1, 1, 1, 4, 4, 8, 8);
    let m = [1u8; 3];
    let r = forward(
        &sh,
        &params(8, false, 0.0),
        &z[..32],
        &z[..32],
        &z[..32],
        Mask::Bool {
            data: &m,
            dims: [1, 1, 1, 4],
        },
        &mut o[..32],
        &mut l[..4],
    );
    assert!(matches!(r, Err(Error::Shape(_))));
    let r = forward(
        &sh,
        &params(8, false, 1.0),
        &z[..32],
        &z[..32],
        &z[..32],
        Mask::None,
        &mut o[..32],
        &mut l[..4],
    );
    assert!(matches!(r, Err(Error::Value(_))));
    let r = forward(
        &sh,
        &params(8, false, 0.0),
        &z[..31],
        &z[..32],
        &z[..32],
        Mask::None,
        &mut o[..32],
        &mut l[..4],
    );
    assert!(matches!(r, Err(Error::Shape(_))));
    let _ = LOG2E;
}
