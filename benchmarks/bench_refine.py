"""Speed of one interaction: cached-trunk refinement vs recomputing the whole network.

Prints one JSON object:

* ``seconds_per_interaction_cached``: :class:`RefineSession` refinement with the trunk
  cached and the point-wise fast path (the final 1x1 layer is the head), including its
  preview and final whole-image predictions;
* ``seconds_per_interaction_naive``: the same number of SGD steps on the same head, but each
  step recomputes the full forward of the network on the whole image (what a plain
  fine-tuning loop does), plus one final prediction;
* ``speedup_cached_vs_naive`` (target >= 10);
* ``region_growing_ms_1024``: :func:`~napari_scribble_refine.core.scribbles.grow_scribbles`
  on a 1024x1024 image (target <= 50);
* torch's thread count and the load average, because both move these numbers.

Run: ``python benchmarks/bench_refine.py [--repeats 3] [--size 512] [--threads N]``. A
second entry times the built-in ``hovernet-fluo`` model when it loads, and a third
(``kept_logits``) its refinement with the default settings (trust region; the CRF on the
inverted, dark-nuclei image) with the head's logits kept per head state against the head
run for every use (``LOGITS_CACHE_PIXELS = 0``), interleaved, with their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_scribble_refine.core.config import RefineConfig
from napari_scribble_refine.core.models.module import TorchModuleModel
from napari_scribble_refine.core.scribbles import grow_scribbles
from napari_scribble_refine.core.session import RefineSession


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A plain U-Net (3 poolings, widths 16-128): about 0.48 M parameters."""

    def __init__(self, in_channels: int = 1, n_classes: int = 2, width: int = 16) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.enc1, self.enc2, self.enc3 = (
            _block(in_channels, w[0]),
            _block(w[0], w[1]),
            _block(w[1], w[2]),
        )
        self.bottom = _block(w[2], w[3])
        self.pool = nn.MaxPool2d(2)
        self.up3, self.dec3 = nn.ConvTranspose2d(w[3], w[2], 2, stride=2), _block(w[3], w[2])
        self.up2, self.dec2 = nn.ConvTranspose2d(w[2], w[1], 2, stride=2), _block(w[2], w[1])
        self.up1, self.dec1 = nn.ConvTranspose2d(w[1], w[0], 2, stride=2), _block(w[1], w[0])
        self.final = nn.Conv2d(w[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of the same size as ``x`` (H, W multiples of 8)."""
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        b = self.bottom(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up3(b), e3], 1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.final(d1)


def disks_image(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bright disks on a dark noisy background, and the disk mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(size * size // 2500):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(6, 14)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image = np.where(mask, 0.8, 0.15) + rng.normal(0, 0.05, mask.shape)
    return image.astype(np.float32), mask


def strokes(mask: np.ndarray, seed: int = 1, n: int = 24, length: int = 30) -> np.ndarray:
    """Straight strokes: value 2 inside disks, 1 outside (a user's corrections)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(mask.shape, dtype=np.int32)
    size = mask.shape[0]
    for _ in range(n):
        y, x = rng.integers(length, size - length, 2)
        dy, dx = rng.normal(size=2)
        norm = float(np.hypot(dy, dx)) or 1.0
        for t in range(length):
            yi, xi = int(y + dy / norm * t), int(x + dx / norm * t)
            out[yi, xi : xi + 2] = np.where(mask[yi, xi : xi + 2], 2, 1)
    return out


def naive_interaction(
    net: nn.Module, x: torch.Tensor, scribbles: np.ndarray, iterations: int, cfg: RefineConfig
) -> float:
    """Seconds for ``iterations`` full-forward SGD steps on the final layer + a prediction."""
    target = torch.as_tensor(scribbles.astype(np.int64) - 1)[None]
    head = list(net.final.parameters())
    for p in net.parameters():
        p.requires_grad_(False)
    start = time.perf_counter()
    for p in head:
        p.requires_grad_(True)
    buffers = [torch.zeros_like(p) for p in head]
    for _ in range(iterations):
        logits = net(x)
        loss = F.cross_entropy(logits, target, ignore_index=-1)
        grads = torch.autograd.grad(loss, head)
        with torch.no_grad():
            for p, g, buf in zip(head, grads, buffers, strict=True):
                buf.mul_(cfg.momentum).add_(g)
                p.add_(buf, alpha=-cfg.learning_rate)
    for p in head:
        p.requires_grad_(False)
    with torch.inference_mode():
        net(x).argmax(1)
    return time.perf_counter() - start


def bench_unet(size: int, repeats: int) -> dict:
    torch.manual_seed(0)
    net = UNet().eval()
    n_params = sum(p.numel() for p in net.parameters())
    image, mask = disks_image(size)
    scribbles = strokes(mask)
    # fixed work per interaction: no early stop, no region growing
    cfg = RefineConfig(
        max_iterations=20,
        learning_rate=1e-4,
        stop_fraction=1.0,
        region_growing=False,
        preview_every=5,
        device="cpu",
    )
    model = TorchModuleModel(net, ["background", "nucleus"], size_multiple=8, normalise="none")
    assert model.trunk_is_cached and model.head_is_pointwise

    start = time.perf_counter()
    session = RefineSession(model, image, cfg)
    trunk_s = time.perf_counter() - start
    session.predict()

    cached, iterations = [], []
    for _ in range(repeats):
        session.reset()
        start = time.perf_counter()
        result = session.run(scribbles)
        cached.append(time.perf_counter() - start)
        iterations.append(result.iterations)
    n_iter = iterations[0]

    x = torch.from_numpy(image)[None, None]
    naive = []
    for _ in range(repeats):
        naive_net = UNet().eval()
        naive_net.load_state_dict(net.state_dict())
        naive.append(naive_interaction(naive_net, x, scribbles, n_iter, cfg))

    cached_s, naive_s = statistics.median(cached), statistics.median(naive)
    return {
        "model": f"U-Net {n_params / 1e6:.2f} M parameters, head = final 1x1 conv",
        "image": f"{size}x{size}",
        "n_scribbled": int((scribbles > 0).sum()),
        "iterations": n_iter,
        "trunk_seconds_once": round(trunk_s, 4),
        "seconds_per_interaction_cached": round(cached_s, 4),
        "seconds_per_interaction_naive": round(naive_s, 4),
        "speedup_cached_vs_naive": round(naive_s / cached_s, 2),
    }


def bench_hovernet(size: int, repeats: int) -> dict | None:
    """Time the built-in HoVer-Net, if it loads (optional second entry)."""
    try:
        from napari_scribble_refine.core.models.registry import load_model

        model = load_model("hovernet-fluo")
    except Exception as err:  # noqa: BLE001 - optional entry
        return {"model": "hovernet-fluo", "skipped": f"{type(err).__name__}: {err}"[:200]}
    image, mask = disks_image(size)
    scribbles = strokes(mask)
    cfg = RefineConfig(
        max_iterations=20,
        learning_rate=1e-4,
        region_growing=False,
        preview_every=5,
        device="cpu",
    )
    start = time.perf_counter()
    session = RefineSession(model, image, cfg)
    trunk_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        session.reset()
        start = time.perf_counter()
        result = session.run(scribbles)
        times.append(time.perf_counter() - start)
    return {
        "model": "hovernet-fluo",
        "image": f"{size}x{size}",
        "head_is_pointwise": bool(session.model.head_is_pointwise),
        "trunk_is_cached": bool(session.model.trunk_is_cached),
        "iterations": result.iterations,
        "trunk_seconds_once": round(trunk_s, 4),
        "seconds_per_interaction_cached": round(statistics.median(times), 4),
        "full_forward_seconds_once": round(trunk_s, 4),
    }


def bench_kept_logits(size: int, repeats: int) -> dict:
    """Default settings on ``hovernet-fluo``: logits kept per head state vs run per use."""
    from napari_scribble_refine.core import kept_logits
    from napari_scribble_refine.core.models.registry import load_model

    model = load_model("hovernet-fluo")
    image, mask = disks_image(size)
    scribbles = strokes(mask)
    report: dict = {"image": f"{size}x{size}", "repeats": repeats}
    for kind, pixels in (("bright_nuclei", image), ("dark_nuclei", image.max() - image)):
        sessions = {}
        for name, budget in (("kept", kept_logits.LOGITS_CACHE_PIXELS), ("per_use", 0)):
            saved, kept_logits.LOGITS_CACHE_PIXELS = kept_logits.LOGITS_CACHE_PIXELS, budget
            try:  # the budget is read when the session is made
                sessions[name] = RefineSession(model, pixels, RefineConfig(device="cpu"))
            finally:
                kept_logits.LOGITS_CACHE_PIXELS = saved
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(repeats):
            for name, session in sessions.items():
                session.reset()
                start = time.perf_counter()
                session.run(scribbles)
                times[name].append(time.perf_counter() - start)
        kept, per_use = (statistics.median(times[n]) for n in ("kept", "per_use"))
        report[kind] = {
            "seconds_per_interaction_kept": round(kept, 4),
            "seconds_per_interaction_head_per_use": round(per_use, 4),
            "speedup_kept_vs_per_use": round(per_use / kept, 3),
            "identical_predictions": bool(
                np.array_equal(sessions["kept"].prediction, sessions["per_use"].prediction)
            ),
        }
    return report


def bench_region_growing(repeats: int) -> float:
    image, mask = disks_image(1024, seed=3)
    scribbles = strokes(mask, n=60, length=40)
    grow_scribbles(image, scribbles, threshold=0.05, max_distance=10)  # warm-up
    times = []
    for _ in range(max(3, repeats)):
        start = time.perf_counter()
        grow_scribbles(image, scribbles, threshold=0.05, max_distance=10)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--no-hovernet", action="store_true", help="skip the built-in hovernet-fluo entry"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    unet = bench_unet(args.size, args.repeats)
    growing_ms = bench_region_growing(args.repeats)
    report = {
        **unet,
        "region_growing_ms_1024": round(growing_ms, 2),
        "targets": {"speedup_cached_vs_naive": ">= 10", "region_growing_ms_1024": "<= 50"},
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15_before": [round(v, 2) for v in load_before],
        "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if not args.no_hovernet:
        report["hovernet"] = bench_hovernet(args.size, args.repeats)
        report["kept_logits"] = bench_kept_logits(max(args.size, 1024), args.repeats)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
