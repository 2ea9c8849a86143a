"""Tied proposal scores: the exported RPN post-processing orders them as torch does (score, then candidate
index) on onnxruntime and OpenVINO, and `--check` compares tied proposals as sets with tolerances that
grow with each output's magnitude."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torchvision.ops import box_iou

from strg_deploy.engines.compare import ATOL, RTOL, align_tied, compare_outputs, tolerance_for
from strg_deploy.engines.openvino import OpenVinoNetwork
from strg_deploy.errors import StrgError
from strg_deploy.export.rpn_postprocess import CANDIDATE_OUTPUTS, MAX_CANDIDATES, append_nms_top_n
from strg_deploy.models.proposals import _nms_top_n

IOU = 0.7


def candidate_graph(k: int) -> onnx.ModelProto:
    """A graph whose inputs are its outputs :data:`CANDIDATE_OUTPUTS` (boxes [F, K, 4], scores [F, K],
    valid [F, K]), as the traced RPN ends."""
    candidates = [
        helper.make_tensor_value_info("candidate_boxes", TensorProto.FLOAT, ["frames", k, 4]),
        helper.make_tensor_value_info("candidate_scores", TensorProto.FLOAT, ["frames", k]),
        helper.make_tensor_value_info("candidate_valid", TensorProto.BOOL, ["frames", k]),
    ]
    assert tuple(c.name for c in candidates) == CANDIDATE_OUTPUTS
    graph = helper.make_graph([], "candidates", candidates, candidates)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def tied_candidates(frames: int, k: int, seed: int):
    """boxes [F, K, 4], scores [F, K] with only four distinct values (long runs of exact ties), valid [F, K];
    every third box nearly repeats the one before it (IoU > 0.7 with the same score: NMS must keep
    the earlier one)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(frames, k, 2, generator=g) * 40
    wh = 8 + torch.rand(frames, k, 2, generator=g) * 16
    boxes = torch.cat([xy, xy + wh], dim=-1)
    boxes[:, 2::3] = boxes[:, 1::3] + 0.25  # (K a multiple of 3)
    levels = torch.tensor([0.5001009, 0.5000968, 0.75, 0.25])
    scores = levels[torch.randint(0, 4, (frames, k), generator=g)]
    scores[:, 2::3] = scores[:, 1::3]
    valid = torch.rand(frames, k, generator=g) > 0.15
    return boxes, scores, valid


def reference_order(boxes, scores, valid, n):
    """The rule spelled out: valid candidates by score (highest first), equal scores by index (lowest
    first); greedy NMS in that order; the first n survivors."""
    out = []
    for f in range(boxes.shape[0]):
        order = sorted((i for i in range(boxes.shape[1]) if valid[f, i]), key=lambda i: (-scores[f, i], i))
        kept = []
        for i in order:
            if not kept or box_iou(boxes[f, [i]], boxes[f, kept]).max() <= IOU:
                kept.append(i)
        out.append(kept[:n])
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_exported_rpn_orders_tied_scores_as_torch_does(tmp_path, seed):
    frames, k, n = 3, 60, 12
    boxes, scores, valid = tied_candidates(frames, k, seed)
    model = append_nms_top_n(candidate_graph(k), n, IOU)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "rpn.onnx")
    want = _nms_top_n(boxes, scores, valid, IOU, n)
    feeds = dict(zip(CANDIDATE_OUTPUTS, (boxes.numpy(), scores.numpy(), valid.numpy()), strict=True))
    # the torch side follows the rule: score, then candidate index, in NMS and in the output order
    for f, kept in enumerate(reference_order(boxes, scores, valid, n)):
        assert int(want[2][f].sum()) == len(kept)
        torch.testing.assert_close(want[0][f, : len(kept)], boxes[f, kept], rtol=0, atol=0)
    assert any(len(set(s.tolist())) < int(m.sum()) for s, m in zip(want[1], want[2], strict=True))  # ties
    onnxruntime = ort.InferenceSession(str(tmp_path / "rpn.onnx")).run(None, feeds)
    openvino = OpenVinoNetwork(tmp_path / "rpn.onnx").run(feeds)
    for got in (onnxruntime, [openvino[name] for name in ("boxes", "scores", "mask")]):
        for have, expected in zip(got, want, strict=True):
            np.testing.assert_array_equal(have, expected.numpy())  # same order, not only the same set


