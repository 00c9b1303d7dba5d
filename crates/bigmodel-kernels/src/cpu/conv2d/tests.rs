//! conv2d against the definition, computed naively in f64.

use super::*;
use crate::cpu::max_pool2d::{self, MaxPool2dParams};
use crate::isa::{self, Isa};
use crate::pool;
use half::bf16;

#[allow(clippy::too_many_arguments)]
fn params(
    batch: usize,
    c_in: usize,
    hw: (usize, usize),
    c_out: usize,
    k: (usize, usize),
    groups: usize,
    stride: [usize; 2],
    dilation: [usize; 2],
    pad: [usize; 4],
) -> Conv2dParams {
    let oh = (hw.0 + pad[0] + pad[1] - dilation[0] * (k.0 - 1) - 1) / stride[0] + 1;
    let ow = (hw.1 + pad[2] + pad[3] - dilation[1] * (k.1 - 1) - 1) / stride[1] + 1;
    Conv2dParams {
        batch,
        c_in,
        h: hw.0,
        w: hw.1,
        c_out,
        kh: k.0,
        kw: k.1,
        groups,
        stride,
        dilation,
        pad: [pad[0], pad[2]],
        out: [oh, ow],
    }
}

/// (output, grad_input, grad_weight, grad_bias) by the definition.
fn reference(p: &Conv2dParams, x: &[f64], w: &[f64], b: &[f64], gy: &[f64]) -> [Vec<f64>; 4] {
    let (cg, cog) = (p.c_in / p.groups, p.c_out / p.groups);
    let [oh, ow] = p.out;
    let mut y = vec![0.0; p.output_len()];
    let mut gx = vec![0.0; p.input_len()];
    let mut gw = vec![0.0; p.weight_len()];
    let mut gb = vec![0.0; p.c_out];
    for n in 0..p.batch {
        for co in 0..p.c_out {
            let g = co / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((n * p.c_out + co) * oh + oy) * ow + ox;
                    let mut acc = b[co];
                    gb[co] += gy[yi];
                    for ci in 0..cg {
                        for ki in 0..p.kh {
                            for kj in 0..p.kw {
                                let iy = (oy * p.stride[0] + ki * p.dilation[0]) as isize
                                    - p.pad[0] as isize;
                                let ix = (ox * p.stride[1] + kj * p.dilation[1]) as isize
                                    - p.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy as usize >= p.h || ix as usize >= p.w {
                                    continue;
                                }
                                let xi = ((n * p.c_in + g * cg + ci) * p.h + iy as usize) * p.w
                                    + ix as usize;
                                let wi = ((co * cg + ci) * p.kh + ki) * p.kw + kj;
                                acc += w[wi] * x[xi];
                                gx[xi] += w[wi] * gy[yi];
                                gw[wi] += x[xi] * gy[yi];
                            }
                        }
                    }
                    y[yi] = acc;
                }
            }
        }
    }
    [y, gx, gw, gb]
}

fn data(n: usize, seed: usize) -> Vec<f64> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104729) % 2003) as f64 / 1001.5) - 1.0)
        .collect()
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

fn run<E: Element>(
    p: &Conv2dParams,
    threads: usize,
    tol: f64,
    conv: fn(f64) -> E,
    back: fn(E) -> f64,
) where
    E::Acc: Scratch,
{
    let x64 = data(p.input_len(), 1);
    let w64 = data(p.weight_len(), 2);
    let b64 = data(p.c_out, 3);
    let gy64 = data(p.output_len(), 4);
    // Round the inputs to E first so that the reference sees the same numbers.
    let (x, w, b, gy): (Vec<E>, Vec<E>, Vec<E>, Vec<E>) = (
        x64.iter().map(|&v| conv(v)).collect(),
        w64.iter().map(|&v| conv(v)).collect(),
        b64.iter().map(|&v| conv(v)).collect(),
        gy64.iter().map(|&v| conv(v)).collect(),
    );
    let f = |v: &[E]| v.iter().map(|&e| back(e)).collect::<Vec<f64>>();
    let want = reference(p, &f(&x), &f(&w), &f(&b), &f(&gy));
    let mut y = vec![conv(f64::NAN); p.output_len()];
    let mut gx = vec![conv(f64::NAN); p.input_len()];
    let mut gw = vec![conv(f64::NAN); p.weight_len()];
    let mut gb = vec![conv(f64::NAN); p.c_out];
    pool::install(threads, || {
        conv2d_forward(p, &x, &w, Some(&b), false, &mut y).unwrap();
        let grads = Conv2dGrads {
            input: Some(&mut gx),
            weight: Some(&mut gw),
            bias: Some(&mut gb),
        };
        conv2d_backward(p, Upstream::Conv(&gy), &x, &w, grads).unwrap();
    });
    close("output", &f(&y), &want[0], tol);
    close("grad_input", &f(&gx), &want[1], tol);
    close("grad_weight", &f(&gw), &want[2], tol);
    close("grad_bias", &f(&gb), &want[3], tol);
}

