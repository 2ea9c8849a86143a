"""The Triton kernels of the plugins against the torch references, on the CPU (TRITON_INTERPRET=1).

TRITON_INTERPRET must be set before triton's kernels are defined, so every case runs in ONE fresh
interpreter (a module-scoped fixture) that launches the kernels exactly as strg_deploy.plugins.launch
says (grid, int32 arguments in kernel order, compile-time constants) and prints JSON. The interpreter
costs about a tenth of a second per box for 3x3 bins, so the cases are small and the edge cases share
launches. Also here: the pure-Python launch parameters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import triton_interpreter_problem

from strg_deploy.errors import StrgError
from strg_deploy.plugins import launch

pytest.importorskip("triton")
pytest.importorskip("torch")
if triton_interpreter_problem():
    pytest.skip(triton_interpreter_problem(), allow_module_level=True)

TOLERANCE = 1e-5

SCRIPT = r"""
import json, math, os
assert os.environ["TRITON_INTERPRET"] == "1"
import torch
from strg_deploy.models.graphs import space_time_graphs
from strg_deploy.models.roi import frame_roi_align_max
from strg_deploy.plugins import kernels, launch

def run_roi(features, boxes, mask, scale, size, ratio):
    nodes = torch.full((*boxes.shape[:3], features.shape[1]), float("nan"))
    kernels.run_frame_roi_align_max(features, boxes, mask.view(torch.int8), nodes, scale, size, ratio)
    return nodes

def run_graph(boxes, mask):
    shape = (boxes.shape[0], boxes.shape[1] - 1, boxes.shape[2], boxes.shape[2])
    forward, backward = torch.full(shape, float("nan")), torch.full(shape, float("nan"))
    kernels.run_space_time_graph(boxes, mask.view(torch.int8), forward, backward)
    return forward, backward

def random_boxes(generator, shape, low, high, size):
    corner = torch.rand(*shape, 2, generator=generator) * (high - low) + low
    return torch.cat([corner, corner + torch.rand(*shape, 2, generator=generator) * size], dim=-1)

def check_roi(features, boxes, mask, args):
    out = run_roi(features, boxes, mask, *args)
    return compare(out, frame_roi_align_max(features, boxes, mask, *args), mask)

def compare(out, ref, mask):
    return {"err": (out - ref).abs().max().item(), "ref_max": ref.abs().max().item(),
            "finite": bool(torch.isfinite(out).all()), "shape": list(out.shape),
            "padded_max": out[~mask].abs().max().item() if (~mask).any() else 0.0}

g = torch.Generator().manual_seed(0)
results = {}

# RoI, random boxes over (and a little past) a 6 x 7 map of stride 16, batch 1, 2 frames
features = torch.randn(1, 5, 2, 6, 7, generator=g)
boxes = random_boxes(g, (1, 2, 3), -20.0, 100.0, 60.0)
mask = torch.ones(1, 2, 3, dtype=torch.bool)
args = (1 / 16, 3, 2)
results["roi_random_b1"] = check_roi(features, boxes, mask, args)

