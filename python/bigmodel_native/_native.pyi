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
def conv2d_forward(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    output: torch.Tensor,
    *,
    input_shape: tuple[int, int, int, int],
    weight_shape: tuple[int, int, int],
    groups: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    num_threads: int,
) -> None: ...
def conv2d_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    grad_input: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
    *,
    input_shape: tuple[int, int, int, int],
    weight_shape: tuple[int, int, int],
    groups: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    num_threads: int,
) -> None: ...