fn shapes() -> Vec<Conv2dParams> {
    vec![
        params(3, 4, (7, 6), 6, (3, 3), 1, [1, 1], [1, 1], [0; 4]),
        params(2, 1, (9, 9), 4, (3, 3), 1, [2, 2], [1, 1], [1, 1, 1, 1]),
        params(5, 4, (5, 5), 4, (1, 1), 1, [1, 1], [1, 1], [0; 4]),
        params(2, 4, (8, 7), 4, (3, 3), 4, [1, 2], [2, 1], [2, 2, 1, 1]),
        params(1, 6, (6, 9), 9, (2, 3), 3, [3, 4], [1, 1], [1, 0, 0, 2]),
        params(4, 2, (5, 5), 3, (2, 2), 1, [1, 1], [1, 1], [0, 1, 0, 1]),
        params(70, 3, (4, 4), 5, (3, 3), 1, [1, 1], [1, 1], [1; 4]),
        params(2, 3, (3, 3), 2, (1, 1), 1, [5, 5], [1, 1], [0; 4]),
        // Rows of 10 outputs: the straight-copy path of interior taps.
        params(3, 3, (12, 12), 4, (3, 3), 1, [1, 1], [1, 1], [1, 0, 0, 0]),
        // Dilated taps with more channels than one block of lanes (the pooled backward's
        // per-tap blocks, and more blocks than one pass holds), and a strided one.
        params(2, 70, (7, 7), 3, (3, 3), 1, [1, 1], [2, 2], [1; 4]),
        params(3, 20, (9, 8), 6, (3, 3), 1, [1, 2], [1, 1], [1, 0, 0, 1]),
    ]
}

#[test]
fn f64_matches_definition_on_every_branch() {
    for p in shapes() {
        for threads in [1, 2, 3] {
            run::<f64>(&p, threads, 1e-12, |v| v, |v| v);
        }
    }
}

#[test]
fn f32_and_bf16_match_definition() {
    for p in shapes() {
        run::<f32>(&p, 2, 1e-5, |v| v as f32, |v| v as f64);
        // bf16 stores each result with 8 bits of mantissa.
        run::<bf16>(&p, 2, 1e-2, bf16::from_f64, |v| v.to_f64());
    }
}

