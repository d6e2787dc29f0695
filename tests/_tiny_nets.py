"""Small deterministic networks and synthetic disk images for the engine's tests."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn

CLASSES3 = ["background", "nucleus", "other"]
CLASSES2 = ["background", "nucleus"]

BACKGROUND_LEVEL = 0.1
BRIGHT_LEVEL = 0.9
DIM_LEVEL = 0.45
NOISE = 0.03


class TinyUNet(nn.Module):
    """Two-level U-Net with BatchNorm and a 1x1 final convolution (``final``)."""

    def __init__(self, in_channels: int = 1, n_classes: int = 3, width: int = 8) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()
        )
        self.pool = nn.MaxPool2d(2)
        self.enc2 = nn.Sequential(
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU()
        )
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
        self.final = nn.Conv2d(w, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        d = self.dec(torch.cat([self.up(e2), e1], dim=1))
        return self.final(d)


def disks_scene(
    rng: np.random.Generator,
    size: int = 64,
    n_bright: int = 4,
    n_dim: int = 0,
    radius: tuple[int, int] = (5, 8),
    dim_level: float = DIM_LEVEL,
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping bright and dim disks on a dark noisy background.

    Returns
    -------
    image : float32 (size, size)
    kinds : int32 (size, size): 0 background, 1 bright disk, 2 dim disk
    """
    image = np.full((size, size), BACKGROUND_LEVEL, dtype=np.float32)
    kinds = np.zeros((size, size), dtype=np.int32)
    yy, xx = np.mgrid[:size, :size]
    placed: list[tuple[float, float, float]] = []
    todo = [1] * n_bright + [2] * n_dim
    attempts = 0
    while todo and attempts < 2000:
        attempts += 1
        r = float(rng.uniform(*radius))
        cy, cx = rng.uniform(r + 1, size - r - 1, size=2)
        if any((cy - py) ** 2 + (cx - px) ** 2 < (r + pr + 3) ** 2 for py, px, pr in placed):
            continue
        kind = todo.pop()
        placed.append((cy, cx, r))
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[disk] = BRIGHT_LEVEL if kind == 1 else dim_level
        kinds[disk] = kind
    image += rng.normal(0, NOISE, image.shape).astype(np.float32)
    return image, kinds


def train_tiny_unet(
    seed: int = 0, steps: int = 150, n_classes: int = 3, n_images: int = 3, size: int = 48
) -> TinyUNet:
    """Train on bright disks only (all -> class 1); class 2 is never a target.

    Runs single-threaded (a few seconds) and restores torch's thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(seed, steps, n_classes, n_images, size)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, steps: int, n_classes: int, n_images: int, size: int) -> TinyUNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n_images):
        img, kinds = disks_scene(rng, size=size, n_bright=3)
        images.append(img)
        targets.append((kinds > 0).astype(np.int64))
    x = torch.from_numpy(np.stack(images))[:, None]
    # the adapters' default percentile normalisation maps these scenes to about [0, 1]
    lo, hi = np.percentile(x.numpy(), (1, 99.8))
    x = (x - lo) / (hi - lo)
    y = torch.from_numpy(np.stack(targets))
    net = TinyUNet(n_classes=n_classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return net.eval()


class SkipHeadNet(nn.Module):
    """A network whose final layer gets a skip connection (cannot be split sequentially)."""

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.mid = nn.Conv2d(4, 4, 1)
        self.final = nn.Conv2d(4, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.body(x))
        return self.final(self.mid(h) + h)


class NoClassAxisNet(nn.Module):
    """Returns one channel per pixel squeezed away: [N, H, W]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, 0]


def disk_labels(kinds: np.ndarray, kind: int) -> tuple[np.ndarray, int]:
    """Label the disks of one kind (1 bright, 2 dim): (labels, count)."""
    labels, n = ndi.label(kinds == kind)
    return labels, int(n)


def scribble_disks(
    scribbles: np.ndarray, kinds: np.ndarray, kind: int, which: list[int], value: int
) -> np.ndarray:
    """Paint the eroded cores of some disks of one kind with a scribble value (in place)."""
    labels, _ = disk_labels(kinds, kind)
    for index in which:
        core = ndi.binary_erosion(labels == index + 1, iterations=2)
        scribbles[core] = value
    return scribbles


def fraction(prediction: np.ndarray, mask: np.ndarray, cls: int) -> float:
    """Fraction of ``mask`` pixels predicted as ``cls``."""
    return float((prediction[mask] == cls).mean())


def readonly(array) -> np.ndarray:
    """A read-only copy of ``array``: code under test must not write into its inputs."""
    array = np.array(array)
    array.setflags(write=False)
    return array
