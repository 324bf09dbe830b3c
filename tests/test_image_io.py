import io
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image

from conftest import PYDICOM_FILES, png_header_only, write_png
from medattack.data.image_io import load_image
from medattack.errors import (
    CorruptImageError,
    ImageTooLargeError,
    NoPixelDataError,
    UnsupportedImageError,
)


def _dicom_copy(tmp_path, name, **changes):
    ds = pydicom.dcmread(PYDICOM_FILES / name)
    for key, value in changes.items():
        setattr(ds, key, value)
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}_{name}"
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm", "examples_rgb_color.dcm",
     "examples_palette.dcm", "examples_ybr_color.dcm", "SC_rgb_rle_16bit.dcm", "JPEG2000.dcm"],
)
def test_real_dicoms_decode_to_rgb_uint8(name):
    image = load_image(PYDICOM_FILES / name)
    assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 3 and image.pixels.shape[-1] == 3
    assert image.pixels.max() > image.pixels.min(), "decoded image is flat"
    assert image.format == "DICOM"


def test_monochrome1_is_inverted(tmp_path):
    common = {"WindowCenter": 40, "WindowWidth": 400}
    normal = load_image(_dicom_copy(tmp_path, "CT_small.dcm", **common)).pixels
    inverted = load_image(_dicom_copy(tmp_path, "CT_small.dcm", PhotometricInterpretation="MONOCHROME1",
                                      **common)).pixels
    assert np.array_equal(inverted, 255 - normal)


def test_rescale_intercept_is_applied_before_the_window(tmp_path):
    base = load_image(_dicom_copy(tmp_path, "CT_small.dcm", RescaleIntercept=-1024,
                                  WindowCenter=40, WindowWidth=400)).pixels
    shifted = load_image(_dicom_copy(tmp_path, "CT_small.dcm", RescaleIntercept=-924,
                                     WindowCenter=140, WindowWidth=400)).pixels
    assert np.array_equal(base, shifted)


def test_file_window_is_used_and_narrows_contrast(tmp_path):
    wide = load_image(_dicom_copy(tmp_path, "CT_small.dcm", WindowCenter=40, WindowWidth=2000)).pixels
    narrow = load_image(_dicom_copy(tmp_path, "CT_small.dcm", WindowCenter=40, WindowWidth=80)).pixels
    # a narrow window saturates more pixels at black or white than a wide one
    saturated = lambda p: np.mean((p == 0) | (p == 255))  # noqa: E731
    assert saturated(narrow) > saturated(wide)


def test_multiframe_gives_the_middle_frame():
    ds = pydicom.dcmread(PYDICOM_FILES / "examples_ybr_color.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = ds.pixel_array  # (30, H, W, 3)
    image = load_image(PYDICOM_FILES / "examples_ybr_color.dcm").pixels
    assert np.array_equal(image, frames[len(frames) // 2])


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    pixels = load_image(path).pixels
    assert pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels[..., 0])) > 200


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_common_formats(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(np.full((20, 30, 3), 120, dtype=np.uint8)).save(path, format=fmt)
    image = load_image(path)
    assert image.pixels.shape == (20, 30, 3) and image.format == fmt


def test_bytes_input_matches_path_input(tmp_path):
    path = write_png(tmp_path / "a.png")
    assert np.array_equal(load_image(path.read_bytes(), name="a").pixels, load_image(path).pixels)


# --- bad input: every error names the file ---------------------------------------------------------


def test_truncated_png(tmp_path):
    good = write_png(tmp_path / "good.png", size=(200, 200)).read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptImageError, match="truncated.png.*truncated or corrupt"):
        load_image(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(CorruptImageError, match="empty.jpg: the file is empty"):
        load_image(path)


def test_text_file_named_dcm(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not a dicom file\n" * 20)
    with pytest.raises(UnsupportedImageError, match="notes.dcm: not a valid DICOM file"):
        load_image(path)


def test_dicom_without_pixel_data():
    with pytest.raises(NoPixelDataError, match="rtplan.dcm.*no pixel data"):
        load_image(PYDICOM_FILES / "rtplan.dcm")


def test_truncated_dicom_pixel_data():
    with pytest.raises(CorruptImageError, match="MR_truncated.dcm.*pixel data"):
        load_image(PYDICOM_FILES / "MR_truncated.dcm")


@pytest.mark.parametrize("side", [20000, 9000])
def test_oversized_image_is_refused_before_decoding(tmp_path, side):
    path = png_header_only(tmp_path / f"huge{side}.png", side, side)
    with pytest.raises(ImageTooLargeError, match=f"huge{side}.png"):
        load_image(path)


def test_oversized_dicom_is_refused(tmp_path):
    with pytest.raises(ImageTooLargeError, match="CT_small.dcm.*exceeds"):
        load_image(PYDICOM_FILES / "CT_small.dcm", max_pixels=100 * 100)


def test_unsupported_format(tmp_path):
    path = tmp_path / "anim.gif"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
    with pytest.raises(UnsupportedImageError, match="anim.gif.*GIF"):
        load_image(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UnsupportedImageError, match="noise.png"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(CorruptImageError, match="nope.png: file not found"):
        load_image(tmp_path / "nope.png")


def test_corrupt_jpeg_body(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(
        buffer, format="JPEG")
    data = buffer.getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptImageError, match="cut.jpg"):
        load_image(path)