# RoI edge cases in one launch, batch 3, one frame of 4 boxes on a 5 x 4 map (80 x 64 pixels):
features = torch.randn(3, 3, 1, 5, 4, generator=g)
boxes = torch.tensor([[[
    [-30.0, -24.0, 20.0, 30.0],    # partly outside (top left)
    [40.0, 50.0, 120.0, 200.0],    # partly outside (bottom right)
    [500.0, 500.0, 600.0, 650.0],  # wholly outside: every sample is zero
    [-90.0, -90.0, -40.0, -40.0],  # wholly outside on the other side
]], [[
    [24.0, 24.0, 24.0, 24.0],      # zero area: every sample is the same point
    [10.0, 70.0, 10.0, 90.0],      # zero width, reaching past the bottom edge
    [3.0, 5.0, 60.0, 75.0],        # padded (mask False): zeros whatever the coordinates
    [-1e9, 1e9, 7.0, -3.0],        # padded, absurd coordinates
]], [[
    [0.0, 0.0, 64.0, 80.0]] * 4,   # an empty frame: every box padded
]])
mask = torch.tensor([[[True] * 4], [[True, True, False, False]], [[False] * 4]])
args = (1 / 16, 2, 2)
out = run_roi(features, boxes, mask, *args)
ref = frame_roi_align_max(features, boxes, mask, *args)
results["roi_edges_b3"] = compare(out, ref, mask)
results["roi_edges_b3"]["outside_max"] = out[0, 0, 2:].abs().max().item()
# the smallest over boxes of the largest |value| over channels: each of these boxes pools something
results["roi_edges_b3"]["zero_area_ref"] = ref[1, 0, :2].abs().amax(dim=-1).min().item()
results["roi_edges_b3"]["partly_ref"] = ref[0, 0, :2].abs().amax(dim=-1).min().item()

# RoI with the paper's 7 x 7 bins and more channels than one block (C = 70 > 64), batch 1
features = torch.randn(1, 70, 1, 5, 5, generator=g)
boxes = torch.tensor([[[[4.0, 8.0, 70.0, 50.0], [30.0, 2.0, 33.0, 79.0]]]])
mask = torch.ones(1, 1, 2, dtype=torch.bool)
args = (1 / 16, 7, 2)
results["roi_paper_bins"] = check_roi(features, boxes, mask, args)

# RoI with 3 x 3 samples per bin and stride 8, batch 3 (rows of one frame masked)
features = torch.randn(3, 4, 2, 4, 6, generator=g)
boxes = random_boxes(g, (3, 2, 2), -8.0, 40.0, 30.0)
mask = torch.rand(3, 2, 2, generator=g) > 0.3
mask[1, 0] = False
args = (1 / 8, 2, 3)
results["roi_ratio3_b3"] = check_roi(features, boxes, mask, args)

def compare_graph(boxes, mask):
    forward, backward = run_graph(boxes, mask)
    ref_f, ref_b = space_time_graphs(boxes, mask)
    return {"forward_err": (forward - ref_f).abs().max().item(),
            "backward_err": (backward - ref_b).abs().max().item(),
            "finite": bool(torch.isfinite(forward).all() and torch.isfinite(backward).all()),
            "edges": int((ref_f > 0).sum() + (ref_b > 0).sum()), "shape": list(forward.shape),
            "forward": forward.tolist(), "backward": backward.tolist()}

# The test vector of STRG.md: 3 frames x 2 boxes
boxes = torch.tensor([[[[0, 0, 9, 9], [20, 20, 29, 29]], [[5, 5, 14, 14], [0, 0, 9, 9]],
                       [[100, 100, 109, 109], [0, 0, 9, 9]]]], dtype=torch.float32)
results["graph_vector"] = compare_graph(boxes, torch.ones(1, 3, 2, dtype=torch.bool))

# Batch 3, 4 frames of 4 boxes: random masks, an all-masked frame, zero-area and duplicate boxes
boxes = random_boxes(g, (3, 4, 4), 0.0, 40.0, 30.0)
boxes[0, 1, 0] = torch.tensor([10.0, 10.0, 10.0, 10.0])
boxes[0, 2, 1] = torch.tensor([12.0, 12.0, 12.0, 30.0])
boxes[2, 3, 2] = boxes[2, 2, 2]
mask = torch.rand(3, 4, 4, generator=g) > 0.25
mask[1, 2] = False
results["graph_random_b3"] = compare_graph(boxes, mask)

# Batch 1, 70 boxes per frame: several row blocks (16) and column blocks (64)
boxes = random_boxes(g, (1, 2, 70), 0.0, 200.0, 40.0)
mask = torch.rand(1, 2, 70, generator=g) > 0.1
results["graph_many_boxes"] = compare_graph(boxes, mask)

