"""Type stubs of the Rust extension. Call the ops in bigmodel_native.ops, not these."""

import torch

__version__: str

def active_isa() -> str: ...
def detected_isa() -> str: ...
def set_isa(name: str | None = None) -> str: ...
def adam_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    grad_scale: float | None,
    num_threads: int,
) -> None: ...
def cross_entropy_forward(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    loss: torch.Tensor,
    lse: torch.Tensor,
    asum: torch.Tensor,
    total_weight: torch.Tensor,
    *,
    outer: int,
    classes: int,
    inner: int,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
    num_threads: int,
) -> None: ...
def cross_entropy_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor | None,
    grad_input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    lse: torch.Tensor,
    asum: torch.Tensor,
    total_weight: torch.Tensor,
    *,
    outer: int,
    classes: int,
    inner: int,
    reduction: int,
    ignore_index: int,
    label_smoothing: float,
    num_threads: int,
) -> None: ...
def cross_entropy_target_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor | None,
    lse: torch.Tensor,
    total_weight: torch.Tensor,
    grad_target: torch.Tensor,
    *,
    outer: int,
    classes: int,
    inner: int,
    reduction: int,
    label_smoothing: float,
    num_threads: int,
) -> None: ...
