"""Confusion-matrix scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from cosa_sdk.errors import CosaInputError
from cosa_sdk.training.metrics import ConfusionMatrix, format_iou_table, miou_scores


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


def test_format_table_lists_classes_and_mean() -> None:
    scores = {"per_class_iou": [0.9, float("nan"), 0.5], "miou": 0.7, "pixel_acc": 0.8}
    table = format_iou_table(["background", "cat", "dog"], scores)
    assert "90.00" in table and "50.00" in table and "70.00" in table
    assert table.splitlines()[3].split()[-1] == "-"
