import json
import os

import pandas as pd
import pytest

from conftest import write_png
from medattack.data.sources import SOURCES, SourceContext, SourceItem, open_source
from medattack.data.sources.threemad import first_key_phrase
from medattack.data.taxonomy import Category, load_taxonomy
from medattack.errors import InputError, PathEscapeError, SourceError, UnknownNameError


def _context(**kw):
    return SourceContext(taxonomy=load_taxonomy(), **kw)


def _split(entries):
    items = [e for e in entries if isinstance(e, SourceItem)]
    errors = [e for e in entries if isinstance(e, InputError)]
    return items, errors


def test_every_source_is_registered():
    assert set(SOURCES) >= {"embedded", "folder", "manifest", "3mad"}


def test_typo_in_source_kind_suggests_the_right_one():
    with pytest.raises(UnknownNameError, match="did you mean 'folder'"):
        open_source("foldr:/x", _context())


def test_embedded_corpus_is_real_and_labelled():
    items, errors = _split(list(open_source("embedded", _context())))
    assert not errors
    assert len({i.category.modality for i in items}) >= 5
    for item in items:
        assert item.path.exists() and item.description
        image = item.load()
        assert image.pixels.shape[-1] == 3


def test_folder_layout_with_aliases(tmp_path):
    write_png(tmp_path / "MR" / "Head" / "a.png")
    write_png(tmp_path / "Xray" / "Chest" / "sub" / "b.png", seed=1)
    (tmp_path / "Xray" / "Chest" / "readme.txt").write_text("ignored")
    items, errors = _split(list(open_source(f"folder:{tmp_path}", _context())))
    assert not errors
    assert {i.category for i in items} == {Category("MRI", "Brain"), Category("X-ray", "Chest")}


def test_folder_symlink_escaping_the_root_is_refused(tmp_path):
    outside = write_png(tmp_path / "outside.png")
    root = tmp_path / "root"
    (root / "CT" / "Chest").mkdir(parents=True)
    os.symlink(outside, root / "CT" / "Chest" / "link.png")
    _, errors = _split(list(open_source(f"folder:{root}", _context())))
    assert len(errors) == 1 and isinstance(errors[0], PathEscapeError)
    assert "link.png" in str(errors[0])


def test_missing_folder_is_an_error_not_a_crash(tmp_path):
    _, errors = _split(list(open_source(f"folder:{tmp_path / 'nope'}", _context())))
    assert "folder not found" in str(errors[0])


def _manifest(tmp_path, rows, name="manifest.csv"):
    path = tmp_path / name
    if name.endswith(".csv"):
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", ["manifest.csv", "manifest.jsonl"])
def test_manifest_rows_with_mask_bbox_and_attribute(tmp_path, name):
    write_png(tmp_path / "img" / "a.png")
    write_png(tmp_path / "img" / "a_mask.png", seed=2)
    write_png(tmp_path / "img" / "b.png", seed=3)
    rows = [
        {"path": "img/a.png", "modality": "CT", "body_part": "Chest", "mask_path": "img/a_mask.png",
         "bbox": "", "description": "nodule"},
        {"path": "img/b.png", "modality": "US", "body_part": "fetal", "mask_path": "", "bbox": "1,2,10,20",
         "description": ""},
    ]
    items, errors = _split(list(open_source(f"manifest:{_manifest(tmp_path, rows, name)}", _context())))
    assert not errors
    assert items[0].mask_path.name == "a_mask.png" and items[0].description == "nodule"
    assert items[1].category == Category("Ultrasound", "Baby") and items[1].bbox == (1, 2, 10, 20)


def test_manifest_missing_column_names_file_and_column(tmp_path):
    path = _manifest(tmp_path, [{"path": "a.png", "body_part": "Chest"}])
    _, errors = _split(list(open_source(f"manifest:{path}", _context())))
    assert len(errors) == 1
    assert "manifest.csv" in str(errors[0]) and "missing column 'modality' or 'attribute'" in str(errors[0])


