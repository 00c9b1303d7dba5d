"""bigmodel_native.optim.Adam / AdamW against torch.optim.Adam / AdamW.

Parity is checked against torch's default (for-loop) implementation over 100+ steps; bf16 is
checked against torch's fused path, which like ours computes in fp32.
"""

from __future__ import annotations

import copy
import itertools
import multiprocessing as mp
import sys

import bigmodel_native as bn
import pytest
import torch
from bigmodel_native import _native
from bigmodel_native.optim import Adam, AdamW

from ..conftest import available_isas

SHAPES = [(), (0,), (1,), (7,), (33, 17), (5, 3, 4)]
OPTIONS = [
    dict(),
    dict(weight_decay=0.1),
    dict(amsgrad=True),
    dict(maximize=True),
    dict(amsgrad=True, maximize=True, weight_decay=0.05),
    dict(betas=(0.5, 0.9), eps=1e-6),
]


def _make(shapes, dtype=torch.float32, transpose=False):
    ps = []
    for s in shapes:
        t = torch.randn(s, dtype=dtype)
        if transpose and t.dim() == 2:
            t = t.t()  # a non-contiguous parameter
        ps.append(torch.nn.Parameter(t))
    return ps


def _run_pair(
    ours_cls, torch_cls, kwargs, steps=100, dtype=torch.float32, transpose=False, torch_kwargs=None
):
    a = _make(SHAPES, dtype, transpose)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    oa = ours_cls(a, lr=1e-2, **kwargs)
    ob = torch_cls(b, lr=1e-2, **kwargs, **(torch_kwargs or {}))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p, q in zip(a, b, strict=True):
            grad = torch.randn(p.shape, generator=g, dtype=dtype)
            p.grad, q.grad = grad.clone(), grad.clone()
        oa.step()
        ob.step()
    return a, b, oa, ob


def _rel_err(a, b):
    return max(
        ((x.double() - y.double()).abs() / y.double().abs().clamp_min(1)).max().item()
        for x, y in zip(a, b, strict=True)
        if x.numel()
    )


