"""The BentoML service over real HTTP, results: masks, JSON summaries and overlays equal the SDK's for the
same bytes, through plain HTTP and BentoML's own client (one `cosa serve` process, tests/serving/conftest.py)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import cosa_sdk
from cosa_sdk.result import decode_mask
from cosa_sdk.serving.launcher import LocalServer

from .helpers import GOOD_IMAGES, encode, exif_rotated_jpeg, multipart, png_values, post_image, request, scene, sdk_mask


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[Any]:
    import bentoml

    with bentoml.SyncHTTPClient(server.url, timeout=60) as http_client:
        yield http_client


# -- results equal the SDK's ----------------------------------------------------------------------
def test_drop_absent_without_class_scores_is_refused(server: LocalServer) -> None:
    data = GOOD_IMAGES["png_rgb"]()
    reply = post_image(server.url, "/segment_json", data, drop_absent="true")
    assert reply.status == 400 and "re-export the bundle with `cosa export`" in reply.json()["error"]
    assert post_image(server.url, "/segment", data, drop_absent="false").status == 200  # keeping is always possible


@pytest.mark.parametrize("name", sorted(GOOD_IMAGES))
def test_segment_png_equals_sdk_mask(server: LocalServer, segmenter: cosa_sdk.Segmenter, name: str) -> None:
    data = GOOD_IMAGES[name]()
    reply = post_image(server.url, "/segment", data)
    assert reply.status == 200, reply.body[:300]
    assert reply.content_type == "image/png"
    served = png_values(reply.body)
    expected = sdk_mask(segmenter, data)
    assert served.shape == expected.shape
    np.testing.assert_array_equal(served, expected)


def test_exif_rotation_gives_displayed_size(server: LocalServer) -> None:
    reply = post_image(server.url, "/segment", exif_rotated_jpeg(), filename="rotated.jpg")
    assert png_values(reply.body).shape == (90, 40)


@pytest.mark.parametrize("how", ["form", "query"])
def test_segment_json_with_rle_and_png_masks(server: LocalServer, segmenter: cosa_sdk.Segmenter, how: str) -> None:
    data = GOOD_IMAGES["jpeg_odd_size"]()
    expected = segmenter.segment(data)
    for encoding in ("rle", "png"):
        if how == "form":
            reply = post_image(server.url, "/segment_json", data, mask=encoding)
        else:
            body, content_type = multipart({"image": ("a.jpg", data, "image/jpeg")})
            reply = request(server.url, f"/segment_json?mask={encoding}", body, content_type)
        assert reply.status == 200, reply.body[:300]
        summary = reply.json()
        assert summary["mask"]["encoding"] == ("rle" if encoding == "rle" else "png-base64")
        np.testing.assert_array_equal(decode_mask(summary["mask"]), expected.mask)
        assert (summary["width"], summary["height"]) == (333, 221)
        assert summary["model"] == "toy" and summary["backend"] == "onnxruntime"
        assert summary["present"].keys() == expected.present.keys()
        for cls, fraction in expected.present.items():
            assert summary["present"][cls] == pytest.approx(fraction, abs=1e-6)
        assert {"decode", "preprocess", "model", "postprocess", "total"} <= summary["timings"].keys()


def test_segment_json_without_mask_is_a_summary(server: LocalServer) -> None:
    summary = post_image(server.url, "/segment_json", GOOD_IMAGES["png_rgb"]()).json()
    assert "mask" not in summary
    assert "class_scores" not in summary  # a one-output bundle, as exported before class scores
    assert sum(summary["present"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(summary["present"]) == {"background", "red", "green"}


def test_overlay_is_the_sdk_overlay_as_jpeg(server: LocalServer, segmenter: cosa_sdk.Segmenter) -> None:
    data = GOOD_IMAGES["jpeg_odd_size"]()
    reply = post_image(server.url, "/overlay", data, alpha="0.6")
    assert reply.status == 200 and reply.content_type == "image/jpeg"
    with Image.open(io.BytesIO(reply.body)) as served:
        assert served.format == "JPEG" and served.size == (333, 221)
        served_pixels = np.asarray(served.convert("RGB"), dtype=np.float32)
    expected = np.asarray(segmenter.segment(data).overlay(alpha=0.6), dtype=np.float32)
    assert np.abs(served_pixels - expected).mean() < 4.0  # JPEG loss only
    plain = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    assert np.abs(served_pixels - plain).mean() > 10.0, "the overlay must differ from the plain upload"


def test_sync_http_client_calls_every_endpoint(client: Any, segmenter: cosa_sdk.Segmenter, tmp_path: Path) -> None:
    path = tmp_path / "scene.png"
    path.write_bytes(GOOD_IMAGES["png_rgb"]())
    expected = segmenter.segment(path)
    info = client.info()
    assert info["classes"] == segmenter.classes
    mask_image = client.segment(image=path)
    np.testing.assert_array_equal(np.asarray(mask_image), expected.mask)
    summary = client.segment_json(image=path, mask="rle")
    np.testing.assert_array_equal(decode_mask(summary["mask"]), expected.mask)
    overlay = client.overlay(image=path, alpha=0.5)
    assert overlay.size == (70, 50)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are not pixels")
    import bentoml

    with pytest.raises(bentoml.exceptions.BentoMLException) as err:
        client.segment(image=bad)
    assert "not an image" in str(err.value)


def test_concurrent_requests_all_answer_their_own_image(server: LocalServer, segmenter: cosa_sdk.Segmenter) -> None:
    images = [encode(scene(40 + 7 * i, 90 - 5 * i, seed=10 + i), "PNG") for i in range(12)]

    def one(data: bytes) -> np.ndarray:
        reply = post_image(server.url, "/segment", data)
        assert reply.status == 200, reply.body[:300]
        return png_values(reply.body)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        served = list(pool.map(one, images))
    for data, mask in zip(images, served):
        expected = sdk_mask(segmenter, data)
        assert mask.shape == expected.shape  # each answer is for its own upload
        assert (mask == expected).mean() > 0.999


def test_serving_mask_matches_base64_png_exactly(server: LocalServer, segmenter: cosa_sdk.Segmenter) -> None:
    data = GOOD_IMAGES["png_gray"]()
    summary = post_image(server.url, "/segment_json", data, mask="png").json()
    png = base64.b64decode(summary["mask"]["data"])
    np.testing.assert_array_equal(png_values(png), sdk_mask(segmenter, data))