print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def results() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line[len("RESULTS ") :])


@pytest.mark.parametrize("case", ["roi_random_b1", "roi_edges_b3", "roi_paper_bins", "roi_ratio3_b3"])
def test_roi_kernel_matches_torch(results, case):
    result = results[case]
    assert result["finite"]
    assert result["err"] < TOLERANCE
    assert result["ref_max"] > 0.1  # the reference is not trivially zero
    assert result["padded_max"] == 0.0


def test_roi_kernel_edge_cases(results):
    result = results["roi_edges_b3"]
    assert result["shape"] == [3, 1, 4, 3]
    assert result["outside_max"] == 0.0  # boxes wholly outside the map pool zeros
    assert result["zero_area_ref"] > 0.0  # a zero-area box samples a real point
    assert result["partly_ref"] > 0.0


def test_roi_kernel_several_channel_blocks(results):
    assert results["roi_paper_bins"]["shape"] == [1, 1, 2, 70]


@pytest.mark.parametrize("case", ["graph_vector", "graph_random_b3", "graph_many_boxes"])
def test_graph_kernel_matches_torch(results, case):
    result = results[case]
    assert result["finite"]
    assert result["forward_err"] < TOLERANCE
    assert result["backward_err"] < TOLERANCE
    assert result["edges"] > 0


def test_graph_kernel_strg_test_vector(results):
    """STRG.md's numbers: node index t * N + i; forward[0, t] holds rows of frame t, columns of t+1."""
    forward, backward = results["graph_vector"]["forward"][0], results["graph_vector"]["backward"][0]
    assert forward[0][0] == pytest.approx([0.098765, 0.901235], abs=1e-6)  # node 0 -> nodes 2, 3
    assert forward[0][1] == [0.0, 0.0]  # node 1 overlaps nothing
    assert forward[1] == [[0.0, 1.0], [0.0, 1.0]]  # nodes 2, 3 -> node 5
    assert backward[0] == [[1.0, 0.0], [1.0, 0.0]]  # nodes 2, 3 -> node 0
    assert backward[1][0] == [0.0, 0.0]  # node 4 overlaps nothing in frame 1
    assert backward[1][1] == pytest.approx([0.098765, 0.901235], abs=1e-6)  # node 5 -> nodes 2, 3


def test_graph_kernel_empty_frame_has_no_edges(results):
    forward = results["graph_random_b3"]["forward"]
    backward = results["graph_random_b3"]["backward"]
    assert results["graph_random_b3"]["shape"] == [3, 3, 4, 4]
    # batch 1, frame 2 is all padding: no edges from it (forward[1, 2], backward[1, 1]) or to it
    assert all(v == 0.0 for row in forward[1][2] + backward[1][1] for v in row)
    assert all(v == 0.0 for row in forward[1][1] + backward[1][2] for v in row)


# Launch parameters (pure Python)


def test_roi_launch_params():
    params = launch.roi_launch_params((2, 512, 16, 14, 14), (2, 16, 50, 4))
    assert params.grid == (2 * 16 * 50, 32, 1)
    assert params.block == launch.ROI_NUM_WARPS * 32 == 64
    assert params.shared_mem == 1024  # the bound; the plugin passes the compiled kernel's own figure
    assert launch.roi_launch_params((1, 70, 1, 5, 5), (1, 1, 2, 4)).grid == (2, 5, 1)
    assert launch.roi_extra_args((2, 512, 16, 14, 7), (2, 16, 50, 4)) == (512, 16, 14, 7, 50)
    assert launch.roi_constexprs(0.0625, 7, 2) == {
        "SPATIAL_SCALE": 0.0625,
        "OUTPUT_SIZE": 7,
        "SAMPLING_RATIO": 2,
        "BLOCK_C": 16,
        "BLOCK_BINS": 64,
    }
    assert launch.roi_constexprs(0.0625, 4, 2)["BLOCK_BINS"] == 16  # 16 bins: a power of two already
    assert launch.roi_constexprs(0.0625, 1, 1)["BLOCK_BINS"] == 1


