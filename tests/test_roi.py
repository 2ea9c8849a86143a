"""RoIAlign per feature frame with a max over the bins."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from strg_deploy.errors import StrgError
from strg_deploy.models.roi import FrameRoIAlignMax, frame_roi_align_max


def bright_patch_features() -> torch.Tensor:
    """features [2, 3, 4, 8, 8]: zero except 7.0 on channel 1, time 2, rows 2..4, columns 5..7 (clip 1)."""
    features = torch.zeros(2, 3, 4, 8, 8)
    features[1, 1, 2, 2:5, 5:8] = 7.0
    return features


def test_bright_patch_lands_on_the_covering_node_at_its_time_step():
    features = bright_patch_features()
    boxes = torch.zeros(2, 4, 3, 4)
    # Feature coordinates (spatial scale 1): box 1 covers columns 5..7 and rows 2..4 (cells 5..7 span [5, 8)).
    boxes[:, :, 0] = torch.tensor([0.0, 0.0, 3.0, 3.0])
    boxes[:, :, 1] = torch.tensor([5.0, 2.0, 8.0, 5.0])
    boxes[:, :, 2] = torch.tensor([0.0, 5.0, 4.0, 8.0])
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    nodes = frame_roi_align_max(features, boxes, mask, spatial_scale=1.0, output_size=7, sampling_ratio=2)
    assert nodes.shape == (2, 4, 3, 3)
    assert nodes[1, 2, 1, 1].item() == pytest.approx(7.0, rel=1e-6)  # float rounding of the bin weights
    others = nodes.clone()
    others[1, 2, 1, 1] = 0.0
    assert others.abs().max() < 1e-6
    # A max over the bins, not their average: the border bins only half cover the patch.
    bins = roi_align(
        features[1, :, 2][None], torch.tensor([[0.0, 5, 2, 8, 5]]), 7, 1.0, sampling_ratio=2, aligned=True
    )
    assert bins[0, 1].mean() < 7.0 - 0.1


def test_spatial_scale_one_sixteenth_maps_input_pixels_to_the_patch():
    features = bright_patch_features()
    boxes = torch.zeros(2, 4, 2, 4)
    boxes[:, :, 0] = torch.tensor([80.0, 32.0, 128.0, 80.0])  # input pixels of columns 5..7, rows 2..4
    boxes[:, :, 1] = torch.tensor([40.0, 16.0, 64.0, 40.0])  # the same box read at scale 1/8: misses it
    mask = torch.ones(2, 4, 2, dtype=torch.bool)
    layer = FrameRoIAlignMax(spatial_scale=1 / 16, output_size=7, sampling_ratio=2)
    nodes = layer(features, boxes, mask)
    assert nodes[1, 2, 0, 1].item() == pytest.approx(7.0, rel=1e-6)
    assert nodes[1, 2, 1].abs().max() < 1e-6
    assert nodes[0].abs().max() == 0 and nodes[1, [0, 1, 3]].abs().max() == 0
    assert "spatial_scale=0.0625" in repr(layer)


def test_matches_torchvision_per_frame_reference_and_zeroes_padded_nodes():
    torch.manual_seed(0)
    features = torch.randn(2, 5, 3, 6, 7)
    corner = torch.rand(2, 3, 4, 2) * 60
    boxes = torch.cat([corner, corner + torch.rand(2, 3, 4, 2) * 40 + 2], dim=-1)
    mask = torch.rand(2, 3, 4) > 0.3
    boxes_garbage = torch.where(mask[..., None], boxes, torch.tensor([1e9, -3e8, -5.0, 7e7]))
    nodes = frame_roi_align_max(features, boxes_garbage, mask, 1 / 16, 3, 2)
    for b in range(2):
        for t in range(3):
            bins = roi_align(
                features[b, :, t][None], [boxes[b, t]], 3, 1 / 16, sampling_ratio=2, aligned=True
            )
            expected = bins.amax(dim=(2, 3)) * mask[b, t, :, None]
            torch.testing.assert_close(nodes[b, t], expected)
    assert (nodes[~mask] == 0).all()


@pytest.mark.parametrize(
    ("features", "boxes", "mask"),
    [
        ((2, 5, 3, 6, 6), (2, 3, 4, 4), (2, 3)),  # mask misses N
        ((2, 5, 3, 6, 6), (2, 2, 4, 4), (2, 2, 4)),  # boxes for 2 frames, features have 3
        ((2, 5, 3, 6, 6), (1, 3, 4, 4), (1, 3, 4)),  # batch sizes disagree
        ((2, 5, 3, 6, 6), (2, 3, 4, 5), (2, 3, 4)),  # 5 coordinates per box
        ((5, 3, 6, 6), (2, 3, 4, 4), (2, 3, 4)),  # features without batch axis
    ],
)
def test_shape_errors_name_expected_and_actual(features, boxes, mask):
    with pytest.raises(StrgError, match="expected shape"):
        frame_roi_align_max(
            torch.zeros(features), torch.zeros(boxes), torch.zeros(mask, dtype=torch.bool), 1.0, 7, 2
        )


def test_mask_must_be_bool():
    with pytest.raises(StrgError, match="bool"):
        frame_roi_align_max(
            torch.zeros(1, 2, 3, 4, 4), torch.zeros(1, 3, 2, 4), torch.ones(1, 3, 2), 1.0, 7, 2
        )
