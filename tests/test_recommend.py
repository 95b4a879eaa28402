"""Recommendations from trained tiny experiments: original ids, seen items left out, the same scores
as the model's own evaluation batches, clear errors, the CLI and the widget panel."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import esapr
from esapr.cli import main
from esapr.config import build_config
from esapr.errors import UserError
from esapr.families import family
from esapr.recommend import load_experiment, recommendation_panel
from esapr.training.trainer import train
from tests.conftest import template_of, tiny
from tests.synthetic import write_ratings_csv


@pytest.fixture(scope="module")
def shifted_csv(tmp_path_factory) -> Path:
    """Synthetic ratings whose original ids differ from the dense ids (users 500+, items 1000+7i)."""
    folder = tmp_path_factory.mktemp("recommend")
    frame = pd.read_csv(write_ratings_csv(folder / "plain.csv"))
    frame["user"] += 500
    frame["item"] = 1000 + 7 * frame["item"]
    path = folder / "ratings.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def experiments(shifted_csv):
    """One tiny 1-epoch experiment per model family, trained lazily."""
    root = shifted_csv.parent
    made = {}

    def get(code: str) -> Path:
        if code not in made:
            template = template_of(code)
            epochs = {"num_epochs": 1} if family(code).trained else {}    # a closed-form model fits its grid
            options = tiny(template, shifted_csv, experiment_name=code, experiment_root=str(root / "runs"), **epochs)
            if code == "vae":   # the public API: templates and options
                results = esapr.train(templates=template, progress=False, **options)
            else:
                results = train(build_config([template], options), progress=False)
            made[code] = Path(results["experiment"])
        return made[code]
    return get


def reference_scores(loaded, user_row: int) -> torch.Tensor:
    """Scores after a user's full history from the model's own builder on the unmodified data:
    for a user that is not the last one, the answer index ``offsets[u+1]`` (the next user's first
    item) makes ``items[start:end]`` exactly the user's full history."""
    seqs = loaded.data.sequences
    assert user_row < seqs.n_users - 1
    model = loaded.model
    config = loaded.config
    builder = config.family.builder_class()(loaded.data, config.model, config.evaluation, torch.device("cpu"))
    users = torch.tensor([user_row])
    ends = torch.tensor([int(seqs.offsets[user_row + 1])])
    batch = builder.eval_batch(users, builder.starts[users], ends, builder.data)
    with torch.no_grad():
        return model.scores(batch)[0, : seqs.n_items + 1].float()


@pytest.mark.parametrize("code", ["vae", "bert", "sas", "marank", "ease", "slist"])
def test_known_user_top10_matches_model_scores(experiments, code):
    loaded = load_experiment(experiments(code))
    seqs = loaded.data.sequences
    user = int(seqs.user_ids[7])
    top = loaded.recommend(user=user, k=10)
    assert list(top.columns) == ["rank", "item", "score"] and list(top["rank"]) == list(range(1, 11))
    history = set(loaded.history(user)["item"].tolist())
    assert len(history) >= 3 and not history & set(top["item"].tolist())       # seen items left out
    assert set(top["item"]) <= set(seqs.item_ids.tolist())                      # original ids ...
    assert all(i >= 1007 and (i - 1000) % 7 == 0 for i in top["item"])         # ... not dense ones
    expected = reference_scores(loaded, 7)
    expected[0] = -torch.inf
    expected[torch.as_tensor(seqs.user_items(7).astype(np.int64))] = -torch.inf
    values, dense = torch.topk(expected, 10)
    assert top["item"].tolist() == seqs.item_ids[dense.numpy() - 1].tolist()
    np.testing.assert_allclose(top["score"].to_numpy(), values.numpy(), rtol=1e-5, atol=1e-6)
    assert (np.diff(top["score"].to_numpy()) <= 0).all()


@pytest.mark.parametrize("code", ["vae", "bert", "sas", "ease", "slist"])
def test_new_history_equals_known_user_with_that_history(experiments, code):
    """These models have no user embedding: a new history scores like the same known history."""
    loaded = load_experiment(experiments(code))
    user = int(loaded.data.sequences.user_ids[3])
    items = loaded.history(user)["item"].tolist()
    by_user = loaded.recommend(user=user, k=15)
    by_history = loaded.recommend(history=items, k=15)
    assert by_user["item"].tolist() == by_history["item"].tolist()
    np.testing.assert_allclose(by_user["score"], by_history["score"], rtol=1e-5, atol=1e-6)
    short = loaded.recommend(history=[str(items[0]), items[1]], k=5)   # ids as text work too
    assert len(short) == 5 and not {items[0], items[1]} & set(short["item"])


