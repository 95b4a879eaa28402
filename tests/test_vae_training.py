"""ESAPR end to end on synthetic data: learning, transfer stages, the experiment folder, exact
resume, the run's seed in every random draw, and evaluation of a saved run without a trainer."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from esapr.cli import main
from esapr.config import build_config
from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.models import DataInfo, build_model
from esapr.training.trainer import Trainer, epoch_seed, train
from tests.conftest import tiny
from tests.synthetic import write_ratings_csv

# the tiny preset, a little wider: enough to learn the synthetic walks within a few epochs, and a
# window of 16 for transfer stages 16, 8, 4, 2, 1
WIDER = dict(max_len=16, train_batch_size=64, encoder_hidden_layer=[32], encode_len=16)


def small_config(tmp_path: Path, **overrides):
    data_file = tmp_path / "ratings.csv"
    if not data_file.exists():
        write_ratings_csv(data_file)
    options = tiny("train_vae", data_file, **WIDER, experiment_root=str(tmp_path / "runs"))
    return build_config(["train_vae"], {**options, **overrides})


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


def _stages_by_rule(metrics: list[float], patience: int, stop_at_idle: bool, max_len: int) -> list[int]:
    """The recover_len of every epoch that the stage rule gives for this validation sequence."""
    recover, best, best_epoch, wait_from, stage_from, stages = max_len, -1.0, 0, 0, 0, []
    for epoch, metric in enumerate(metrics, 1):
        stages.append(recover)
        if metric > best:
            best, best_epoch, wait_from = metric, epoch, epoch
        elif epoch - wait_from >= patience:
            if recover <= 1 or (stop_at_idle and best_epoch <= stage_from):
                break
            recover //= 2
            wait_from = stage_from = epoch
    return stages


@pytest.mark.parametrize("stop_at_idle", [True, False])
def test_stage_patience_and_stop_at_idle_stage(tmp_path, stop_at_idle):
    config = small_config(tmp_path, num_epochs=80, saturation_wait_epochs=50, stage_patience=2, lr=0.05,
                          stop_at_idle_stage=stop_at_idle, experiment_name=f"idle_{stop_at_idle}")
    results = train(config, progress=False)
    experiment = Experiment(Path(results["experiment"]))
    metrics = [float(row["NDCG@10"]) for row in experiment.read_table("val_log")]
    stages = [int(row["recover_len"]) for row in experiment.read_table("train_log")]
    assert stages == _stages_by_rule(metrics, 2, stop_at_idle, 16)
    assert len(stages) < 80 and stages[-1] >= 1
    if not stop_at_idle:
        assert stages[-1] == 1


def test_idle_stage_ends_the_run_only_when_asked():
    config = build_config(["train_vae"], dict(encoder_hidden_layer=[8], encode_len=4, max_len=16, stage_patience=3))
    model = build_model(config, DataInfo(3, 10, 1))
    schedule = model.make_schedule()
    assert schedule.patience(32) == 3
    assert schedule.on_plateau(model, improved=False).message == "recover_len -> 8"
    idle = build_model(build_config(["train_vae"], dict(encoder_hidden_layer=[8], encode_len=4, max_len=16,
                                                        stop_at_idle_stage=True)), DataInfo(3, 10, 1))
    schedule = idle.make_schedule()
    assert schedule.patience(32) == 32
    assert schedule.on_plateau(idle, improved=True).message == "recover_len -> 8"
    assert schedule.on_plateau(idle, improved=False) is None


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
    small_config(tmp_path)          # the data file
    options = tiny("train_vae", tmp_path / "ratings.csv", **WIDER, experiment_root=str(tmp_path / "runs"),
                   num_epochs=40, saturation_wait_epochs=2, lr=0.02, experiment_name=name,
                   checkpoint_every_seconds=0.1)
    args = []
    for key, value in options.items():
        args += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return args


@pytest.mark.slow
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
    resumed = train(config.with_run(resume=True), progress=False)
    assert resumed["test"] == expected["test"] and resumed["best_epoch"] == expected["best_epoch"]


def test_resume_with_more_epochs_extends_a_run_exactly(tmp_path):
    """--resume may change num_epochs: 2 epochs, then resumed to 4, equals 4 epochs in one go."""
    straight = train(small_config(tmp_path, num_epochs=4, experiment_name="straight"), progress=False)
    train(small_config(tmp_path, num_epochs=2, experiment_name="extended"), progress=False)
    with pytest.raises(UserError, match=r"lr \(saved 0.005, now 0.01\)"):
        train(small_config(tmp_path, num_epochs=4, lr=0.01, experiment_name="extended", resume=True), progress=False)
    extended = train(small_config(tmp_path, num_epochs=4, experiment_name="extended", resume=True), progress=False)
    assert extended["epochs"] == 4 and extended["test"] == straight["test"]
    assert extended["best_epoch"] == straight["best_epoch"]


def test_evaluate_reproduces_test_metrics_without_a_trainer_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """``esapr evaluate`` loads the model and its saved weights only: no Trainer (no optimizer, no
    scaler, no ``prepare``); a run trained with relative paths is evaluated from another folder
    (it recorded where its data is); the folder is left as it was."""
    small_config(tmp_path)                  # the data file
    monkeypatch.chdir(tmp_path)
    config = small_config(tmp_path, num_epochs=3, experiment_name="evaluate", data_file="ratings.csv",
                          local_data_folder="data", experiment_root="runs")
    results = train(config, progress=False)
    folder = (tmp_path / results["experiment"]).resolve()
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def no_trainer(*args, **kwargs):
        raise AssertionError("evaluate built a Trainer")
    monkeypatch.setattr(Trainer, "__init__", no_trainer)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for split in ("test", "val"):
        assert main(["evaluate", "--experiment", str(folder), "--split", split, "--json", "--device", "cpu"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        expected = results["test"] if split == "test" else Experiment(folder).read_table("val_log")[
            results["best_epoch"] - 1]
        assert metrics == pytest.approx({name: float(expected[name]) for name in metrics}, abs=1e-12)
    assert set(metrics) == set(results["test"])
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


# --- the run's seed reaches every random draw -----------------------------------------------------------

def record_global_draws(monkeypatch) -> tuple[list, list]:
    """Per epoch: the global torch random state as the epoch starts, and every draw from the global
    stream in it (the VAE's input dropout masks are ``torch.rand``, its reparameterisation noise
    ``torch.randn_like``; a draw with its own generator, such as the batch order, is not global)."""
    starts, draws = [], []
    run_epoch = Trainer.run_epoch

    def recording_epoch(self, epoch, limit=None):
        starts.append(torch.get_rng_state())
        draws.append([])
        return run_epoch(self, epoch, limit)
    monkeypatch.setattr(Trainer, "run_epoch", recording_epoch)
    for name in ("rand", "randn_like"):
        def recording(*args, _draw=getattr(torch, name), _name=name, **kwargs):
            out = _draw(*args, **kwargs)
            if draws and kwargs.get("generator") is None:
                draws[-1].append((_name, out.clone()))
            return out
        monkeypatch.setattr(torch, name, recording)
    return starts, draws


def replay(epoch_seed_value: int, draws: list) -> list:
    """The draws of ``draws``' kinds and shapes from a global stream seeded with ``epoch_seed_value``."""
    torch.manual_seed(epoch_seed_value)
    return [(name, torch.rand(t.shape) if name == "rand" else torch.randn_like(t)) for name, t in draws]


