"""esapr compare under concurrency and kills: a run another process holds is waited for and then
reused (in this process and with --jobs), two compares of the same runs at once both finish with
every run, a run whose process died shows as interrupted, and a SIGKILLed ``compare --jobs 2``
leaves no training child behind: the rerun resumes them and the table holds every run."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import esapr
from esapr.comparison import plan_runs
from esapr.comparison.pool import read_outcome
from esapr.experiment import Experiment
from esapr.files import FolderLock, lock_holder
from tests.conftest import cli_env, tiny
from tests.synthetic import write_ratings_csv
from tests.test_compare_inputs import finished_run

COMMON = {"experiment_root": None, "experiment_group": "g", "num_epochs": 3}


def held_then_finished(path: Path, seconds: float) -> threading.Thread:
    """Hold ``path``'s lock as another training process would (status "running"), then mark the run
    finished and let go after ``seconds``."""
    Experiment(path).set_status("running")
    lock = FolderLock(path, "a test holds it")
    lock.acquire()

    def finish():
        time.sleep(seconds)
        Experiment(path).set_status("finished")
        lock.release()
    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_lock_holder_probe(tmp_path):
    assert lock_holder(tmp_path / "none") is None and not (tmp_path / "none").exists()
    with FolderLock(tmp_path, "test"):
        assert lock_holder(tmp_path).startswith(f"pid {os.getpid()}, since ")
    assert lock_holder(tmp_path) is None                       # released: the file stays, nobody holds it
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / ".lock")
    assert lock_holder(tmp_path / "fifo") is None


def test_metrics_added_on_demand_are_written_only_under_the_folders_lock(tmp_path, monkeypatch):
    path = finished_run(tmp_path, "train_vae", 0, [0, 1, 3])
    experiment, results = Experiment(path), path / "results.json"
    before = results.read_bytes()
    expected = {"Recall@1": pytest.approx(1 / 3), "MRR": pytest.approx((1 + 1 / 2 + 1 / 4) / 3)}
    with FolderLock(path, "a process training the run again"):     # held: computed, not written
        assert experiment.test_metrics(["Recall@1", "MRR"]) == expected
        assert results.read_bytes() == before
    assert experiment.test_metrics(["Recall@1", "MRR"]) == expected   # free: added
    assert json.loads(results.read_text())["test"] == expected

    lock = Experiment.lock

    def rewritten_first(self):          # another process rewrites results.json before this one locks
        Experiment(path).write_results({**json.loads(results.read_text()), "test": {}, "epochs": 5})
        return lock(self)
    monkeypatch.setattr(Experiment, "lock", rewritten_first)
    assert experiment.test_metrics(["Recall@5"]) == {"Recall@5": 1.0}
    assert json.loads(results.read_text())["test"] == {} and json.loads(results.read_text())["epochs"] == 5


def test_a_running_run_whose_process_died_is_interrupted(tmp_path):
    path = finished_run(tmp_path, "train_vae", 0, [0, 1], num_epochs=3)
    run = plan_runs(["train_vae"], [0], {**COMMON, "experiment_root": str(tmp_path)})[0]
    Experiment(path).set_status("running")
    outcome = read_outcome(run)
    assert (outcome.state, outcome.note) == ("interrupted", "its process died")
    with FolderLock(path, "test"):
        outcome = read_outcome(run)
        assert outcome.state == "running" and outcome.note.startswith(f"by pid {os.getpid()}")
    finished_run(tmp_path, "train_vae", 1, [0, 1], num_epochs=3)
    result = esapr.compare(["train_vae"], seeds=[0, 1], aggregate_only=True, say=lambda *a: None,
                           **{**COMMON, "experiment_root": str(tmp_path)})
    assert result.left_out_lines() == ["interrupted (its process died): vae_seed0"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_run_held_by_another_process_is_waited_for_then_reused(jobs, tmp_path):
    for seed in (0, 1):
        finished_run(tmp_path, "train_vae", seed, [0, 1, 3], num_epochs=3)
    thread = held_then_finished(tmp_path / "g" / "vae_seed1", 1.5)
    said = []
    start = time.monotonic()
    result = esapr.compare(["train_vae"], seeds=[0, 1], jobs=jobs, say=said.append, progress="quiet",
                           **{**COMMON, "experiment_root": str(tmp_path)})
    thread.join()
    assert time.monotonic() - start >= 1.4
    assert [(o.state, o.action) for o in result.runs] == [("finished", "reused")] * 2
    waits = [line for line in said if line.startswith("[waiting]")]
    assert len(waits) == 1 and f"is being trained by another esapr process (pid {os.getpid()}" in waits[0]


def options_file(tmp_path: Path, epochs: int) -> list[str]:
    """CLI words of VAE_net's tiny preset on a fresh synthetic file in tmp_path."""
    data = write_ratings_csv(tmp_path / "ratings.csv", n_users=60, n_items=40)
    options = {**tiny("train_vae_net", data), "num_epochs": epochs, "saturation_wait_epochs": 10_000}
    return [word for name, value in options.items()
            for word in (f"--{name}", *map(str, value if isinstance(value, list) else [value]))]


