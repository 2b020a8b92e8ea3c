"""An independent, literal implementation of docs/method.md section 9 on the authors' parameter names.

It works on the whole output grid at once (as the authors do) and shares no code with the package, so that the
package's operator (renamed parameters, chunked streaming) can be checked against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _conv(x, sd, name, padding=0):
    return F.conv2d(x, sd[name + ".weight"], sd[name + ".bias"], padding=padding)


def _grid_centres(n):
    r = 1 / n
    return -1 + r + 2 * r * torch.arange(n).float()


def _coord(h, w):
    return torch.stack(torch.meshgrid(_grid_centres(h), _grid_centres(w), indexing="ij"), dim=-1)


def _layer_norm(t, weight, bias):
    mean = t.mean(-1, keepdim=True)
    std = t.std(-1, keepdim=True)  # unbiased
    return (t - mean) / (std + 1e-5) * weight + bias


def _galerkin(x, sd, name, heads):
    b, c, h, w = x.shape
    d = c // heads
    qkv = _conv(x, sd, name + ".qkv_proj").permute(0, 2, 3, 1).reshape(b, h * w, heads, 3 * d).permute(0, 2, 1, 3)
    q, k, v = qkv.chunk(3, dim=-1)
    k = _layer_norm(k, sd[name + ".kln.weight"], sd[name + ".kln.bias"])
    v = _layer_norm(v, sd[name + ".vln.weight"], sd[name + ".vln.bias"])
    kv = torch.matmul(k.transpose(-2, -1), v) / (h * w)
    a = torch.matmul(q, kv)  # (b, heads, hw, d)
    a = a.permute(0, 2, 1, 3).reshape(b, h, w, c).permute(0, 3, 1, 2)
    u = a + x
    return x + _conv(F.gelu(_conv(u, sd, name + ".o_proj1")), sd, name + ".o_proj2")


def reference_srno(sd: dict, x: torch.Tensor, out_h: int, out_w: int, heads: int = 16) -> torch.Tensor:
    """The authors' operator: ``x`` (B, 3, h, w) in [-1, 1] -> (B, 3, out_h, out_w)."""
    b = x.shape[0]
    # Encoder
    hfeat = _conv(x, sd, "encoder.head.0", padding=1)
    f = hfeat
    i = 0
    while f"encoder.body.{i}.body.0.weight" in sd:
        f = f + _conv(F.relu(_conv(f, sd, f"encoder.body.{i}.body.0", 1)), sd, f"encoder.body.{i}.body.2", 1)
        i += 1
    feat = _conv(f, sd, f"encoder.body.{i}", 1) + hfeat
    h, w = feat.shape[-2:]
    coord = _coord(out_h, out_w).unsqueeze(0).expand(b, -1, -1, -1)
    cell = torch.tensor([2 / out_h, 2 / out_w]).unsqueeze(0).expand(b, 2)
    pos_lr = _coord(h, w).permute(2, 0, 1).unsqueeze(0).expand(b, 2, h, w)
    rx, ry = 1 / h, 1 / w
    rels, feats, areas = [], [], []
    for vx in (-1, 1):
        for vy in (-1, 1):
            c = coord.clone()
            c[:, :, :, 0] += vx * rx + 1e-6
            c[:, :, :, 1] += vy * ry + 1e-6
            c.clamp_(-1 + 1e-6, 1 - 1e-6)
            feats.append(F.grid_sample(feat, c.flip(-1), mode="nearest", align_corners=False))
            old = F.grid_sample(pos_lr, c.flip(-1), mode="nearest", align_corners=False)
            rel = coord.permute(0, 3, 1, 2) - old
            rel[:, 0, :, :] *= h
            rel[:, 1, :, :] *= w
            rels.append(rel)
            areas.append(torch.abs(rel[:, 0, :, :] * rel[:, 1, :, :]) + 1e-9)
    tot = torch.stack(areas).sum(dim=0)
    areas[0], areas[3] = areas[3], areas[0]
    areas[1], areas[2] = areas[2], areas[1]
    feats = [fe * (a / tot).unsqueeze(1) for fe, a in zip(feats, areas)]
    rel_cell = cell.clone()
    rel_cell[:, 0] *= h
    rel_cell[:, 1] *= w
    grid = torch.cat([*rels, *feats, rel_cell.unsqueeze(-1).unsqueeze(-1).repeat(1, 1, out_h, out_w)], dim=1)
    z = _conv(grid, sd, "conv00")
    j = 0
    while f"conv{j}.qkv_proj.weight" in sd:
        z = _galerkin(z, sd, f"conv{j}", heads)
        j += 1
    out = _conv(F.gelu(_conv(z, sd, "fc1")), sd, "fc2")
    return out + F.grid_sample(x, coord.flip(-1), mode="bilinear", padding_mode="border", align_corners=False)


def random_official_state_dict(
    encoder_channels=64, encoder_num_blocks=16, width=256, heads=16, blocks=2, head_channels=256, seed=0
) -> dict:
    """A random state dict with the authors' names (and shapes, for the default arguments)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=0.05):
        return torch.randn(*shape, generator=g) * s

    sd = {
        "encoder.sub_mean.weight": torch.eye(3).reshape(3, 3, 1, 1),
        "encoder.sub_mean.bias": rnd(3),
        "encoder.add_mean.weight": torch.eye(3).reshape(3, 3, 1, 1),
        "encoder.add_mean.bias": rnd(3),
        "encoder.head.0.weight": rnd(encoder_channels, 3, 3, 3, s=0.2),
        "encoder.head.0.bias": rnd(encoder_channels),
    }
    for i in range(encoder_num_blocks):
        for k in (0, 2):
            sd[f"encoder.body.{i}.body.{k}.weight"] = rnd(encoder_channels, encoder_channels, 3, 3, s=0.01)
            sd[f"encoder.body.{i}.body.{k}.bias"] = rnd(encoder_channels)
    sd[f"encoder.body.{encoder_num_blocks}.weight"] = rnd(encoder_channels, encoder_channels, 3, 3)
    sd[f"encoder.body.{encoder_num_blocks}.bias"] = rnd(encoder_channels)
    sd["conv00.weight"] = rnd(width, 8 + 4 * encoder_channels + 2, 1, 1, s=0.1)
    sd["conv00.bias"] = rnd(width)
    d = width // heads
    for j in range(blocks):
        sd[f"conv{j}.qkv_proj.weight"] = rnd(3 * width, width, 1, 1, s=0.1)
        sd[f"conv{j}.qkv_proj.bias"] = rnd(3 * width)
        for name in ("o_proj1", "o_proj2"):
            sd[f"conv{j}.{name}.weight"] = rnd(width, width, 1, 1, s=0.1)
            sd[f"conv{j}.{name}.bias"] = rnd(width)
        for name in ("kln", "vln"):
            sd[f"conv{j}.{name}.weight"] = 1 + rnd(heads, 1, d, s=0.1)
            sd[f"conv{j}.{name}.bias"] = rnd(heads, 1, d, s=0.1)
    sd["fc1.weight"] = rnd(head_channels, width, 1, 1, s=0.1)
    sd["fc1.bias"] = rnd(head_channels)
    sd["fc2.weight"] = rnd(3, head_channels, 1, 1, s=0.1)
    sd["fc2.bias"] = rnd(3)
    return sd
