"""bigmodel_native.optim.Adam / AdamW and the adam_step_ op on CUDA tensors (needs a GPU).

Reference: torch's own fused CUDA kernels (torch.optim.Adam/AdamW(fused=True), and
torch._fused_adam_ / torch._fused_adamw_ for AMP's grad_scale / found_inf), which like ours compute
in fp32 for every parameter dtype. Also: more tensors and larger tensors than one launch holds, host
step counters, a CUDA-graph capture of the step, no host synchronisation, opcheck.
"""

from __future__ import annotations

import copy

import pytest
import torch
from bigmodel_native.ops import adam_step_
from bigmodel_native.optim import Adam, AdamW

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
# (65536 * 2 + 3,) crosses the kernel's chunk boundary and has a tail of 3 after the 4-wide loop.
SHAPES = [(), (0,), (1,), (7,), (33, 17), (5, 3, 4), (65536 * 2 + 3,)]
OPTIONS = [
    dict(),
    dict(weight_decay=0.1),
    dict(amsgrad=True),
    dict(maximize=True),
    dict(amsgrad=True, maximize=True, weight_decay=0.05),
    dict(betas=(0.5, 0.9), eps=1e-6),
]
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}


def _pair(shapes, dtype):
    base = [torch.randn(s, device=DEV, dtype=dtype) for s in shapes]
    return [torch.nn.Parameter(p.clone()) for p in base], [torch.nn.Parameter(p.clone()) for p in base]


def _run(ours, ref, a, b, steps):
    for _ in range(steps):
        for p, q in zip(a, b, strict=True):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("opts", OPTIONS, ids=str)
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_parity_with_torch_fused(cls, opts, dtype):
    torch_cls = torch.optim.Adam if cls is Adam else torch.optim.AdamW
    a, b = _pair(SHAPES, dtype)
    ours, ref = cls(a, lr=1e-2, **opts), torch_cls(b, lr=1e-2, fused=True, **opts)
    _run(ours, ref, a, b, steps=20)
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, **TOL[dtype])
        sa, sb = ours.state[p], ref.state[q]
        assert sa["step"].device == p.device and float(sa["step"]) == float(sb["step"]) == 20.0
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if opts.get("amsgrad") else ()):
            torch.testing.assert_close(sa[key], sb[key], **TOL[dtype])


def test_many_and_huge_tensors_span_launches():
    """100 tensors (32 per launch) and one of 17M elements (more than 256 chunks of 65536)."""
    shapes = [(1000 + i,) for i in range(100)] + [(17_000_001,)]
    a, b = _pair(shapes, torch.float32)
    ours, ref = AdamW(a, lr=1e-3), torch.optim.AdamW(b, lr=1e-3, fused=True)
    _run(ours, ref, a, b, steps=3)
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
        assert float(ours.state[p]["step"]) == 3.0  # every counter moved exactly once per step


def test_mixed_dtypes_in_one_group():
    a32, b32 = _pair([(100,)], torch.float32)
    a16, b16 = _pair([(100,)], torch.bfloat16)
    ours, ref = Adam(a32 + a16, lr=1e-2), torch.optim.Adam(b32 + b16, lr=1e-2, fused=True)
    _run(ours, ref, a32 + a16, b32 + b16, steps=5)
    torch.testing.assert_close(a32[0], b32[0], **TOL[torch.float32])
    torch.testing.assert_close(a16[0], b16[0], **TOL[torch.bfloat16])


def _state(shapes, dtype, amsgrad):
    ps = [torch.randn(s, device=DEV, dtype=dtype) for s in shapes]
    return dict(
        params=ps,
        grads=[torch.randn_like(p) * 64 for p in ps],
        exp_avgs=[torch.randn_like(p).abs() for p in ps],
        exp_avg_sqs=[torch.rand_like(p) for p in ps],
        max_exp_avg_sqs=[torch.rand_like(p) for p in ps] if amsgrad else [],
        state_steps=[torch.full((), 3.0, device=DEV) for _ in ps],
    )


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("overflow", [False, True])
def test_grad_scale_and_found_inf_match_torch(decoupled, overflow):
    ours = _state([(5,), (70_001,)], torch.float32, amsgrad=True)
    ref = copy.deepcopy(ours)
    scale = torch.tensor(64.0, device=DEV)
    found = torch.tensor(1.0 if overflow else 0.0, device=DEV)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1, eps=1e-8, amsgrad=True, maximize=False)
    adam_step_(*ours.values(), **hyper, decoupled_weight_decay=decoupled, grad_scale=scale, found_inf=found)
    # torch's fused step leaves the counters to its caller: +1, then -found_inf.
    torch._foreach_add_(ref["state_steps"], 1)
    fused = torch._fused_adamw_ if decoupled else torch._fused_adam_
    fused(*ref.values(), **hyper, grad_scale=scale, found_inf=found)
    torch._foreach_sub_(ref["state_steps"], [found] * len(ref["state_steps"]))
    for key in ours:
        for x, y in zip(ours[key], ref[key], strict=True):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)  # grads: unscaled in place by both


