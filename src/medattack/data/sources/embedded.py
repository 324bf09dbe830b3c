"""The embedded sample corpus: real medical images that installed packages ship.

pydicom's test files hold real CT, MR, ultrasound and nuclear-medicine images; scikit-image ships a
retina fundus photograph, a fundus crop with microaneurysms and an immunohistochemistry slide.
Each is labelled here by hand with modality, body part and a short description.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medattack.data.sources.base import SOURCES, SourceContext, SourceItem
from medattack.errors import InputError


@dataclass(frozen=True)
class EmbeddedImage:
    item_id: str
    package: str  # importable package that ships the file
    relative_path: str  # inside that package
    modality: str
    body_part: str
    description: str


EMBEDDED_IMAGES: tuple[EmbeddedImage, ...] = (
    EmbeddedImage("pydicom-ct-thorax", "pydicom", "data/test_files/CT_small.dcm", "CT", "Chest",
                  "Axial CT slice at thoracic level showing a vertebral body, ribs and paraspinal muscles."),
    EmbeddedImage("pydicom-ct-head", "pydicom", "data/test_files/693_J2KI.dcm", "CT", "Brain",
                  "Axial non-contrast CT of the head at the level of the cerebral hemispheres."),
    EmbeddedImage("pydicom-ct-skull-base", "pydicom", "data/test_files/J2K_pixelrep_mismatch.dcm", "CT",
                  "Brain", "Axial CT of the head at the skull base showing the temporal bones."),
    EmbeddedImage("pydicom-mr-liver", "pydicom", "data/test_files/examples_overlay.dcm", "MRI",
                  "Abdomen", "Axial T1-weighted MRI of the upper abdomen with a marked liver lesion."),
    EmbeddedImage("pydicom-nm-bone", "pydicom", "data/test_files/JPEG2000.dcm", "Nuclear Medicine",
                  "Whole Body", "Whole-body bone scintigraphy (planar emission image)."),
    EmbeddedImage("pydicom-us-lymph-node", "pydicom", "data/test_files/examples_rgb_color.dcm",
                  "Ultrasound", "Lymph Node",
                  "Small-parts ultrasound of a lymph node with power Doppler flow."),
    EmbeddedImage("pydicom-us-obstetric", "pydicom", "data/test_files/examples_palette.dcm",
                  "Ultrasound", "Baby", "Obstetric ultrasound image of a pregnancy."),
    EmbeddedImage("pydicom-us-echo", "pydicom", "data/test_files/examples_ybr_color.dcm", "Ultrasound",
                  "Heart", "Echocardiography cine loop (middle frame) of a four-chamber view."),
    EmbeddedImage("skimage-retina", "skimage", "data/retina.jpg", "Fundus", "Retina",
                  "Colour fundus photograph of a human retina with optic disc and vessels."),
    EmbeddedImage("skimage-microaneurysms", "skimage", "data/microaneurysms.png", "Fundus", "Retina",
                  "Grey-level crop of a fundus image showing retinal microaneurysms."),
    EmbeddedImage("skimage-ihc-colon", "skimage", "data/ihc.png", "Histopathology", "Colon",
                  "Immunohistochemistry (DAB, haematoxylin) of colonic glands."),
)


def package_file(package: str, relative_path: str) -> Path:
    return Path(str(resources.files(package).joinpath(relative_path)))


@SOURCES.register("embedded")
class EmbeddedSource:
    """`--source embedded`: the bundled corpus (no argument)."""

    name = "embedded"

    def __init__(self, argument: str, context: SourceContext) -> None:
        self.context = context

    def __iter__(self) -> Iterator[SourceItem | InputError]:
        for entry in EMBEDDED_IMAGES:
            location = f"embedded:{entry.item_id} ({entry.package}/{entry.relative_path})"
            try:
                path = package_file(entry.package, entry.relative_path)
            except ModuleNotFoundError:
                yield InputError(location, f"package {entry.package} is not installed.",
                                 f"pip install {entry.package}")
                continue
            yield SourceItem(
                source=self.name,
                item_id=entry.item_id,
                location=location,
                category=self.context.taxonomy.category(entry.modality, entry.body_part),
                path=path,
                description=entry.description,
            )
