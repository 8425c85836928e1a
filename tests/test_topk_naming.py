"""The second accuracy column is named after the k actually used: top-5 on a 4-class model is top-4."""

import json

import numpy as np
import pytest
import tensorflow as tf

from sat_tf import evaluation
from sat_tf.evaluation import report


def linear_model(classes, seed=0):
    rng = np.random.default_rng(seed)
    kernel = tf.constant(rng.normal(size=(12, classes)).astype(np.float32))
    return lambda z: tf.reshape(z, [tf.shape(z)[0], -1]) @ kernel


def points(classes, n=40, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, 2, 2, 3)).astype(np.float32), rng.integers(0, classes, n)


def numpy_topk(logits_fn, x, y, k):
    logits = logits_fn(tf.constant(x)).numpy()
    ranks = (logits > logits[np.arange(len(y)), y][:, None]).sum(-1)  # classes strictly above the label
    return float(np.mean(ranks < k))


@pytest.mark.parametrize("classes,top_k,key", [(10, 5, "top5"), (4, 5, "top4"), (3, 2, "top2"), (4, 1, None)])
def test_evaluate_points_names_the_column_after_k(classes, top_k, key, tmp_path):
    logits_fn, (x, y) = linear_model(classes), points(classes)
    out = evaluation.evaluate_points(
        logits_fn, x, y, [evaluation.AttackRow("clean")], top_k=top_k, state_path=str(tmp_path / "state.json")
    )
    clean = out["rows"]["clean"]
    assert evaluation.topk_key(clean) == key
    assert not any(k.startswith("top") and k not in ("top1", key) for k in clean)
    if key:
        assert clean[key] == pytest.approx(numpy_topk(logits_fn, x, y, min(top_k, classes)))
        assert out["rows"]["worst case"][key] is None
        header = report.markdown_table(out["rows"]).splitlines()[0]
        assert f"| top-{key[3:]} (%) |" in header and ("top-5" in header) == (key == "top5")
    # A resumed (finished) evaluation reads the k back from its state and names the column the same.
    again = evaluation.evaluate_points(
        logits_fn, x, y, [evaluation.AttackRow("clean")], top_k=top_k, state_path=str(tmp_path / "state.json")
    )
    assert again["rows"] == out["rows"]
    assert json.load(open(tmp_path / "state.json"))["extra"]["top_k"] == min(top_k, classes)


def test_streaming_evaluate_names_the_column_after_k():
    classes = 4
    logits_fn, (x, y) = linear_model(classes), points(classes)
    strategy = tf.distribute.get_strategy()
    results = evaluation.evaluate(
        logits_fn, strategy, lambda ctx: tf.data.Dataset.from_tensor_slices((x, y)).batch(16), {"clean": None}
    )
    assert set(results["clean"]) == {"top1", "top4", "count"}
    assert results["clean"]["top4"] == pytest.approx(numpy_topk(logits_fn, x, y, 4)) == 1.0
    assert "| top-4 (%) |" in report.markdown_table(results)
