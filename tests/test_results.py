"""Result tables and figures from hand-made experiment folders (no training)."""
import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from esapr.cli import main
from esapr.config import build_config
from esapr.errors import UserError
from esapr.results import format_table, highlight, plot_curves, plot_results_table, results_table

matplotlib.use("Agg")


def make_experiment(root: Path, name: str, template: str, model_code: str, dataset: str, test: dict,
                    val_rows: list[dict] | None = None, train_rows: list[dict] | None = None,
                    finished: bool = True, best_epoch: int = 2) -> Path:
    path = root / "group" / name
    (path / "tables").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"templates": [template], "model_code": model_code,
                                                  "model_label": build_config([template]).run.model_label,
                                                  "experiment_name": name, "dataset_code": dataset,
                                                  "n_users": 10, "n_items": 20}))
    val_rows = val_rows or [{"epoch": e, **{k: v * e / best_epoch for k, v in test.items()}} for e in (1, 2, 3)]
    pd.DataFrame(val_rows).to_csv(path / "tables" / "val_log.csv", index=False)
    if train_rows is None:
        train_rows = [{"epoch": e, "loss": 5.0 - e, "lr": 0.001, "seconds": 1.0} for e in (1, 2, 3)]
    pd.DataFrame(train_rows).to_csv(path / "tables" / "train_log.csv", index=False)
    if finished:
        pd.DataFrame([{"epoch": best_epoch, **test}]).to_csv(path / "tables" / "test_log.csv", index=False)
        (path / "results.json").write_text(json.dumps({"test": test, "best_epoch": best_epoch, "epochs": 3,
                                                       "train_seconds": 3.0, "model_code": model_code,
                                                       "dataset": dataset}))
        (path / "status").write_text("finished\n")
    else:
        (path / "status").write_text("running\n")
    return path


def metrics(n10: float, r10: float, full_n10: float) -> dict:
    return {"NDCG@10": n10, "Recall@10": r10, "MRR": n10 / 2, "full_NDCG@10": full_n10}


@pytest.fixture()
def root(tmp_path):
    # ml-a: BERT best overall on NDCG@10, VAE_tw best VAE; VAE_tr best overall on Recall@10
    make_experiment(tmp_path, "bert", "train_bert", "bert", "ml-a", metrics(0.45, 0.60, 0.10))
    make_experiment(tmp_path, "vae_net", "train_vae_net", "vae", "ml-a", metrics(0.20, 0.40, 0.05))
    make_experiment(tmp_path, "vae_tr", "train_vae_tr", "vae", "ml-a", metrics(0.30, 0.70, 0.06))
    make_experiment(tmp_path, "vae", "train_vae", "vae", "ml-a", metrics(0.40, 0.65, 0.12))
    # ml-b: only two models; the VAE is best overall, BERT ties it on Recall@10
    make_experiment(tmp_path, "bert_b", "train_bert", "bert", "ml-b", metrics(0.10, 0.25, 0.01))
    make_experiment(tmp_path, "vae_b", "train_vae", "vae", "ml-b", metrics(0.15, 0.25, 0.02))
    # unfinished: left out
    make_experiment(tmp_path, "running", "train_sas", "sas", "ml-a", metrics(0.9, 0.9, 0.9), finished=False)
    return tmp_path


def test_results_table_rows_columns_and_values(root):
    table = results_table(root)
    assert table.index.names == ["dataset", "model"]
    assert list(table.index) == [("ml-a", "BERT4Rec"), ("ml-a", "VAE_net"), ("ml-a", "VAE_tr"), ("ml-a", "VAE_tw"),
                                 ("ml-b", "BERT4Rec"), ("ml-b", "VAE_tw")]
    assert list(table.columns) == ["NDCG@10", "Recall@10", "MRR", "full_NDCG@10"]
    assert table.loc[("ml-a", "VAE_tr"), "Recall@10"] == 0.70
    assert table.loc[("ml-b", "BERT4Rec"), "full_NDCG@10"] == 0.01
    assert Path(table.attrs["paths"][0]).name == "bert"
    only = results_table(root, metrics=["Recall@10", "NDCG@10"])
    assert list(only.columns) == ["Recall@10", "NDCG@10"]
    with pytest.raises(UserError, match="unknown metric"):
        results_table(root, metrics=["NDCG@11"])


def test_results_table_val_split_reads_best_epoch_row(root):
    table = results_table(root, split="val")
    # val rows were test * epoch / best_epoch, so the best epoch's row equals the test values
    assert table.loc[("ml-a", "VAE_tw"), "NDCG@10"] == pytest.approx(0.40)
    assert table.attrs["split"] == "val"