def test_two_seeds_share_no_random_draw_and_seed_0_keeps_the_epoch_numbers_stream(tmp_path, data_file, monkeypatch):
    """VAE_net (input dropout 0.5 and reparameterisation noise in every step) for 2 epochs with
    seeds 0, 1 and 2. Seed 0's epoch e draws exactly what ``torch.manual_seed(e)`` gives (so
    seed-0 results are what they were); seeds 1 and 2 start every epoch from other states and
    share no dropout mask and no noise with each other or with seed 0."""
    starts, draws = record_global_draws(monkeypatch)
    runs = {}
    for seed in (0, 1, 2):
        starts.clear()
        draws.clear()
        options = tiny("train_vae_net", data_file, num_epochs=2, dataloader_random_seed=seed,
                       experiment_root=str(tmp_path), experiment_name=f"seed{seed}")
        train(build_config(["train_vae_net"], options), progress=False)
        runs[seed] = (list(starts), list(draws))
    monkeypatch.undo()
    for seed, (seed_starts, seed_draws) in runs.items():
        assert len(seed_starts) == len(seed_draws) == 2
        for epoch, epoch_draws in enumerate(seed_draws, start=1):
            kinds = {name for name, _ in epoch_draws}
            assert kinds == {"rand", "randn_like"}, kinds           # masks and noise, every epoch
            expected = replay(epoch_seed(seed, epoch), epoch_draws)   # nothing else draws from the stream
            assert all(torch.equal(got, want) for (_, got), (_, want) in zip(epoch_draws, expected))
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        assert torch.equal(runs[0][0][epoch - 1], torch.get_rng_state())
    first = {seed: runs[seed][1][0] for seed in runs}            # epoch 1's draws, in order
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert all(not torch.equal(x, y) for x, y in zip(runs[a][0], runs[b][0]))
        noise = [(x, y) for (kind, x), (_, y) in zip(first[a], first[b]) if kind == "randn_like"]
        assert noise and all(x.shape == y.shape and not torch.allclose(x, y) for x, y in noise)
        masks = [(x.flatten(), y.flatten()) for (kind, x), (_, y) in zip(first[a], first[b]) if kind == "rand"]
        assert masks and all(not torch.equal(x[:min(len(x), len(y))], y[:min(len(x), len(y))]) for x, y in masks)