/// The fused ReLU gives exactly relu(conv) forward, and backward exactly the unfused gradients
/// of `threshold_backward(gy, y, 0)`: the same products on the same numbers, bit for bit.
/// Returns whether the output had both signs (the mask did something).
fn relu_matches_unfused<E: Element>(p: &Conv2dParams, threads: usize, conv: fn(f64) -> E) -> bool
where
    E::Acc: Scratch,
{
    let x: Vec<E> = data(p.input_len(), 1).into_iter().map(conv).collect();
    let w: Vec<E> = data(p.weight_len(), 2).into_iter().map(conv).collect();
    let b: Vec<E> = data(p.c_out, 3).into_iter().map(conv).collect();
    let gy: Vec<E> = data(p.output_len(), 4).into_iter().map(conv).collect();
    let zero = <E::Acc as Real>::ZERO;
    let bits = |v: &[E]| {
        v.iter()
            .map(|e| e.load().to_f64().to_bits())
            .collect::<Vec<_>>()
    };
    pool::install(threads, || {
        let (mut plain, mut fused) = (
            vec![conv(0.0); p.output_len()],
            vec![conv(0.0); p.output_len()],
        );
        conv2d_forward(p, &x, &w, Some(&b), false, &mut plain).unwrap();
        conv2d_forward(p, &x, &w, Some(&b), true, &mut fused).unwrap();
        let relu: Vec<E> = plain.iter().map(|v| E::store(relu(v.load()))).collect();
        assert_eq!(bits(&fused), bits(&relu), "forward {p:?}");
        let mixed = fused.iter().any(|v| v.load() == zero) && fused.iter().any(|v| v.load() > zero);
        let masked: Vec<E> = gy
            .iter()
            .zip(&fused)
            .map(|(g, y)| if y.load() <= zero { E::store(zero) } else { *g })
            .collect();
        let grads = |up: Upstream<'_, E>| {
            let (mut gx, mut gw, mut gb) = (
                vec![conv(0.0); p.input_len()],
                vec![conv(0.0); p.weight_len()],
                vec![conv(0.0); p.c_out],
            );
            let out = Conv2dGrads {
                input: Some(&mut gx),
                weight: Some(&mut gw),
                bias: Some(&mut gb),
            };
            conv2d_backward(p, up, &x, &w, out).unwrap();
            [bits(&gx), bits(&gw), bits(&gb)]
        };
        let relu_up = Upstream::Relu {
            grad: &gy,
            out: &fused,
        };
        assert_eq!(
            grads(relu_up),
            grads(Upstream::Conv(&masked)),
            "backward {p:?}"
        );
        // max_pool2d(relu(conv), 2) fused: the same pooled values and indices as pooling the
        // fused ReLU output, and the gradients of pooling's backward followed by the ReLU's.
        let mp = MaxPool2dParams {
            planes: p.batch * p.c_out,
            h: p.out[0],
            w: p.out[1],
            kernel: [2, 2],
            stride: [2, 2],
            pad: [0, 0],
            dilation: [1, 1],
            out: [p.out[0] / 2, p.out[1] / 2],
        };
        let n = mp.planes * mp.out[0] * mp.out[1];
        let (mut want, mut want_ix) = (vec![conv(0.0); n], vec![0i64; n]);
        max_pool2d::max_pool2d_forward(&mp, &fused, &mut want, &mut want_ix).unwrap();
        let (mut got, mut got_ix) = (vec![conv(0.0); n], vec![-1i64; n]);
        conv2d_relu_pool2_forward(p, &x, &w, Some(&b), &mut got, &mut got_ix).unwrap();
        assert_eq!(bits(&got), bits(&want), "pooled forward {p:?}");
        for ((g, w), v) in got_ix.iter().zip(&want_ix).zip(&want) {
            // max_pool2d's index, or CUT where the ReLU stops the gradient (a maximum <= 0).
            let cut = v.load() <= zero;
            assert_eq!(*g, if cut { CUT } else { *w }, "pooled indices {p:?}");
        }
        let gp = &gy[..n];
        let mut unpooled = vec![conv(0.0); p.output_len()];
        max_pool2d::max_pool2d_backward(&mp, gp, &want_ix, &mut unpooled).unwrap();
        let pool_up = Upstream::ReluPool2 {
            grad: gp,
            indices: &got_ix,
        };
        let unfused_up = Upstream::Relu {
            grad: &unpooled,
            out: &fused,
        };
        let (pooled, unfused) = (grads(pool_up), grads(unfused_up));
        // The pooled backward sums only the window maxima's terms (and never forms the last row
        // or column of an odd output, which no window reads): the same sums less their zero
        // terms, in another order.
        let tol = if std::mem::size_of::<E>() == 2 {
            2e-2
        } else {
            1e-5
        };
        for (got, want) in pooled.iter().zip(&unfused) {
            let f = |v: &Vec<u64>| v.iter().map(|b| f64::from_bits(*b)).collect::<Vec<_>>();
            close(&format!("pooled backward {p:?}"), &f(got), &f(want), tol);
        }
        if n > 0 {
            let mut bad = got_ix.clone();
            bad[n - 1] = (p.out[0] * p.out[1]) as i64;
            let up = Upstream::ReluPool2 {
                grad: gp,
                indices: &bad,
            };
            let none = Conv2dGrads {
                input: None,
                weight: Some(&mut vec![conv(0.0); p.weight_len()][..]),
                bias: None,
            };
            assert!(
                conv2d_backward(p, up, &x, &w, none).is_err(),
                "a bad index is an error"
            );
        }
        let short = Upstream::Relu {
            grad: &gy,
            out: &fused[1..],
        };
        assert!(conv2d_backward(
            p,
            short,
            &x,
            &w,
            Conv2dGrads {
                input: None,
                weight: None,
                bias: None
            }
        )
        .is_err());
        mixed
    })
}

