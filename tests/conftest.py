"""Shared fixtures. Tests never download anything: the hub is switched off before any import."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import struct  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height with almost no pixel data (never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    payload = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
    path.write_bytes(payload + chunk(b"IEND", b""))
    return path


def write_png(path: Path, seed: int = 0, size: tuple[int, int] = (48, 64)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def embedded_run(tmp_path_factory: pytest.TempPathFactory):
    """The embedded benchmark, built once per test session with default settings."""
    from medattack.stages.build import BuildConfig
    from medattack.stages.build import run as build_benchmark

    return build_benchmark(tmp_path_factory.mktemp("runs") / "embedded", BuildConfig())


@pytest.fixture
def bad_inputs(tmp_path: Path) -> Path:
    """A <Modality>/<BodyPart> folder holding one good image and every kind of bad file."""
    folder = tmp_path / "images" / "CT" / "Chest"
    folder.mkdir(parents=True)
    write_png(folder / "good.png")
    good = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.dcm").write_text("this is a text file, not DICOM\n" * 20)
    (folder / "plan.dcm").write_bytes((PYDICOM_FILES / "rtplan.dcm").read_bytes())
    png_header_only(folder / "huge.png", 20000, 20000)
    return tmp_path / "images"


@pytest.fixture
def fake_api():
    """A loopback OpenAI-compatible server (see fake_openai.py)."""
    from fake_openai import FakeOpenAI

    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture(scope="session")
def saved_tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaVA saved with its processor: what AutoModelForImageTextToText loads from a folder."""
    import torch
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaProcessor

    from medattack.models.embedded import _llava, smollm2_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    torch.manual_seed(0)
    model = _llava(text, vision, tokenizer.convert_tokens_to_ids("<image>"))
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template="{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                      "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:")
    folder = tmp_path_factory.mktemp("models") / "tiny-vlm"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_whitebox():
    from medattack.models import load_whitebox

    return load_whitebox("tiny")


@pytest.fixture(scope="session")
def embedded_whitebox():
    from medattack.models import load_whitebox

    return load_whitebox("embedded")
