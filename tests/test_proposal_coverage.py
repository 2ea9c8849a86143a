"""benchmarks/proposal_coverage.py: recall of actors and distractors, both actors covered, redundancy."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def cov(load_benchmark):
    return load_benchmark("proposal_coverage")


def test_pairwise_iou(cov):
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 20]], dtype=np.float32)
    b = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10]], dtype=np.float32)
    np.testing.assert_allclose(cov.pairwise_iou(a, b), [[1, 0, 50 / 150], [0.5, 0, 50 / 250]], rtol=1e-6)


def test_coverage_counts_actors_distractors_and_both(cov):
    actor_a, actor_b, distractor = [0, 0, 10, 10], [50, 50, 60, 60], [80, 0, 90, 10]
    truth = np.array([actor_a, actor_b, distractor], dtype=np.float32)
    actor = np.array([True, True, False])
    counts = cov.Coverage((1, 2, 4))
    # frame 1: best on A, second a near-copy of A (redundant), third on B, fourth on the distractor
    near_a = [0, 0, 10, 11]
    counts.add(truth, actor, np.array([actor_a, near_a, actor_b, distractor], dtype=np.float32))
    # frame 2: only B visible, one proposal on it; frame 3: no proposal at all
    counts.add(truth[1:2], actor[1:2], np.array([actor_b], dtype=np.float32))
    counts.add(truth[:2], actor[:2], np.zeros((0, 4), dtype=np.float32))
    figures = counts.figures()
    assert counts.frames == 3 and counts.frames_with_both == 2
    assert counts.boxes == {"actors": 5, "distractors": 1}
    assert figures["recall actors@1"] == pytest.approx(2 / 5)  # A in frame 1, B in frame 2
    assert figures["recall actors@2"] == pytest.approx(2 / 5)  # the second best adds nothing new
    assert figures["recall actors@4"] == pytest.approx(3 / 5)
    assert figures["recall distractors@2"] == 0 and figures["recall distractors@4"] == 1
    assert figures["both actors@2"] == 0 and figures["both actors@4"] == pytest.approx(1 / 2)
    assert figures["overlap@1"] is None
    assert figures["overlap@2"] == pytest.approx(100 / 110)  # frame 1 only: A and its near-copy
