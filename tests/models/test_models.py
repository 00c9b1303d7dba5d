"""The seed models: shapes the spec gives, parameter counts, and what _layers resolved to."""

from __future__ import annotations

import pytest
import torch
from bigmodel_native import models as M
from bigmodel_native.models import _layers


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_dense_models():
    assert M.TinyDense()(torch.randn(4, 10)).shape == (4, 2)
    assert _n_params(M.TinyDense()) == 10 * 10 + 10 + 10 * 2 + 2
    assert M.SmallDense()(torch.randn(4, 10)).shape == (4, 2)
    assert _n_params(M.SmallDense()) == 10 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2
    mlp = M.MnistMLP()
    assert mlp(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert mlp(torch.rand(3, 784)).shape == (3, 10)
    assert [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)] == [256, 128, 64, 10]


def test_cnn_stacks_match_the_spec():
    s3 = M.MnistCNN()
    assert s3(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert s3.classifier[0].in_features == 576
    s4 = M.CifarCNN()
    assert s4(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert s4.classifier[0].in_features == 1024
    convs = [m for m in s3.modules() if isinstance(m, _layers.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 32, (3, 3)),
        (32, 64, (3, 3)),
        (64, 64, (3, 3)),
    ]
    # Keras' reference parameter count for this model (93,322).
    assert _n_params(s3) == 93_322


def test_gan_shapes_and_ranges():
    g, d = M.Generator(), M.Discriminator()
    with torch.no_grad():
        imgs = g(torch.randn(5, 100))
    assert imgs.shape == (5, 1, 28, 28) and float(imgs.min()) >= 0 and float(imgs.max()) <= 1
    with torch.no_grad():
        p = d(imgs)
    assert p.shape == (5, 1) and float(p.min()) >= 0 and float(p.max()) <= 1


def test_transformer_block_is_post_norm():
    torch.manual_seed(0)
    b = M.TransformerBlock(d_model=32, num_heads=8, d_ff=64, dropout=0.0)
    x = torch.randn(2, 5, 32)
    out = b(x)
    # Post-norm: the output is LayerNorm'd, so each position has ~zero mean and unit variance.
    assert out.mean(-1).abs().max() < 1e-5
    assert (out.var(-1, unbiased=False) - 1).abs().max() < 1e-3
    # Reference computation: one attention residual, one FFN residual (not the tutorial's bug).
    a, _ = b.attn(x, x, x, need_weights=False)
    h = b.norm1(x + a)
    assert torch.allclose(out, b.norm2(h + b.ff(h)), atol=1e-5)


def test_tabular_heads():
    reg = M.TabularTransformer(10, 1, d_model=32, num_heads=8, num_layers=1, d_ff=64)
    assert reg(torch.randn(4, 10)).shape == (4,)
    cls = M.TabularTransformer(10, 3, d_model=32, num_heads=8, num_layers=1, d_ff=64)
    assert cls(torch.randn(4, 10)).shape == (4, 3)
    default = M.TabularTransformer()
    assert default.blocks[0].attn.embed_dim == 512 and default.blocks[0].attn.num_heads == 8
    assert default.blocks[0].ff[0].out_features == 2048


def test_char_lm_is_causal_and_generates():
    torch.manual_seed(0)
    lm = M.CharTransformerLM(20, context=12, d_model=32, num_heads=8, num_layers=2, dropout=0.0).eval()
    x = torch.randint(0, 20, (2, 12))
    out = lm(x)
    assert out.shape == (2, 12, 20)
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 20  # change the future only
    assert torch.allclose(lm(y)[:, :7], out[:, :7], atol=1e-5)
    assert not torch.allclose(lm(y)[:, 7:], out[:, 7:])
    seq = lm.generate(torch.tensor([1, 2, 3]), 15, generator=torch.Generator().manual_seed(0))
    assert seq.shape == (18,) and seq[:3].tolist() == [1, 2, 3] and int(seq.max()) < 20
    with pytest.raises(ValueError, match="context"):
        lm(torch.zeros(1, 13, dtype=torch.long))


def test_layers_records_every_implementation():
    for name in (
        "Conv2d",
        "CrossEntropyLoss",
        "MultiheadAttention",
        "cross_entropy",
        "scaled_dot_product_attention",
    ):
        impl = _layers.IMPLEMENTATIONS[name]
        assert impl == "bigmodel_native" or impl.startswith("torch (")
        ours = getattr(_layers, name).__module__.startswith("bigmodel_native")
        assert ours == (impl == "bigmodel_native")
    assert _layers.IMPLEMENTATIONS["Adam"] == "bigmodel_native"
    assert any(line.startswith("Conv2d: ") for line in _layers.describe())


def test_keras_initialisation():
    m = M.MnistCNN()
    for layer in m.modules():
        if isinstance(layer, torch.nn.Linear | _layers.Conv2d):
            assert torch.count_nonzero(layer.bias) == 0
            fan_in = layer.weight[0].numel()
            fan_out = (
                layer.weight.shape[0] * layer.weight[0, 0].numel()
                if layer.weight.dim() == 4
                else layer.weight.shape[0]
            )
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            biggest = float(layer.weight.detach().abs().max())
            # Glorot's range is used to its edge (torch's default range is 2-5x narrower here).
            assert 0.9 * bound < biggest <= bound


def test_cnn_runs_its_conv_relu_pairs_fused_with_the_plain_stacks_results():
    # The S3/S4 models fuse each Conv2d-ReLU-MaxPool2d triple and Conv2d-ReLU pair on CPU; the
    # result must be that of running the same modules one by one, bit for bit, and so must every
    # gradient up to the order of its sums (the second convolution's 11x11 output is pooled to
    # 5x5, and the fused backward never forms the row and column no window reads); the
    # state_dict stays the plain stack's.
    torch.manual_seed(0)
    m = M.MnistCNN().double()
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    fused = m(x)
    g_fused = torch.autograd.grad(fused.sum(), list(m.parameters()))
    plain = m.classifier(m.features(x))  # nn.Sequential's own forward: module by module
    g_plain = torch.autograd.grad(plain.sum(), list(m.parameters()))
    assert torch.equal(fused, plain)
    for a, b in zip(g_fused, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if _layers.IMPLEMENTATIONS["Conv2d"] == "bigmodel_native":
        assert {"_Conv2dReLUPoolBackward", "_Conv2dReLUBackward"} <= _grad_fns(fused)
    assert list(m.state_dict()) == list(M.MnistCNN().state_dict())


def _grad_fns(t: torch.Tensor) -> set[str]:
    """The type names of every node in ``t``'s autograd graph."""
    visited, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in visited:
            continue
        visited.add(fn)
        todo += [f for f, _ in fn.next_functions]
    return {type(fn).__name__ for fn in visited}


def test_cnn_fusion_steps_aside_for_hooks():
    # A forward hook on a fused module must still fire: with one, the stack runs module by module.
    m = M.MnistCNN()
    x = torch.rand(2, 1, 28, 28)
    seen = []
    handle = m.features[1].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    y = m(x)
    handle.remove()
    assert seen == [torch.Size([2, 32, 26, 26])]
    assert "ReluBackward0" in _grad_fns(y)
    if _layers.IMPLEMENTATIONS["Conv2d"] == "bigmodel_native":
        assert "_Conv2dReLUBackward" in _grad_fns(m(x))


def test_cnn_fusion_steps_aside_for_backward_hooks_and_subclasses():
    m = M.MnistCNN()
    x = torch.rand(2, 1, 28, 28)
    seen = []
    handle = m.features[0].register_full_backward_hook(lambda mod, gin, gout: seen.append(gout[0].shape))
    m(x).sum().backward()
    handle.remove()
    assert seen == [torch.Size([2, 32, 26, 26])]
    calls = []
    handle = torch.nn.modules.module.register_module_full_backward_hook(
        lambda mod, gi, go: calls.append(type(mod))
    )
    try:
        m(x).sum().backward()
    finally:
        handle.remove()
    assert torch.nn.ReLU in calls
    if _layers.IMPLEMENTATIONS["Conv2d"] == "bigmodel_native":

        class Doubled(torch.nn.MaxPool2d):
            def forward(self, input):  # noqa: ANN001, ANN202
                return 2 * super().forward(input)

        m.features[2] = Doubled(2)
        y = m(x)
        assert torch.equal(y, m.classifier(m.features(x)))
