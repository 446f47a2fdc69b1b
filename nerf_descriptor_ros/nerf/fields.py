"""Radiance fields: position (+ view direction) -> density and colour.

Positions reach a field already normalised to [-1, 1] over the scene box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nerf_descriptor_ros.nerf.config import ClassicFieldConfig, FastFieldConfig


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped, the density activation of Instant-NGP (stable at init)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x.clamp(max=15))


class TriPlaneEncoding(nn.Module):
    """Multiresolution tri-plane features: per level, the product of three axis-aligned planes.

    Per level the xy, xz and yz planes are bilinearly sampled (one batched ``grid_sample``) and
    multiplied channel-wise, which makes each level a rank-``features`` factorisation of a dense
    3D grid; levels are concatenated.
    """

    def __init__(self, resolutions: list, features: int):
        super().__init__()
        # Near 1, so that each plane's gradient (scaled by the other two planes) starts at full
        # strength; measured to converge faster than K-Planes' uniform(0.1, 0.5).
        self.planes = nn.ParameterList(
            nn.Parameter(torch.empty(3, features, int(r), int(r)).uniform_(0.9, 1.1)) for r in resolutions
        )
        self.output_dim = len(resolutions) * features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coords = torch.stack([x[:, [0, 1]], x[:, [0, 2]], x[:, [1, 2]]]).unsqueeze(2)  # (3, N, 1, 2)
        features = []
        for planes in self.planes:
            xy, xz, yz = (
                F.grid_sample(planes, coords, mode="bilinear", padding_mode="border", align_corners=True)
                .squeeze(-1)
                .unbind(0)
            )  # 3 x (F, N)
            features.append(xy * xz * yz)
        return torch.cat(features, 0).t()


def spherical_harmonics(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical harmonics basis of unit directions up to ``degree`` (1..4 -> 1..16 terms)."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ]
    return torch.stack(out, -1)


def sh_dim(degree: int) -> int:
    return degree * degree


def _mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    modules, width = [], in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


class FastField(nn.Module):
    """Tri-plane grid + a one-hidden-layer density MLP + a small colour MLP."""

    def __init__(self, cfg: FastFieldConfig, appearance_dim: int = 0):
        super().__init__()
        self.encoding = TriPlaneEncoding(cfg.plane_resolutions, cfg.plane_features)
        self.density_net = _mlp(self.encoding.output_dim, cfg.hidden_width, 1, 1 + cfg.geo_features)
        self.sh_degree = cfg.sh_degree
        self.color_net = _mlp(
            cfg.geo_features + sh_dim(cfg.sh_degree) + appearance_dim,
            cfg.color_hidden_width,
            cfg.color_hidden_layers,
            3,
        )

    def grid_parameters(self):
        return list(self.encoding.parameters())

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return trunc_exp(self.density_net(self.encoding(x))[:, 0] - 1.0)

    def forward(self, x: torch.Tensor, dirs: torch.Tensor, appearance: torch.Tensor | None = None):
        h = self.density_net(self.encoding(x))
        sigma = trunc_exp(h[:, 0] - 1.0)
        inputs = [h[:, 1:]]
        if self.sh_degree > 0:
            inputs.append(spherical_harmonics(dirs, self.sh_degree))
        if appearance is not None:
            inputs.append(appearance)
        rgb = torch.sigmoid(self.color_net(torch.cat(inputs, -1)))
        return sigma, rgb


def positional_encoding(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """[x, sin(2^k x), cos(2^k x)] for k < num_freqs (the original NeRF's ``multires``)."""
    if num_freqs == 0:
        return x
    freqs = 2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)
    xb = (x[:, None, :] * freqs[:, None]).reshape(len(x), -1)
    return torch.cat([x, torch.sin(xb), torch.cos(xb)], -1)


class ClassicField(nn.Module):
    """The original NeRF MLP: ``netdepth`` x ``netwidth``, input re-injected after ``skip_layer``,
    density from the trunk, colour from a view-direction branch of width ``netwidth // 2``."""

    def __init__(self, cfg: ClassicFieldConfig, appearance_dim: int = 0):
        super().__init__()
        self.multires, self.multires_views = cfg.multires, cfg.multires_views
        self.use_viewdirs = cfg.use_viewdirs
        self.skip_layer = cfg.skip_layer
        in_pos = 3 + 6 * cfg.multires
        in_dir = 3 + 6 * cfg.multires_views
        layers, width = [], in_pos
        for i in range(cfg.netdepth):
            layers.append(nn.Linear(width, cfg.netwidth))
            width = cfg.netwidth + (in_pos if i == cfg.skip_layer else 0)
        self.trunk = nn.ModuleList(layers)
        self.sigma_head = nn.Linear(cfg.netwidth, 1)
        if cfg.use_viewdirs:
            self.feature = nn.Linear(cfg.netwidth, cfg.netwidth)
            self.view_branch = nn.Linear(cfg.netwidth + in_dir + appearance_dim, cfg.netwidth // 2)
            self.rgb_head = nn.Linear(cfg.netwidth // 2, 3)
        else:
            self.rgb_head = nn.Linear(cfg.netwidth + appearance_dim, 3)
        # The original NeRF ran with TensorFlow's defaults: Glorot-uniform weights, zero biases.
        # PyTorch's defaults shrink activations through 8 layers until the density head's bias
        # decides alone, and a negative bias leaves the ReLU density dead from the first step.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        encoded = positional_encoding(x, self.multires)
        h = encoded
        for i, layer in enumerate(self.trunk):
            h = F.relu(layer(h))
            if i == self.skip_layer:
                h = torch.cat([encoded, h], -1)
        return h

    def forward(self, x: torch.Tensor, dirs: torch.Tensor, appearance: torch.Tensor | None = None):
        h = self._trunk(x)
        sigma = F.relu(self.sigma_head(h)[:, 0])
        extra = [appearance] if appearance is not None else []
        if self.use_viewdirs:
            v = torch.cat([self.feature(h), positional_encoding(dirs, self.multires_views), *extra], -1)
            rgb = torch.sigmoid(self.rgb_head(F.relu(self.view_branch(v))))
        else:
            rgb = torch.sigmoid(self.rgb_head(torch.cat([h, *extra], -1)))
        return sigma, rgb


class LearnedBackground(nn.Module):
    """Background colour as a smooth function of the ray direction (degree-3 SH, then sigmoid):
    what a ray that leaves the scene box without stopping sees, for datasets without masks."""

    def __init__(self):
        super().__init__()
        self.coefficients = nn.Linear(sh_dim(3), 3)
        nn.init.zeros_(self.coefficients.weight)
        nn.init.zeros_(self.coefficients.bias)

    def forward(self, unit_dirs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.coefficients(spherical_harmonics(unit_dirs, 3)))
