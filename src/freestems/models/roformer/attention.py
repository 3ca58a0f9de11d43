"""The transformer parts shared by both RoFormers: RMS norm, positions, attention, feed-forward.

Positions are rotary embeddings (RoPE), or polar ones (PoPE) in the "BS PolarFormer" (``use_pope``).

Module and parameter names follow the reference code that trained the released checkpoints (the
Music-Source-Separation-Training collection, MSST), because they are the state_dict keys: a block's
attention is ``layers.N.0`` and its feed-forward ``layers.N.1``; ``to_out.0``, ``net.1`` and ``net.4`` keep
their indices in the reference's ``nn.Sequential`` (the dropouts between them are placeholders here: these
modules only run inference).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """``normalize(x) * sqrt(dim) * gamma``: the reference's RMS norm (a rescaled L2 norm, no epsilon)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = F.normalize(x, dim=-1) * self.scale * self.gamma
        return out


class RotaryEmbedding(nn.Module):
    """Rotary position embedding as rotary-embedding-torch computes it (``freqs_for="lang"``, theta 10000).

    Its ``freqs`` are a (frozen) parameter, so they are in the state_dict. Position ``p`` rotates each pair of
    adjacent features ``(x[2i], x[2i+1])`` by the angle ``p * freqs[i]`` (the "interleaved" layout), and the
    whole feature dimension is rotated (``dim_head`` equals the embedding's ``dim`` in both RoFormers).
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def angles(self, length: int, device: torch.device) -> torch.Tensor:
        """(length, dim): every frequency repeated twice, for the two members of its pair."""
        positions = torch.arange(length, device=device, dtype=self.freqs.dtype)
        return torch.outer(positions, self.freqs).repeat_interleave(2, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape (..., length, dim), in the frequencies' precision like the reference."""
        angles = self.angles(x.shape[-2], x.device)
        pairs = torch.unflatten(x, -1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return (x * angles.cos() + rotated * angles.sin()).to(x.dtype)


class PolarEmbedding(nn.Module):
    """Polar positions (PoPE, Gopalakrishnan et al. 2025, arXiv 2509.10534) as PoPE-pytorch computes them.

    Each of the ``dim`` features of a query or key becomes a magnitude, ``softplus(x)``, and a phase,
    ``position * inv_freqs[i]`` (``inv_freqs[i] = theta ** (-i / dim)``: ``dim`` frequencies, where RoPE has
    ``dim / 2``), plus for keys a learned ``bias`` per head and feature, clamped to [-2 pi, 0]. Written as
    real vectors of ``2 * dim`` values, ``q . k = sum_i |q_i| |k_i| cos(phase_q,i - phase_k,i)``: the content
    sits in the magnitudes and the position in the phases alone (RoPE mixes the two). ``inv_freqs`` is a
    saved buffer, so a checkpoint carries it.
    """

    inv_freqs: torch.Tensor  # registered buffer (saved): the phase per position of each feature

    def __init__(self, dim: int, heads: int, theta: float = 10000.0):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(heads, dim))
        self.register_buffer("inv_freqs", theta ** -(torch.arange(dim).float() / dim))

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, heads, length, dim) queries and keys -> the same with ``2 * dim`` features, in float32."""
        positions = torch.arange(q.shape[-2], device=q.device, dtype=torch.float32)
        phases = torch.outer(positions, self.inv_freqs.float())  # (length, dim)
        key_phases = phases + self.bias.clamp(-2 * math.pi, 0.0).unsqueeze(1)  # (heads, length, dim)
        return _polar(F.softplus(q.float()), phases), _polar(F.softplus(k.float()), key_phases)


def _polar(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Magnitudes and phases as real vectors: the cosine parts, then the sine parts."""
    return torch.cat((magnitude * phase.cos(), magnitude * phase.sin()), dim=-1)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with rotary or polar positions and a sigmoid gate per head.

    The reference's ``flash_attn`` switch only chooses between PyTorch's fused kernel and the same maths
    written out; this always uses :func:`torch.nn.functional.scaled_dot_product_attention`. With polar
    positions the queries and keys have twice the head's width, but the softmax scale stays
    ``dim_head ** -0.5``, as in the reference.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        rotary_embed: RotaryEmbedding | None,
        pope_embed: PolarEmbedding | None = None,
    ):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.rotary_embed = rotary_embed  # shared by every layer of a stack, like the reference
        self.pope_embed = pope_embed  # likewise (at most one of the two is set)
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        batch, length, _ = x.shape
        # (b, n, (qkv h d)) -> 3 x (b, h, n, d)
        q, k, v = self.to_qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.pope_embed is not None:
            q, k = self.pope_embed(q, k)
            out = F.scaled_dot_product_attention(q, k, v.to(q.dtype), scale=self.scale).to(v.dtype)
        else:
            if self.rotary_embed is not None:
                q, k = self.rotary_embed(q), self.rotary_embed(k)
            out = F.scaled_dot_product_attention(q, k, v)
        out = out * self.to_gates(x).transpose(1, 2).unsqueeze(-1).sigmoid()
        projected: torch.Tensor = self.to_out(out.transpose(1, 2).reshape(batch, length, -1))
        return projected


class LinearAttention(nn.Module):
    """The reference's "linear" attention (El-Nouby et al., XCiT): attention across features, not positions.

    Queries and keys are L2-normalised along the sequence, queries scaled by ``exp(temperature)`` per head,
    and the softmax logits multiplied by 8. Used only when ``linear_transformer_depth > 0``.
    """

    SCALE = 8.0

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, inner * 3, bias=False))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(nn.Identity(), nn.Linear(inner, dim, bias=False))  # index 0: a reshape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        batch, length, _ = x.shape
        # (b, n, (qkv h d)) -> 3 x (b, h, d, n)
        q, k, v = self.to_qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 4, 1)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        q = q * self.temperature.exp()
        out = F.scaled_dot_product_attention(q, k, v, scale=self.SCALE)
        projected: torch.Tensor = self.to_out(out.permute(0, 3, 1, 2).reshape(batch, length, -1))
        return projected


class FeedForward(nn.Module):
    """Pre-norm MLP: RMSNorm, Linear to ``mult * dim``, GELU, Linear back."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(
            RMSNorm(dim),
            nn.Linear(dim, inner),
            nn.GELU(),
            nn.Identity(),  # dropout in the reference
            nn.Linear(inner, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class Transformer(nn.Module):
    """``depth`` residual (attention, feed-forward) pairs, with an optional RMS norm at the output.

    The BS-RoFormer builds its stacks without the output norm (it has one ``final_norm`` instead); the
    Mel-Band RoFormer gives every stack its own.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        rotary_embed: RotaryEmbedding | None = None,
        norm_output: bool = True,
        linear_attn: bool = False,
        pope_embed: PolarEmbedding | None = None,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    LinearAttention(dim, heads, dim_head)
                    if linear_attn
                    else Attention(dim, heads, dim_head, rotary_embed, pope_embed),
                    FeedForward(dim),
                ]
            )
            for _ in range(depth)
        )
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            attn, ff = cast(nn.ModuleList, block)  # layers.N: [attention, feed-forward]
            x = attn(x) + x
            x = ff(x) + x
        out: torch.Tensor = self.norm(x)
        return out
