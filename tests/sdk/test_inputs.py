"""Decoding every input kind the SDK accepts, and the clear errors for the ones it refuses."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cosa_sdk.errors import CosaInputError
from cosa_sdk.inputs import array_to_image, decode_image, to_rgb


def colour_blocks(height: int = 60, width: int = 90) -> np.ndarray:
    """Red left third, gray middle, green right third."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    image[:, : width // 3] = (220, 30, 30)
    image[:, 2 * width // 3 :] = (20, 210, 40)
    return image


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_every_source_kind_decodes_to_the_same_pixels(tmp_path: Path) -> None:
    array = colour_blocks()
    pil = Image.fromarray(array)
    path = tmp_path / "blocks.png"
    pil.save(path)
    data = path.read_bytes()
    sources = [str(path), path, data, bytearray(data), memoryview(data), io.BytesIO(data), pil, array]
    for source in sources:
        decoded = decode_image(source)
        assert decoded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(decoded), array, err_msg=type(source).__name__)


@pytest.mark.parametrize(
    ("mode", "expected_pixel"),
    [
        ("RGBA", (220, 30, 30)),  # alpha dropped
        ("RGBa", None),
        ("LA", None),
        ("L", None),
        ("P", (220, 30, 30)),
        ("CMYK", None),
        ("YCbCr", None),
        ("1", None),
        ("I;16", None),
        ("I", None),
        ("F", None),
    ],
)
def test_every_pil_mode_becomes_rgb_of_the_same_size(mode: str, expected_pixel: tuple | None) -> None:
    rgb = Image.fromarray(colour_blocks())
    if mode == "P":
        source = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    elif mode in ("I;16", "I", "F"):
        source = rgb.convert("L").convert(mode)
    else:
        source = rgb.convert(mode)
    decoded = decode_image(source)
    assert decoded.mode == "RGB"
    assert decoded.size == (90, 60)
    if expected_pixel is not None:
        assert decoded.getpixel((5, 5)) == expected_pixel


def test_rgba_alpha_is_dropped_not_composited() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red, fully transparent
    np.testing.assert_array_equal(np.asarray(decode_image(Image.fromarray(rgba, "RGBA")))[..., 0], 200)
    np.testing.assert_array_equal(np.asarray(decode_image(rgba))[..., 0], 200)


def test_high_bit_depth_modes_are_scaled_to_8_bit() -> None:
    values16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    sixteen = (
        Image.fromarray(values16).convert("I;16") if False else Image.frombytes("I;16", (4, 1), values16.tobytes())
    )
    assert np.asarray(to_rgb(sixteen))[0, :, 0].tolist() == [0, 1, 128, 255]
    as_int = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(as_int))[0, :, 1].tolist() == [0, 100, 255]  # fits 8 bits: kept
    wide_int = Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32), "I")
    assert np.asarray(to_rgb(wide_int))[0, :, 1].tolist() == [0, 255, 255]  # 16-bit range, clipped
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(unit))[0, :, 2].tolist() == [0, 128, 255]
    bytes_range = Image.fromarray(np.array([[0.0, 100.0, 300.0, np.nan]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(bytes_range))[0, :, 2].tolist() == [0, 100, 255, 0]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = Image.fromarray(colour_blocks(40, 60))  # 60 wide, 40 tall, red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    decoded = decode_image(path)
    assert decoded.size == (40, 60)  # now portrait
    top, bottom = np.asarray(decoded)[2, 20], np.asarray(decoded)[-3, 20]
    assert top[0] > 180 and top[1] < 80  # the stored left (red) is now on top
    assert bottom[1] > 160 and bottom[0] < 80
    with Image.open(path) as opened:  # an un-rotated PIL image from the caller gets the same treatment
        assert decode_image(opened).size == (40, 60)
        assert opened.size == (60, 40)  # the caller's image is left untouched


def test_gray_and_rgba_arrays_are_accepted() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for array in (gray, gray[:, :, None]):
        rgb = np.asarray(array_to_image(array))
        assert rgb.shape == (3, 4, 3)
        np.testing.assert_array_equal(rgb[..., 2], gray)
    non_contiguous = colour_blocks()[:, ::2]
    np.testing.assert_array_equal(np.asarray(decode_image(non_contiguous)), non_contiguous)


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.zeros((10, 10, 3), dtype=np.float32), "dtype float32"),
        (np.zeros((10, 10, 3), dtype=np.uint16), "dtype uint16"),
        (np.zeros((10, 10, 3), dtype=bool), "dtype bool"),
        (np.zeros((3, 10, 12), dtype=np.uint8), "channels-first"),
        (np.zeros((10, 10, 5), dtype=np.uint8), "HxWx3"),
        (np.zeros((2, 10, 10, 3, 1), dtype=np.uint8), "HxWx3"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        (np.zeros((10, 0), dtype=np.uint8), "empty"),
    ],
)
def test_bad_arrays_are_refused_with_the_fix(array: np.ndarray, needle: str) -> None:
    with pytest.raises(CosaInputError, match=needle):
        decode_image(array)


def test_float_array_error_says_how_to_convert() -> None:
    with pytest.raises(CosaInputError, match=r"astype\(np.uint8\)"):
        decode_image(np.zeros((4, 4, 3)))


def test_unreadable_sources_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(
        png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))[:200]
    )
    cases = [
        (text, "not an image file"),
        (tmp_path / "missing.jpg", "does not exist"),
        (tmp_path, "is a folder"),
        (truncated, "truncated or corrupt"),
        (b"", "empty"),
        (b"GIF89a-garbage", "not an image file"),
        ("https://example.com/cat.jpg", "URL"),
        (42, "cannot segment a int"),
        (Image.new("RGB", (0, 5)), "empty"),
    ]
    for source, needle in cases:
        with pytest.raises(CosaInputError, match=needle):
            decode_image(source)


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("1", (9000, 6000)).save(big)  # 54 MP, a few kB on disk
    start = time.perf_counter()
    with pytest.raises(CosaInputError, match="max_pixels"):
        decode_image(big)
    assert time.perf_counter() - start < 0.5  # refused from the header, not after decoding 54 MP
    with pytest.raises(CosaInputError, match="max_pixels=100"):
        decode_image(colour_blocks(), max_pixels=100)
    assert decode_image(colour_blocks(), max_pixels=None).size == (90, 60)


def test_pil_bomb_limit_becomes_a_clear_error(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 10000)).save(bomb)  # 200 MP: beyond PIL's own hard limit
    with pytest.raises(CosaInputError, match="MAX_IMAGE_PIXELS"):
        decode_image(bomb, max_pixels=None)
