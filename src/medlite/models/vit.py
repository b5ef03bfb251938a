"""Vision Transformers ViT-Ti/16 and ViT-S/16 (Dosovitskiy et al., 2021) with timm's parameter names.

Names follow ``timm.models.vision_transformer`` (``cls_token``, ``pos_embed``, ``patch_embed.proj``,
``blocks.N.norm1``, ``blocks.N.attn.qkv``, ``blocks.N.attn.proj``, ``blocks.N.norm2``,
``blocks.N.mlp.fc1/fc2``, ``norm``, ``head``) so timm / AugReg checkpoints (e.g.
``vit_small_patch16_224.augreg_in21k``) load with ``init=``, and weight selection
(ViT-S -> ViT-T) pairs tensors by name.

Two deliberate differences from timm's defaults, both so that CNN tooling (CAMs, feature KD) works unchanged:

* ``forward_features`` returns the final-norm patch tokens reshaped to a grid ``(B, D, H/16, W/16)``,
  **without the class token**. The class token still takes part in every attention layer (it is in the
  checkpoints and acts as a global token) but is dropped at the output.
* The head therefore pools by averaging the patch tokens (timm's ``global_pool="avg"`` with the final norm
  applied per token, ``fc_norm=False``) instead of reading the class token. Logits are a linear function
  of the mean grid, which makes Grad-CAM on ``to_grid`` (the default CAM layer) exact. A checkpoint trained
  with class-token pooling loads fine; its 1000-way head is re-initialised anyway when the class count
  differs.

``global_pool="token"`` is timm's reference head instead (``head(norm(x)[:, 0])``, the class token), so a timm
checkpoint with its 1000-class head gives timm's logits; ``create_model(..., init="imagenet")`` turns it on.
``forward_features`` then returns the normed class token as a ``(B, D, 1, 1)`` map (the head's mean over it is
the token itself) and the default CAM layer becomes ``blocks.{depth-1}.norm1``, whose (B, 1 + h*w, D) tokens
the CAM code folds to a grid: the final patch tokens no longer reach the logits, so ``to_grid`` would give an
all-zero Grad-CAM.

Inputs need not be 224 px: when the patch grid differs from the 14x14 default, the position embedding is
resampled bicubically over the grid on the fly (class-token entry kept), so 64 or 128 px inputs work.
Attention is written with plain ``matmul``/``softmax`` so the model exports to ONNX.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medlite.errors import ModelError
from medlite.models.base import ZooModel
from medlite.models.layers import resample_pos_embed
from medlite.models.registry import ModelCfg, register_model

_PAPER = (
    "Dosovitskiy et al., An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale, "
    "ICLR 2021 (arXiv:2010.11929)"
)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` strided conv: ``(B, C, H, W)`` -> ``(B, D, H/patch, W/patch)``."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection: ``(B, N, D)`` -> ``(B, N, D)``."""

    def __init__(self, dim: int, num_heads: int, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, heads, N, head_dim)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """Token-wise ``fc1 -> GELU -> fc2`` with hidden width ``4 * dim``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability ``p`` while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        # eps=1e-6 as in timm / the JAX originals; checkpoints were trained with it.
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class TokenGrid(nn.Module):
    """Drop the prefix (class) token and fold patch tokens to a map: ``(B, P+h*w, D)`` -> ``(B, D, h, w)``.

    Parameter-free; it exists as a module so CAM methods can hook the spatial output by name.
    """

    def __init__(self, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = x[:, self.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])


class VisionTransformer(ZooModel):
    """ViT with a class token, learned absolute position embedding and a mean-pooled (or class-token) head.

    Args:
        embed_dim: token width ``D``.
        depth: number of transformer blocks.
        num_heads: attention heads (``D`` must be divisible by it).
        num_classes: output logits (1 gives a single-logit binary head).
        in_chans: input channels of the patch embedding.
        img_size: default square input side; sets the stored position-embedding grid (``img_size/16``).
        patch_size: patch side in pixels.
        mlp_ratio: MLP hidden width over ``D``.
        drop_rate: dropout after the position embedding, inside blocks and before the head.
        drop_path_rate: stochastic-depth rate, increased linearly from 0 to this over the blocks.
        global_pool: ``"avg"`` (mean of the patch tokens, medlite's default) or ``"token"`` (the class token,
            timm's ``global_pool="token"``).

    Shapes:
        input ``(B, in_chans, H, W)`` float with ``H, W`` multiples of ``patch_size`` (others are cropped by
        the patch conv); ``forward_features`` gives ``(B, D, H/16, W/16)``; ``forward`` gives
        ``(B, num_classes)`` logits.
    """

    classifier_name = "head"

    def init_classifier(self, head: nn.Module) -> None:
        """timm's scheme: truncated-normal(0.02) weight, zero bias."""
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        num_classes: int = 1000,
        in_chans: int = 1,
        img_size: int = 224,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if global_pool not in ("avg", "token"):
            raise ModelError(f"vit global_pool must be 'avg' or 'token', got {global_pool!r}")
        self.global_pool = global_pool
        # Read by create_model for model.cfg.cam_layer (see the module docstring).
        self.default_cam_layer = "to_grid" if global_pool == "avg" else f"blocks.{depth - 1}.norm1"
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio, drop_rate, r) for r in rates))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.to_grid = TokenGrid(self.num_prefix_tokens)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's default ("") scheme: truncated-normal(0.02) linears and position embedding, tiny class token.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid_size:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, grid, self.grid_size, self.num_prefix_tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> normed patch-token grid ``(B, D, H/16, W/16)`` (class token dropped);
        with ``global_pool="token"`` the normed class token as ``(B, D, 1, 1)``."""
        x = self.patch_embed(x)
        grid = (int(x.shape[2]), int(x.shape[3]))
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self._pos_embed(grid))
        x = self.norm(self.blocks(x))
        if self.global_pool == "token":
            return x[:, 0, :, None, None]
        return self.to_grid(x, grid)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean over the map then ``head``; ``pre_logits`` returns the pooled ``(B, D)`` vector (the class token
        itself with ``global_pool="token"``, whose map is 1x1)."""
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def arch_kwargs(self) -> dict[str, Any]:
        """``{"global_pool": "avg" | "token"}``: the pooling a run directory must rebuild (see ``ZooModel``)."""
        return {"global_pool": self.global_pool}


def _cfg(name: str) -> ModelCfg:
    return ModelCfg(
        name=name,
        family="vit",
        input_size=224,
        first_conv="patch_embed.proj",
        classifier="head",
        cam_layer="to_grid",
        paper=_PAPER,
        layout="timm",
    )


@register_model(_cfg("vit_tiny_patch16"))
def vit_tiny_patch16(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti/16: D=192, 3 heads, depth 12; 5.72 M parameters at 1000 classes / 3 channels."""
    return VisionTransformer(192, 12, 3, num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model(_cfg("vit_small_patch16"))
def vit_small_patch16(*, num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> VisionTransformer:
    """ViT-S/16: D=384, 6 heads, depth 12; 22.05 M parameters at 1000 classes / 3 channels."""
    return VisionTransformer(384, 12, 6, num_classes=num_classes, in_chans=in_chans, **kwargs)
