"""The model from Python: datasets from arrays, a folder and a CSV file; training, evaluation,
checkpoints; a recommender saved, loaded and serving new users and new items; bad input raising."""

import os
import pathlib

import numpy as np
import pytest

import recgoat

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "lfm2k"


def clustered():
    """60 users in 3 taste groups over 60 items; a feature that knows the groups."""
    rng = np.random.default_rng(0)
    train, valid, test = [], [], []
    for u in range(60):
        g = u % 3
        items = [g * 20 + (u // 3 + 3 * k) % 20 for k in range(8)]
        train += [(u, i) for i in items[:6]]
        valid.append((u, items[6]))
        test.append((u, items[7]))
    feat = np.zeros((60, 6), dtype=np.float32)
    feat[np.arange(60), np.arange(60) // 20] = 2.0
    feat += 0.3 * rng.normal(size=feat.shape).astype(np.float32)
    return recgoat.Dataset.from_arrays(np.array(train), np.array(valid), np.array(test), {"f": feat}), feat


SMALL = dict(embedding_dim=8, gat_heads=2, knn_k=4, batch_size=32, epochs=8, lr=0.01)


def test_dataset_from_arrays_and_a_folder():
    data, _ = clustered()
    assert (data.n_users, data.n_items) == (60, 60)
    assert data.train.shape == (360, 2) and data.features == [("f", 6)]
    lfm = recgoat.Dataset.load(str(DATA), ["text_feat"])
    assert (lfm.n_users, lfm.n_items, len(lfm.train)) == (1858, 1425, 44327)
    cold = lfm.hold_out_items(0.2, 7)
    assert len(cold.cold_items) == 285


def test_train_evaluate_checkpoint_and_serve(tmp_path):
    data, feat = clustered()
    trainer = recgoat.Trainer(data, "recgoat", threads=1, **SMALL)
    assert trainer.config["embedding_dim"] == 8
    trainer.fit(progress=False)
    state = trainer.state
    assert state["epoch"] == 8 and 1 <= state["best_epoch"] <= 8
    test = trainer.evaluate("test")
    # random ranking gives about 0.19 at 10 of 54 unseen items; the groups are easy
    assert test["recall@10"] > 0.5 and test["users"] == 60
    ckpt = tmp_path / "checkpoint.safetensors"
    trainer.save_checkpoint(str(ckpt))
    resumed = recgoat.Trainer.resume(str(ckpt), data, threads=1)
    assert resumed.state["epoch"] == 8
    users, items = trainer.embeddings()
    assert users.shape == (60, 8) and items.shape == (60, 8)

    path = tmp_path / "recommender.safetensors"
    trainer.recommender().save(str(path))
    rec = recgoat.Recommender.load(str(path))
    assert rec.shape == (60, 60)
    top = rec.recommend([0, 1], 5)
    assert len(top) == 2 and len(top[0]) == 5
    seen = set(data.train[data.train[:, 0] == 0, 1])
    assert not seen & {i for i, _ in top[0]}
    # a new user with a group-0 history gets group-0 items
    history = [0, 1, 2]
    for_them = rec.recommend_history(history, 5)
    assert all(i not in history for i, _ in for_them)
    assert sum(i < 20 for i, _ in for_them) >= 4
    # a new item from its features joins the catalogue
    first, end = rec.add_items({"f": feat[:1]})
    assert (first, end) == (60, 61) and rec.shape == (60, 61)
    assert rec.score([(0, 60)])[0] == pytest.approx(float(rec.user_vectors[0] @ rec.item_vectors[60]), rel=1e-5)


def test_dataset_from_a_csv_file_keeps_its_ids(tmp_path):
    rows = ["user,item"] + [f"u{u},i{(u + k) % 12}" for u in range(30) for k in range(6)]
    csv = tmp_path / "interactions.csv"
    csv.write_text("\n".join(rows) + "\n")
    data = recgoat.Dataset.load(str(csv))
    assert (data.n_users, data.n_items) == (30, 12)
    trainer = recgoat.Trainer(data, "lightgcn", threads=1, embedding_dim=8, epochs=2)
    trainer.fit(progress=False)
    assert trainer.recommender().shape == (30, 12)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda d: recgoat.Trainer(d, "nonsense"), ValueError, "nonsense"),
        (lambda d: recgoat.Trainer(d, "lightgcn", no_such_field=1), ValueError, "no_such_field"),
        (lambda d: recgoat.Trainer(d, "lightgcn", lr=-1.0), ValueError, "lr"),
        (lambda d: d.hold_out_items(1.5, 1), ValueError, "fraction"),
        (lambda d: recgoat.Dataset.load("/nonexistent/recgoat"), OSError, "nonexistent"),
        (lambda d: recgoat.Recommender.load("/nonexistent/r.safetensors"), OSError, "nonexistent"),
        (lambda d: recgoat.Dataset.from_arrays(np.ones((3, 3), dtype=int), d.valid, d.test), ValueError, "N x 2"),
        (lambda d: recgoat.Dataset.from_arrays(np.array([[0, -1]]), d.valid, d.test), ValueError, "negative"),
        (lambda d: recgoat.Trainer(d).evaluate("train"), ValueError, "split"),
    ],
)
def test_bad_input_raises(call, error, message):
    data, _ = clustered()
    with pytest.raises(error, match=message):
        call(data)


def test_a_new_item_with_the_wrong_features_is_refused(tmp_path):
    data, feat = clustered()
    trainer = recgoat.Trainer(data, "recgoat", threads=1, **{**SMALL, "epochs": 1})
    trainer.fit(progress=False)
    rec = trainer.recommender()
    with pytest.raises(ValueError, match="f"):
        rec.add_items({"f": feat[:1, :3]})
    with pytest.raises(ValueError, match="other"):
        rec.add_items({"other": feat[:1]})
    with pytest.raises(ValueError):
        rec.recommend([10_000], 5)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a recommender")
    with pytest.raises(ValueError):
        recgoat.Recommender.load(str(bad))
    assert os.path.exists(bad)
