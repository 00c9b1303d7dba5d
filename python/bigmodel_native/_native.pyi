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

# CUDA (crates/bigmodel-cuda); see bigmodel_native._cuda.
def cuda_available() -> bool: ...
def cuda_unavailable_reason() -> str | None: ...
def nvrtc_version() -> tuple[int, int]: ...
def nvrtc_compile_check(arch: int, output: str = "ptx") -> dict[str, int]: ...
def cuda_adam_step(
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
    grad_scale: torch.Tensor | None,
    found_inf: torch.Tensor | None,
    stream: int,
) -> None: ...
def cuda_cross_entropy_forward(
    *,
    dtype: str,
    reduction: str,
    logits: int,
    target: int,
    weight: int,
    lse: int,
    row_loss: int,
    row_weight: int,
    out: int,
    total_weight: int,
    error_flag: int,
    n_rows: int,
    n_classes: int,
    ignore_index: int,
    label_smoothing: float,
    device: int,
    stream: int,
) -> None: ...
def cuda_cross_entropy_backward(
    *,
    dtype: str,
    reduction: str,
    logits: int,
    target: int,
    weight: int,
    lse: int,
    grad_out: int,
    total_weight: int,
    grad_in: int,
    n_rows: int,
    n_classes: int,
    ignore_index: int,
    label_smoothing: float,
    device: int,
    stream: int,
) -> None: ...
def nvrtc_compile_source(name: str, source: str, arch: int, output: str = "ptx") -> bytes: ...
def cuda_sources() -> list[tuple[str, str]]: ...
def cuda_abi_sizes() -> list[tuple[str, int]]: ...
