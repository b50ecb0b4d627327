"""evaluate(): the SDK's post-processing variants are scored through the same functions the SDK runs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cosa_sdk.training.evaluation.evaluate import VARIANTS, evaluate  # noqa: E402
from cosa_sdk.training.model.network import CoSANetwork  # noqa: E402

NUM_CLASSES = 2
SIZE = 32


@pytest.fixture(scope="module")
def network() -> CoSANetwork:
    torch.manual_seed(0)
    return CoSANetwork(backbone="vit_tiny_patch16_224", num_classes=NUM_CLASSES, decoder_channels=8).eval()


def _samples(count: int = 2) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        raw = rng.integers(0, 255, size=(SIZE + 8, SIZE, 3), dtype=np.uint8)
        mask = np.zeros(raw.shape[:2], dtype=np.int64)
        mask[5:20, 4:14] = 1
        mask[22:34, 16:30] = 2
        image = torch.from_numpy(raw).permute(2, 0, 1).float().div(255)[None]
        image = torch.nn.functional.interpolate(image, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]
        out.append({"image": image, "mask": mask, "labels": np.array([1.0, 1.0]), "raw": torch.from_numpy(raw)})
    return out


def _classifier_says(network: CoSANetwork, monkeypatch, value: float) -> None:
    """Make the image-level classifier score every class `value` (positive: present)."""
    forward = network.forward

    def fixed(images):
        output = forward(images)
        return output._replace(logits=torch.full_like(output.logits, value))

    monkeypatch.setattr(network, "forward", fixed)


def test_every_variant_is_scored_beside_the_plain_argmax(network) -> None:
    scores = evaluate(network, _samples(), num_classes=NUM_CLASSES, with_cams=False, variants=VARIANTS)
    assert set(scores["variants"]) == set(VARIANTS)
    for variant in scores["variants"].values():
        assert 0.0 <= variant["seg_miou"] <= 100.0
        assert len(variant["per_class_iou"]) == NUM_CLASSES + 1
    assert "variants" not in evaluate(network, _samples(), num_classes=NUM_CLASSES, with_cams=False)


def test_unknown_variant_is_refused(network) -> None:
    with pytest.raises(ValueError, match="drop_absent"):
        evaluate(network, _samples(1), num_classes=NUM_CLASSES, variants=["crf"])


def test_dropping_absent_classes_follows_the_classifier(network, monkeypatch) -> None:
    plain = evaluate(network, _samples(), num_classes=NUM_CLASSES, with_cams=False, variants=VARIANTS)
    _classifier_says(network, monkeypatch, 5.0)  # every class present: nothing to drop
    kept = evaluate(network, _samples(), num_classes=NUM_CLASSES, with_cams=False, variants=VARIANTS)
    assert kept["variants"]["drop_absent"]["per_class_iou"] == plain["per_class_iou"]
    _classifier_says(network, monkeypatch, -5.0)  # every class absent: background everywhere
    dropped = evaluate(network, _samples(), num_classes=NUM_CLASSES, with_cams=False, variants=VARIANTS)
    for name in ("drop_absent", "edge_aware+drop_absent"):
        assert dropped["variants"][name]["per_class_iou"][1:] == [0.0, 0.0], name
    assert dropped["seg_miou"] == plain["seg_miou"]  # the plain score never looks at the classifier