def test_graph_launch_params():
    params = launch.graph_launch_params((3, 16, 50, 4))
    assert params.grid == (3 * 15, 4, 1)
    assert params.block == 128
    assert params.shared_mem == 128
    assert launch.graph_extra_args((3, 16, 50, 4)) == (16, 50)
    assert launch.graph_launch_params((2, 1, 5, 4)).grid == (0, 1, 1)  # one frame: nothing to launch
    assert launch.graph_constexprs() == {"BLOCK_R": 16, "BLOCK_C": 64}


def test_launch_signatures_follow_the_aot_order():
    constexprs = launch.roi_constexprs(0.0625, 7, 2)
    assert list(launch.ROI_SPEC.signature(constexprs).items()) == [
        ("features", "*fp32"),
        ("boxes", "*fp32"),
        ("mask", "*i8"),
        ("channels", "i32"),
        ("frames", "i32"),
        ("height", "i32"),
        ("width", "i32"),
        ("count", "i32"),
        ("nodes", "*fp32"),
        ("SPATIAL_SCALE", "constexpr"),
        ("OUTPUT_SIZE", "constexpr"),
        ("SAMPLING_RATIO", "constexpr"),
        ("BLOCK_C", "constexpr"),
        ("BLOCK_BINS", "constexpr"),
    ]
    assert list(launch.GRAPH_SPEC.signature(launch.graph_constexprs())) == [
        "boxes",
        "mask",
        "frames",
        "count",
        "forward",
        "backward",
        "BLOCK_R",
        "BLOCK_C",
    ]


def test_launch_formulas_take_symbolic_dimensions():
    """The grid and argument formulas only use + - * // with the dimension on the left (like TensorRT's
    ShapeExpr, which has no reflected operators), so the registration can pass symbolic shapes."""

    class Dim:
        def __init__(self, text):
            self.text = text

        def _op(self, sign, other):
            return Dim(f"({self.text} {sign} {getattr(other, 'text', other)})")

        __add__ = lambda self, o: self._op("+", o)  # noqa: E731
        __sub__ = lambda self, o: self._op("-", o)  # noqa: E731
        __mul__ = lambda self, o: self._op("*", o)  # noqa: E731
        __floordiv__ = lambda self, o: self._op("//", o)  # noqa: E731

    features = [Dim(n) for n in ("B", "C", "T", "H", "W")]
    boxes = [Dim("B"), Dim("T"), Dim("N"), 4]
    grid = launch.roi_grid(features, boxes)
    assert (grid[0].text, grid[1].text, grid[2]) == ("((B * T) * N)", "((C + 15) // 16)", 1)
    assert [d.text for d in launch.roi_extra_args(features, boxes)] == ["C", "T", "H", "W", "N"]
    grid = launch.graph_grid(boxes)
    assert (grid[0].text, grid[1].text) == ("(B * (T - 1))", "((N + 15) // 16)")


@pytest.mark.parametrize(
    "call",
    [
        lambda: launch.roi_launch_params((2, 512, 16, 14), (2, 16, 50, 4)),
        lambda: launch.roi_launch_params((2, 512, 16, 14, 14), (2, 8, 50, 4)),
        lambda: launch.roi_launch_params((2, 512, 16, 14, 14), (2, 16, 50, 5)),
        lambda: launch.roi_launch_params((4096, 4096, 16, 14, 14), (4096, 16, 512, 4)),
        lambda: launch.roi_constexprs(0.0, 7, 2),
        lambda: launch.roi_constexprs(0.0625, 7, 0),
        lambda: launch.graph_launch_params((2, 0, 5, 4)),
        lambda: launch.graph_launch_params((2, 3, 5, 3)),
    ],
)
def test_launch_rejects_bad_shapes(call):
    with pytest.raises(StrgError):
        call()
