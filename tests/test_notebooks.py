"""The notebooks run top to bottom (nbclient, kernel "python3") on a tiny synthetic dataset, and the
notebook helpers (Drive outside/inside Colab, the automatic resume decision) behave."""
import json
import os
import re
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from esapr.colab import (check_drive_path, in_colab, mount_drive, plan_run, project_root, unmount_drive,
                         zip_experiment)
from esapr.config import build_config
from esapr.errors import UserError
from tests.conftest import as_args, closed_port_url, start_cli, tiny
from tests.synthetic import write_ratings_csv

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# the notebooks train VAE variants (train_vae, train_vae_net, train_vae_tr): the VAE's tiny preset
TINY = tiny("train_vae", saturation_wait_epochs=1)


def execute(path: Path, cwd: Path, timeout: int = 240, allow_errors: bool = False):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=allow_errors,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def cell_text(nb, title: str) -> str:
    """The outputs (stdout, stderr, displays, errors) of the code cell whose title holds ``title``."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and title in c.source.splitlines()[0])
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
        parts.append(output.get("evalue", ""))
    return "\n".join(parts)


def text_of(nb) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


def comparison_files(nb) -> dict[str, Path]:
    """The files compare_models says it saved (its "saved ..." line), by suffix."""
    line = next(line for line in text_of(nb).splitlines() if line.startswith("saved "))
    return {Path(word).suffix[1:]: Path(word) for word in line.split()[1:]}


@pytest.fixture(scope="module")
def nb_env(tmp_path_factory):
    """Environment for the notebook kernels: tiny data, tiny models, 2 epochs, local folders."""
    base = tmp_path_factory.mktemp("notebooks")
    data_file = write_ratings_csv(base / "ratings.csv", n_users=80, n_items=40)
    env = {
        "ESAPR_NB_DATA_FILE": str(data_file), "ESAPR_NB_DATA_FOLDER": str(base / "data"),
        "ESAPR_NB_EXPERIMENT_ROOT": str(base / "experiments"), "ESAPR_NB_EPOCHS": "2",
        "ESAPR_NB_TEMPLATES": "train_vae", "ESAPR_NB_OVERRIDES": json.dumps(TINY), "ESAPR_NB_USE_DRIVE": "false",
        "ESAPR_NB_DEVICE": "cpu", "ESAPR_NB_USER": "1", "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield base


@pytest.fixture(scope="module")
def esapr_run(nb_env):
    nb = execute(REPO / "ESAPR.ipynb", nb_env)
    return nb_env, nb


@pytest.mark.slow
def test_esapr_notebook_trains_and_writes_table_curves_zip(esapr_run):
    base, nb = esapr_run
    root = base / "experiments"
    experiment = root / "ratings" / "vae"
    assert (experiment / "status").read_text().strip() == "finished"
    results = json.loads((experiment / "results.json").read_text())
    assert results["epochs"] == 2
    for png in (root / "ratings" / "results_table.png", experiment / "curves.png"):
        assert png.read_bytes()[:4] == b"\x89PNG", png
    assert (root / "ratings-vae.zip").stat().st_size > 1000
    out = text_of(nb)
    assert "Training a new run" in out and "Not running in Colab" in out
    assert "top-10 for user 1" in out and "NDCG@10" in out
    # progress reads in the saved notebook: one text line redrawn in place, ending at the last epoch,
    # not a widget's first frame ("0%") or one frozen bar per epoch
    train = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith("#@title Train"))
    bars = [o for o in train.outputs if o.output_type in ("display_data", "update_display_data")]
    assert len(bars) == 1 and "application/vnd.jupyter.widget-view+json" not in bars[0]["data"]
    assert bars[0]["data"]["text/plain"].startswith("training: 100%|") and "2/2" in bars[0]["data"]["text/plain"]
    assert "capped: stopped at NUM_EPOCHS = 2" in cell_text(nb, "Train")


@pytest.mark.slow
def test_esapr_notebook_again_shows_the_finished_run(esapr_run):
    base, _ = esapr_run
    experiment = base / "experiments" / "ratings" / "vae"
    before = (experiment / "models" / "best_model.pth").stat().st_mtime_ns
    nb = execute(REPO / "ESAPR.ipynb", base)
    assert "holds a finished run with these options; showing it" in text_of(nb)
    assert (experiment / "models" / "best_model.pth").stat().st_mtime_ns == before


@pytest.mark.slow
def test_esapr_notebook_refuses_a_folder_with_other_options(esapr_run, monkeypatch):
    """An option changed in the form after a finished run: the run is not shown as the new one."""
    base, _ = esapr_run
    monkeypatch.setenv("ESAPR_NB_OVERRIDES", json.dumps({**TINY, "lr": 0.01}))
    nb = execute(REPO / "ESAPR.ipynb", base, allow_errors=True)
    train = cell_text(nb, "Train")
    assert "holds a finished run with other options: lr (saved 0.005, now 0.01)" in train
    assert "set OVERWRITE = True" in train
    assert "showing it" not in train and "test metrics of" not in train


@pytest.mark.slow
def test_esapr_notebook_another_dataset_trains_its_own_run(esapr_run, monkeypatch):
    """DATA_FILE switched after a finished run: a new folder (the dataset is part of it), a new run,
    and the results table holds only that dataset's runs."""
    base, _ = esapr_run
    other = write_ratings_csv(base / "other.csv", n_users=70, n_items=40, seed=3)
    monkeypatch.setenv("ESAPR_NB_DATA_FILE", str(other))
    monkeypatch.setenv("ESAPR_NB_EPOCHS", "1")
    nb = execute(REPO / "ESAPR.ipynb", base)
    assert f"Training a new run in {base / 'experiments' / 'other' / 'vae'}" in cell_text(nb, "Train")
    assert json.loads((base / "experiments" / "other" / "vae" / "results.json").read_text())["epochs"] == 1
    table = cell_text(nb, "Results table")
    assert "other" in table and "ratings" not in table


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_folder_runs(esapr_run, notebook, monkeypatch):
    base, _ = esapr_run
    monkeypatch.setenv("ESAPR_NB_TEMPLATES", "train_vae_net,train_vae_tr")
    monkeypatch.setenv("ESAPR_NB_SEEDS", "0,1")
    monkeypatch.setenv("ESAPR_NB_GROUP", "compare")
    monkeypatch.setenv("ESAPR_NB_EXPERIMENT", str(base / "experiments" / "ratings" / "vae"))
    nb = execute(notebook, base)
    out = text_of(nb)
    if notebook.stem == "compare_models":
        group = base / "experiments" / "compare"
        files = comparison_files(nb)
        for path in (files["png"], group / "comparison_curves.png"):
            assert path.parent == group and path.read_bytes()[:4] == b"\x89PNG", path
        for name in ("vae_net_seed0", "vae_net_seed1", "vae_tr_seed0", "vae_tr_seed1"):
            assert (group / name / "status").read_text().strip() == "finished", name
        saved = json.loads(files["json"].read_text())
        assert [m["model"] for m in saved["models"]] == ["VAE_net", "VAE_tr"]
        assert "Full ranking" in out and "Popularity-sampled (20 popular negatives)" in out
    if notebook.stem == "inspect_experiment":
        experiment = base / "experiments" / "ratings" / "vae"
        assert (experiment / "rank_distribution.png").read_bytes()[:4] == b"\x89PNG"
        assert "the top-10" in out


