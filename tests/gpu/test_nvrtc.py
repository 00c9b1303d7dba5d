"""Every CUDA kernel source compiles through NVRTC, on a machine with no GPU.

libnvrtc comes from torch's CUDA wheel (preloaded by ``bigmodel_native._cuda``). These tests run in
CI without a GPU and fail on any compile error in kernels/*.cu; they also check that the kernel
entry points exist and that their parameter blocks have the sizes the Rust launcher lays out.
A machine whose torch has no CUDA wheel (no libnvrtc) skips them, saying so.
"""

from __future__ import annotations

import re

import pytest
from bigmodel_native import _cuda, _native

try:
    NVRTC = _cuda.nvrtc_version()
except RuntimeError as e:  # a CPU-only torch wheel ships no libnvrtc
    pytestmark = pytest.mark.skip(reason=f"no libnvrtc: {e}")
    NVRTC = None

SOURCES = dict(_native.cuda_sources())
ABI = dict(_native.cuda_abi_sizes())

# Entry point -> C struct of each parameter, as launched from crates/bigmodel-cuda/src.
ENTRIES = {
    "adam": {
        "adam_bump_steps": ["AdamBatch", "AdamHyper"],
        **{f"adam_step_{d}": ["AdamBatch", "AdamHyper"] for d in ("f32", "bf16", "f16")},
    },
    "cross_entropy": {
        f"ce_{kind}_{d}": [struct]
        for d in ("f32", "bf16", "f16")
        for kind, struct in (("forward", "CeForward"), ("reduce", "CeReduce"), ("backward", "CeBackward"))
    },
    "conv2d": {
        f"conv_{kind}_{d}": [struct]
        for d in ("f32", "bf16", "f16")
        for kind, struct in (
            ("im2col", "ConvGeom"),
            ("col2im", "ConvGeom"),
            ("scatter", "ConvScatter"),
            ("gather", "ConvGather"),
            ("bias_grad_partial", "ConvBiasGrad"),
            ("bias_grad_final", "ConvBiasGrad"),
            ("cast", "ConvCast"),
        )
    },
    "attention": {
        **{
            f"attn_{kind}_{d}": ["AttnParams"]
            for d in ("f32", "bf16", "f16")
            for kind in ("fwd_simt", "bwd_dq_simt", "bwd_dkv_simt", "delta", "dq_convert")
        },
        **{
            f"attn_{kind}{hd}_{d}": ["AttnParams"]
            for d in ("bf16", "f16")
            for hd in (64, 128)
            for kind in ("fwd_mma", "bwd_mma")
        },
    },
}


def test_every_source_is_checked():
    assert set(SOURCES) == set(ENTRIES) == {"adam", "cross_entropy", "conv2d", "attention"}
    assert NVRTC is not None and NVRTC[0] >= 12


@pytest.mark.parametrize("arch", [80, 90])
def test_sources_compile_to_ptx(arch):
    sizes = _cuda.nvrtc_compile_check(arch)
    assert set(sizes) == set(SOURCES)
    assert all(n > 1000 for n in sizes.values()), sizes


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_entry_points_and_parameter_sizes(name, arch):
    ptx = _native.nvrtc_compile_source(name, SOURCES[name], arch).decode()
    assert f".target sm_{arch}" in ptx
    params = {
        entry: [int(n) for n in re.findall(r"\.param \.align \d+ \.b8 \w+_param_\d+\[(\d+)\]", sig)]
        for entry, sig in re.findall(r"\.entry (\w+)\((.*?)\)", ptx, flags=re.S)
    }
    expected = {entry: [ABI[s] for s in structs] for entry, structs in ENTRIES[name].items()}
    assert params == expected
    # Kernel parameters fit the large-parameter limit (CUDA 12.1+), and nothing spills to local memory.
    assert all(sum(v) <= 32764 for v in params.values())
    assert ".local" not in ptx


def test_cubin_for_the_device_architecture():
    """The runtime path: a cubin for sm_90 (what an H100 loads)."""
    sizes = _cuda.nvrtc_compile_check(90, output="cubin")
    assert set(sizes) == set(SOURCES) and all(n > 1000 for n in sizes.values())


def test_a_broken_source_fails_with_the_compiler_log():
    broken = SOURCES["adam"].replace(
        "m = m + s.one_minus_beta1 * (gg - m);", "m = m + s.one_minus_beta1 * (gg - m)", 1
    )
    assert broken != SOURCES["adam"]
    with pytest.raises(RuntimeError, match=r"NVRTC could not compile adam\.cu for sm_90(.|\n)*error"):
        _native.nvrtc_compile_source("adam", broken, 90)


def test_bad_output_kind():
    with pytest.raises(ValueError, match="ptx"):
        _cuda.nvrtc_compile_check(90, output="sass")


def test_attention_uses_tensor_cores():
    ptx = _native.nvrtc_compile_source("attention", SOURCES["attention"], 90).decode()
    for instr in (
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
        "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
        "cp.async.cg.shared.global",
    ):
        assert instr in ptx, instr