#[test]
fn fused_relu_matches_relu_of_the_plain_convolution() {
    let mut mixed = 0;
    for p in shapes() {
        for threads in [1, 2] {
            relu_matches_unfused::<f64>(&p, threads, |v| v);
            relu_matches_unfused::<f32>(&p, threads, |v| v as f32);
        }
        mixed += relu_matches_unfused::<bf16>(&p, 2, bf16::from_f64) as usize;
    }
    assert!(
        2 * mixed > shapes().len(),
        "the data must make the ReLU cut somewhere"
    );
}

#[test]
fn scalar_isa_matches() {
    if isa::set_override(Some(Isa::Scalar)).is_ok() {
        for p in shapes().into_iter().take(4) {
            run::<f32>(&p, 2, 1e-5, |v| v as f32, |v| v as f64);
        }
        isa::set_override(None).unwrap();
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let p = params(2, 4, (5, 5), 6, (3, 3), 2, [1, 1], [1, 1], [0; 4]);
    let x = vec![0f32; p.input_len()];
    let w = vec![0f32; p.weight_len()];
    let mut y = vec![0f32; p.output_len()];
    assert!(conv2d_forward(&p, &x[1..], &w, None, false, &mut y).is_err());
    assert!(conv2d_forward(&p, &x, &w, Some(&[0.0; 5]), false, &mut y).is_err());
    let mut q = p;
    q.groups = 3;
    assert!(conv2d_forward(&q, &x, &w, None, false, &mut y).is_err());
    q = p;
    q.stride = [0, 1];
    assert!(q.validate().is_err());
    q = p;
    q.out = [usize::MAX / 2, 3];
    assert!(q.validate().is_err());
    let grads = Conv2dGrads {
        input: Some(&mut y[..3]),
        weight: None,
        bias: None,
    };
    assert!(conv2d_backward(
        &p,
        Upstream::Conv(&vec![0f32; p.output_len()]),
        &x,
        &w,
        grads
    )
    .is_err());
}

#[test]
fn empty_batch_gives_zero_grads() {
    let p = params(0, 2, (4, 4), 2, (3, 3), 1, [1, 1], [1, 1], [0; 4]);
    let w = vec![1f32; p.weight_len()];
    let mut gw = vec![f32::NAN; p.weight_len()];
    let mut gb = vec![f32::NAN; 2];
    let grads = Conv2dGrads {
        input: Some(&mut []),
        weight: Some(&mut gw),
        bias: Some(&mut gb),
    };
    conv2d_backward(&p, Upstream::Conv(&[]), &[], &w, grads).unwrap();
    assert!(gw.iter().chain(&gb).all(|&v| v == 0.0));
    conv2d_forward(&p, &[], &w, None, false, &mut []).unwrap();
}

/// Single-process timings of the seed CNN shapes (min over rounds): `cargo test --release -p
/// bigmodel-kernels timing_probe -- --ignored --nocapture`. Not a gate, a tuning aid.
#[test]
#[ignore]
fn timing_probe() {
    use std::time::Instant;
    let best = |f: &mut dyn FnMut()| {
        let mut b = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            f();
            b = b.min(t.elapsed().as_secs_f64());
        }
        b * 1e3
    };
    for (ci, co, hw) in [
        (1, 32, 28),
        (32, 64, 13),
        (64, 64, 5),
        (3, 32, 32),
        (32, 64, 15),
    ] {
        let p = params(64, ci, (hw, hw), co, (3, 3), 1, [1, 1], [1, 1], [0; 4]);
        let x = vec![0.5f32; p.input_len()];
        let w = vec![0.1f32; p.weight_len()];
        let b = vec![0.1f32; co];
        let mut y = vec![0f32; p.output_len()];
        let (mut gx, mut gw, mut gb) = (x.clone(), w.clone(), b.clone());
        for threads in [1, 2] {
            pool::install(threads, || {
                let f = best(&mut || conv2d_forward(&p, &x, &w, Some(&b), false, &mut y).unwrap());
                let bw = best(&mut || {
                    let grads = Conv2dGrads {
                        input: Some(&mut gx),
                        weight: Some(&mut gw),
                        bias: Some(&mut gb),
                    };
                    conv2d_backward(&p, Upstream::Conv(&y), &x, &w, grads).unwrap()
                });
                let bi = best(&mut || {
                    let grads = Conv2dGrads {
                        input: Some(&mut gx),
                        weight: None,
                        bias: None,
                    };
                    conv2d_backward(&p, Upstream::Conv(&y), &x, &w, grads).unwrap()
                });
                let bwo = best(&mut || {
                    let grads = Conv2dGrads {
                        input: None,
                        weight: Some(&mut gw),
                        bias: None,
                    };
                    conv2d_backward(&p, Upstream::Conv(&y), &x, &w, grads).unwrap()
                });
                println!(
                    "{ci}->{co} {hw}x{hw} threads {threads}: fwd {f:.3} ms, bwd {bw:.3} ms \
                     (input only {bi:.3}, weight only {bwo:.3})"
                );
            });
        }
    }
}