# --- the notebooks in a clone's notebooks/ find the runs made at its root -------------------------------
PROJECT_COMPARE = ["--templates", "train_vae_net", "train_vae_tr", "--seeds", "0", "--num_epochs", "1"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder as README's commands leave it: ml-100k's raw file in Data/ (its mirror is
    unreachable, so it is found there or nowhere) and, at the root, a compare's finished runs made
    with ``esapr compare ... --dataset_code ml-100k``; an empty notebooks/. (root, data_url)."""
    root = tmp_path_factory.mktemp("project")
    ratings = pd.read_csv(write_ratings_csv(root / "ratings.csv", n_users=60, n_items=40))
    (root / "Data" / "ml-100k").mkdir(parents=True)
    ratings.to_csv(root / "Data" / "ml-100k" / "u.data", sep="\t", header=False, index=False)
    (root / "ratings.csv").unlink()
    (root / "notebooks").mkdir()
    url = closed_port_url("ml-100k.zip")
    options = as_args(TINY)
    process = start_cli(["compare", *PROJECT_COMPARE, "--dataset_code", "ml-100k", "--data_url", url, *options,
                         "--quiet"], root)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    return root, url


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_run_from_notebooks_find_the_projects_runs_and_data(nb_env, project, notebook, monkeypatch):
    """No folder set: the runs at the project's root are reused (compare_models) or inspected, with
    the data in its Data/; nothing is made in notebooks/."""
    root, url = project
    for name in ("EXPERIMENT_ROOT", "DATA_FOLDER", "DATA_FILE", "EXPERIMENT", "GROUP"):
        monkeypatch.delenv(f"ESAPR_NB_{name}", raising=False)
    for name, value in {"DATASET": "ml-100k", "TEMPLATES": "train_vae_net,train_vae_tr", "SEEDS": "0", "EPOCHS": "1",
                        "OVERRIDES": json.dumps({**TINY, "data_url": url})}.items():
        monkeypatch.setenv(f"ESAPR_NB_{name}", value)
    group = root / "experiments" / "ml-100k"
    weights = {p: p.stat().st_mtime_ns for p in group.glob("*/models/best_model.pth")}
    assert len(weights) == 2
    nb = execute(notebook, root / "notebooks")
    out = text_of(nb)
    if notebook.stem == "compare_models":
        assert f"experiments: {group.parent}" in out and f"data cache:  {root / 'Data'}" in out
        assert "2 run(s) reused, 0 trained" in out
        png = comparison_files(nb)["png"]
        assert png.parent == group and png.read_bytes()[:4] == b"\x89PNG"
    if notebook.stem == "inspect_experiment":
        shown = Path(re.search(r"experiment: (.*)", out).group(1))
        assert shown.parent == group and (shown / "rank_distribution.png").read_bytes()[:4] == b"\x89PNG"
        assert "the top-10" in out
    assert {p: p.stat().st_mtime_ns for p in group.glob("*/models/best_model.pth")} == weights
    assert list((root / "notebooks").iterdir()) == []


def test_project_root_is_the_nearest_folder_with_runs_data_or_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = tmp_path / "home"
    clone = home / "clone"
    (clone / "notebooks" / "deep").mkdir(parents=True)
    assert project_root(clone / "notebooks") == clone / "notebooks"      # nothing anywhere: the working folder
    (home / "Data").mkdir()
    assert project_root(clone / "notebooks") == clone / "notebooks"      # ~/Data is not a project's
    (clone / "setup.py").write_text("")
    assert project_root(clone / "notebooks" / "deep") == clone
    (clone / "notebooks" / "experiments").mkdir()
    assert project_root(clone / "notebooks" / "deep") == clone / "notebooks"     # the nearest wins
    assert project_root(home) == home                                   # the home folder itself may be one
    monkeypatch.chdir(clone / "notebooks" / "deep")
    assert project_root() == clone / "notebooks"


@pytest.mark.slow
def test_esapr_notebook_raised_epochs_extend_the_finished_run(esapr_run, monkeypatch):
    """NUM_EPOCHS raised after a capped run: the run continues from its checkpoint (as
    esapr train --resume --num_epochs 3), it does not start again nor show the old numbers.
    (Last of the notebook runs: the folder now has 3 epochs.)"""
    base, _ = esapr_run
    experiment = base / "experiments" / "ratings" / "vae"
    monkeypatch.setenv("ESAPR_NB_EPOCHS", "3")
    nb = execute(REPO / "ESAPR.ipynb", base)
    assert "stopped at its epoch limit; continuing it to 3 epochs" in cell_text(nb, "Train")
    assert json.loads((experiment / "results.json").read_text())["epochs"] == 3
    assert json.loads((experiment / "config.json").read_text())["num_epochs"] == 3
    epochs = [line.split(",")[0] for line in (experiment / "tables" / "val_log.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]


def test_notebooks_that_train_check_the_gpu_and_read_the_documented_variables():
    nbformat = pytest.importorskip("nbformat")
    for path in [REPO / "ESAPR.ipynb", *NOTEBOOKS]:
        code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        text = "\n".join(code)
        if any(call in text for call in ("run_or_resume(", "esapr.compare(", "esapr.train(")):
            titles = [c.splitlines()[0].lower() for c in code]
            gpu = next((i for i, t in enumerate(titles) if "gpu" in t), None)
            install = next(i for i, t in enumerate(titles) if "install" in t)
            assert gpu is not None and gpu < install, path.name
        assert "COMPARE_TEMPLATES" not in text, path.name    # README documents ESAPR_NB_TEMPLATES
    settings = nbformat.read(REPO / "notebooks" / "compare_models.ipynb", as_version=4).cells[1].source
    for name in ("TEMPLATES", "SEEDS", "DATASET", "DATA_FILE", "EPOCHS", "OVERRIDES", "EXPERIMENT_ROOT"):
        assert f'_env("{name}"' in settings, name


def test_notebook_lists_every_step_as_a_titled_form_cell():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(REPO / "ESAPR.ipynb", as_version=4)
    assert "colab.research.google.com/github/esapr-dev/esapr/blob/main/ESAPR.ipynb" in nb.cells[0].source
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.source.startswith("#@title") for c in code)
    titles = [c.source.splitlines()[0].lower() for c in code]
    order = ["settings", "gpu", "install", "drive", "download", "train", "results table", "recommendations",
             "zip", "unmount"]
    positions = [next(i for i, t in enumerate(titles) if word in t) for word in order]
    assert positions == sorted(positions), titles
    assert "unmount_drive()" in code[-1].source


# --- helpers -------------------------------------------------------------------------------------
def test_a_notebook_shows_an_error_in_one_line_naming_keyword_arguments(capsys):
    from esapr.colab import _show_user_error
    _show_user_error(None, UserError, UserError("x holds a finished run; pass --overwrite to replace it"), None)
    assert capsys.readouterr().err == "esapr: error: x holds a finished run; pass overwrite=True to replace it\n"


def test_drive_outside_colab_is_a_one_line_no_op(capsys, tmp_path):
    assert not in_colab()
    assert mount_drive() is None
    unmount_drive()
    out = capsys.readouterr().out
    assert out.count("\n") == 2 and "Not running in Colab" in out
    assert check_drive_path(tmp_path) == tmp_path


@pytest.fixture()
def fake_colab(monkeypatch, tmp_path):
    """A google.colab stand-in whose drive.mount fails, and a mount point without MyDrive."""
    drive = types.SimpleNamespace(mount=lambda path: (_ for _ in ()).throw(ValueError("mount failed: denied\nmore")),
                                  flushed=[])
    drive.flush_and_unmount = lambda: drive.flushed.append(True)
    colab = types.ModuleType("google.colab")
    colab.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr("esapr.colab.DRIVE_MOUNTPOINT", str(tmp_path / "drive"))
    monkeypatch.setattr("esapr.colab._drive_module", lambda: drive)
    return drive


def test_missing_drive_inside_colab_is_one_clear_line(fake_colab, tmp_path, capsys):
    assert in_colab()
    mountpoint = tmp_path / "drive"
    unmount_drive(str(mountpoint))
    assert not fake_colab.flushed and "not mounted" in capsys.readouterr().out
    with pytest.raises(UserError) as error:
        mount_drive(str(mountpoint))
    assert "could not be mounted" in str(error.value) and "\n" not in str(error.value)
    assert "mount failed: denied" in str(error.value)
    with pytest.raises(UserError, match="Drive is not mounted"):
        check_drive_path(mountpoint / "MyDrive" / "esapr")
    (mountpoint / "MyDrive").mkdir(parents=True)
    assert mount_drive(str(mountpoint)) == mountpoint / "MyDrive"   # already mounted: no mount call
    assert check_drive_path(mountpoint / "MyDrive" / "esapr").name == "esapr"
    unmount_drive(str(mountpoint))
    assert fake_colab.flushed == [True]


def _config(tmp_path, **extra):
    return build_config(["train_vae"], dict(experiment_root=str(tmp_path), experiment_name="run", **extra))


def test_plan_run_decides_start_resume_show_overwrite(tmp_path):
    folder = tmp_path / "ml-1m" / "run"
    assert plan_run(_config(tmp_path))[0] == "start"
    (folder / "models").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(_config(tmp_path).values()))
    (folder / "status").write_text("running\n")
    assert plan_run(_config(tmp_path))[0] == "overwrite"          # unfinished, nothing to resume from
    (folder / "models" / "recent_checkpoint.pth").write_bytes(b"x")
    action, config = plan_run(_config(tmp_path))
    assert action == "resume" and config.run.resume and not config.run.overwrite
    (folder / "status").write_text("interrupted\n")
    assert plan_run(_config(tmp_path))[0] == "resume"
    (folder / "status").write_text("finished\n")
    (folder / "results.json").write_text(json.dumps({"epochs": 40, "test": {}}))    # stopped early: shown
    action, config = plan_run(_config(tmp_path))
    assert action == "show" and not config.run.resume
    action, config = plan_run(_config(tmp_path), overwrite=True)
    assert action == "overwrite" and config.run.overwrite and not config.run.resume


def test_zip_experiment_holds_the_folder(tmp_path):
    import zipfile
    folder = tmp_path / "root" / "group" / "name"
    (folder / "tables").mkdir(parents=True)
    (folder / "tables" / "val_log.csv").write_text("epoch\n1\n")
    archive = zip_experiment(folder, tmp_path / "root")
    assert archive == tmp_path / "root" / "group-name.zip"
    assert zipfile.ZipFile(archive).namelist() == ["name/", "name/tables/", "name/tables/val_log.csv"]


@pytest.mark.parametrize("notebook", ["ESAPR.ipynb", "notebooks/compare_models.ipynb"])
def test_extra_options_read_json_or_a_python_dict_and_refuse_the_rest_in_one_line(notebook, monkeypatch):
    """The settings cell alone: EXTRA_OPTIONS as a Python dict works; anything else is one line."""
    cell = next(c for c in json.loads((REPO / notebook).read_text())["cells"] if "#@title Settings" in "".join(c["source"]))
    code = "".join(cell["source"])
    monkeypatch.setenv("ESAPR_NB_OVERRIDES", "{'lr': 0.01, 'dropout': 0.3}")
    monkeypatch.setenv("ESAPR_NB_REVISION", "v1.2")
    namespace: dict = {}
    exec(compile(code, notebook, "exec"), namespace)
    assert namespace["OVERRIDES"] == {"lr": 0.01, "dropout": 0.3} and namespace["REVISION"] == "v1.2"
    monkeypatch.setenv("ESAPR_NB_OVERRIDES", "lr=0.01")
    with pytest.raises(SystemExit, match=r"ESAPR_NB_OVERRIDES is not a mapping of option: value"):
        exec(compile(code, notebook, "exec"), {})