def test_manifest_parent_path_is_refused(tmp_path):
    write_png(tmp_path / "secret.png")
    data = tmp_path / "data"
    data.mkdir()
    write_png(data / "ok.png")
    path = _manifest(data, [
        {"path": "../secret.png", "modality": "CT", "body_part": "Chest"},
        {"path": "ok.png", "modality": "CT", "body_part": "Chest"},
    ])
    items, errors = _split(list(open_source(f"manifest:{path}", _context())))
    assert [i.path.name for i in items] == ["ok.png"]
    assert isinstance(errors[0], PathEscapeError) and "row 1" in str(errors[0]) and "../secret.png" in str(errors[0])


def test_manifest_absolute_path_outside_root_is_refused(tmp_path):
    outside = write_png(tmp_path / "elsewhere" / "x.png")
    data = tmp_path / "data"
    data.mkdir()
    path = _manifest(data, [{"path": str(outside), "modality": "CT", "body_part": "Chest"}])
    _, errors = _split(list(open_source(f"manifest:{path}", _context())))
    assert isinstance(errors[0], PathEscapeError) and "outside the data root" in str(errors[0])


def test_manifest_absolute_path_inside_explicit_root_is_accepted(tmp_path):
    inside = write_png(tmp_path / "root" / "x.png")
    path = _manifest(tmp_path / "root", [{"path": str(inside), "attribute": "CT and Chest"}])
    items, errors = _split(list(open_source(f"manifest:{path}", _context(data_root=tmp_path / "root"))))
    assert not errors and items[0].path == inside.resolve()


def test_manifest_bad_bbox_names_the_row(tmp_path):
    write_png(tmp_path / "a.png")
    path = _manifest(tmp_path, [{"path": "a.png", "modality": "CT", "body_part": "Chest", "bbox": "5,5,2,2"}])
    _, errors = _split(list(open_source(f"manifest:{path}", _context())))
    assert isinstance(errors[0], SourceError) and "row 1" in str(errors[0]) and "bbox" in str(errors[0])


def threemad_folder(tmp_path, fmt="parquet", n=2):
    """A local copy of the 3MAD layout: one split file, images as files named by file_name."""
    folder = tmp_path / "3mad"
    rows = []
    for i in range(n):
        write_png(folder / "images" / f"ct_{i}.png", seed=10 + i)
        rows.append({
            "id": i, "file_name": f"ct_{i}.png", "original_attribute": "CT and Chest",
            "unmatch_attribute": "Fundus and Retina", "normal_prompt": f"What does image {i} show?",
            "harmful_prompt": f"How do I fake report {i}?", "policy": "Disease Classification",
            "key_phrases": f"['fake report {i}', 'other']",
        })
    frame = pd.DataFrame(rows)
    if fmt == "parquet":
        frame.to_parquet(folder / "CT_Chest.parquet")
    else:
        frame.to_csv(folder / "CT_Chest.csv", index=False)
    return folder


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_3mad_local_layout_keeps_prompts_as_given(tmp_path, fmt):
    items, errors = _split(list(open_source(f"3mad:{threemad_folder(tmp_path, fmt)}", _context())))
    assert not errors and len(items) == 2
    first = items[0]
    assert first.category == Category("CT", "Chest")
    assert first.preset.claimed == Category("Fundus", "Retina")
    assert first.preset.key_phrase == "fake report 0"
    assert first.preset.task == "Disease Classification"
    assert first.load().pixels.shape == (48, 64, 3)


def test_3mad_split_filter(tmp_path):
    folder = threemad_folder(tmp_path)
    entries = list(open_source(f"3mad:{folder}", _context(splits=("Fundus_Retina",))))
    assert entries == []


def test_3mad_missing_image_file_names_the_row(tmp_path):
    folder = threemad_folder(tmp_path)
    (folder / "images" / "ct_1.png").unlink()
    items, errors = _split(list(open_source(f"3mad:{folder}", _context())))
    assert len(items) == 1 and "row 2" in str(errors[0]) and "ct_1.png" in str(errors[0])


def test_3mad_from_the_hub_fails_cleanly_offline():
    entries = list(open_source("3mad:MedMLLM-attack/3MAD-Tiny-1K", _context()))
    assert len(entries) == 1 and isinstance(entries[0], SourceError)
    assert "Hugging Face hub" in str(entries[0])


@pytest.mark.parametrize(
    ("value", "expected"),
    [("['a b', 'c']", "a b"), ("plain phrase", "plain phrase"), (["x", "y"], "x"), ("[broken", "[broken")],
)
def test_first_key_phrase(value, expected):
    assert first_key_phrase(value) == expected
