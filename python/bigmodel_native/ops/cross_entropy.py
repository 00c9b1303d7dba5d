"""Fused softmax cross-entropy: a drop-in for ``torch.nn.functional.cross_entropy`` (CPU and CUDA).

:func:`cross_entropy` takes F.cross_entropy's exact arguments and has its semantics: class-index
targets (int64 or uint8) and class-probability targets (shaped like the input); inputs ``(N, C)``,
``(C,)`` and ``(N, C, d1, ..., dk)``; ``weight``; ``ignore_index``; reductions ``"none"``,
``"mean"`` (torch's weighted mean) and ``"sum"``; ``label_smoothing`` with torch's definition;
the legacy ``size_average`` / ``reduce``. Bad arguments raise torch's exception classes with
torch's messages.

The Rust kernel reads the logits once in the forward, with an online maximum and log-sum-exp,
and keeps only one log-sum-exp per row (never a softmax) for the backward, which writes
``softmax - target`` (smoothing and weights folded in) in one pass.

Ops (``torch.ops.bigmodel_native.*``), each with a fake kernel:

- ``cross_entropy_forward(input, target, weight, reduction, ignore_index, label_smoothing)
  -> (loss, lse, asum, total_weight)``, differentiable through ``register_autograd``;
- ``cross_entropy_backward(...) -> grad_input``, ``cross_entropy_target_backward(...)`` and, for
  class weights that require grad under probability targets, ``cross_entropy_weight_backward(...)``;
- ``cross_entropy_backward_(...)``: the in-place backward, which overwrites the logits with
  their gradient (see :func:`cross_entropy_inplace_backward`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch._C import _functions
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from .. import _native
from .._threads import get_num_threads
from ._eager import PLAIN_TENSORS, mark_auxiliary_outputs, plain_eager, skips_dispatcher
from ._library import LIB

_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
#: Logits dtypes whose gradient the forward writes (float16 is not fused: see :func:`_run`).
_FUSED_FLOATS = (torch.float32, torch.float64, torch.bfloat16)
OPS = torch.ops.bigmodel_native

LIB.define(
    "cross_entropy_forward(Tensor input, Tensor target, Tensor? weight, int reduction, int ignore_index, "
    "float label_smoothing, bool inplace_backward=False) -> (Tensor, Tensor, Tensor, Tensor)"
)
LIB.define(
    "cross_entropy_backward(Tensor grad_output, Tensor input, Tensor target, Tensor? weight, Tensor lse, "
    "Tensor asum, Tensor total_weight, int reduction, int ignore_index, float label_smoothing) -> Tensor"
)
LIB.define(
    "cross_entropy_backward_(Tensor grad_output, Tensor(a!) input, Tensor target, Tensor? weight, "
    "Tensor lse, Tensor asum, Tensor total_weight, int reduction, int ignore_index, "
    "float label_smoothing) -> ()"
)
LIB.define(
    "cross_entropy_target_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor lse, "
    "Tensor total_weight, int reduction, float label_smoothing) -> Tensor"
)
LIB.define(
    "cross_entropy_weight_backward(Tensor grad_output, Tensor input, Tensor target, Tensor lse, "
    "Tensor total_weight, int reduction, float label_smoothing) -> Tensor"
)


# ----------------------------------------------------------------------------- shapes


def _layout(input: Tensor) -> tuple[int, int, int]:
    """(outer, classes, inner) of the kernel's ``(outer, C, inner)`` view of the logits."""
    shape = input.shape
    if len(shape) <= 2:
        return (shape[0], shape[1], 1) if len(shape) == 2 else (1, shape[0], 1)
    return shape[0], shape[1], math.prod(shape[2:])


def _loss_shape(input: Tensor, target: Tensor, reduction: int) -> tuple[int, ...]:
    if reduction != 0 or input.dim() == 1:
        return ()
    return (input.shape[0], *input.shape[2:])


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _stats(input: Tensor, prob: bool) -> tuple[int, int]:
    outer, _, inner = _layout(input)
    rows = outer * inner
    return rows, rows if prob else 0


def _kw(input: Tensor, reduction: int, label_smoothing: float) -> dict:
    outer, classes, inner = _layout(input)
    return dict(
        outer=outer,
        classes=classes,
        inner=inner,
        reduction=reduction,
        label_smoothing=label_smoothing,
        num_threads=get_num_threads(),
    )


