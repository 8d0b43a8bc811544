"""Pure-torch pieces of the torch-only GPU smoke test (scripts/gpu_smoke_torch.py): a mirror of
transformers' Qwen2DecoderLayer for machines without transformers, rotary tables, a fixed body for the
log-prob head, and the count of bytes autograd saves for backward."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F


class RMSNorm(torch.nn.Module):
    """Qwen2RMSNorm: normalised in fp32, scaled in the input dtype."""

    def __init__(self, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = torch.nn.Parameter(torch.ones(hidden)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, x = x.dtype, x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class MirrorLayer(torch.nn.Module):
    """The operations of transformers' Qwen2DecoderLayer with SDPA attention and an attention mask (the
    learner's padded batches): biased q/k/v, rotary, K/V repeated to every head, causal SDPA, SwiGLU MLP."""

    def __init__(self, hidden: int, intermediate: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(hidden), RMSNorm(hidden)
        self.q_proj = torch.nn.Linear(hidden, heads * self.head_dim)
        self.k_proj = torch.nn.Linear(hidden, kv_heads * self.head_dim)
        self.v_proj = torch.nn.Linear(hidden, kv_heads * self.head_dim)
        self.o_proj = torch.nn.Linear(heads * self.head_dim, hidden, bias=False)
        self.gate_proj = torch.nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = torch.nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = torch.nn.Linear(intermediate, hidden, bias=False)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)
        h = self.input_layernorm(hidden_states)
        q, k, v = (proj(h).view(batch, tokens, -1, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        groups = self.heads // self.kv_heads
        k, v = (t[:, :, None].expand(batch, self.kv_heads, groups, tokens, self.head_dim)
                .reshape(batch, self.heads, tokens, self.head_dim) for t in (k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, tokens, -1)
        hidden_states = hidden_states + self.o_proj(attn)
        h = self.post_attention_layernorm(hidden_states)
        return hidden_states + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def rotary(tokens: int, head_dim: int, device: torch.device, dtype: torch.dtype,
           theta: float = 1_000_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [1, tokens, head_dim] (Qwen2.5's rope_theta)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(tokens, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)[None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


class FixedBody(torch.nn.Module):
    """Stands in for the transformer body before the log-prob head: its output is a trained tensor."""

    def __init__(self, positions: int, hidden: int) -> None:
        super().__init__()
        self.states = torch.nn.Parameter(0.02 * torch.randn(1, positions, hidden))

    def forward(self, input_ids: Any = None, attention_mask: Any = None, use_cache: bool = False) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.states)


def saved_bytes(run: Callable[[], Any], exclude: set[int]) -> tuple[int, Any]:
    """(bytes of the distinct storages autograd saves for backward while `run` executes, run's result);
    storages whose data_ptr is in `exclude` (the parameters) are not activations and are left out."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    return sum(seen.values()), result
