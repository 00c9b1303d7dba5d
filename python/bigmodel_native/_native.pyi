"""Type stubs of the Rust extension. Call the ops in bigmodel_native.ops, not these."""

__version__: str

def active_isa() -> str: ...
def detected_isa() -> str: ...
def set_isa(name: str | None = None) -> str: ...
def adam_step(
    dtype: str,
    params: list[int],
    grads: list[int],
    exp_avgs: list[int],
    exp_avg_sqs: list[int],
    max_exp_avg_sqs: list[int] | None,
    steps: list[int],
    step_dtype: str,
    numels: list[int],
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