def test_unknown_ids_and_bad_arguments_are_user_errors(experiments):
    loaded = load_experiment(experiments("vae"))
    with pytest.raises(UserError, match="unknown user id 3"):
        loaded.recommend(user=3)            # dense row 3 exists, original id 3 does not
    with pytest.raises(UserError, match="unknown item id.*1001"):
        loaded.recommend(history=[1007, 1001])
    with pytest.raises(UserError, match="unknown item id.*abc"):
        loaded.recommend(history=["abc"])
    with pytest.raises(UserError, match="exactly one of"):
        loaded.recommend(user=501, history=[1007])
    with pytest.raises(UserError, match="exactly one of"):
        loaded.recommend()
    with pytest.raises(UserError, match="history is empty"):
        loaded.recommend(history=[])
    with pytest.raises(UserError, match="k must be"):
        loaded.recommend(user=501, k=0)
    with pytest.raises(UserError, match="no config.json"):
        load_experiment(experiments("vae").parent)


def test_data_options_say_where_the_data_is_now(experiments, shifted_csv, tmp_path):
    """A copy of the data file elsewhere (caches made in another folder) is the same data; a
    changed file is refused, whatever its name."""
    path = experiments("vae")
    expected = load_experiment(path).recommend(user=501, k=5)
    copy = tmp_path / "copy.csv"
    copy.write_bytes(shifted_csv.read_bytes())
    moved = load_experiment(path, data_file=str(copy), local_data_folder=str(tmp_path / "cache"))
    pd.testing.assert_frame_equal(moved.recommend(user=501, k=5), expected)
    assert len(list((tmp_path / "cache" / "preprocessed").iterdir())) == 1
    copy.write_text("".join(shifted_csv.read_text().splitlines(keepends=True)[:-1]))   # one interaction less
    with pytest.raises(UserError, match="differs from the data this run was trained on"):
        load_experiment(path, data_file=str(copy), local_data_folder=str(tmp_path / "cache")).recommend(user=501)


def test_marank_needs_a_known_user(experiments):
    loaded = load_experiment(experiments("marank"))
    with pytest.raises(UserError, match="known user"):
        loaded.recommend(history=[1007, 1014])


def test_titles_column_when_the_dataset_has_titles(experiments, monkeypatch):
    loaded = load_experiment(experiments("vae"))
    monkeypatch.setattr(type(loaded.data), "titles", lambda self: {i: f"Movie {i}" for i in self.sequences.item_ids})
    top = loaded.recommend(user=501, k=3)
    assert list(top.columns) == ["rank", "item", "title", "score"]
    assert top["title"].tolist() == [f"Movie {i}" for i in top["item"]]


def test_cli_recommend(experiments, capsys):
    path = experiments("vae")
    assert main(["recommend", "--experiment", str(path), "--user", "501", "-k", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "item", "score"] and len(lines) == 5
    expected = load_experiment(path).recommend(user=501, k=4)["item"].tolist()
    assert [int(line.split()[1]) for line in lines[1:]] == expected
    assert main(["recommend", "--experiment", str(path), "--user", "42"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown user id '42'" in err
    assert main(["recommend", "--experiment", str(path), "--items", "1007", "1014", "-k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_panel_recommends_for_user_and_items(experiments):
    pytest.importorskip("ipywidgets")
    path = experiments("vae")
    panel = recommendation_panel(path.parent, selected=path)
    assert panel.experiment.value == str(path.resolve())
    panel.user.value = "501"
    panel.button.click()
    assert panel.result is not None and len(panel.result) == 10
    panel.user.value, panel.items.value = "", "1007, 1014"
    assert len(panel.run()) == 10
    panel.user.value = "9999"
    panel.items.value = ""
    assert panel.run() is None and "unknown user id" in panel.message


def test_per_user_ranks_reproduce_the_reported_test_metrics(experiments):
    """tables/test_ranks.csv read by results.per_user_metrics averages to results.json's metrics."""
    import json
    from esapr.results import per_user_metrics, plot_rank_distribution
    path = experiments("vae")
    test = json.loads((path / "results.json").read_text())["test"]
    per_user = per_user_metrics(path, k=10)
    assert len(per_user) == 120
    for name in ("NDCG@10", "Recall@10", "full_NDCG@10", "full_Recall@10"):
        assert per_user[name].mean() == pytest.approx(test[name], abs=1e-9), name
    fig = plot_rank_distribution(path, path / "ranks.png")
    assert (path / "ranks.png").is_file() and len(fig.axes) == 2