def test_the_ranking_refuses_more_candidates_than_float32_keys_hold():
    with pytest.raises(StrgError, match=f"handles at most {MAX_CANDIDATES}"):
        append_nms_top_n(candidate_graph(MAX_CANDIDATES + 1), 4, IOU)


# ---------------------------------------------------------------------------------------------------
# The comparison of --check


def proposals(boxes, scores, mask) -> dict[str, np.ndarray]:
    return {
        "boxes": np.asarray(boxes, np.float32)[None],
        "scores": np.asarray(scores, np.float32)[None],
        "mask": np.asarray(mask, bool)[None],
    }


def test_tied_proposals_compare_as_sets_and_others_in_order():
    a, b, c = [1, 1, 20, 20], [30, 30, 60, 60], [5, 40, 25, 60]
    torch_side = proposals([a, b, c, [0] * 4], [0.5000968, 0.50009674, 0.3, 0], [1, 1, 1, 0])
    swapped = proposals([b, a, c, [0] * 4], [0.5000968, 0.5000968, 0.3, 0], [1, 1, 1, 0])  # a float32 step
    aligned, moved = align_tied(torch_side, swapped)
    assert moved == 2
    np.testing.assert_array_equal(aligned["boxes"], torch_side["boxes"])
    row = compare_outputs("rpn", "openvino", "random", torch_side, swapped, ATOL, RTOL, 1e-6)
    assert row.passed and row.reordered == 2 and row.max_abs < 1e-7
    # untied proposals in another order are a difference, not a tie
    crossed = proposals([a, c, b, [0] * 4], [0.5000968, 0.3, 0.50009674, 0], [1, 1, 1, 0])
    row = compare_outputs("rpn", "openvino", "random", torch_side, crossed, ATOL, RTOL, 1e-6)
    assert not row.passed and row.reordered == 0 and row.output == "boxes" and row.max_abs == 35
    assert align_tied(torch_side, torch_side)[1] == 0


def test_tolerance_grows_with_the_outputs_magnitude_and_is_recorded():
    features = np.linspace(-110, 110, 1000, dtype=np.float32).reshape(1, 10, 100)
    close = features + np.float32(1.4e-4)  # 1e-6 relative: what float32 sums differ by between runtimes
    row = compare_outputs(
        "backbone", "openvino", "random", {"features": features}, {"features": close}, ATOL, RTOL, 0
    )
    assert row.passed and row.output == "features"
    assert row.tolerance == pytest.approx(ATOL + RTOL * 110) and row.tolerance == tolerance_for(features)
    assert row.max_abs > ATOL and row.max_abs == pytest.approx(1.4e-4, rel=0.1)  # over an absolute 1e-4
    far = features + np.float32(3e-3)
    assert not compare_outputs(
        "backbone", "openvino", "random", {"features": features}, {"features": far}, ATOL, RTOL, 0
    ).passed
    small = {"logits": np.array([[0.1, -0.2]], np.float32)}
    shifted = {"logits": small["logits"] + np.float32(2e-4)}
    row = compare_outputs("head", "onnxruntime", "random", small, shifted, ATOL, RTOL, 0)
    assert not row.passed and row.tolerance == pytest.approx(ATOL + RTOL * 0.2)
    nan = {"logits": np.array([[np.nan, 0.0]], np.float32)}
    assert not compare_outputs("head", "onnxruntime", "random", small, nan, ATOL, RTOL, 0).passed
