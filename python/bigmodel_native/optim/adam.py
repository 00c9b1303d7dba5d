"""Adam and AdamW whose step is one fused Rust kernel per parameter group.

They subclass torch's own classes, so the constructor's validation, ``param_groups``,
``add_param_group``, ``zero_grad``, hooks and the ``state_dict`` layout are torch's, key for
key: a checkpoint written by either optimizer loads into the other. Only ``step`` differs:
instead of one or several torch kernels per tensor it makes a single call to
``torch.ops.bigmodel_native.adam_step_`` per group.

The ``foreach`` and ``fused`` flags are accepted and validated as torch does, and do not change
what runs: the step is always the fused kernel. ``differentiable=True`` cannot be honoured (the
kernel records no autograd history) and raises NotImplementedError.

Parameters that are DTensors (FSDP2's ``fully_shard``, tensor parallelism) are stepped shard by
shard: the kernel runs on each rank's local shard (``to_local()``) of the parameter, its gradient
and its state. The state is created as torch's AdamW creates it (``zeros_like`` of the parameter,
so a DTensor with the parameter's mesh and placements) and ``state_dict`` is torch's, DTensors
included. A gradient laid out differently from its parameter is redistributed to the parameter's
placements first, as a DTensor pointwise op would be; with AMP's ``grad_scale`` such a gradient is
unscaled in the redistributed copy, not in ``param.grad``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..ops.adam import adam_step_

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _dtensor_class() -> type | None:
    """torch's DTensor class if its module is loaded (no DTensor can exist otherwise), else None.

    Importing torch.distributed.tensor costs about a second, so this package never does it itself.
    """
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


_TORCH_ADAM_KWARGS = frozenset(inspect.signature(torch.optim.Adam.__init__).parameters)

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


def _scalar_dtype() -> torch.dtype:
    # torch keeps the step counter in float64 when that is the default dtype, float32 otherwise.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _as_float(x: float | Tensor) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def _is_dtensor(t: Tensor) -> bool:
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def _local(t: Tensor) -> Tensor:
    local = t.to_local()  # under no_grad: the DTensor's own local tensor, no copy
    wait = getattr(local, "wait", None)  # an AsyncCollectiveTensor after an async redistribute
    return wait() if callable(wait) else local


def _local_shards(
    params: list[Tensor], grads: list[Tensor], states: list[list[Tensor]]
) -> tuple[list[Tensor], list[Tensor], list[list[Tensor]], list[Tensor]]:
    """Each rank's local shards of DTensor params, grads and state (plain tensors pass through).

    Returns the lists for the kernel and the DTensors it updates in place (to bump their versions).
    """
    wrappers: list[Tensor] = []
    local_params: list[Tensor] = []
    local_grads: list[Tensor] = []
    local_states: list[list[Tensor]] = [[] for _ in states]
    for i, p in enumerate(params):
        g = grads[i]
        tensors = [p, g, *(lst[i] for lst in states)]
        if not _is_dtensor(p):
            if any(_is_dtensor(t) for t in tensors):
                raise RuntimeError(
                    "got mixed torch.Tensor and DTensor: a parameter that is a plain tensor has a "
                    "gradient or optimizer state that is a DTensor"
                )
            local_params.append(p)
            local_grads.append(g)
            for k, lst in enumerate(states):
                local_states[k].append(lst[i])
            continue
        if not _is_dtensor(g):
            raise RuntimeError(
                "got mixed torch.Tensor and DTensor: a DTensor parameter has a plain-tensor gradient; "
                "need to convert all torch.Tensor to DTensor before calling distributed operators!"
            )
        if g.device_mesh != p.device_mesh or tuple(g.placements) != tuple(p.placements):
            g = g.redistribute(p.device_mesh, p.placements)
        for lst in states:
            st = lst[i]
            if not _is_dtensor(st) or st.device_mesh != p.device_mesh or st.placements != p.placements:
                raise RuntimeError(
                    "optimizer state of a DTensor parameter must be a DTensor with the parameter's mesh "
                    f"and placements {tuple(p.placements)}, got "
                    + (f"placements {tuple(st.placements)}" if _is_dtensor(st) else type(st).__name__)
                )
        local_params.append(_local(p))
        local_grads.append(_local(g))
        for k, lst in enumerate(states):
            local_states[k].append(_local(lst[i]))
            wrappers.append(lst[i])
        wrappers.append(p)
    return local_params, local_grads, local_states, wrappers


class _FusedAdamStep:
    """The step shared by Adam and AdamW. Mixed in before the torch class it replaces."""

    _decoupled_default: bool = False
    param_groups: list[dict[str, Any]]
    state: dict[Tensor, dict[str, Any]]

    def _refuse_differentiable(self, differentiable: bool) -> None:
        if differentiable:
            raise NotImplementedError(
                f"bigmodel_native.optim.{type(self).__name__} does not support differentiable=True: "
                "the fused kernel records no autograd history. Use torch.optim for that."
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Performs a single optimization step (same contract as torch.optim.Adam.step)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        for group in self.param_groups:
            self._step_group(group, grad_scale, found_inf)
        return loss

    def _step_group(self, group: dict[str, Any], grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        if group.get("differentiable", False):
            self._refuse_differentiable(True)
        amsgrad: bool = group["amsgrad"]
        params: list[Tensor] = []
        grads: list[Tensor] = []
        exp_avgs: list[Tensor] = []
        exp_avg_sqs: list[Tensor] = []
        max_exp_avg_sqs: list[Tensor] = []
        steps: list[Tensor] = []
        state = self.state
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(
                    "Adam does not support sparse gradients, please consider SparseAdam instead"
                )
            st = state[p]
            if len(st) == 0:
                # On the parameter's device for CUDA (as torch's fused Adam): no host sync, capturable.
                st["step"] = torch.zeros((), dtype=_scalar_dtype(), device=p.device if p.is_cuda else None)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(g)
            exp_avgs.append(st["exp_avg"])
            exp_avg_sqs.append(st["exp_avg_sq"])
            if amsgrad:
                max_exp_avg_sqs.append(st["max_exp_avg_sq"])
            steps.append(st["step"])
        if not params:
            return
        dtensors: list[Tensor] = []
        dtensor = _dtensor_class()
        if (
            dtensor is not None
            and not all(type(p) in _PLAIN for p in params)
            and any(isinstance(t, dtensor) for t in (*params, *grads))
        ):
            params, grads, states, dtensors = _local_shards(
                params,
                grads,
                [exp_avgs, exp_avg_sqs, max_exp_avg_sqs] if amsgrad else [exp_avgs, exp_avg_sqs],
            )
            exp_avgs, exp_avg_sqs = states[0], states[1]
            max_exp_avg_sqs = states[2] if amsgrad else []
        beta1, beta2 = group["betas"]
        adam_step_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_exp_avg_sqs,
            steps,
            _as_float(group["lr"]),
            _as_float(beta1),
            _as_float(beta2),
            float(group["weight_decay"]),
            float(group["eps"]),
            amsgrad,
            bool(group["maximize"]),
            bool(group.get("decoupled_weight_decay", self._decoupled_default)),
            grad_scale,
            found_inf,
        )
        # The kernel bumped the local shards' versions; so are the DTensors'. Reading found_inf is a
        # host sync on CUDA, so it happens only for DTensors (never on the plain-tensor path).
        if dtensors and not (found_inf is not None and float(found_inf) == 1.0):
            torch._C._increment_version(dtensors)


class Adam(_FusedAdamStep, torch.optim.Adam):
    """Drop-in for :class:`torch.optim.Adam` running one fused Rust kernel per group and step."""

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        self._refuse_differentiable(differentiable)
        kwargs: dict[str, Any] = dict(
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        torch.optim.Adam.__init__(
            self,
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            **{k: v for k, v in kwargs.items() if k in _TORCH_ADAM_KWARGS},
        )
        if "decoupled_weight_decay" not in _TORCH_ADAM_KWARGS:  # torch < 2.6
            self.defaults["decoupled_weight_decay"] = decoupled_weight_decay
            for group in self.param_groups:
                group.setdefault("decoupled_weight_decay", decoupled_weight_decay)
        # The kernel unscales gradients itself (GradScaler hands over grad_scale / found_inf).
        self._step_supports_amp_scaling = True


class AdamW(_FusedAdamStep, torch.optim.AdamW):
    """Drop-in for :class:`torch.optim.AdamW` (decoupled weight decay), fused in Rust."""

    _decoupled_default = True

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        self._refuse_differentiable(differentiable)
        torch.optim.AdamW.__init__(
            self,
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
        )
        self._step_supports_amp_scaling = True
