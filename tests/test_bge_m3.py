"""BGE-M3's three heads on a tiny random model saved in the bge-m3 checkpoint layout."""

import numpy as np
import pytest
import torch

from medattack.scoring.backends.bge_m3 import BGEM3, BGEM3Config
from medattack.scoring.backends.text_embedders import embedded_minilm_path


@pytest.fixture(scope="module")
def tiny_m3(tmp_path_factory):
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    folder = tmp_path_factory.mktemp("bge-m3-tiny")
    tokenizer = AutoTokenizer.from_pretrained(embedded_minilm_path())  # any tokenizer: the loader is generic
    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, pad_token_id=tokenizer.pad_token_id, max_position_embeddings=600)
    XLMRobertaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save(torch.nn.Linear(32, 32).state_dict(), folder / "colbert_linear.pt")
    torch.save(torch.nn.Linear(32, 1).state_dict(), folder / "sparse_linear.pt")
    return BGEM3(BGEM3Config(model=str(folder), batch_size=2))


def test_heads_have_the_documented_shapes(tiny_m3):
    encoded = tiny_m3.encode(["a short text", "a somewhat longer text with more words in it"])
    assert encoded.dense.shape == (2, 32)
    assert torch.allclose(encoded.dense.norm(dim=1), torch.ones(2), atol=1e-5)
    lengths = encoded.colbert_mask.sum(dim=1)
    assert lengths[1] > lengths[0]  # one vector per non-[CLS] token
    assert (encoded.lexical >= 0).all()
    special = torch.isin(encoded.token_ids, torch.tensor(tiny_m3.tokenizer.all_special_ids))
    assert (encoded.lexical[special] == 0).all()


def reference_sparse(model, left, right):
    """The lexical-matching score as FlagEmbedding defines it, one text at a time with dicts."""

    def weights(text):
        batch = model.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            hidden = model.encoder(**batch).last_hidden_state
            w = torch.relu(model.sparse_linear(hidden)).squeeze(-1)[0]
        out = {}
        for token, value in zip(batch["input_ids"][0].tolist(), w.tolist(), strict=True):
            if token not in model.tokenizer.all_special_ids and value > out.get(token, 0.0):
                out[token] = value
        return out

    a, b = weights(left), weights(right)
    return sum(v * b.get(t, 0.0) for t, v in a.items())


def test_sparse_matches_the_reference_definition(tiny_m3):
    left = ["the lung the lung nodule nodule", "right upper lobe mass"]
    right = ["a nodule in the lung", "mass in the right lobe of the lung"]
    parts = tiny_m3.pair_parts(left, right)
    expected = [reference_sparse(tiny_m3, a, b) for a, b in zip(left, right, strict=True)]
    assert np.allclose(parts["sparse"], expected, atol=1e-5)


def test_fused_score_is_highest_for_the_same_text(tiny_m3):
    left = ["the nodule in the right lung", "the nodule in the right lung"]
    right = ["the nodule in the right lung", "quarterly sales of umbrellas rose"]
    parts = tiny_m3.pair_parts(left, right)
    assert parts["dense"][0] == pytest.approx(1.0, abs=1e-5) and parts["colbert"][0] == pytest.approx(1.0, abs=1e-5)
    assert parts["sparse"][1] == 0.0  # no shared token
    fused = tiny_m3.pair_scores(left, right)
    assert fused[0] > fused[1]
    expected = (0.4 * parts["dense"] + 0.2 * parts["sparse"] + 0.4 * parts["colbert"]) / 1.0
    assert np.allclose(fused, expected, atol=1e-6)


def test_batching_does_not_change_scores(tiny_m3):
    texts = ["one", "two words", "three words here", "and four words here"]
    one_by_one = np.stack([tiny_m3.embed([t])[0] for t in texts])
    assert np.allclose(tiny_m3.embed(texts), one_by_one, atol=1e-5)
    pairs = tiny_m3.pair_parts(texts, texts[::-1], chunk=1)
    batched = tiny_m3.pair_parts(texts, texts[::-1])
    for name in ("dense", "sparse", "colbert"):
        assert np.allclose(pairs[name], batched[name], atol=1e-5)


def test_reused_encodings_give_the_scores_of_fresh_ones(tiny_m3):
    fresh = BGEM3(BGEM3Config(model="unused", memo_mib=0, batch_size=2),
                  modules=(tiny_m3.tokenizer, tiny_m3.encoder, tiny_m3.colbert_linear, tiny_m3.sparse_linear))
    left = ["a short text", "the image shows a nodule", "a short text"]
    right = ["a nodule in the lung", "an unrelated sentence about weather", "a nodule in the lung"]
    tiny_m3.pair_parts(left[:2], right[1:])  # warms the memo with some of the texts
    memo_hits = tiny_m3.memo.hits
    reused, recomputed = tiny_m3.pair_parts(left, right), fresh.pair_parts(left, right)
    assert tiny_m3.memo.hits > memo_hits
    for part in ("dense", "sparse", "colbert"):
        np.testing.assert_allclose(reused[part], recomputed[part], atol=1e-5)
