"""ESAPR end to end on synthetic data: learning, transfer stages, the experiment folder, exact resume."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from esapr.config import build_config
from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.models import DataInfo, build_model
from esapr.training.trainer import train
from tests.synthetic import write_ratings_csv

SMALL = dict(max_len=16, train_window=2, train_batch_size=64, val_batch_size=50, test_batch_size=50,
             encoder_hidden_layer=[32], encode_len=16, test_negative_sample_size=20, device="cpu")


def small_config(tmp_path: Path, **overrides):
    data_file = tmp_path / "ratings.csv"
    if not data_file.exists():
        write_ratings_csv(data_file)
    options = dict(SMALL, data_file=str(data_file), local_data_folder=str(tmp_path / "data"),
                   experiment_root=str(tmp_path / "runs"))
    options.update(overrides)
    return build_config(["train_vae"], options)


def test_vae_learns_and_writes_experiment_folder(tmp_path):
    config = small_config(tmp_path, num_epochs=12, saturation_wait_epochs=3, experiment_name="learn")
    results = train(config, progress=False)
    folder = Path(results["experiment"])
    val = Experiment(folder).read_table("val_log")
    first, best = float(val[0]["NDCG@10"]), max(float(r["NDCG@10"]) for r in val)
    assert best > first + 0.1, (first, best)
    assert results["test"]["NDCG@10"] > 0.3  # 21 candidates: random ranking gives about 0.2
    saved = json.loads((folder / "config.json").read_text())
    assert saved["n_items"] > 0 and saved["n_users"] == 120 and saved["model_code"] == "vae"
    for name in ("models/best_model.pth", "models/recent_checkpoint.pth", "tables/train_log.csv",
                 "tables/val_log.csv", "tables/test_log.csv", "results.json"):
        assert (folder / name).is_file(), name
    assert (folder / "status").read_text().strip() == "finished"
    header = (folder / "tables/test_log.csv").read_text().splitlines()[0].split(",")
    assert {"NDCG@10", "Recall@10", "MRR", "full_NDCG@10"} <= set(header)
    checkpoint = torch.load(folder / "models/recent_checkpoint.pth", weights_only=True)
    assert checkpoint["schedule"]["recover_len"] <= 16 and "optimizer" in checkpoint
    # a finished run is never overwritten silently
    with pytest.raises(UserError, match="finished run"):
        train(config, progress=False)


def test_test_runs_when_num_epochs_runs_out(tmp_path):
    results = train(small_config(tmp_path, num_epochs=2, experiment_name="short"), progress=False)
    assert results["epochs"] == 2 and "NDCG@10" in results["test"]


def test_transfer_stages_halve_recover_len_to_one(tmp_path):
    config = small_config(tmp_path, num_epochs=60, saturation_wait_epochs=1, lr=0.05, experiment_name="stages")
    results = train(config, progress=False)
    log = Experiment(Path(results["experiment"])).read_table("train_log")
    stages = [int(r["recover_len"]) for r in log]
    assert stages[0] == 16
    assert [s for i, s in enumerate(stages) if i == 0 or s != stages[i - 1]] == [16, 8, 4, 2, 1]


def test_model_init_is_seeded():
    config = build_config(["train_vae"], dict(encoder_hidden_layer=[8], encode_len=4))
    info = DataInfo(n_users=3, n_items=10, n_days=1)
    a, b = build_model(config, info), build_model(config, info)
    torch.manual_seed(123)
    c = build_model(config, info)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pc)
    other = build_model(build_config(["train_vae"], dict(encoder_hidden_layer=[8], encode_len=4, model_init_seed=1)), info)
    assert not torch.equal(next(a.parameters()), next(other.parameters()))


def test_decoder_activation_none_is_linear():
    config = build_config(["train_vae"], dict(encoder_hidden_layer=[8], encode_len=4))
    model = build_model(config, DataInfo(3, 10, 1))
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.Tanh)) for m in model.decoder)
    fixed = build_model(build_config(["train_vae"], dict(encoder_hidden_layer=[8], encode_len=4,
                                                          decoder_activation="relu")), DataInfo(3, 10, 1))
    assert any(isinstance(m, torch.nn.ReLU) for m in fixed.decoder)


def _cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "esapr", "train", "--templates", "train_vae", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def _args(tmp_path, name):
    config = small_config(tmp_path)
    options = dict(SMALL, data_file=config.data_file, local_data_folder=config.local_data_folder,
                   experiment_root=config.experiment_root, num_epochs=40, saturation_wait_epochs=2,
                   lr=0.02, experiment_name=name, checkpoint_every_seconds=0.1)
    args = []
    for key, value in options.items():
        args += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return args


def test_sigkill_in_a_transfer_stage_then_resume_gives_identical_results(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    reference = _cli(_args(tmp_path, "uninterrupted"), env=env)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    expected = json.loads((tmp_path / "runs/ratings/uninterrupted/results.json").read_text())

    folder = tmp_path / "runs/ratings/killed"
    run = _cli(_args(tmp_path, "killed"), env=env)
    killed_at = None
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None:
        log = Experiment(folder).read_table("train_log") if (folder / "tables/train_log.csv").exists() else []
        if log and int(log[-1]["recover_len"]) < 16 and int(log[-1]["recover_len"]) > 1:
            run.send_signal(signal.SIGKILL)
            killed_at = int(log[-1]["epoch"])
            break
        time.sleep(0.005)
    run.wait(timeout=60)
    assert killed_at is not None, "the run ended before it reached a transfer stage"
    assert (folder / "status").read_text().strip() == "running"

    refused = _cli(_args(tmp_path, "killed"), env=env)
    assert refused.wait(timeout=120) != 0 and "--resume" in refused.stderr.read()

    resumed = _cli(_args(tmp_path, "killed") + ["--resume"], env=env)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    got = json.loads((folder / "results.json").read_text())
    assert got["test"] == expected["test"]
    assert got["best_epoch"] == expected["best_epoch"] and got["epochs"] == expected["epochs"]
    val_epochs = [int(r["epoch"]) for r in Experiment(folder).read_table("val_log")]
    assert val_epochs == list(range(1, got["epochs"] + 1))


def test_resume_from_an_older_checkpoint_replays_transfer_with_the_right_best_model(tmp_path, monkeypatch):
    """Checkpoints are written every N seconds, so a resumed run may replay epochs whose transfer
    stage reloads the best model of that time, while best_model.pth on disk already holds a
    later one. The checkpoint carries the best weights, so the replay ends exactly as the run."""
    config = small_config(tmp_path, num_epochs=40, saturation_wait_epochs=2, lr=0.02, experiment_name="replay",
                          checkpoint_every_seconds=0)
    saved = {}
    original_save = Experiment.save

    def keep_copies(self, path, state):
        original_save(self, path, state)
        if path.name == "recent_checkpoint.pth":
            saved[state["state"]["epoch"]] = path.read_bytes()

    monkeypatch.setattr(Experiment, "save", keep_copies)
    expected = train(config, progress=False)
    folder = Path(expected["experiment"])
    exp = Experiment(folder)
    stages = [int(r["recover_len"]) for r in exp.read_table("train_log")]
    plateau = next(e for e in range(1, len(stages)) if stages[e] < stages[e - 1])  # epoch of the first transfer
    val = [float(r["NDCG@10"]) for r in exp.read_table("val_log")][:plateau]
    best_then = val.index(max(val)) + 1
    assert expected["best_epoch"] > plateau > best_then  # the final best_model.pth is a later model

    (folder / "models/recent_checkpoint.pth").write_bytes(saved[best_then])
    (folder / "status").write_text("running\n")
    resumed = train(replace(config, resume=True), progress=False)
    assert resumed["test"] == expected["test"] and resumed["best_epoch"] == expected["best_epoch"]


def test_resume_with_more_epochs_extends_a_run_exactly(tmp_path):
    """--resume may change num_epochs: 2 epochs, then resumed to 4, equals 4 epochs in one go."""
    straight = train(small_config(tmp_path, num_epochs=4, experiment_name="straight"), progress=False)
    train(small_config(tmp_path, num_epochs=2, experiment_name="extended"), progress=False)
    with pytest.raises(UserError, match="lr \(saved 0.005, now 0.01\)"):
        train(small_config(tmp_path, num_epochs=4, lr=0.01, experiment_name="extended", resume=True), progress=False)
    extended = train(small_config(tmp_path, num_epochs=4, experiment_name="extended", resume=True), progress=False)
    assert extended["epochs"] == 4 and extended["test"] == straight["test"]
    assert extended["best_epoch"] == straight["best_epoch"]


def test_evaluate_reproduces_test_metrics_and_deletes_nothing(tmp_path):
    config = small_config(tmp_path, num_epochs=3, experiment_name="evaluate")
    results = train(config, progress=False)
    folder = Path(results["experiment"])
    before = sorted(p.name for p in folder.rglob("*"))
    out = subprocess.run([sys.executable, "-m", "esapr", "evaluate", "--experiment", str(folder), "--json",
                          "--device", "cpu"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == pytest.approx(results["test"])
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_trainer_has_no_model_branches():
    source = (Path(__file__).resolve().parents[1] / "esapr/training/trainer.py").read_text()
    assert "model_code ==" not in source and "isinstance(self.model" not in source
