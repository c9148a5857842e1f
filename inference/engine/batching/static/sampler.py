"""The static batcher's sampling: greedy argmax, or temperature and top-p per row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...request import SamplingParams


def sample(logits: Any, params: Sequence[SamplingParams]) -> Any:
    """One token per row: argmax for temperature 0, else temperature and top-p sampling."""
    import torch

    tokens = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if not rows:
        return tokens
    index = torch.tensor(rows, device=logits.device)
    temps = torch.tensor([params[i].temperature for i in rows], device=logits.device).unsqueeze(1)
    top_p = torch.tensor([params[i].top_p for i in rows], device=logits.device).unsqueeze(1)
    probs = torch.softmax(logits.index_select(0, index) / temps, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    choice = torch.multinomial(sorted_probs, 1)
    tokens[index] = order.gather(1, choice).squeeze(1)
    return tokens
