"""Sampling images from a generator at given seeds (the `viscoin generator sample` command)."""

from __future__ import annotations

import re

import torch

from viscoin.stylegan.generator import Generator, z_from_seed


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]. Ranges are inclusive."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"--seeds: cannot parse {part!r}; expected numbers and ranges such as '0-15,20'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValueError(f"--seeds: range {part!r} is empty (end before start)")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError("--seeds: no seeds given")
    return seeds


@torch.no_grad()
def sample(
    G: Generator,
    seeds: list[int],
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    class_idx: int | None = None,
    noise_mode: str = "const",
    batch_size: int = 16,
    fp16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, C, R, R] and their W+ latents [N, num_ws, w_dim], one per seed (z as NVIDIA's generate.py)."""
    device = G.device
    c = None
    if G.c_dim > 0:
        if class_idx is None or not 0 <= class_idx < G.c_dim:
            raise ValueError(f"--class: this generator is conditional; give a class index in [0, {G.c_dim - 1}]")
        c = torch.zeros([1, G.c_dim], device=device)
        c[0, class_idx] = 1
    elif class_idx is not None:
        raise ValueError("--class: this generator is unconditional; leave --class out")
    images, latents = [], []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        z = torch.cat([z_from_seed(s, G.z_dim) for s in chunk]).to(device)
        cc = c.repeat(len(chunk), 1) if c is not None else None
        ws = G.map(z, cc, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        images.append(G.synthesis(ws, noise_mode=noise_mode, fp16=fp16).cpu())
        latents.append(ws.cpu())
    return torch.cat(images), torch.cat(latents)