def test_results_table_single_folder_and_duplicates(root, tmp_path):
    single = results_table(root / "group" / "vae")
    assert list(single.index) == [("ml-a", "VAE_tw")]
    other = tmp_path / "more"
    make_experiment(other, "vae_again", "train_vae", "vae", "ml-a", metrics(0.1, 0.1, 0.1))
    both = results_table([root / "group" / "vae", other])
    assert sorted(m for _, m in both.index) == ["VAE_tw (vae)", "VAE_tw (vae_again)"]
    make_experiment(tmp_path / "x", "vae", "train_vae", "vae", "ml-a", metrics(0.2, 0.2, 0.2))
    (tmp_path / "x" / "group").rename(tmp_path / "x" / "other_group")
    three = results_table([root / "group" / "vae", tmp_path / "x"])
    assert sorted(m for _, m in three.index) == ["VAE_tw (group/vae)", "VAE_tw (other_group/vae)"]
    with pytest.raises(UserError, match="no finished experiments"):
        results_table(root / "group" / "running")


def test_results_table_follows_linked_folders(root, tmp_path):
    elsewhere = tmp_path / "drive"
    make_experiment(elsewhere, "sas", "train_sas", "sas", "ml-a", metrics(0.3, 0.5, 0.05))
    (root / "linked").symlink_to(elsewhere / "group", target_is_directory=True)
    table = results_table(root)
    assert ("ml-a", "SASRec") in list(table.index)


def test_highlight_bold_best_vae_italic_best_overall(root):
    marks = highlight(results_table(root))
    assert marks[("ml-a", "VAE_tw", "NDCG@10")] == (True, False)
    assert marks[("ml-a", "BERT4Rec", "NDCG@10")] == (False, True)
    assert marks[("ml-a", "VAE_tr", "Recall@10")] == (True, True)
    assert marks[("ml-a", "BERT4Rec", "Recall@10")] == (False, False)
    assert marks[("ml-b", "VAE_tw", "NDCG@10")] == (True, True)   # per dataset, not across datasets
    assert marks[("ml-b", "BERT4Rec", "NDCG@10")] == (False, False)
    assert marks[("ml-b", "VAE_tw", "Recall@10")] == (True, True)      # a tie: both best overall,
    assert marks[("ml-b", "BERT4Rec", "Recall@10")] == (False, True)   # only the VAE is bold


def test_plot_results_table_fonts_and_png(root, tmp_path):
    png = tmp_path / "out" / "table.png"
    fig = plot_results_table(results_table(root), png)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = {t.get_gid(): t for t in fig.findobj(matplotlib.text.Text) if (t.get_gid() or "").startswith("cell|")}
    assert len(cells) == 6 * 4

    def style(dataset, model, metric):
        text = cells[f"cell|{dataset}|{model}|{metric}"]
        return text.get_fontweight() in ("bold", 700), text.get_fontstyle() == "italic", text.get_text()

    assert style("ml-a", "VAE_tw", "NDCG@10") == (True, False, "0.4000")
    assert style("ml-a", "BERT4Rec", "NDCG@10") == (False, True, "0.4500")
    assert style("ml-a", "VAE_net", "NDCG@10") == (False, False, "0.2000")
    assert style("ml-a", "VAE_tr", "Recall@10") == (True, True, "0.7000")
    assert style("ml-a", "VAE_tw", "full_NDCG@10") == (True, True, "0.1200")
    assert style("ml-b", "VAE_tw", "MRR") == (True, True, "0.0750")
    assert style("ml-b", "BERT4Rec", "Recall@10") == (False, True, "0.2500")
    texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    assert "ml-a" in texts and "ml-b" in texts and "full NDCG@10" in texts


def test_plot_curves_marks_transfer_stages(tmp_path):
    train_rows = [{"epoch": e, "loss": 10 - e, "lr": 0.001, "seconds": 1, "recover_len": r, "kl_weight": 0.1}
                  for e, r in zip(range(1, 8), [8, 8, 4, 4, 4, 2, 1])]
    path = make_experiment(tmp_path, "vae", "train_vae", "vae", "ml-a", metrics(0.3, 0.5, 0.1),
                           train_rows=train_rows,
                           val_rows=[{"epoch": e, **metrics(0.1 * e, 0.1, 0.01 * e)} for e in range(1, 8)])
    png = tmp_path / "curves.png"
    fig = plot_curves(path, png)
    assert png.is_file()
    top, bottom = fig.axes
    vertical = sorted({line.get_xdata()[0] for line in top.get_lines() if len(set(line.get_xdata())) == 1
                       and len(line.get_xdata()) == 2})
    assert vertical == [2.5, 5.5, 6.5]   # recover_len 8 -> 4 at epoch 3, -> 2 at 6, -> 1 at 7
    labels = [t.get_text() for t in top.texts]
    assert labels == ["r=4", "r=2", "r=1"]
    assert list(bottom.get_lines()[0].get_ydata()) == [9, 8, 7, 6, 5, 4, 3]


def test_plot_curves_without_stages_and_missing_logs(root, tmp_path):
    fig = plot_curves(root / "group" / "bert")
    assert not fig.axes[0].texts
    empty = tmp_path / "empty"
    (empty / "tables").mkdir(parents=True)
    with pytest.raises(UserError, match="no training logs"):
        plot_curves(empty)