/// The pooled backward of a many-channel layer (the entry-wise path) gives each gradient alike
/// whichever others are asked for, and zeros where the ReLU stopped every maximum. (Its
/// agreement with the unfused gradients is checked with the other shapes above.)
#[test]
fn pooled_backward_gradients_alone_and_together() {
    let p = params(5, 24, (9, 8), 7, (3, 3), 1, [1, 1], [1, 1], [1, 0, 2, 1]);
    let cropped = cropped_for_pooling(&p);
    // (Baseline x86 code and other targets keep the dense backward, as do large images.)
    assert_eq!(
        pooled_backward::applies(&cropped),
        isa::active() >= Isa::Avx2
    );
    let large = params(1, 64, (66, 66), 8, (3, 3), 1, [1, 1], [1, 1], [0; 4]);
    assert!(!pooled_backward::applies(&cropped_for_pooling(&large)));
    let x: Vec<f32> = data(p.input_len(), 3).iter().map(|&v| v as f32).collect();
    let w: Vec<f32> = data(p.weight_len(), 4)
        .iter()
        .map(|&v| v as f32 * 0.3)
        .collect();
    let n = p.batch * p.c_out * (p.out[0] / 2) * (p.out[1] / 2);
    let (mut y, mut ix) = (vec![0f32; n], vec![0i64; n]);
    pool::install(2, || {
        conv2d_relu_pool2_forward(&p, &x, &w, None, &mut y, &mut ix)
    })
    .unwrap();
    let g: Vec<f32> = data(n, 5).iter().map(|&v| v as f32).collect();
    let run = |want: [bool; 3], ix: &[i64]| {
        let (mut gx, mut gw, mut gb) = (
            vec![f32::NAN; p.input_len()],
            vec![f32::NAN; p.weight_len()],
            vec![f32::NAN; p.c_out],
        );
        let grads = Conv2dGrads {
            input: want[0].then_some(&mut gx[..]),
            weight: want[1].then_some(&mut gw[..]),
            bias: want[2].then_some(&mut gb[..]),
        };
        let up = Upstream::ReluPool2 {
            grad: &g,
            indices: ix,
        };
        pool::install(2, || conv2d_backward(&p, up, &x, &w, grads)).unwrap();
        (gx, gw, gb)
    };
    let all = run([true; 3], &ix);
    for (i, want) in [
        [true, false, false],
        [false, true, false],
        [false, false, true],
    ]
    .into_iter()
    .enumerate()
    {
        let one = run(want, &ix);
        let (got, full) = match i {
            0 => (&one.0, &all.0),
            1 => (&one.1, &all.1),
            _ => (&one.2, &all.2),
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(got), bits(full), "gradient {i} alone");
    }
    let cut = run([true; 3], &vec![CUT; n]);
    assert!([cut.0, cut.1, cut.2].iter().flatten().all(|&v| v == 0.0));
}
