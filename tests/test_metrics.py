"""Evaluation metrics: per-video averaging, top-k, per-class accuracy and mAP, checked against sklearn."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from strg_deploy.errors import StrgError
from strg_deploy.train.metrics import (
    EvalResult,
    VideoScores,
    average_precision,
    evaluate,
    mean_average_precision,
    mean_class_accuracy,
    per_class_accuracy,
    topk_accuracy,
)

skm = pytest.importorskip("sklearn.metrics")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------------
# per-video averaging


def test_views_average_per_video_by_hand():
    acc = VideoScores()
    acc.add(np.array([7, 3, 7]), np.array([[1.0, 0.0], [0.2, 0.8], [0.0, 1.0]]), targets=np.array([0, 1, 0]))
    acc.add(np.array([3, 7]), np.array([[0.4, 0.6], [0.5, 0.5]]), targets=np.array([1, 0]))
    ids, scores = acc.averaged()
    np.testing.assert_array_equal(ids, [3, 7])
    np.testing.assert_allclose(scores, [[0.3, 0.7], [0.5, 0.5]])
    np.testing.assert_array_equal(acc.view_counts(), [2, 3])
    np.testing.assert_array_equal(acc.targets(), [1, 0])
    assert len(acc) == 2 and acc.num_classes == 2


def test_averaging_changes_the_decision_compared_with_views():
    # video 0: two weak views for class 1, one confident view for class 0 -> the average picks class 0
    acc = VideoScores()
    acc.add(np.array([0, 0, 0]), np.array([[0.4, 0.6], [0.45, 0.55], [0.95, 0.05]]))
    _, scores = acc.averaged()
    assert topk_accuracy(scores, np.array([0]), ks=(1,))[1] == 1.0
    per_view = np.array([[0.4, 0.6], [0.45, 0.55], [0.95, 0.05]])
    assert topk_accuracy(per_view, np.array([0, 0, 0]), ks=(1,))[1] == pytest.approx(1 / 3)


def test_multi_label_view_targets_unite_per_video():
    acc = VideoScores()
    acc.add(np.array([5, 5, 2]), np.zeros((3, 3)), targets=np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]]))
    np.testing.assert_array_equal(acc.targets(), [[False, True, False], [True, False, True]])


def test_state_merge_equals_one_accumulator():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, size=40)
    scores = rng.random((40, 4))
    labels = ids % 4
    whole = VideoScores()
    whole.add(ids, scores, labels)
    rank0, rank1, merged = VideoScores(), VideoScores(), VideoScores()
    rank0.add(ids[:25], scores[:25], labels[:25])
    rank1.add(ids[25:], scores[25:], labels[25:])
    merged.merge_state(rank0.state())
    merged.merge_state(rank1.state())
    for a, b in zip(whole.averaged(), merged.averaged(), strict=True):
        np.testing.assert_allclose(a, b)
    np.testing.assert_array_equal(whole.view_counts(), merged.view_counts())
    np.testing.assert_array_equal(whole.targets(), merged.targets())


def test_video_scores_errors():
    acc = VideoScores()
    with pytest.raises(StrgError, match="nothing to evaluate"):
        acc.averaged()
    with pytest.raises(StrgError, match=r"expected shape \[2, C\], got \[3, 4\]"):
        acc.add(np.array([0, 1]), np.zeros((3, 4)))
    acc.add(np.array([0, 1]), np.zeros((2, 4)), targets=np.array([0, 1]))
    with pytest.raises(StrgError, match=r"expected shape \[1, 4\], got \[1, 5\]"):
        acc.add(np.array([0]), np.zeros((1, 5)), targets=np.array([0]))
    with pytest.raises(StrgError, match="same way"):
        acc.add(np.array([0]), np.zeros((1, 4)))
    with pytest.raises(StrgError, match="NaN"):
        acc.add(np.array([0]), np.full((1, 4), np.nan), targets=np.array([0]))
    acc.add(np.array([0]), np.zeros((1, 4)), targets=np.array([2]))
    with pytest.raises(StrgError, match="disagree"):
        acc.targets()
    with pytest.raises(StrgError, match="no targets"):
        bare = VideoScores()
        bare.add(np.array([0]), np.zeros((1, 2)))
        bare.targets()


# ----------------------------------------------------------------------------------------------------
# single-label metrics


def test_topk_matches_sklearn_without_ties():
    rng = np.random.default_rng(1)
    scores = _softmax(rng.normal(size=(200, 10)))
    labels = rng.integers(0, 10, size=200)
    got = topk_accuracy(scores, labels, ks=(1, 3, 5))
    for k in (1, 3, 5):
        expected = skm.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(10))
        assert got[k] == pytest.approx(expected, abs=1e-12)
    assert got[1] == pytest.approx(skm.accuracy_score(labels, scores.argmax(axis=1)))


def test_topk_with_ties_is_sklearn_averaged_over_tie_breaking_orders():
    # sklearn breaks ties by class index; averaging it over all class orders gives the expected
    # accuracy under random tie-breaking, which topk_accuracy computes directly.
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 3, size=(60, 4)).astype(np.float64)
    labels = rng.integers(0, 4, size=60)
    got = topk_accuracy(scores, labels, ks=(1, 2, 3))
    for k in (1, 2, 3):
        runs = []
        for perm in itertools.permutations(range(4)):
            perm = np.array(perm)
            inverse = np.argsort(perm)  # new index of each old class
            runs.append(skm.top_k_accuracy_score(inverse[labels], scores[:, perm], k=k, labels=np.arange(4)))
        assert got[k] == pytest.approx(np.mean(runs), abs=1e-12)


def test_constant_scores_give_chance():
    labels = np.array([0, 1, 2, 3, 1, 2])
    got = topk_accuracy(np.zeros((6, 4)), labels, ks=(1, 2))
    assert got == {1: pytest.approx(0.25), 2: pytest.approx(0.5)}


def test_topk_caps_k_at_the_number_of_classes():
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
    labels = np.array([2, 2])
    got = topk_accuracy(scores, labels)
    assert got == {1: 0.0, 5: 1.0}
    assert topk_accuracy(scores, labels, ks=(2,)) == {2: 0.5}


def test_per_class_accuracy_matches_sklearn_recall_and_nan_for_empty_classes():
    rng = np.random.default_rng(3)
    scores = _softmax(rng.normal(size=(80, 6)))
    labels = rng.integers(0, 5, size=80)  # class 5 has no videos
    got = per_class_accuracy(scores, labels, 6)
    assert math.isnan(got[5])
    expected = skm.recall_score(labels, scores.argmax(axis=1), labels=np.arange(5), average=None)
    np.testing.assert_allclose(got[:5], expected)
    assert mean_class_accuracy(scores, labels, 6) == pytest.approx(expected.mean())
    # with every predicted class also present in the labels, balanced accuracy is the same number
    clipped = scores[:, :5]
    assert mean_class_accuracy(clipped, labels) == pytest.approx(
        skm.balanced_accuracy_score(labels, clipped.argmax(axis=1))
    )


def test_single_label_input_errors():
    with pytest.raises(StrgError, match="0 videos"):
        topk_accuracy(np.zeros((0, 5)), np.zeros(0, np.int64))
    with pytest.raises(StrgError, match=r"expected shape \[3\], got \[2\]"):
        topk_accuracy(np.zeros((3, 5)), np.array([0, 1]))
    with pytest.raises(StrgError, match=r"\[0, 5\)"):
        topk_accuracy(np.zeros((2, 5)), np.array([0, 5]))
    with pytest.raises(StrgError, match="integer"):
        topk_accuracy(np.zeros((2, 5)), np.array([0.0, 1.0]))
    with pytest.raises(StrgError, match=r"expected shape \[V, C\]"):
        topk_accuracy(np.zeros(5), np.array([0]))
    with pytest.raises(StrgError, match=r"\[V, 4\]"):
        per_class_accuracy(np.zeros((2, 5)), np.array([0, 1]), 4)


# ----------------------------------------------------------------------------------------------------
# multi-label metrics


@pytest.mark.parametrize("levels", [None, 4])
def test_average_precision_matches_sklearn(levels):
    rng = np.random.default_rng(4)
    for _ in range(30):
        n = int(rng.integers(1, 40))
        scores = rng.random(n) if levels is None else rng.integers(0, levels, n) / levels  # ties
        targets = rng.random(n) < rng.uniform(0.1, 0.9)
        if not targets.any():
            targets[rng.integers(0, n)] = True
        assert average_precision(scores, targets) == pytest.approx(
            skm.average_precision_score(targets, scores), abs=1e-12
        )


def test_average_precision_by_hand_with_a_tie():
    # sorted: 0.9 (+), then 0.5 tied between a positive and a negative, then 0.1 (+)
    # thresholds 0.9: R=1/3 P=1; 0.5: R=2/3 P=2/3; 0.1: R=1 P=3/4
    scores = np.array([0.5, 0.9, 0.1, 0.5])
    targets = np.array([1, 1, 1, 0])
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 4)
    assert average_precision(scores, targets) == pytest.approx(expected)
    assert math.isnan(average_precision(scores, np.zeros(4)))


def test_map_charades_protocol_leaves_out_classes_without_positives():
    rng = np.random.default_rng(5)
    scores = rng.random((50, 7))
    scores[:, 1] = np.round(scores[:, 1], 1)  # ties
    targets = rng.random((50, 7)) < 0.3
    targets[:, 2] = False
    targets[:, 4] = False
    mean_ap, per_class = mean_average_precision(scores, targets.astype(np.int64))
    assert np.isnan(per_class[[2, 4]]).all()
    keep = [0, 1, 3, 5, 6]
    expected = [skm.average_precision_score(targets[:, c], scores[:, c]) for c in keep]
    np.testing.assert_allclose(per_class[keep], expected, atol=1e-12)
    assert mean_ap == pytest.approx(np.mean(expected))
    assert mean_ap == pytest.approx(skm.average_precision_score(targets[:, keep], scores[:, keep]))
    nothing, _ = mean_average_precision(scores, np.zeros((50, 7)))
    assert math.isnan(nothing)


def test_multi_label_input_errors():
    with pytest.raises(StrgError, match="0 videos"):
        mean_average_precision(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(StrgError, match=r"expected shape \[2, 3\], got \[2, 4\]"):
        mean_average_precision(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(StrgError, match="0 and 1"):
        mean_average_precision(np.zeros((2, 3)), np.full((2, 3), 0.5))
    with pytest.raises(StrgError, match=r"expected shape \[V\]"):
        average_precision(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(StrgError, match="0 videos"):
        average_precision(np.zeros(0), np.zeros(0))


# ----------------------------------------------------------------------------------------------------
# the report


def test_evaluate_single_label():
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3]])
    labels = np.array([0, 2, 1, 1])
    result = evaluate(scores, labels, multi_label=False, class_names=["open", "close", "push"])
    assert isinstance(result, EvalResult)
    assert result.headline_name == "top1" and result.headline == pytest.approx(0.75)
    assert result.top1 == pytest.approx(0.75) and result.top5 == 1.0
    assert result.per_class == pytest.approx((1.0, 0.5, 1.0))
    assert result.mean_class_accuracy == pytest.approx(2.5 / 3)
    assert result.class_counts == (1, 2, 1) and result.num_videos == 4 and result.map is None
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["per_class"] == {"open": 1.0, "close": 0.5, "push": 1.0}
    assert d["top1"] == pytest.approx(0.75) and "map" not in d
    with pytest.raises(AttributeError):
        result.top1 = 0.0  # frozen


def test_evaluate_multi_label_is_json_ready_with_nan_classes():
    rng = np.random.default_rng(6)
    scores = rng.random((20, 4))
    targets = (rng.random((20, 4)) < 0.5).astype(np.int64)
    targets[:, 3] = 0
    result = evaluate(scores, targets, multi_label=True, class_names=["a", "b", "c", "d"])
    assert result.headline_name == "mAP" and result.top1 is None
    assert result.headline == pytest.approx(skm.average_precision_score(targets[:, :3], scores[:, :3]))
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["per_class"]["d"] is None and d["class_counts"]["d"] == 0
    assert d["map"] == pytest.approx(result.map) and d["headline"] == pytest.approx(result.map)


def test_evaluate_errors_and_default_names():
    assert evaluate(np.eye(3), np.arange(3), multi_label=False).class_names == ("0", "1", "2")
    with pytest.raises(StrgError, match="expected 3 names"):
        evaluate(np.eye(3), np.arange(3), multi_label=False, class_names=["a", "b"])
    with pytest.raises(StrgError, match="0 videos"):
        evaluate(np.zeros((0, 3)), np.zeros(0, np.int64), multi_label=False)


def test_end_to_end_views_to_report():
    rng = np.random.default_rng(7)
    videos, views, classes = 12, 3, 5
    labels = rng.integers(0, classes, size=videos)
    acc = VideoScores()
    view_ids = rng.permutation(np.repeat(np.arange(videos), views))
    logits = rng.normal(size=(videos * views, classes))
    probs = _softmax(logits)
    for start in range(0, len(view_ids), 8):  # views of a video spread over shuffled batches
        idx = view_ids[start : start + 8]
        acc.add(idx, probs[start : start + 8], labels[idx])
    ids, averaged = acc.averaged()
    expected = np.stack([probs[view_ids == v].mean(axis=0) for v in range(videos)])
    np.testing.assert_allclose(averaged, expected)
    result = evaluate(averaged, acc.targets(), multi_label=False)
    assert result.top1 == pytest.approx(skm.accuracy_score(labels, expected.argmax(axis=1)))