@pytest.mark.parametrize("kwargs", OPTIONS, ids=str)
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_with_torch_default(cls, kwargs, dtype):
    ours, theirs = (Adam, torch.optim.Adam) if cls == "Adam" else (AdamW, torch.optim.AdamW)
    a, b, oa, ob = _run_pair(ours, theirs, kwargs, steps=120, dtype=dtype, torch_kwargs=dict(foreach=False))
    assert _rel_err(a, b) <= (1e-5 if dtype == torch.float32 else 1e-12)
    sa, sb = oa.state_dict(), ob.state_dict()
    drop_foreach = [{k: v for k, v in g.items() if k != "foreach"} for g in sb["param_groups"]]
    assert [{k: v for k, v in g.items() if k != "foreach"} for g in sa["param_groups"]] == drop_foreach
    for i in sb["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        assert sa["state"][i]["step"].dtype == sb["state"][i]["step"].dtype
        assert float(sa["state"][i]["step"]) == float(sb["state"][i]["step"]) == 120


@pytest.mark.parametrize("isa", available_isas())
def test_every_instruction_set_agrees(isa):
    _native.set_isa(isa)
    assert bn.cpu_isa() == isa
    a, b, *_ = _run_pair(AdamW, torch.optim.AdamW, dict(amsgrad=True, weight_decay=0.1), steps=30)
    assert _rel_err(a, b) <= 1e-5


def test_non_contiguous_params():
    a, b, *_ = _run_pair(Adam, torch.optim.Adam, dict(weight_decay=0.1), steps=20, transpose=True)
    assert any(not p.is_contiguous() for p in a)
    assert _rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_match_torch_fused(dtype):
    a, b, oa, _ = _run_pair(Adam, torch.optim.Adam, dict(weight_decay=0.01), steps=50, dtype=dtype,
                            torch_kwargs=dict(fused=True))  # fmt: skip
    assert all(p.dtype == dtype for p in a)
    assert oa.state[a[3]]["exp_avg"].dtype == dtype  # state kept in the parameter's dtype, as torch does
    # Both compute in fp32 and round once per store; allow a couple of ulps of the narrow type.
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    assert _rel_err(a, b) <= tol


def test_complex_params_follow_torch():
    a = [torch.nn.Parameter(torch.randn(6, 3, dtype=torch.complex64))]
    b = [torch.nn.Parameter(a[0].detach().clone())]
    oa, ob = Adam(a, lr=1e-2, amsgrad=True), torch.optim.Adam(b, lr=1e-2, amsgrad=True, foreach=False)
    for _ in range(20):
        g = torch.randn(6, 3, dtype=torch.complex64)
        a[0].grad, b[0].grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_lr_and_betas_as_tensors():
    kw = dict(lr=torch.tensor(0.01), betas=(torch.tensor(0.8), torch.tensor(0.99)))
    a = [torch.nn.Parameter(torch.randn(10))]
    b = [torch.nn.Parameter(a[0].detach().clone())]
    oa, ob = Adam(a, **kw), torch.optim.Adam(b, **kw, foreach=False)
    for _ in range(10):
        g = torch.randn(10)
        a[0].grad, b[0].grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    torch.testing.assert_close(a[0], b[0])


def test_params_without_grad_are_skipped_and_groups_keep_their_options():
    p1, p2, p3 = (torch.nn.Parameter(torch.randn(4)) for _ in range(3))
    opt = AdamW([{"params": [p1, p2]}, {"params": [p3], "lr": 0.5, "weight_decay": 0.0}], lr=1e-3)
    ref = torch.optim.AdamW(
        [{"params": [q1 := torch.nn.Parameter(p1.detach().clone()), torch.nn.Parameter(p2.detach().clone())]},
         {"params": [q3 := torch.nn.Parameter(p3.detach().clone())], "lr": 0.5, "weight_decay": 0.0}],
        lr=1e-3,
    )  # fmt: skip
    p1.grad, p3.grad = torch.ones(4), torch.ones(4)
    q1.grad, q3.grad = torch.ones(4), torch.ones(4)
    before = p2.detach().clone()
    opt.step()
    ref.step()
    assert p2 not in opt.state and torch.equal(p2, before)
    torch.testing.assert_close(p1, q1)
    torch.testing.assert_close(p3, q3)


def test_closure_is_called_with_grad_enabled():
    p = torch.nn.Parameter(torch.randn(3))
    opt = Adam([p])

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and opt.state[p]["step"] == 1


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_state_dict_round_trip_then_identical_training(direction):
    src_cls, dst_cls = (
        (torch.optim.AdamW, AdamW) if direction == "torch_to_ours" else (AdamW, torch.optim.AdamW)
    )
    model = torch.nn.Linear(5, 3)
    opt = src_cls(model.parameters(), lr=1e-2, amsgrad=True)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(8, 5)).pow(2).sum().backward()
        opt.step()
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    continued = []
    for cls in (src_cls, dst_cls):
        m = torch.nn.Linear(5, 3)
        m.load_state_dict(saved_model)
        o = cls(m.parameters(), lr=1e-2, amsgrad=True)
        o.load_state_dict(copy.deepcopy(saved_opt))  # loading aliases the tensors
        g = torch.Generator().manual_seed(3)
        for _ in range(10):
            o.zero_grad()
            m(torch.randn(8, 5, generator=g)).pow(2).sum().backward()
            o.step()
        continued.append([p.detach().clone() for p in m.parameters()])
    for x, y in zip(*continued, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_amp_grad_scale_and_found_inf_follow_torch_fused():
    a = [torch.nn.Parameter(torch.randn(50))]
    b = [torch.nn.Parameter(a[0].detach().clone())]
    oa, ob = Adam(a, lr=1e-2), torch.optim.Adam(b, lr=1e-2, fused=True)
    for _step, inf in enumerate([0.0, 1.0, 0.0, 0.0]):
        g = torch.randn(50) * 128
        a[0].grad, b[0].grad = g.clone(), g.clone()
        for o in (oa, ob):
            o.grad_scale, o.found_inf = torch.tensor(128.0), torch.tensor(inf)
            o.step()
        torch.testing.assert_close(a[0].grad, b[0].grad)  # unscaled in place, unless skipped
        torch.testing.assert_close(a[0], b[0])
        assert float(oa.state[a[0]]["step"]) == float(ob.state[b[0]]["step"])
    assert float(oa.state[a[0]]["step"]) == 3  # the overflow step did not count


def test_grad_scaler_on_cpu_trains():
    model = torch.nn.Linear(4, 1)
    opt = Adam(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(lr=-1.0), ValueError, "Invalid learning rate"),
        (dict(eps=-1.0), ValueError, "Invalid epsilon value"),
        (dict(betas=(1.0, 0.999)), ValueError, "Invalid beta parameter at index 0"),
        (dict(betas=(0.9, -0.1)), ValueError, "Invalid beta parameter at index 1"),
        (dict(weight_decay=-0.1), ValueError, "Invalid weight_decay value"),
        (dict(foreach=True, fused=True), RuntimeError, "cannot be `True` together"),
        (dict(differentiable=True), NotImplementedError, "differentiable=True"),
    ],
)
def test_bad_constructor_arguments_raise_like_torch(kwargs, exc, match):
    p = [torch.nn.Parameter(torch.randn(3))]
    if exc is not NotImplementedError:
        with pytest.raises(exc, match=match):
            torch.optim.Adam(p, **kwargs)
    with pytest.raises(exc, match=match):
        Adam(p, **kwargs)


