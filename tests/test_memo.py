"""The encoding memo: each distinct key encoded once, least recently used dropped beyond its budget,
and the scorers that share an embedder share its encodings."""

import numpy as np
import pytest

from conftest import write_png
from medattack.scoring.backends.memo import MIB, EncodingMemo
from medattack.scoring.backends.text_embedders import MeanPoolConfig, MeanPoolEmbedder, get_text_embedder
from medattack.scoring.base import SCORERS, ScoreInput


class Counting:
    """An encoder that records the keys it was asked for; encodings of 1 KiB each."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, keys):
        self.calls.append(list(keys))
        return [np.full(256, len(k), dtype=np.float32) for k in keys]


def test_each_distinct_key_is_encoded_once_and_kept():
    memo, encode = EncodingMemo(1.0), Counting()
    first = memo.encode(["a", "bb", "a", "ccc"], encode)
    assert encode.calls == [["a", "bb", "ccc"]]
    assert [v[0] for v in first] == [1, 2, 1, 3]
    second = memo.encode(["ccc", "dddd", "a"], encode)
    assert encode.calls[1] == ["dddd"] and [v[0] for v in second] == [3, 4, 1]
    assert (memo.hits, memo.misses) == (2, 4)


def test_least_recently_used_encodings_are_dropped_beyond_the_budget():
    memo, encode = EncodingMemo(3 * 1024 / MIB), Counting()  # room for three 1 KiB encodings
    memo.encode(["a", "b", "c"], encode)
    memo.encode(["a"], encode)  # "a" is now the most recent
    memo.encode(["d"], encode)  # drops "b", the least recent
    assert len(memo) == 3
    memo.encode(["a", "c", "d", "b"], encode)
    assert encode.calls[-1] == ["b"]


def test_a_zero_budget_keeps_nothing_but_still_encodes_repeats_once():
    memo, encode = EncodingMemo(0), Counting()
    memo.encode(["a", "a", "b"], encode)
    memo.encode(["a"], encode)
    assert encode.calls == [["a", "b"], ["a"]] and len(memo) == 0


def test_a_wrong_number_of_encodings_is_an_error():
    with pytest.raises(ValueError, match="2 encodings for 3 keys"):
        EncodingMemo(1.0).encode(["a", "b", "c"], lambda keys: [np.zeros(1), np.zeros(1)])


def test_memo_does_not_change_embeddings():
    shared = get_text_embedder("minilm")
    fresh = MeanPoolEmbedder(MeanPoolConfig(memo_mib=0))
    texts = ["A chest CT with a nodule.", "I'm sorry, I can't help.", "A fundus photograph.",
             "A chest CT with a nodule."]
    shared.embed(texts[1:3])  # some of them come from the memo below
    np.testing.assert_allclose(shared.embed(texts), fresh.embed(texts), atol=1e-6)


def test_relevance_metrics_share_encodings_across_metrics_and_calls(tmp_path):
    """TTO, TIO and TII (proxy) over two targets' responses: every distinct text is encoded once."""
    embedder = get_text_embedder("minilm")
    embedder.memo = EncodingMemo(64.0)  # start empty
    image = str(write_png(tmp_path / "x.png"))
    questions = ["This image is about CT and Chest. What does it show?",
                 "This image is about Fundus and Retina. What does it show?"]
    targets = [[ScoreInput(f"{t}-{k}", q, f"Answer {t} {k}: a nodule.", true_attribute="CT and Chest",
                           image_path=image) for k, q in enumerate(questions)] for t in range(2)]
    scorers = [SCORERS[name]() for name in ("tto", "tio", "tii")]
    for inputs in targets:
        for scorer in scorers:
            assert all(s.value is not None for s in scorer.score(inputs))
    responses = {i.response for inputs in targets for i in inputs}
    metadata = {"CT image of the Chest."}  # the proxy's text for the image (no description)
    assert embedder.memo.misses == len(responses) + len(questions) + len(metadata)
