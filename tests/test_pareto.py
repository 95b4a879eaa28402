"""The Pareto picture of a comparison: the front on hand-made points, the table and figure of a
hand-made comparison (numbers, marks, labels that cover nothing), and ``esapr compare --pareto``
on a tiny comparison of real runs (its files beside the comparison's, the same numbers)."""
import matplotlib
import numpy as np
import pandas as pd
import pytest

from esapr.cli import main
from esapr.comparison import Comparison, protocol_label
from esapr.comparison.pareto import pareto_front, pareto_markdown, pareto_table, plot_pareto
from esapr.comparison.report import set_name
from tests.conftest import as_args, tiny
from tests.synthetic import write_ratings_csv


def test_the_front_by_hand():
    # EASE 2 s 0.07, SLIST 20 s 0.11, MARank 20 s 0.04 (SLIST is as fast and better), VAE_net 97 s 0.07
    # (EASE is faster and as good), ESAPR+ 800 s 0.12, a twin of SLIST (equal points both stay), no time
    times = [2.0, 20.0, 20.0, 97.0, 800.0, 20.0, float("nan")]
    values = [0.07, 0.11, 0.04, 0.07, 0.12, 0.11, 0.5]
    assert pareto_front(times, values) == [True, True, False, False, True, True, False]
    assert pareto_front([], []) == []


def comparison_of(models: dict[str, tuple[float, float, float]], closed_form=("EASE",)) -> Comparison:
    """``{model: (seconds, full mean, sampled mean)}``, intervals +-0.01 (full) and +-0.02 (sampled)."""
    rows = [{"protocol": protocol, "metric": metric, "model": model, "mean": mean + (metric != "NDCG@10"),
             "std": 0.003, "ci_low": mean - width, "ci_high": mean + width, "seeds": 3, "p_value": 0.5,
             "p_holm": 0.5, "mark": "worse", "identical": model in closed_form}
            for model, (_, full, sampled) in models.items()
            for protocol, mean, width in (("full", full, 0.01), ("sampled", sampled, 0.02))
            for metric in ("NDCG@10", "Recall@10")]
    frame = pd.DataFrame([{"model": model, "template": f"train_{model.lower()}", "seeds": 3, "train_seconds": seconds,
                           "closed_form": model in closed_form} for model, (seconds, _, _) in models.items()])
    return Comparison(pd.DataFrame(rows), frame, [], {"full": protocol_label("full"),
                                                      "sampled": protocol_label("sampled")},
                      "ml-100k", 943, {"seeds": [0, 1, 2]})


MODELS = {"EASE": (2.0, 0.074, 0.186), "SLIST": (20.0, 0.116, 0.272), "MARank": (20.0, 0.039, 0.089),
          "VAE_net": (97.0, 0.071, 0.206), "ESAPR+": (807.0, 0.1185, 0.295), "SASRec": (1265.0, 0.0975, 0.2725),
          "VAE_tw": (1325.0, 0.0808, 0.2749), "TiSASRec": (10119.0, 0.1126, 0.2909),
          "MEANTIME": (12873.0, 0.112, 0.3107)}


def test_the_table_has_each_models_numbers_fastest_first_and_its_front():
    comparison = comparison_of(MODELS)
    table = pareto_table(comparison)
    assert list(table["model"]) == ["EASE", "SLIST", "MARank", "VAE_net", "ESAPR+", "SASRec", "VAE_tw", "TiSASRec",
                                    "MEANTIME"]
    row = table.set_index("model").loc["ESAPR+"]
    assert (row["metric"], row["train_seconds"], row["full_mean"], row["sampled_ci_low"]) == \
        ("NDCG@10", 807.0, 0.1185, pytest.approx(0.275))
    assert list(table.loc[table["full_front"], "model"]) == ["EASE", "SLIST", "ESAPR+"]
    assert list(table.loc[table["sampled_front"], "model"]) == ["EASE", "SLIST", "ESAPR+", "MEANTIME"]
    assert pareto_table(comparison, "Recall@10")["full_mean"].iloc[0] == pytest.approx(1.074)
    markdown = pareto_markdown(comparison, table)
    assert "| ESAPR+ (`train_esapr+`) | 3 | 13.4 min | **0.1185** [0.1085, 0.1285] | **0.2950** [0.2750, 0.3150] |" \
        in markdown
    assert "| EASE (`train_ease`) | one fit for every seed (closed form) | 2.0 s |" in markdown
    assert "| SASRec (`train_sasrec`) | 3 | 21.1 min | 0.0975 [0.0875, 0.1075] | 0.2725 [0.2525, 0.2925] |" in markdown


