"""Confusion-matrix scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from cosa_sdk.errors import CosaInputError
from cosa_sdk.training.evaluation.evaluate import format_scores
from cosa_sdk.training.evaluation.metrics import ConfusionMatrix, image_miou, miou_scores


def test_matrix_matches_sklearn_and_ignores_255() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (2, 10, 10))
    gt[0, :2] = 255
    pred = rng.integers(0, 4, (2, 10, 10))
    cm = ConfusionMatrix(4)
    for g, p in zip(gt, pred):
        cm.update(torch.from_numpy(p), g)
    keep = gt != 255
    np.testing.assert_array_equal(cm.matrix, confusion_matrix(gt[keep], pred[keep], labels=range(4)))


def test_scores_exclude_classes_absent_from_gt() -> None:
    cm = ConfusionMatrix(3).update(np.array([0, 0, 1, 2]), np.array([0, 0, 1, 1]))
    s = cm.scores()
    assert s["per_class_iou"][0] == 1.0 and s["per_class_iou"][1] == pytest.approx(0.5)
    assert s["per_class_iou"][2] == 0.0  # predicted but never in GT: IoU 0, not in the mean
    assert s["miou"] == pytest.approx(0.75)
    assert s["pixel_acc"] == pytest.approx(0.75)
    assert math.isnan(miou_scores(np.zeros((2, 2)))["per_class_iou"][0])


def test_merge_equals_one_matrix_over_all_images() -> None:
    a = ConfusionMatrix(3).update(np.array([0, 1]), np.array([0, 2]))
    b = ConfusionMatrix(3).update(np.array([2, 2]), np.array([2, 1]))
    both = ConfusionMatrix(3).update(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]))
    np.testing.assert_array_equal(a.merge(b).matrix, both.matrix)
    with pytest.raises(CosaInputError):
        a.merge(ConfusionMatrix(4))


def test_bad_predictions_are_explained() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(CosaInputError, match="outside"):
        cm.update(np.array([0, 5]), np.array([0, 1]))
    with pytest.raises(CosaInputError, match="same number"):
        cm.update(np.zeros(3, dtype=int), np.zeros(4, dtype=int))
    with pytest.raises(CosaInputError, match="integer"):
        cm.update(np.array([0.5]), np.array([0]))


def test_score_table_lists_classes_protocols_and_means() -> None:
    scores = {
        "per_class_iou": {"background": 90.0, "cat": None, "dog": 50.0},
        "per_class_iou_gt_filtered": {"background": 91.0, "cat": None, "dog": 55.5},
        "per_class_cam_iou": {"background": 80.0, "cat": None, "dog": 40.0},
        "seg_miou": 70.0,
        "seg_miou_gt_filtered": 73.25,
        "cam_miou": 60.0,
        "num_images": 3,
    }
    lines = format_scores(scores).splitlines()
    assert lines[1].split() == ["background", "90.00", "91.00", "80.00"]
    assert lines[2].split() == ["cat", "-", "-", "-"]
    assert lines[4].split() == ["mIoU", "70.00", "73.25", "60.00"]


def test_image_miou_counts_hallucinated_classes_and_ignores_255() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 255, 255]])
    right = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])  # class 2 only on ignored pixels
    assert image_miou(right, gt, 3) == 1.0
    wrong = np.array([[0, 2, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]])  # one background pixel called class 2
    # background 3/4, class 1 4/4, class 2 (absent from the GT) 0/1: a per-image score must see it
    assert image_miou(wrong, gt, 3) == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    assert math.isnan(image_miou(right, np.full_like(gt, 255), 3))


def test_score_table_adds_the_per_image_line_when_present() -> None:
    scores = {
        "per_class_iou": [90.0, 50.0],
        "per_class_iou_gt_filtered": [91.0, 55.0],
        "per_class_cam_iou": None,
        "seg_miou": 70.0,
        "seg_miou_gt_filtered": 73.0,
        "cam_miou": None,
        "image_miou_median": 64.5,
        "images_right": 62.5,
        "num_images": 8,
    }
    text = format_scores(scores)
    assert "median mIoU 64.5; 62.5 % of the images reach 50" in text
