"""notebooks/tune.ipynb runs headless (nbclient) on tiny models and synthetic data, with its form
overridden by ESAPR_NB_* variables: it tunes, shows each study, compares the tuned settings, and
run again it continues the studies (their budget spent: nothing trained)."""
import json
import os
from pathlib import Path

import pytest

from tests.conftest import tiny
from tests.synthetic import write_ratings_csv

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "tune.ipynb"


def execute(cwd: Path) -> str:
    """Run the notebook in ``cwd``; its printed output."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for cell in nb.cells for o in cell.get("outputs", []))


@pytest.mark.slow
def test_the_tune_notebook_tunes_compares_and_continues(tmp_path, monkeypatch):
    data_file = write_ratings_csv(tmp_path / "ratings.csv", n_users=60)
    overrides = {k: v for k, v in tiny("train_vae_net").items() if k != "device"}
    env = {"DATA_FILE": str(data_file), "DATA_FOLDER": str(tmp_path / "data"), "EXPERIMENT_ROOT": str(tmp_path / "exp"),
           "TEMPLATES": "train_ease, train_vae_net", "TRIALS": "3", "EPOCHS": "2", "COMPARE_SEEDS": "0", "DEVICE": "cpu",
           "USE_DRIVE": "false", "OVERRIDES": json.dumps(overrides)}
    for name, value in env.items():
        monkeypatch.setenv(f"ESAPR_NB_{name}", value)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    out = execute(tmp_path)
    tune = tmp_path / "exp" / "ratings" / "tune"
    for template in ("train_ease", "train_vae_net"):
        assert f"{template}: 3 complete (budget 3 trials)" in out
        assert (tune / template / "history.png").read_bytes()[:4] == b"\x89PNG"
        assert f"{template}: tuned: {tune / template / 'best.yaml'}" in out
    assert "EASE tuned" in out and "VAE_net tuned" in out and "Full ranking" in out
    best = {p: p.read_text() for p in tune.glob("*/best.yaml")}
    again = execute(tmp_path)
    assert again.count("3 counted trial(s) so far") == 2 and again.count("nothing to train") == 2
    assert {p: p.read_text() for p in tune.glob("*/best.yaml")} == best