def test_the_figure_marks_the_front_and_its_labels_cover_no_label_and_no_point(tmp_path):
    comparison = comparison_of(MODELS)
    png = tmp_path / "pareto.png"
    fig = plot_pareto(comparison, png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    fronts = {"full": {"EASE", "SLIST", "ESAPR+"}, "sampled": {"EASE", "SLIST", "ESAPR+", "MEANTIME"}}
    for protocol, front in fronts.items():
        lines = {a.get_gid(): a for a in fig.findobj(matplotlib.lines.Line2D) if a.get_gid()}
        markers = {model: lines[f"point|{protocol}|{model}"] for model in MODELS}
        for model, marker in markers.items():
            assert (marker.get_markerfacecolor() != "white") == (model in front), (protocol, model)
        x, y = lines[f"front|{protocol}"].get_data()
        assert list(y) == sorted(y) and len(x) == len(front)
        labels = {t.get_gid(): t for t in fig.findobj(matplotlib.text.Text) if (t.get_gid() or "").startswith("label")}
        boxes = [labels[f"label|{protocol}|{m}"].get_window_extent(renderer) for m in MODELS]
        points = [marker.get_window_extent(renderer) for marker in markers.values()]
        for i, box in enumerate(boxes):
            assert not any(box.overlaps(other) for other in boxes[i + 1:]), list(MODELS)[i]
            assert not any(box.overlaps(point) for j, point in enumerate(points) if j != i), list(MODELS)[i]
        assert labels[f"label|{protocol}|ESAPR+"].get_fontweight() in ("bold", 700)
    axis = fig.axes[0]
    assert axis.get_xscale() == "log" and axis.get_ylabel() == "test NDCG@10 (mean over seeds, 95% interval)"


@pytest.mark.slow
def test_esapr_compare_pareto_writes_the_figure_and_table_beside_the_comparison(tmp_path, capsys):
    """EASE and SLIST on a tiny file, two seeds: the files beside comparison_<hash>.*, the table's
    numbers the comparison's own; then again from the saved runs only (--aggregate_only)."""
    data = write_ratings_csv(tmp_path / "ratings.csv", n_users=60, n_items=40)
    options = {**tiny("train_ease", data), **tiny("train_slist", data), "experiment_root": str(tmp_path / "runs")}
    args = ["compare", "--templates", "train_ease", "train_slist", "--seeds", "0", "1", "--quiet", "--pareto",
            *as_args(options)]
    assert main(args) == 0
    out = capsys.readouterr().out
    prefix = tmp_path / "runs" / "ratings" / set_name(["train_ease", "train_slist"])
    files = {kind: prefix.parent / f"{prefix.name}_pareto.{kind}" for kind in ("png", "csv", "md")}
    assert all(f"pareto {kind}: {path}" in out for kind, path in files.items())
    assert files["png"].read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(files["csv"])
    saved = pd.read_csv(prefix.with_suffix(".csv"))
    for row in table.itertuples():
        for protocol in ("full", "sampled"):
            cell = saved[(saved["model"] == row.model) & (saved["protocol"] == protocol)
                         & (saved["metric"] == "NDCG@10")]
            assert getattr(row, f"{protocol}_mean") == pytest.approx(cell["mean"].iloc[0], abs=1e-12)
        assert row.train_seconds == pytest.approx(cell["train_seconds"].iloc[0])
    assert set(table["model"]) == {"EASE", "SLIST"} and table["full_front"].any()
    assert np.isfinite(table["train_seconds"]).all()
    written = {kind: path.stat().st_mtime_ns for kind, path in files.items()}
    assert main(args + ["--aggregate_only", "--metrics", "Recall@10"]) == 0
    assert all(path.stat().st_mtime_ns > written[kind] for kind, path in files.items())
    assert pd.read_csv(files["csv"])["metric"].unique().tolist() == ["Recall@10"]