def test_epoch_seeds_of_two_runs_never_meet():
    assert [epoch_seed(0, epoch) for epoch in range(1, 6)] == [1, 2, 3, 4, 5]
    seeds = {(seed, epoch): epoch_seed(seed, epoch) for seed in range(1, 6) for epoch in range(1, 200)}
    assert len(set(seeds.values())) == len(seeds)
    assert not set(seeds.values()) & set(range(0, 200))               # nor seed 0's epochs
    assert all(0 <= value < 2**64 for value in seeds.values())


def test_a_run_of_seed_3_resumed_from_an_older_checkpoint_ends_as_the_uninterrupted_run(tmp_path, data_file,
                                                                                       monkeypatch):
    """Epochs 3 and 4 are replayed from epoch 2's checkpoint with seed 3's epoch streams: the same
    losses, validation rows and test metrics as the run that never stopped (and not seed 0's)."""
    saved = {}
    save = Experiment.save

    def keep_copies(self, path, state):
        save(self, path, state)
        if path.name == "recent_checkpoint.pth":
            saved[state["state"]["epoch"]] = path.read_bytes()
    monkeypatch.setattr(Experiment, "save", keep_copies)
    options = tiny("train_vae_net", data_file, num_epochs=4, experiment_root=str(tmp_path))
    config = build_config(["train_vae_net"], {**options, "dataloader_random_seed": 3})
    straight = train(config, progress=False)
    folder = Path(straight["experiment"])
    logs = {table: Experiment(folder).read_table(table) for table in ("train_log", "val_log")}
    (folder / "models/recent_checkpoint.pth").write_bytes(saved[2])
    (folder / "status").write_text("interrupted\n")
    resumed = train(config.with_run(resume=True), progress=False)
    assert resumed["test"] == straight["test"] and resumed["best_epoch"] == straight["best_epoch"]
    again = {table: Experiment(folder).read_table(table) for table in ("train_log", "val_log")}
    assert [r["loss"] for r in again["train_log"]] == [r["loss"] for r in logs["train_log"]]
    assert again["val_log"] == logs["val_log"]
    seed0 = train(build_config(["train_vae_net"], {**options, "experiment_name": "seed0"}), progress=False)
    assert [r["loss"] for r in Experiment(Path(seed0["experiment"])).read_table("train_log")] != \
        [r["loss"] for r in logs["train_log"]]


def test_trainer_has_no_model_branches():
    source = (Path(__file__).resolve().parents[1] / "esapr/training/trainer.py").read_text()
    assert "model_code ==" not in source and "isinstance(self.model" not in source
