import csv

import numpy as np

from medattack.stages import analyze


def test_proxy_relevance_is_higher_for_the_true_attribute(embedded_run):
    result = analyze.attributes(embedded_run.run_dir)
    assert result.by_category and all(row["is_proxy"] for row in result.by_category)
    for row in result.by_category:
        assert row["mean_true_relevance"] > row["mean_claimed_relevance"], row["category"]
    with result.category_csv_path.open() as handle:
        assert "proxy" in next(csv.DictReader(handle))["backend"]
    assert result.figure_path.stat().st_size > 1000
    assert result.auc > 0.9 and all(row["auc"] > 0.5 for row in result.by_category)  # true claims told apart


def test_prompt_relevance_is_higher_within_a_task(tmp_path):
    result = analyze.prompts(bank=None, out_dir=tmp_path)
    matrix = result.matrices["normal-normal"]
    assert matrix.shape == (18, 18)
    off_diagonal = matrix[~np.eye(18, dtype=bool)]
    assert np.nanmean(np.diag(matrix)) > np.nanmean(off_diagonal)
    rows = list(csv.DictReader(result.csv_path.open()))
    assert len(rows) == 3 * 18 * 18 and {r["kind"] for r in rows} == {"normal-normal", "harmful-harmful",
                                                                       "normal-harmful"}
    assert result.figure_path.exists()


def test_embedder_ranks_a_paraphrase_above_an_unrelated_sentence():
    from medattack.scoring.backends.text_embedders import get_text_embedder

    vectors = get_text_embedder().embed([
        "Is there a fracture in this X-ray?", "Does this radiograph show a broken bone?",
        "The weather in Lisbon is sunny today.",
    ])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