def start_compare(tmp_path: Path, words: list[str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "esapr", "compare", "--templates", "train_vae_net", "--seeds",
                             "0", "1", "2", "--jobs", "2", *words, *extra], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def saved_table(tmp_path: Path) -> dict:
    tables = list((tmp_path / "experiments" / "ratings").glob("comparison_*.json"))
    assert len(tables) == 1
    return json.loads(tables[0].read_text())


@pytest.mark.slow
def test_two_compares_of_the_same_runs_at_once_both_finish_every_run(tmp_path):
    words = options_file(tmp_path, 40)
    first, second = start_compare(tmp_path, words), start_compare(tmp_path, words)
    done = [process.communicate(timeout=300) for process in (first, second)]
    for process, (out, err) in zip((first, second), done):
        assert process.returncode == 0, err + out
        assert "failed" not in out and "Traceback" not in err
    group = tmp_path / "experiments" / "ratings"
    assert [Experiment(group / f"vae_net_seed{s}").status() for s in range(3)] == ["finished"] * 3
    assert [r["state"] for r in saved_table(tmp_path)["runs"]] == ["finished"] * 3
    logs = [p.name for p in (group / "compare_logs").iterdir()]
    assert {name.split(".")[1] for name in logs} <= {str(first.pid), str(second.pid)}    # each its own files
    assert len(logs) == len(set(logs))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_sigkill_of_compare_jobs_then_a_rerun_accounts_for_every_run(tmp_path):
    words = options_file(tmp_path, 150)
    group = tmp_path / "experiments" / "ratings"
    process = start_compare(tmp_path, words)
    deadline = time.monotonic() + 120
    while not any((group / f"vae_net_seed{s}" / "models" / "recent_checkpoint.pth").is_file() for s in range(3)):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    holders = [lock_holder(group / f"vae_net_seed{s}") for s in range(3)]
    assert any(holders)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    # the children got SIGTERM: each stops as interrupted, releasing its folder
    deadline = time.monotonic() + 60
    while any(lock_holder(group / f"vae_net_seed{s}") for s in range(3)):
        assert time.monotonic() < deadline, "a training child outlived its compare"
        time.sleep(0.2)
    statuses = [Experiment(group / f"vae_net_seed{s}").status() for s in range(3)]
    assert "running" not in statuses and "interrupted" in statuses
    rerun = start_compare(tmp_path, words)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err + out
    runs = saved_table(tmp_path)["runs"]
    assert [r["state"] for r in runs] == ["finished"] * 3 and "resumed" in [r["action"] for r in runs]
    assert all(r["epochs"] == 150 for r in runs)
    assert [m["seeds"] for m in saved_table(tmp_path)["models"]] == [3]
