"""Fake causal LMs whose answers are known exactly, for the evaluation tests.

Each fake takes the arguments the scorer passes (ids, attention mask, position ids,
``logits_to_keep``) and returns logits of shape (B, T, V) that depend only on what
the test needs: nothing (uniform), or a fixed preferred token.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class FakeLM(nn.Module):
    """Logits equal to ``bias`` at every position: a constant next-token distribution."""

    def __init__(self, vocab_size: int, bias: torch.Tensor | None = None, max_length: int = 4096):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=max_length, vocab_size=vocab_size)
        self.bias = nn.Parameter(torch.zeros(vocab_size) if bias is None else bias.float())
        self.calls: list[tuple[int, int]] = []  # (B, T) of every forward pass

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        batch, length = input_ids.shape
        self.calls.append((batch, length))
        kept = logits_to_keep or length
        logits = self.bias.expand(batch, kept, -1).clone()  # (B, kept, V)
        return SimpleNamespace(logits=logits)


def uniform_lm(vocab_size: int) -> FakeLM:
    """Every token equally likely: perplexity equals the vocabulary size."""
    return FakeLM(vocab_size)


def preferring_lm(vocab_size: int, token_ids: list[int], strength: float = 10.0) -> FakeLM:
    """A model that always puts most mass on ``token_ids`` (first one most)."""
    bias = torch.zeros(vocab_size)
    for rank, token in enumerate(token_ids):
        bias[token] = strength - rank
    return FakeLM(vocab_size, bias)