def test_sparse_gradients_rejected_with_torch_message():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="Adam does not support sparse gradients"):
        opt.step()


def test_integer_and_tampered_state_are_refused_not_crashed():
    p = torch.nn.Parameter(torch.randn(4))
    opt = Adam([p])
    p.grad = torch.randn(4)
    opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(3)  # wrong size: must not read or write out of bounds
    with pytest.raises(RuntimeError, match="exp_avg of parameter 0 must match"):
        opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(4, dtype=torch.int32)
    with pytest.raises(TypeError, match="unsupported dtype torch.int32"):
        opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(4)
    step_before = float(opt.state[p]["step"])
    opt.state[p]["step"] = torch.zeros(2)
    with pytest.raises(RuntimeError, match="state_steps"):
        opt.step()
    assert float(opt.state[p]["exp_avg"].abs().sum()) == 0.0  # a refused call wrote nothing
    assert step_before == 1.0


def test_op_is_registered_and_passes_opcheck():
    ps = [torch.randn(5), torch.randn(2, 3), torch.randn(0)]
    args = (
        ps,
        [torch.randn_like(p) for p in ps],
        [torch.zeros_like(p) for p in ps],
        [torch.zeros_like(p) for p in ps],
        [torch.zeros_like(p) for p in ps],
        [torch.zeros(()) for _ in ps],
        1e-3, 0.9, 0.999, 0.01, 1e-8, True, False, True, None, None,
    )  # fmt: skip
    torch.library.opcheck(torch.ops.bigmodel_native.adam_step_.default, args)


def _child_step(q):
    # As in a DataLoader worker: torch's own OpenMP pool is not usable after fork, so torch is put
    # on one thread; ours is asked for two, so the child builds a fresh multi-thread pool.
    torch.set_num_threads(1)
    bn.set_num_threads(2)
    p = torch.nn.Parameter(torch.ones(100_000))
    p.grad = torch.ones(100_000)
    Adam([p], lr=0.1).step()
    q.put(float(p[0]))


def test_kernels_still_run_in_a_forked_child():
    # The parent uses the pool first, so the child inherits a pool with no threads.
    p = torch.nn.Parameter(torch.ones(100_000))
    p.grad = torch.ones(100_000)
    Adam([p]).step()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_child_step, args=(q,))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert q.get(timeout=5) == pytest.approx(0.9, abs=1e-4)


def test_thread_count_follows_torch_unless_pinned():
    before = torch.get_num_threads()
    try:
        bn.set_num_threads(None)
        torch.set_num_threads(1)
        assert bn.get_num_threads() == 1
        bn.set_num_threads(3)
        assert bn.get_num_threads() == 3
        with pytest.raises(ValueError):
            bn.set_num_threads(0)
        for n in (1, 3):  # results do not depend on the pool size
            bn.set_num_threads(n)
            a, b, *_ = _run_pair(Adam, torch.optim.Adam, {}, steps=5)
            assert _rel_err(a, b) <= 1e-5
    finally:
        bn.set_num_threads(None)
        torch.set_num_threads(before)


def test_many_tensors_in_one_call():
    shapes = [(n,) for n in itertools.islice(itertools.cycle([1, 17, 1000, 40_000]), 300)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    oa, ob = Adam(a), torch.optim.Adam(b, foreach=False)
    for _ in range(3):
        for p, q in zip(a, b, strict=True):
            p.grad = q.grad = torch.randn(p.shape)
        oa.step()
        ob.step()
    assert _rel_err(a, b) <= 1e-5


def test_openmp_team_is_parked_where_torch_uses_libgomp():
    # torch's Linux wheels run their CPU ops on GNU OpenMP; our calls park that team (see
    # crates/bigmodel-kernels/src/openmp.rs). Elsewhere the lookup honestly finds nothing.
    uses_gomp = sys.platform == "linux" and any(
        "libgomp" in line for line in open("/proc/self/maps").read().splitlines()
    )
    assert _native.openmp_parking() == uses_gomp


def test_kernels_run_from_other_threads_with_a_parked_team():
    # A call from a thread other than the one torch's team belongs to gets its own OpenMP team;
    # several such threads at once must neither hang nor mix their results.
    import threading

    results: dict[int, float] = {}

    def step(i: int) -> None:
        p = torch.nn.Parameter(torch.full((200_000,), float(i)))
        p.grad = torch.ones(200_000)
        for _ in range(3):
            Adam([p], lr=0.1).step()
        results[i] = float(p[0])

    workers = [threading.Thread(target=step, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers)
    assert results == pytest.approx({i: i - 0.3 for i in range(3)}, abs=1e-4)