def test_cli_results_prints_metrics_as_rows(root, tmp_path, capsys):
    png, curves = tmp_path / "t.png", tmp_path / "curves"
    assert main(["results", "--root", str(root), "--png", str(png), "--curves", str(curves)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["dataset", "ml-a"] and "ml-b" in lines[0]
    assert lines[1].split() == ["model", "BERT4Rec", "VAE_net", "VAE_tr", "VAE_tw", "BERT4Rec", "VAE_tw"]
    ndcg = next(line for line in lines if line.startswith("NDCG@10"))
    assert ndcg.split()[1:] == ["0.4500", "0.2000", "0.3000", "0.4000", "0.1000", "0.1500"]
    assert png.is_file() and len(list(curves.glob("curves_*.png"))) == 6
    assert format_table(results_table(root)) in out


def test_cli_results_errors_are_one_line(tmp_path, capsys):
    assert main(["results", "--root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err
    assert main(["results", "--digits", "abc"]) == 2
    assert capsys.readouterr().err == "esapr: error: --digits expects a whole number, got 'abc'\n"
    assert main(["results", "--lr", "0.1"]) == 2          # results takes its flags, no run option
    err = capsys.readouterr().err
    assert err.startswith("esapr: error: unknown option '--lr'") and "this command takes --root, --png" in err


def test_cli_results_reads_experiments_by_default(root, monkeypatch, capsys):
    (root / "group").rename(root / "experiments")
    monkeypatch.chdir(root)
    assert main(["results"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1] == "BERT4Rec"
    monkeypatch.chdir(root / "experiments")
    assert main(["results"]) == 2
    assert "no ./experiments folder here (esapr results reads it by default); pass --root" in capsys.readouterr().err


# --- figure fixes: runs' epochs in the table, whole captions, integer epochs, labelled cut-off --------
def _set_config(path: Path, **values) -> None:
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **values}))


def _inside(fig) -> None:
    """Every text of the figure lies inside it (nothing cut off at the edges)."""
    fig.canvas.draw()
    width = fig.get_window_extent().width
    for text in fig.findobj(matplotlib.text.Text):
        if text.get_text() and text.get_visible():
            box = text.get_window_extent()
            assert box.x0 >= -0.5 and box.x1 <= width + 0.5, text.get_text()


def test_plot_results_table_shows_epochs_capped_and_pilot_runs(tmp_path):
    capped = make_experiment(tmp_path, "capped", "train_vae", "vae", "ml-a", metrics(0.3, 0.5, 0.1))
    _set_config(capped, num_epochs=3)                      # 3 epochs of 3: stopped by the limit
    pilot = make_experiment(tmp_path, "pilot", "train_bert", "bert", "ml-a", metrics(0.1, 0.2, 0.0))
    _set_config(pilot, pilot=True)
    done = make_experiment(tmp_path, "done", "train_sas", "sas", "ml-a", metrics(0.2, 0.4, 0.05))
    _set_config(done, num_epochs=50)                       # stopped early at 3 of 50
    fig = plot_results_table(results_table(tmp_path))
    info = {t.get_gid(): t.get_text() for t in fig.findobj(matplotlib.text.Text)
            if (t.get_gid() or "").startswith("info|")}
    assert info["info|epochs|ml-a|VAE_tw"] == "3 (2) capped"
    assert info["info|epochs|ml-a|BERT4Rec"] == "3 (2) pilot"
    assert info["info|epochs|ml-a|SASRec"] == "3 (2)"
    assert info["info|time|ml-a|SASRec"] == "3.0 s, ?"           # train_seconds 3.0, no device saved
    _inside(fig)


def test_one_column_table_keeps_its_caption_whole(root):
    fig = plot_results_table(results_table(root / "group" / "vae"), title="one run of ESAPR on a small dataset")
    caption = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_gid() == "caption")
    assert "italic: best overall" in caption and caption.endswith("use esapr compare.")
    _inside(fig)


def test_curves_have_whole_epochs_and_no_stage_note_without_stages(tmp_path):
    train_rows = [{"epoch": e, "loss": 10 - e, "lr": 0.001, "seconds": 1, "recover_len": 8} for e in (1, 2, 3)]
    path = make_experiment(tmp_path, "vae_net", "train_vae_net", "vae", "ml-a", metrics(0.3, 0.5, 0.1),
                           train_rows=train_rows)
    _set_config(path, num_epochs=3)
    fig = plot_curves(path)
    title = fig.texts[0].get_text()
    assert "transfer stages" not in title and "capped" in title
    fig.canvas.draw()
    ticks = [t for t in fig.axes[1].get_xticks() if 1 <= t <= 3]
    assert ticks == [1, 2, 3]


def test_rank_distribution_labels_the_cut_off(tmp_path):
    from esapr.experiment import Experiment
    from esapr.results import plot_rank_distribution
    path = make_experiment(tmp_path, "vae", "train_vae", "vae", "ml-a", metrics(0.3, 0.5, 0.1))
    Experiment(path).write_ranks("test", np.arange(1, 7), np.array([0, 3, 9, 10, 40, 99]),
                                 np.array([0, 30, 90, 100, 400, 999]))
    fig = plot_rank_distribution(path, k=10)
    for axis in fig.axes:
        labels = [t.get_text() for t in axis.get_legend().get_texts()]
        assert labels == ["cut-off @10: ranks 0-9 are hits"]