def test_host_step_counters():
    """Counters on the CPU (a state from a non-fused torch optimizer) are bumped on the host."""
    ours = _state([(9,), (300,)], torch.float32, amsgrad=False)
    ours["state_steps"] = [torch.tensor(3.0) for _ in ours["params"]]
    ref = copy.deepcopy(ours)
    ref["state_steps"] = [s.to(DEV) for s in ref["state_steps"]]
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=True)
    adam_step_(*ours.values(), **hyper, decoupled_weight_decay=False)
    torch._foreach_add_(ref["state_steps"], 1)
    torch._fused_adam_(*ref.values(), **hyper)
    assert [float(s) for s in ours["state_steps"]] == [4.0, 4.0]
    for x, y in zip(ours["params"], ref["params"], strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def _model_and_optimizer():
    torch.manual_seed(1)
    ps = [torch.nn.Parameter(torch.randn(s, device=DEV)) for s in [(256, 128), (128,), (3, 70_000)]]
    grads = [torch.randn_like(p) for p in ps]
    return ps, grads, AdamW(ps, lr=1e-2, weight_decay=0.1, amsgrad=True)


def _warm_up(ps, grads, opt, steps=3):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(steps):
            for p, g in zip(ps, grads, strict=True):
                p.grad = g
            opt.step()
    torch.cuda.current_stream().wait_stream(side)


def test_cuda_graph_capture_of_the_step():
    eager_ps, eager_g, eager_opt = _model_and_optimizer()
    graph_ps, graph_g, graph_opt = _model_and_optimizer()
    _warm_up(eager_ps, eager_g, eager_opt)
    _warm_up(graph_ps, graph_g, graph_opt)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_opt.step()
    for _ in range(4):
        graph.replay()
        eager_opt.step()
    torch.cuda.synchronize()
    for p, q in zip(graph_ps, eager_ps, strict=True):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
        assert float(graph_opt.state[p]["step"]) == float(eager_opt.state[q]["step"]) == 7.0


def test_step_never_synchronises_the_host():
    ps, grads, opt = _model_and_optimizer()
    _warm_up(ps, grads, opt, steps=1)  # the first call compiles and loads the kernels
    opt.grad_scale = torch.tensor(8.0, device=DEV)
    opt.found_inf = torch.tensor(0.0, device=DEV)
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert float(opt.state[ps[0]]["step"]) == 2.0


def test_opcheck_on_cuda_tensors():
    ps = [torch.randn(5, device=DEV), torch.randn(2, 3, device=DEV), torch.randn(0, device=DEV)]
    args = (
        ps,
        [torch.randn_like(p) for p in ps],
        [torch.zeros_like(p) for p in ps],
        [torch.zeros_like(p) for p in ps],
        [torch.zeros_like(p) for p in ps],
        [torch.zeros((), device=DEV) for _ in ps],
        1e-3, 0.9, 0.999, 0.01, 1e-8, True, False, True, None, None,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.bigmodel_native.adam_step_.default, args)


def test_bad_inputs_raise_and_change_nothing():
    p = torch.randn(10, device=DEV)
    st = _state([(10,)], torch.float32, amsgrad=False)
    st["params"] = [p]
    before = p.clone()
    st["grads"] = [torch.randn(11, device=DEV)]
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
    with pytest.raises(RuntimeError, match="must match"):
        adam_step_(*st.values(), **hyper, decoupled_weight_decay=False)
    st["grads"] = [torch.randn(10, device=DEV, dtype=torch.float64)]
    with pytest.raises(TypeError, match="unsupported dtype"):
        adam_step_(*st.values(), **hyper, decoupled_weight_decay=False)
    assert torch.equal(p, before) and float(st["state_steps"][0]) == 3.0
