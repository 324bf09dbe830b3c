"""Image I/O: PNG/JPEG/BMP/TIFF through Pillow and DICOM through pydicom, to RGB uint8.

Every loader returns `(H, W, 3) uint8`. DICOM pixels go through the modality LUT (rescale slope and
intercept), then the file's first VOI window (or a 0.5-99.5 percentile window when it has none),
MONOCHROME1 is inverted, palette colour is expanded, and a multi-frame object gives its middle frame.
Sizes are checked from the header before any pixel is decoded (decompression-bomb guard), and every
failure raises an `ImageError` that names the file and says what to do.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medattack.errors import (
    CorruptImageError,
    ImageTooLargeError,
    NoPixelDataError,
    UnsupportedImageError,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; raise with `max_pixels` for whole-slide crops
PIL_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF", "MPO"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and what was learned while decoding it."""

    pixels: np.ndarray  # (H, W, 3) uint8
    format: str  # "PNG", "JPEG", "DICOM", ...
    metadata: dict[str, str]  # e.g. DICOM Modality, BodyPartExamined, StudyDescription


def _is_dicom(head: bytes, name: str) -> bool:
    return head[128:132] == b"DICM" or Path(name).suffix.lower() in DICOM_SUFFIXES


def load_image(
    source: str | Path | bytes, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Decode an image file (or its bytes) to RGB uint8.

    Args:
        source: a path, or the file's bytes.
        name: how to call the image in errors (defaults to the path).
        max_pixels: refuse images with more pixels than this (per frame x frames for DICOM).

    Raises:
        CorruptImageError, UnsupportedImageError, ImageTooLargeError, NoPixelDataError.
    """
    if isinstance(source, bytes):
        data, label = source, name or "<image bytes>"
    else:
        label = name or str(source)
        if Path(source).exists() and not Path(source).is_file():
            raise UnsupportedImageError(label, "not a regular file (a folder, a pipe or a device).",
                                        "point at an image file.")
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise CorruptImageError(label, "file not found.", "check the path.") from None
        except OSError as exc:
            raise CorruptImageError(label, f"cannot read the file ({exc.strerror}).") from exc
    if not data:
        raise CorruptImageError(label, "the file is empty (0 bytes).", "re-export or remove it.")
    if _is_dicom(data[:132], label):
        return _load_dicom(data, label, max_pixels)
    return _load_pil(data, label, max_pixels)


# --- Pillow formats -------------------------------------------------------------------------------


def _to_uint8(array: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Linearly map [low, high] (default: the array's min and max) to [0, 255] uint8."""
    array = array.astype(np.float64)
    low = float(np.min(array)) if low is None else low
    high = float(np.max(array)) if high is None else high
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (array - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _load_pil(data: bytes, label: str, max_pixels: int) -> LoadedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnsupportedImageError(
                label,
                "not a recognised image (expected PNG, JPEG, BMP, TIFF or DICOM).",
                "convert it to PNG, or give DICOM files a .dcm suffix.",
            ) from None
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(label, str(exc), "downscale the image.") from None
    if image.format not in PIL_FORMATS:
        raise UnsupportedImageError(
            label, f"format {image.format} is not supported.", "convert it to PNG."
        )
    width, height = image.size
    frames = getattr(image, "n_frames", 1)
    if width * height > max_pixels:
        raise ImageTooLargeError(
            label,
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}.",
            "downscale the image or raise max_pixels.",
        )
    try:
        if frames > 1:
            image.seek(frames // 2)
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(
            label, f"cannot decode the image ({exc}); it is truncated or corrupt.",
            "re-export the file.",
        ) from None
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = _gray_to_rgb(_to_uint8(np.asarray(image)))
    else:
        pixels = np.asarray(image.convert("RGB"))
    return LoadedImage(pixels=np.ascontiguousarray(pixels), format=str(image.format), metadata={})


# --- DICOM ----------------------------------------------------------------------------------------


def _first(value: object) -> float:
    """DICOM multi-valued numbers (window centre/width) may hold several values: use the first."""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = list(value)[0]  # type: ignore[arg-type]
    return float(value)  # type: ignore[arg-type]


def _window(array: np.ndarray, ds: object) -> np.ndarray:
    """Apply the file's first VOI window, or a robust percentile window when it has none."""
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if centre is not None and width is not None:
        try:
            c, w = _first(centre), _first(width)
        except (TypeError, ValueError, IndexError):
            c, w = float("nan"), float("nan")
        if np.isfinite(c) and np.isfinite(w) and w >= 1:
            # DICOM PS3.3 C.11.2.1.2 linear window
            low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
            return _to_uint8(np.clip(array, low, high), low, high)
    low, high = np.percentile(array, [0.5, 99.5])
    if high <= low:
        low, high = float(np.min(array)), float(np.max(array))
    return _to_uint8(np.clip(array, low, high), float(low), float(high))


def _dicom_metadata(ds: object) -> dict[str, str]:
    keys = ("Modality", "BodyPartExamined", "StudyDescription", "SeriesDescription", "ImageType")
    out = {}
    for key in keys:
        value = getattr(ds, key, None)
        if value not in (None, ""):
            out[key] = "\\".join(value) if isinstance(value, list | tuple) or type(
                value).__name__ == "MultiValue" else str(value)
    return out


def _load_dicom(data: bytes, label: str, max_pixels: int) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError:
        raise UnsupportedImageError(
            label, "not a valid DICOM file (no DICOM header).",
            "check the file; only DICOM Part 10 files are read as DICOM.",
        ) from None
    except Exception as exc:  # pydicom raises many types on damaged headers
        raise CorruptImageError(label, f"cannot parse the DICOM header ({exc}).") from None
    if not any(tag in ds for tag in PIXEL_TAGS):
        kind = getattr(ds, "Modality", "unknown")
        raise NoPixelDataError(
            label, f"the DICOM object (Modality {kind}) holds no pixel data.",
            "remove it from the image set (reports, plans and waveforms are not images).",
        )
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptImageError(label, f"the DICOM image size is missing or invalid ({exc}).") from None
    if rows * cols * frames > max_pixels:
        raise ImageTooLargeError(
            label,
            f"{frames} frame(s) of {cols}x{rows} = {rows * cols * frames:,} pixels exceeds the limit "
            f"of {max_pixels:,}.",
            "downscale the image or raise max_pixels.",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = ds.pixel_array  # YBR is converted to RGB by pydicom
    except Exception as exc:  # truncated data, missing decoder plugin, malformed elements
        raise CorruptImageError(
            label, f"cannot decode the DICOM pixel data ({exc}).",
            "the file may be truncated, or its compression needs a decoder plugin "
            "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg).",
        ) from None
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if frames > 1:
        array = array[frames // 2]
    bits = int(getattr(ds, "BitsStored", 8) or 8)
    if photometric == "PALETTE COLOR":
        array = apply_color_lut(array, ds)  # uint8 or uint16, by the LUT's entry size
        samples, bits = 3, array.dtype.itemsize * 8
    if samples == 3:
        pixels = array if array.dtype == np.uint8 else _to_uint8(array, 0.0, float(2**bits - 1))
    else:
        gray = apply_modality_lut(array, ds).astype(np.float64)
        gray = _window(gray, ds)
        if photometric == "MONOCHROME1":
            gray = 255 - gray
        pixels = _gray_to_rgb(gray)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise CorruptImageError(label, f"unexpected decoded pixel shape {pixels.shape}.")
    return LoadedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.uint8),
        format="DICOM",
        metadata=_dicom_metadata(ds),
    )


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array (deterministic: no timestamps)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
