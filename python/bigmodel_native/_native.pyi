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
def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    mask_kind: str,
    mask_dims: tuple[int, int, int, int],
    shape: tuple[int, int, int, int, int, int, int],
    scale: float,
    causal: bool,
    dropout_p: float,
    seed: int,
    num_threads: int,
) -> None: ...
def attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    dq: torch.Tensor,
    dk: torch.Tensor,
    dv: torch.Tensor,
    mask: torch.Tensor | None,
    mask_kind: str,
    mask_dims: tuple[int, int, int, int],
    shape: tuple[int, int, int, int, int, int, int],
    scale: float,
    causal: bool,
    dropout_p: float,
    seed: int,
    num_threads: int,
) -> None: ...
