"""How the RoI kernel's loads fall on memory: sectors and cache lines per warp-wide load, by thread mapping.

No GPU needed and no timing: the addresses a warp's 32 lanes read in one load instruction follow from the
thread mapping, the feature layout [B, C, T', H', W'] (float32, contiguous) and the boxes, so this counts
them exactly. A GPU serves one warp-wide load in as many 32-byte sectors (and 128-byte L1 lines) as its
lanes touch, so fewer per load means fewer memory transactions for the same data.

Two mappings of the same computation (each bin averages SAMPLING_RATIO^2 bilinear samples, four corners
each, then the max over the OUTPUT_SIZE^2 bins):

- ``channels``: the lanes of a warp are 32 neighbouring channels at one sample point (the kernel before
  this script was written: one program per box and 64 channels, the bins in a loop); neighbouring lanes
  are a whole feature plane (T' x H' x W' floats) apart.
- ``bins``: the lanes are 32 neighbouring bins of one channel at the same sample offset (the kernel now:
  the bins are the lanes, the channels a loop); the lanes read inside one H' x W' plane.

    python benchmarks/roi_access.py [--boxes 2000] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

SHAPES = {  # preset: (C, T', H', W', input size, OUTPUT_SIZE, SAMPLING_RATIO, spatial scale)
    "small": (512, 4, 7, 7, 112, 7, 2, 1 / 16),
    "paper-r50": (512, 16, 14, 14, 224, 7, 2, 1 / 16),
}
WARP = 32


def sample_points(box, scale, output, ratio, height, width):
    """(index, weight, active) of every bilinear corner of every sample of one box, torchvision's rule:
    arrays [output^2, ratio^2, 4] (bin-major), as the kernels compute them."""
    x1, y1, x2, y2 = np.asarray(box, np.float64) * scale - 0.5
    bin_h, bin_w = (y2 - y1) / output, (x2 - x1) / output
    ph, pw = np.divmod(np.arange(output * output), output)
    iy, ix = np.divmod(np.arange(ratio * ratio), ratio)
    y = y1 + ph[:, None] * bin_h + (iy[None, :] + 0.5) * bin_h / ratio
    x = x1 + pw[:, None] * bin_w + (ix[None, :] + 0.5) * bin_w / ratio
    inside = (y >= -1) & (y <= height) & (x >= -1) & (x <= width)
    yc, xc = np.clip(y, 0, None), np.clip(x, 0, None)
    y_low = np.minimum(yc.astype(int), height - 1)
    x_low = np.minimum(xc.astype(int), width - 1)
    y_high = np.minimum(y_low + 1, height - 1)
    x_high = np.minimum(x_low + 1, width - 1)
    corners = np.stack(
        [y_low * width + x_low, y_low * width + x_high, y_high * width + x_low, y_high * width + x_high], -1
    )
    return corners, np.repeat(inside[..., None], 4, -1)


def count(addresses: np.ndarray, active: np.ndarray, unit: int) -> np.ndarray:
    """Distinct ``unit``-byte blocks per warp load: ``addresses`` and ``active`` [loads, 32 lanes]."""
    blocks = np.where(active, addresses // unit, -1)
    blocks.sort(axis=1)
    distinct = (np.diff(blocks, axis=1) != 0) & (blocks[:, 1:] >= 0)
    return distinct.sum(axis=1) + (blocks[:, 0] >= 0)


def measure(preset: str, boxes: np.ndarray) -> list[dict]:
    channels, frames, height, width, _, output, ratio, scale = SHAPES[preset]
    plane = frames * height * width  # floats between one channel and the next
    rows = {name: {"loads": 0, "sectors": 0, "lines": 0} for name in ("channels", "bins")}
    bins = output * output
    padded = 1 << (bins - 1).bit_length()
    for box in boxes:
        corners, inside = sample_points(box, scale, output, ratio, height, width)
        # channels: lanes = 32 channels; one load per (bin, sample, corner, block of 32 channels)
        lane_c = np.arange(WARP)
        per_point = corners.reshape(-1)  # [bins * samples * 4]
        active_point = inside.reshape(-1)
        for start in range(0, channels, WARP):
            addresses = ((start + lane_c)[None, :] * plane + per_point[:, None]) * 4
            active = np.repeat(active_point[:, None], WARP, 1)
            _add(rows["channels"], addresses, active)
        # bins: lanes = 32 bins of one channel; one load per (channel, sample, corner, half of the bins)
        tile = np.zeros((padded, ratio * ratio, 4), int)
        tile_active = np.zeros((padded, ratio * ratio, 4), bool)
        tile[:bins], tile_active[:bins] = corners, inside
        lanes = tile.transpose(1, 2, 0).reshape(-1, padded // WARP, WARP)  # [samples * 4, halves, 32]
        lanes_active = tile_active.transpose(1, 2, 0).reshape(-1, padded // WARP, WARP)
        for c in range(channels):
            _add(rows["bins"], (c * plane + lanes.reshape(-1, WARP)) * 4, lanes_active.reshape(-1, WARP))
    out = []
    for name, row in rows.items():
        out.append(
            {
                "preset": preset,
                "mapping": name,
                "loads per box": row["loads"] / len(boxes),
                "sectors per load": row["sectors"] / max(row["loads"], 1),
                "lines per load": row["lines"] / max(row["loads"], 1),
                "sectors per box": row["sectors"] / len(boxes),
            }
        )
    return out


def _add(row: dict, addresses: np.ndarray, active: np.ndarray) -> None:
    used = active.any(axis=1)
    row["loads"] += int(used.sum())
    row["sectors"] += int(count(addresses[used], active[used], 32).sum())
    row["lines"] += int(count(addresses[used], active[used], 128).sum())


def random_boxes(generator: np.random.Generator, size: int, number: int) -> np.ndarray:
    """Proposal-like boxes in input pixels: sides from 1/8 of the frame to all of it, inside the frame."""
    sides = generator.uniform(size / 8, size, (number, 2))
    corner = generator.uniform(0, 1, (number, 2)) * (size - sides)
    return np.concatenate([corner, corner + sides], axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generator = np.random.default_rng(args.seed)
    rows = []
    for preset, shape in SHAPES.items():
        rows += measure(preset, random_boxes(generator, shape[4], args.boxes))
    columns = ["preset", "mapping", "loads per box", "sectors per load", "lines per load", "sectors per box"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(f"{row[c]:,.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
