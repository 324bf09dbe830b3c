import pytest

from medattack.data.taxonomy import Category, load_taxonomy
from medattack.errors import ConfigError

THREE_MAD = [
    ("MRI", "Alzheimer"), ("MRI", "Brain"), ("Fundus", "Retina"), ("Mammography", "Breast"),
    ("OCT", "Retina"), ("CT", "Heart"), ("CT", "Brain"), ("CT", "Chest"), ("Endoscopy", "Gastroent"),
    ("Dermoscopy", "Skin"), ("Ultrasound", "Carotid"), ("Ultrasound", "Breast"), ("Ultrasound", "Ovary"),
    ("Ultrasound", "Brain"), ("Ultrasound", "Baby"), ("X-ray", "Skeleton"), ("X-ray", "Dental"),
    ("X-ray", "Chest"),
]


def test_taxonomy_covers_every_3mad_category():
    categories = set(load_taxonomy().categories)
    for modality, body_part in THREE_MAD:
        assert Category(modality, body_part) in categories


def test_eighteen_tasks_in_four_groups_with_descriptions():
    taxonomy = load_taxonomy()
    assert len(taxonomy.tasks) == 18
    groups = {t.group for t in taxonomy.tasks}
    assert groups == {"Image Understanding", "Text Generation", "Question Answering", "Miscellaneous"}
    assert all(sum(t.group == g for t in taxonomy.tasks) == 4 for g in groups - {"Miscellaneous"})
    assert all(t.description.strip() for t in taxonomy.tasks)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CT and Chest", Category("CT", "Chest")),
        ("CT_Chest", Category("CT", "Chest")),
        ("Xray and Chest", Category("X-ray", "Chest")),
        ("X-ray_Chest", Category("X-ray", "Chest")),
        ("MR and head", Category("MRI", "Brain")),
        ("Ultrasound_Lymph-Node", Category("Ultrasound", "Lymph Node")),
        ("Thermography and Foot", Category("Thermography", "Foot")),  # unknown names are kept
    ],
)
def test_attribute_parsing_uses_aliases(text, expected):
    assert load_taxonomy().parse_attribute(text) == expected


def test_attribute_round_trip():
    taxonomy = load_taxonomy()
    for category in taxonomy.categories:
        assert taxonomy.parse_attribute(category.attribute) == category
        assert taxonomy.parse_attribute(category.split_name) == category


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ConfigError, match="Disease Classification"):
        load_taxonomy().task("Telepathy")
    assert load_taxonomy().task("open ended").name == "Open-ended"
