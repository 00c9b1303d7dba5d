"""S6: post-norm Transformer encoder blocks, with a tabular head and a character-level LM head.

One block is ``x = LayerNorm(x + Dropout(SelfAttention(x)))`` followed by
``x = LayerNorm(x + Dropout(FFN(x)))`` with ``FFN = Linear(d, ff) - ReLU - Linear(ff, d)`` (post-norm,
as the tutorial; its second residual re-added the attention output, a bug not reproduced here).
Attention is ``_layers.MultiheadAttention`` (ours when the package has it), batch-first.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import _layers


def causal_mask(t: int, device: torch.device | None = None) -> Tensor:
    """Boolean (t, t) mask, True where attention is *not* allowed (a key after the query)."""
    return torch.ones(t, t, dtype=torch.bool, device=device).triu(1)


class TransformerBlock(nn.Module):
    """Multi-head self-attention + residual + LayerNorm, then FFN + residual + LayerNorm."""

    def __init__(
        self, d_model: int = 512, num_heads: int = 8, d_ff: int = 2048, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.attn = _layers.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        mask = causal_mask(x.shape[1], x.device) if causal else None
        a, _ = self.attn(x, x, x, attn_mask=mask, need_weights=False, is_causal=causal)
        x = self.norm1(x + self.drop1(a))
        return self.norm2(x + self.drop2(self.ff(x)))


class TabularTransformer(nn.Module):
    """The tutorial's head: (N, features) -> (N, out_features).

    Each feature is one token (its value times a learned vector plus a learned position vector),
    the blocks mix the tokens, the mean over tokens goes through a linear head: one output for
    regression (MSE), ``num_classes`` logits for classification.
    """

    def __init__(
        self,
        num_features: int = 10,
        out_features: int = 1,
        d_model: int = 512,
        num_heads: int = 8,
        num_layers: int = 2,
        d_ff: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.value = nn.Linear(1, d_model)
        self.position = nn.Parameter(torch.randn(num_features, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, num_heads, d_ff, dropout) for _ in range(num_layers)
        )
        self.head = nn.Linear(d_model, out_features)

    def forward(self, x: Tensor) -> Tensor:
        h = self.value(x.unsqueeze(-1)) + self.position
        for block in self.blocks:
            h = block(h)
        out = self.head(h.mean(dim=1))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class CharTransformerLM(nn.Module):
    """Character-level causal LM: (N, T) token ids -> (N, T, vocab) next-token logits."""

    def __init__(
        self,
        vocab_size: int,
        context: int = 128,
        d_model: int = 512,
        num_heads: int = 8,
        num_layers: int = 4,
        d_ff: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.context = context
        self.vocab_size = vocab_size
        self.token = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, num_heads, d_ff, dropout) for _ in range(num_layers)
        )
        self.head = nn.Linear(d_model, vocab_size)
        self.scale = math.sqrt(d_model)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the model's context of {self.context}")
        pos = torch.arange(t, device=idx.device)
        h = self.drop(self.token(idx) * self.scale + self.position(pos))
        for block in self.blocks:
            h = block(h, causal=True)
        return self.head(h)

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        temperature: float = 0.8,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Samples ``max_new_tokens`` ids after ``prompt`` (1-D ids); returns prompt + new ids."""
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        seq = prompt.to(dev).view(1, -1)
        for _ in range(max_new_tokens):
            logits = self(seq[:, -self.context :])[0, -1]
            if temperature <= 0:
                nxt = logits.argmax().view(1)
            else:
                probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator).to(dev)
            seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
        self.train(was_training)
        return seq[0]
