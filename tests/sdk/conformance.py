"""What every inference backend must do, written once: `BackendConformance`, in the manner of
segmentation_models_pytorch's `BaseModelTester`.

A variant is a subclass in tests/sdk/test_backends.py named `Test...` that sets class attributes (the
backend's name, the bundle it runs, its device, how close it must stay to the fp32 reference) and may
override the hooks below (`requirements`, `make_bundle`, `sample`, `reference_scores`); it inherits every
`test_*` method here, so each check runs once per backend. Checks that only make sense for one backend go
into its subclass.

The reference is ONNX Runtime fp32 on the same bundle, except for the fp32 variant itself, whose reference is
the toy colour model computed in torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from toy_bundle import cached_toy_bundle

import cosa_sdk
from cosa_sdk.errors import CosaConfigError, CosaInputError

from .scenes import blocks


class BackendConformance:
    backend: ClassVar[str] = ""  # the name given to cosa_sdk.load(bundle, backend=...)
    bundle_options: ClassVar[dict[str, Any]] = {}  # cached_toy_bundle(**bundle_options) is the bundle it runs
    device: ClassVar[str | None] = None  # the device it must report; None: whatever the runtime really got
    sample_size: ClassVar[tuple[int, int]] = (333, 517)  # the `blocks` image the agreement is measured on
    min_agreement: ClassVar[float] = 0.999  # share of mask pixels equal to the reference's (strictly above)
    scores_atol: ClassVar[float | None] = None  # scores within this of the reference's; None: masks only
    batch_mask_agreement: ClassVar[float] = 1.0  # a batch's masks against the same images one by one (1: equal)
    batch_scores_atol: ClassVar[float] = 1e-6  # and its scores

    # -- hooks ----------------------------------------------------------------------------------------
    def requirements(self) -> None:
        """pytest.skip when this backend cannot run here (missing package, no GPU)."""

    def make_bundle(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        """The bundle this variant opens (shared by all its tests: do not modify it)."""
        return cached_toy_bundle(**self.bundle_options)

    def sample(self) -> np.ndarray:
        """The image the agreement with the reference is measured on."""
        return blocks(*self.sample_size)

    def reference_scores(self, bundle: Path, image: np.ndarray) -> np.ndarray:
        """Class probabilities (K x H x W) the backend must agree with: ONNX Runtime fp32 on the same bundle."""
        with cosa_sdk.load(bundle, backend="onnxruntime") as fp32:
            return fp32.segment(image, return_scores=True).scores

    # -- fixtures -------------------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    def bundle(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        self.requirements()
        return self.make_bundle(tmp_path_factory)

    @pytest.fixture(scope="class")
    def seg(self, bundle: Path) -> Iterator[cosa_sdk.Segmenter]:
        with cosa_sdk.load(bundle, backend=self.backend) as segmenter:
            yield segmenter

    # -- the checks -----------------------------------------------------------------------------------
    def test_opens_under_its_name(self, seg: cosa_sdk.Segmenter) -> None:
        assert seg.backend == self.backend
        if self.device is not None:
            assert seg.device == self.device
        info = seg.info()
        assert info["backend"] == self.backend and info["device"] == seg.device
        json.dumps(info)

    @pytest.mark.parametrize("shape", [(1, 1), (3, 700), (517, 333), (64, 64)])
    def test_mask_has_the_image_size_and_class_labels(self, seg: cosa_sdk.Segmenter, shape: tuple[int, int]) -> None:
        result = seg.segment(blocks(*shape))
        assert result.mask.shape == shape and result.mask.dtype == np.uint8
        assert int(result.mask.max()) < len(seg.classes)
        assert result.backend == self.backend and result.classes == seg.classes

    def test_scores_are_probabilities(self, seg: cosa_sdk.Segmenter) -> None:
        image = blocks(97, 131)
        result = seg.segment(image, return_scores=True)
        assert result.scores is not None and result.scores.shape == (len(seg.classes), 97, 131)
        assert result.scores.dtype == np.float32
        np.testing.assert_allclose(result.scores.sum(0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(result.scores.argmax(0), result.mask)
        assert seg.segment(image).scores is None

    def test_agrees_with_the_reference(self, seg: cosa_sdk.Segmenter, bundle: Path) -> None:
        image = self.sample()
        result = seg.segment(image, return_scores=True)
        reference = self.reference_scores(bundle, image)
        assert result.backend == self.backend
        assert (result.mask == reference.argmax(0)).mean() > self.min_agreement
        if self.scores_atol is not None:
            np.testing.assert_allclose(result.scores, reference, atol=self.scores_atol)

    def test_batches_equal_one_by_one(self, seg: cosa_sdk.Segmenter) -> None:
        images = [blocks(40 + 13 * i, 90 - 7 * i, seed=i) for i in range(5)]
        batched = seg.segment(images, batch_size=2, return_scores=True)
        assert isinstance(batched, list) and len(batched) == 5
        for image, result in zip(images, batched):
            single = seg.segment(image, return_scores=True)
            if self.batch_mask_agreement == 1.0:
                np.testing.assert_array_equal(result.mask, single.mask)
            else:
                assert (result.mask == single.mask).mean() >= self.batch_mask_agreement
            np.testing.assert_allclose(result.scores, single.scores, atol=self.batch_scores_atol)
        stacked = np.stack([blocks(30, 30, seed=i) for i in range(3)])
        assert len(seg.segment(stacked)) == 3  # a 4-D array is a batch
        assert seg.segment([]) == []
        assert len(seg.segment(tuple(images[:2]))) == 2

    def test_bad_input_is_a_clear_error(self, seg: cosa_sdk.Segmenter, tmp_path: Path) -> None:
        with pytest.raises(CosaInputError, match="image 1 of the batch has dtype float64"):
            seg.segment([blocks(10, 10), np.zeros((10, 10, 3))])
        with pytest.raises(CosaInputError, match=r"missing\.png"):
            seg.segment([blocks(10, 10), tmp_path / "missing.png"])
        with pytest.raises(CosaInputError, match="max_pixels"):
            seg.segment(blocks(100, 100), max_pixels=5000)
        with pytest.raises(CosaInputError, match="batch_size"):
            seg.segment([blocks(10, 10)], batch_size=0)
        with pytest.raises(CosaInputError, match="cannot segment a generator"):
            seg.segment(x for x in [blocks(10, 10)])

    def test_class_scores_only_when_the_model_has_them(self, seg: cosa_sdk.Segmenter) -> None:
        result = seg.segment(blocks(40, 50))
        if seg.has_class_scores:
            assert list(result.class_scores) == seg.classes[1:]
            assert all(0.0 <= p <= 1.0 for p in result.class_scores.values())
            return
        assert result.class_scores is None and seg.info()["has_class_scores"] is False
        with pytest.raises(CosaConfigError, match="cosa export"):
            seg.segment(blocks(10, 10), drop_absent=True)

    def test_context_manager_closes(self, bundle: Path) -> None:
        with cosa_sdk.load(bundle, backend=self.backend) as opened:
            assert opened.backend == self.backend
            assert opened.segment(blocks(20, 30)).mask.shape == (20, 30)
        opened.close()  # closing twice is harmless