_DLPACK_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
}
#: Gradients at least this large come from the kernels' buffer cache (buffer_cache.rs).
_CACHED_MIN_BYTES = 8 << 20


def _new_grad(input: Tensor) -> Tensor:
    """A contiguous CPU buffer shaped like ``input`` for its gradient.

    Large ones come from the kernels' one-slot cache (``bigmodel_kernels::buffer_cache``): each
    training step's logits-sized gradient reuses the previous step's released mapping instead
    of faulting in and zeroing fresh pages, which costs as long as the loss itself. A released
    mapping stays reclaimable by the system (``MADV_FREE``); :func:`bigmodel_native.empty_cache`
    unmaps it.
    """
    if input.nbytes >= _CACHED_MIN_BYTES:
        capsule = _native.grad_buffer(list(input.shape), _DLPACK_DTYPES[input.dtype])
        if capsule is not None:
            return torch.from_dlpack(capsule)
    if input.is_contiguous():  # empty_like keeps the layout; without the keyword it parses faster
        return torch.empty_like(input)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _index_target(target: Tensor) -> Tensor:
    return target if target.dtype == torch.int64 else target.long()


def _opt(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


# ----------------------------------------------------------------------------- CPU kernels


def _forward_cpu(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
    inplace_backward: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    prob = target.is_floating_point()
    if not prob:
        target = _index_target(target)
    outer, _, inner = _layout(input)
    rows = outer * inner
    acc = _acc(input.dtype)
    loss = torch.empty(_loss_shape(input, target, reduction), dtype=input.dtype)
    lse = torch.empty(rows, dtype=acc)
    asum = torch.empty(rows if prob else 0, dtype=acc)
    total_weight = torch.empty(1, dtype=acc)
    stats = (lse, asum, total_weight)
    _native_forward(input, target, weight, reduction, ignore_index, label_smoothing, loss, stats)
    return loss, lse, asum, total_weight


def _native_forward(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
    loss: Tensor,
    stats: tuple[Tensor, Tensor, Tensor] | tuple[None, None, None],
    grad_input: Tensor | None = None,
) -> None:
    """The Rust forward into ``loss`` (and ``stats``: lse, asum, total_weight, or Nones for
    scratch); ``target`` is int64 indices or probabilities. Arguments go by position: at
    (64, 10) building keyword arguments costs a tenth of the whole call."""
    outer, classes, inner = _layout(input)
    _native.cross_entropy_forward(
        input.contiguous(), target.contiguous(), _opt(weight), loss, *stats,
        outer, classes, inner, reduction, ignore_index, label_smoothing, get_num_threads(), grad_input,
    )  # fmt: skip


def _loss_cpu(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
    grad_input: Tensor | None = None,
) -> Tensor:
    """The loss alone, its statistics kept in scratch memory; with ``grad_input`` (contiguous,
    the input's shape) the logits' gradient for an upstream gradient of 1 is written too."""
    if input.shape[-1 if input.dim() == 1 else 1] == 0:  # no class: the op's forward covers it
        return _forward_cpu(input, target, weight, reduction, ignore_index, label_smoothing)[0]
    if target.dtype is not torch.int64 and not target.is_floating_point():
        target = target.long()
    shape = _loss_shape(input, target, reduction)
    # A reduced loss comes from a 0-dim template: faster than parsing a shape.
    loss = input.new_empty(shape) if shape else torch.empty_like(_SCALARS[input.dtype])
    _native_forward(
        input, target, weight, reduction, ignore_index, label_smoothing, loss, _NO_STATS, grad_input
    )
    return loss


_NO_STATS = (None, None, None)
#: One 0-dim CPU tensor per logits dtype, templates for the reduced loss.
_SCALARS = {dtype: torch.empty((), dtype=dtype) for dtype in _FLOATS}


def _forward_fake(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
    inplace_backward: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    prob = target.is_floating_point()
    rows, asum_rows = _stats(input, prob)
    acc = _acc(input.dtype)
    return (
        input.new_empty(_loss_shape(input, target, reduction)),
        input.new_empty(rows, dtype=acc),
        input.new_empty(asum_rows, dtype=acc),
        input.new_empty(1, dtype=acc),
    )


def _backward_cpu(
    grad_output: Tensor,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    asum: Tensor,
    total_weight: Tensor,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
) -> Tensor:
    if not target.is_floating_point():
        target = _index_target(target)
    grad_input = _new_grad(input)
    _native.cross_entropy_backward(
        grad_output.contiguous(), input.contiguous(), grad_input, target.contiguous(), _opt(weight),
        lse.contiguous(), asum.contiguous(), total_weight.contiguous(),
        ignore_index=ignore_index, **_kw(input, reduction, label_smoothing),
    )  # fmt: skip
    return grad_input


def _backward_fake(grad_output: Tensor, input: Tensor, *args: object) -> Tensor:
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _backward_inplace_cpu(
    grad_output: Tensor,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    asum: Tensor,
    total_weight: Tensor,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
) -> None:
    if not input.is_contiguous():
        raise RuntimeError("cross_entropy_backward_: the logits must be contiguous to hold their gradient")
    if not target.is_floating_point():
        target = _index_target(target)
    _native.cross_entropy_backward(
        grad_output.contiguous(), None, input, target.contiguous(), _opt(weight),
        lse.contiguous(), asum.contiguous(), total_weight.contiguous(),
        ignore_index=ignore_index, **_kw(input, reduction, label_smoothing),
    )  # fmt: skip
    torch._C._increment_version(input)


def _backward_inplace_fake(*args: object) -> None:
    return None


def _target_backward_cpu(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    total_weight: Tensor,
    reduction: int,
    label_smoothing: float,
) -> Tensor:
    grad_target = torch.empty(input.shape, dtype=input.dtype)
    _native.cross_entropy_target_backward(
        grad_output.contiguous(), input.contiguous(), _opt(weight), lse.contiguous(),
        total_weight.contiguous(), grad_target, **_kw(input, reduction, label_smoothing),
    )  # fmt: skip
    return grad_target


def _target_backward_fake(grad_output: Tensor, input: Tensor, *args: object) -> Tensor:
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _weight_backward_cpu(
    grad_output: Tensor,
    input: Tensor,
    target: Tensor,
    lse: Tensor,
    total_weight: Tensor,
    reduction: int,
    label_smoothing: float,
) -> Tensor:
    if not target.is_floating_point() or target.shape != input.shape:
        raise RuntimeError("cross_entropy_weight_backward: the target must hold class probabilities")
    _, classes, _ = _layout(input)
    grad_weight = torch.empty(classes, dtype=input.dtype)
    _native.cross_entropy_weight_backward(
        grad_output.contiguous(), input.contiguous(), target.contiguous(), lse.contiguous(),
        total_weight.contiguous(), grad_weight, **_kw(input, reduction, label_smoothing),
    )  # fmt: skip
    return grad_weight


def _weight_backward_fake(grad_output: Tensor, input: Tensor, *args: object) -> Tensor:
    return input.new_empty(input.shape[0] if input.dim() == 1 else input.shape[1])


LIB.impl("cross_entropy_forward", _forward_cpu, "CPU")
LIB.impl("cross_entropy_backward", _backward_cpu, "CPU")
LIB.impl("cross_entropy_backward_", _backward_inplace_cpu, "CPU")
LIB.impl("cross_entropy_target_backward", _target_backward_cpu, "CPU")
LIB.impl("cross_entropy_weight_backward", _weight_backward_cpu, "CPU")
torch.library.register_fake("bigmodel_native::cross_entropy_forward", _forward_fake, lib=LIB)
torch.library.register_fake("bigmodel_native::cross_entropy_backward", _backward_fake, lib=LIB)
torch.library.register_fake("bigmodel_native::cross_entropy_backward_", _backward_inplace_fake, lib=LIB)
torch.library.register_fake("bigmodel_native::cross_entropy_target_backward", _target_backward_fake, lib=LIB)
torch.library.register_fake("bigmodel_native::cross_entropy_weight_backward", _weight_backward_fake, lib=LIB)


# ----------------------------------------------------------------------------- autograd


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    input, target, weight, reduction, ignore_index, label_smoothing, *rest = inputs
    inplace = bool(rest and rest[0])
    _, lse, asum, total_weight = output
    ctx.save_for_backward(input, target, weight, lse, asum, total_weight)
    ctx.args = (reduction, ignore_index, label_smoothing)
    ctx.inplace = inplace
    mark_auxiliary_outputs(ctx, lse, asum, total_weight)


_DOUBLE_BACKWARD = (
    b"bigmodel_native.cross_entropy has no double backward: trying to differentiate twice through its "
    b"gradient (use torch.nn.functional.cross_entropy where second derivatives are needed)"
)


def _no_double_backward(grad: Tensor | None) -> Tensor | None:
    """``grad`` behind a node that raises if differentiated (what ``once_differentiable`` does,
    but that one only looks at the upstream gradient, not at the inputs)."""
    if grad is None:
        return None
    return _functions.DelayedError(_DOUBLE_BACKWARD, 1)(grad.detach().requires_grad_())


def _backward(ctx, grad_loss: Tensor | None, *_: object) -> tuple:
    if grad_loss is None:  # nothing flows back
        return (None,) * len(ctx.needs_input_grad)
    input, target, weight, lse, asum, total_weight = ctx.saved_tensors
    reduction, ignore_index, label_smoothing = ctx.args
    direct = skips_dispatcher(grad_loss)
    grad_input = grad_target = None
    if ctx.needs_input_grad[0]:
        args = (
            grad_loss,
            input,
            target,
            weight,
            lse,
            asum,
            total_weight,
            reduction,
            ignore_index,
            label_smoothing,
        )
        if ctx.inplace:
            (_kernel("cross_entropy_backward_", input) if direct else OPS.cross_entropy_backward_)(*args)
            grad_input = input
        else:
            grad_input = (_kernel("cross_entropy_backward", input) if direct else OPS.cross_entropy_backward)(
                *args
            )
    if ctx.needs_input_grad[1]:
        args = (grad_loss, input, weight, lse, total_weight, reduction, label_smoothing)
        grad_target = (_target_backward_cpu if direct else OPS.cross_entropy_target_backward)(*args)
    grad_weight = None
    if ctx.needs_input_grad[2]:  # only reachable with probability targets (see _check)
        args = (grad_loss, input, target, lse, total_weight, reduction, label_smoothing)
        grad_weight = (_weight_backward_cpu if direct else OPS.cross_entropy_weight_backward)(*args)
    if torch.is_grad_enabled():  # create_graph=True: the kernels have no second derivative
        grad_input, grad_target, grad_weight = map(
            _no_double_backward, (grad_input, grad_target, grad_weight)
        )
    return grad_input, grad_target, grad_weight, None, None, None, None


torch.library.register_autograd(
    "bigmodel_native::cross_entropy_forward", _backward, setup_context=_setup_context, lib=LIB
)


#: device type -> op name -> the implementation registered for it (cross_entropy_cuda.py adds "cuda").
KERNELS: dict[str, dict[str, Callable[..., Any]]] = {
    "cpu": {
        "cross_entropy_forward": _forward_cpu,
        "cross_entropy_backward": _backward_cpu,
        "cross_entropy_backward_": _backward_inplace_cpu,
    }
}


def _kernel(op: str, input: Tensor) -> Callable[..., Any]:
    """The implementation the dispatcher would pick for ``op`` on ``input``'s device."""
    return KERNELS[input.device.type][op]


class _CrossEntropy(torch.autograd.Function):
    """The op's autograd, entered directly in plain eager mode.

    Calling the op through its registered autograd costs several times the kernel at small
    sizes (torch wraps it in a generic Function and rebinds its signature on every call). This
    old-style Function (no separate ``setup_context``, so no per-call signature binding) runs
    the ops' CPU implementations with the same context logic; it is only used where
    :func:`skips_dispatcher` holds, and the registered op serves every other mode.
    """

    @staticmethod
    def forward(ctx, *args: object) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = _kernel("cross_entropy_forward", args[0])(*args)
        _setup_context(ctx, args, out)
        return out

    backward = staticmethod(_backward)


class _FusedCrossEntropy(torch.autograd.Function):
    """Plain eager training on ``(N, C)`` or ``(C,)`` CPU logits: the forward writes the gradient.

    A loss computed with gradients enabled is almost always differentiated, so the forward
    writes the logits' gradient for an upstream gradient of 1 while each run of rows is still in
    cache (as Liger Kernel's fused loss does): the logits are read once instead of twice, and
    each ``exp`` is computed once. The backward only scales that buffer by the real upstream
    gradient (nothing to do when it is 1, as for ``loss.backward()``) and hands it to autograd.
    The buffer lives from the forward to the first backward, where the unfused path would
    allocate it; a second backward (``retain_graph=True``) recomputes it with the same kernel,
    so both give the same bits. float16 logits are not fused (see :func:`_run`).

    The kernel has no second derivative: with ``create_graph=True`` the gradient gets a node
    that raises if anything differentiates through it, rather than a silently wrong result.
    """

    @staticmethod
    def forward(ctx, input, target, weight, reduction, ignore_index, label_smoothing):  # type: ignore[override]
        grad = _new_grad(input)
        loss = _loss_cpu(input, target, weight, reduction, ignore_index, label_smoothing, grad)
        # Saved so that autograd catches in-place changes of any of them before a backward.
        ctx.save_for_backward(input, target, weight)
        ctx.args = (reduction, ignore_index, label_smoothing)
        ctx.grad_input = grad
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple:  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True
            with torch.no_grad():
                grad = _FusedCrossEntropy._grad(ctx, grad_loss)
            return _no_double_backward(grad), None, None, None, None, None
        return _FusedCrossEntropy._grad(ctx, grad_loss), None, None, None, None, None

    @staticmethod
    def _grad(ctx, grad_loss: Tensor) -> Tensor:
        input, target, weight = ctx.saved_tensors
        grad, ctx.grad_input = ctx.grad_input, None  # autograd owns it from here
        if grad is None:  # a second backward through a retained graph
            grad = _new_grad(input)
            _loss_cpu(input, target, weight, *ctx.args, grad)
        if ctx.args[0] == 0 and grad_loss.dim() > 0:  # reduction "none": one value per row
            grad.mul_(grad_loss.unsqueeze(-1))
        elif grad_loss.item() != 1.0:
            grad.mul_(grad_loss)
        return grad


# ----------------------------------------------------------------------------- public API


def _check(
    input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, label_smoothing: float
) -> tuple[Tensor, Tensor, Tensor | None]:
    """torch's argument checks, in torch's order, with its exception classes and messages."""
    if weight is None and label_smoothing <= 1.0 and input.is_cpu and target.is_cpu:
        # The common call, (N, C) CPU logits and N class indices, passes every check below; it
        # is decided here in a fraction of the time (this runs on every call, however small).
        ishape, tshape = input.shape, target.shape
        if (
            len(ishape) == 2
            and len(tshape) == 1
            and tshape[0] == ishape[0]
            and target.dtype is torch.int64
            and input.dtype in _FLOATS
        ):
            return input, target, weight
    _check_devices(input, target, weight)
    if input.dim() == 0:
        raise IndexError("Dimension specified as 1 but tensor has no dimensions")
    if input.dtype not in _FLOATS:
        kernel = "log_softmax_lastdim_kernel_impl" if input.dim() <= 2 else "log_softmax_kernel_impl"
        raise NotImplementedError(f"\"{kernel}\" not implemented for '{_scalar(input)}'")
    classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    if input.shape == target.shape:  # class probabilities
        if input.is_cuda:
            raise NotImplementedError(
                "bigmodel_native.ops.cross_entropy: class-probability targets run on CPU tensors only; "
                "on CUDA use class-index targets or torch.nn.functional.cross_entropy"
            )
        if not target.is_floating_point():
            raise RuntimeError(
                f"Expected floating point type for target with class probabilities, got {_scalar(target)}"
            )
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        if label_smoothing > 1.0:
            raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
        _check_weight(weight, classes)
        dtype = torch.promote_types(input.dtype, target.dtype)
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
        if dtype not in _FLOATS:
            raise NotImplementedError(f"bigmodel_native.ops.cross_entropy: unsupported dtype {dtype}")
        return input.to(dtype), target.to(dtype), None if weight is None else weight.to(dtype)
    if label_smoothing > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    if target.dtype not in (torch.int64, torch.uint8):
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {_scalar(target)}")
    if input.dim() == 1:
        if target.dim() > 1:
            raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
        if target.dim() == 1 and target.shape[0] != 1:
            raise ValueError(
                f"For 1D input, 1D target must have size 1, but got target size: {target.shape[0]}"
            )
    elif input.dim() == 2:
        if target.dim() > 1:
            raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
        if target.dim() == 0 or target.shape[0] != input.shape[0]:
            n = target.shape[0] if target.dim() else 1
            raise ValueError(
                f"Expected input batch_size ({input.shape[0]}) to match target batch_size ({n})."
            )
    else:
        if target.dim() >= 1 and target.shape[0] != input.shape[0]:
            raise ValueError(
                f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
                f"({target.shape[0]})."
            )
        want = [input.shape[0], *input.shape[2:]]
        if list(target.shape) != want:
            raise RuntimeError(f"Expected target size {want}, got {list(target.shape)}")
    _check_weight(weight, classes)
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            "The function 'nll_loss_forward' is not differentiable with respect to argument 'weight'. "
            "This input cannot have requires_grad True."
        )
    if weight is not None and weight.dtype != input.dtype:
        raise RuntimeError(f"expected scalar type {_scalar(input)} but found {_scalar(weight)}")
    return input, target, weight


def _check_devices(input: Tensor, target: Tensor, weight: Tensor | None) -> None:
    """CPU or CUDA, all on one device (torch's message otherwise), and what the CUDA kernels take."""
    if input.is_cpu and target.is_cpu and (weight is None or weight.is_cpu):
        return  # the common case, without building device objects
    if input.device.type not in ("cpu", "cuda"):
        raise NotImplementedError(
            f"bigmodel_native.ops.cross_entropy: input is on {input.device}; the kernels run on CPU and CUDA"
        )
    for t in (target, weight):
        if t is not None and t.device != input.device:
            raise RuntimeError(
                "Expected all tensors to be on the same device, but found at least two devices, "
                f"{input.device} and {t.device}!"
            )
    if input.is_cuda and input.dtype == torch.float64:
        raise NotImplementedError(
            "bigmodel_native.ops.cross_entropy: the CUDA kernels take float32, bfloat16 and float16 logits; "
            "float64 runs on CPU tensors"
        )


def _check_weight(weight: Tensor | None, classes: int) -> None:
    if weight is not None and (weight.dim() != 1 or weight.numel() != classes):
        raise RuntimeError(
            f"weight tensor should be defined either for all {classes} classes or no classes but got "
            f"weight tensor of shape: {list(weight.shape)}"
        )


def _scalar(t: Tensor) -> str:
    """torch's C++ name of a tensor's dtype (``Float``, ``Long``, ...) as its messages spell it."""
    return {
        torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
        torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
        torch.uint8: "Byte", torch.bool: "Bool", torch.complex64: "ComplexFloat",
        torch.complex128: "ComplexDouble",
    }.get(t.dtype, str(t.dtype).removeprefix("torch."))  # fmt: skip


_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def _reduction_enum(size_average: bool | None, reduce: bool | None, reduction: str) -> int:
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    elif reduction in _REDUCTIONS:  # the common case without torch's if-chain
        return _REDUCTIONS[reduction]
    return _Reduction.get_enum(reduction)  # torch's error (and deprecation) messages


def _run(
    input, target, weight, ignore_index, reduction: int, label_smoothing: float, inplace: bool
) -> Tensor:
    input, target, weight = _check(input, target, weight, ignore_index, label_smoothing)
    label_smoothing = float(label_smoothing)
    args = (input, target, weight, reduction, ignore_index, label_smoothing, inplace)
    if not skips_dispatcher(input, target, weight):
        return OPS.cross_entropy_forward(*args)[0]
    other_grads = target.requires_grad or (weight is not None and weight.requires_grad)
    if torch.is_grad_enabled() and (input.requires_grad or other_grads):
        # float16 is not fused: its gradient, rounded for an upstream 1 and scaled afterwards,
        # would lose what a large upstream gradient (loss scaling) should have kept.
        fusable = input.is_cpu and input.dim() <= 2 and input.dtype is not torch.float16
        if fusable and input.requires_grad and not (inplace or other_grads):
            return _FusedCrossEntropy.apply(input, target, weight, reduction, ignore_index, label_smoothing)
        return _CrossEntropy.apply(*args)[0]
    if input.is_cpu:
        return _loss_cpu(input, target, weight, reduction, ignore_index, label_smoothing)
    return _kernel("cross_entropy_forward", input)(*args)[0]


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """``torch.nn.functional.cross_entropy`` by the fused kernels (Rust on CPU, CUDA on the GPU).

    On CPU, when ``input`` requires grad (and grad mode is on), the forward also writes the
    gradient of ``input``, reading the logits only once; the backward then merely scales it.
    That buffer (the size of ``input``) is held from the forward to the backward, where torch
    would allocate it; compute losses you will not differentiate under ``torch.no_grad()``.
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            cross_entropy, (input, target, weight), input, target, weight=weight, size_average=size_average,
            ignore_index=ignore_index, reduce=reduce, reduction=reduction, label_smoothing=label_smoothing,
        )  # fmt: skip
    if weight is None and size_average is None and reduce is None and label_smoothing == 0.0:
        red = _REDUCTIONS.get(reduction)
        if red is not None and type(ignore_index) is int and _plain_training_call(input, target):
            return _FusedCrossEntropy.apply(input, target, None, red, ignore_index, 0.0)
    red = _reduction_enum(size_average, reduce, reduction)
    return _run(input, target, weight, ignore_index, red, label_smoothing, False)


def _plain_training_call(input: Tensor, target: Tensor) -> bool:
    """Whether this is the common training call that :func:`_run` would send to the fused
    kernel after passing every check: plain eager mode, ``(N, C)`` CPU logits that need a
    gradient and ``N`` int64 class indices, no other option. It is decided in a few attribute
    reads because it runs on every call, and at (64, 10) the Python around the kernel costs more
    than the kernel."""
    if not (input.requires_grad and input.is_cpu and target.is_cpu):
        return False
    ishape, tshape = input.shape, target.shape
    return (
        type(input) in PLAIN_TENSORS
        and type(target) in PLAIN_TENSORS
        and len(ishape) == 2
        and len(tshape) == 1
        and tshape[0] == ishape[0]
        and target.dtype is torch.int64
        and input.dtype in _FUSED_FLOATS
        and not target.requires_grad
        and torch.is_grad_enabled()
        and plain_eager()
    )


def cross_entropy_inplace_backward(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """:func:`cross_entropy` whose backward writes the gradient into the logits' own buffer.

    The loss then costs no logits-sized memory beyond the logits themselves (as Liger Kernel's
    fused loss does): after ``backward()`` the tensor passed as ``input`` holds its gradient,
    not the logits. It is for logits that nothing else needs, typically the output of the last
    linear layer. It refuses, with a RuntimeError, logits that:

    - are a leaf tensor (a parameter or user data: its values would be destroyed), or a view of
      one;
    - are not contiguous (the gradient is written in the kernel's layout);
    - were saved by the operation that produced them for its own backward (e.g. ``exp``,
      ``sigmoid``, ``softmax``), which would read the gradient instead.

    If another operation saved the logits (or a view of them) for its backward, torch's version
    counter, which the in-place backward bumps, makes that operation's backward raise ("one of
    the variables needed for gradient computation has been modified by an inplace operation")
    instead of computing a wrong gradient.
    """
    red = _Reduction.get_enum(reduction)
    if input.requires_grad and torch.is_grad_enabled():
        _check_inplace(input)
    return _run(input, target, weight, ignore_index, red, label_smoothing, True)


def _check_inplace(input: Tensor) -> None:
    base = input._base if input._base is not None else input
    if base.is_leaf:
        raise RuntimeError(
            "cross_entropy_inplace_backward: the logits are a leaf tensor (or a view of one); writing their "
            "gradient into them would destroy the tensor. Use bigmodel_native.ops.cross_entropy instead."
        )
    if not input.is_contiguous():
        raise RuntimeError(
            "cross_entropy_inplace_backward: the logits must be contiguous to hold their gradient; "
            "use bigmodel_native.ops.cross_entropy instead."
        )
    fn = input.grad_fn
    for name in dir(fn) if fn is not None else ():
        if name.startswith("_saved_"):
            saved = getattr(fn, name)
            if (
                isinstance(saved, Tensor)
                and saved.untyped_storage().data_ptr() == input.untyped_storage().data_ptr()
            ):
                raise RuntimeError(
                    f"cross_entropy_inplace_backward: the logits are needed by {fn.name()} for its own "
                    "backward, so their buffer cannot hold the gradient. "
                    "Use bigmodel_native.ops.cross_entropy instead."
                )
