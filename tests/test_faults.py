"""Reliability under faults: a kill at any write, two processes on one folder or one cache, damaged
files, a full disk, a read-only folder. Nothing is lost, nothing is written outside the experiment
folder, and every failure is one line naming the problem and what to do."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from esapr.cli import main
from esapr.config import build_config
from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.files import FolderLock
from esapr.training.trainer import train
from tests.conftest import cli_env, start_cli, tiny, zip_bytes
from tests.synthetic import write_ratings_csv


def as_args(options: dict) -> list[str]:
    """``{name: value}`` as the command line's ``--name value ...``."""
    args = []
    for name, value in options.items():
        args += [f"--{name}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return args


# ESAPR's tiny preset, through its transfer stages (a plateau every epoch) in 4 epochs
OPTIONS = ["--templates", "train_vae", *as_args(tiny("train_vae", num_epochs=4, saturation_wait_epochs=1, lr=0.02,
                                                     test_negative_sample_size=10)), "--quiet"]

# A kill at a chosen write: ``os.replace`` is the last step of every file the package writes, so
# killing the process just before it (a temporary file left, the old file in place) or just after
# it (the new file in place, nothing after it written) covers every write.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    target, occurrence, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    real_replace, seen = os.replace, [0]
    def replace(src, dst):
        hit = Path(dst).name == target and seen.__setitem__(0, seen[0] + 1) is None and seen[0] == occurrence
        if hit and phase == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    from esapr.cli import main
    sys.exit(main(sys.argv[4:]))
""")


def command(*args: str, kill: tuple | None = None) -> list[str]:
    prefix = [sys.executable, "-c", KILLER, *map(str, kill)] if kill else [sys.executable, "-m", "esapr"]
    return [*prefix, *map(str, args)]


def cli(cwd: Path, *args: str, kill: tuple | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args, kill=kill), cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=300)


def run_together(cwd: Path, commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Start every command at once (they take about as long as the slowest), then collect them."""
    started = {name: subprocess.Popen(args, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for name, args in commands.items()}
    done = {}
    for name, process in started.items():
        out, err = process.communicate(timeout=600)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


def train_args(name: str) -> list[str]:
    return ["train", *OPTIONS, "--data_file", "ratings.csv", "--experiment_name", name]


def folder_of(base: Path, name: str) -> Path:
    return base / "experiments" / "ratings" / name


def recovery(base: Path, name: str) -> list[str]:
    """What a user does after a crash: --resume, or start again when there is nothing to resume."""
    resume = ["--resume"] if (folder_of(base, name) / "models" / "recent_checkpoint.pth").is_file() else []
    return [*train_args(name), *resume]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A data file with its prepared cache, and the uninterrupted run every recovery must equal."""
    base = tmp_path_factory.mktemp("faults")
    write_ratings_csv(base / "ratings.csv", n_users=50)
    done = cli(base, *train_args("reference"))
    assert done.returncode == 0, done.stderr
    return base


def results_of(folder: Path) -> dict:
    results = json.loads((folder / "results.json").read_text())
    return {key: results[key] for key in ("test", "best_epoch", "epochs")}


# (file, occurrence, before/after the rename): the first write of each file, writes in the middle of
# training (a checkpoint, written in the background, a log row), and the end of the run (the best
# model is written once, there)
KILL_POINTS = [("config.json", 1, "before"), ("status", 1, "after"), ("train_log.csv", 1, "before"),
               ("val_log.csv", 2, "after"), ("best_model.pth", 1, "before"), ("recent_checkpoint.pth", 2, "before"),
               ("recent_checkpoint.pth", 3, "after"), ("test_ranks.csv", 1, "before"), ("results.json", 1, "after"),
               ("status", 2, "before")]
TWICE = "killed-twice"   # killed after epoch 3's log rows, then again inside the resume's rewrite of the log


@pytest.fixture(scope="module")
def killed_runs(workspace):
    """Every kill point and its recovery, the runs of each phase side by side."""
    names = {"killed-{}-{}-{}".format(*point): point for point in KILL_POINTS}
    kills = {name: command(*train_args(name), kill=point) for name, point in names.items()}
    kills[TWICE] = command(*train_args(TWICE), kill=("val_log.csv", 3, "after"))
    first = run_together(workspace, kills)
    second = run_together(workspace, {TWICE: command(*recovery(workspace, TWICE), kill=("train_log.csv", 1, "before"))})
    recovered = run_together(workspace, {name: command(*recovery(workspace, name)) for name in kills})
    return first, second, recovered


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS, ids=lambda p: "{}-{}-{}".format(*p))
def test_a_kill_at_any_write_then_recovery_equals_the_uninterrupted_run(workspace, killed_runs, point):
    name = "killed-{}-{}-{}".format(*point)
    first, _, recovered = killed_runs
    assert first[name].returncode == -9, first[name].stderr
    assert recovered[name].returncode == 0, recovered[name].stderr
    folder = folder_of(workspace, name)
    assert results_of(folder) == results_of(folder_of(workspace, "reference"))
    assert [int(r["epoch"]) for r in Experiment(folder).read_table("val_log")] == list(range(1, 5))
    assert (folder / "status").read_text() == "finished\n"


@pytest.mark.slow
def test_a_kill_inside_a_resume_rewriting_the_logs(workspace, killed_runs):
    first, second, recovered = killed_runs
    assert first[TWICE].returncode == -9 and second[TWICE].returncode == -9
    assert recovered[TWICE].returncode == 0, recovered[TWICE].stderr
    folder = folder_of(workspace, TWICE)
    assert results_of(folder) == results_of(folder_of(workspace, "reference"))
    assert [int(r["epoch"]) for r in Experiment(folder).read_table("train_log")] == list(range(1, 5))


@pytest.mark.slow
def test_two_trainings_into_one_folder(workspace):
    holder = FolderLock(folder_of(workspace, "busy"), "test")
    holder.acquire()
    try:
        done = cli(workspace, *train_args("busy"))
        listed = sorted(p.name for p in folder_of(workspace, "busy").iterdir())
    finally:
        holder.release()
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"is in use by another esapr process (pid {os.getpid()}" in done.stderr
    assert listed == [".lock"] and not folder_of(workspace, "busy").exists()     # the holder made it, and removed it


@pytest.mark.slow
def test_concurrent_preparation_of_one_new_file(tmp_path):
    write_ratings_csv(tmp_path / "ratings.csv", n_users=200)
    runs = [start_cli(["data", "prepare", "--data_file", "ratings.csv", "--test_negative_sample_size", "50"],
                      tmp_path) for _ in range(3)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    caches = {json.loads(out)["cache"] for out, _ in outputs}
    assert len(caches) == 1
    leftovers = [p.name for p in Path(tmp_path, caches.pop()).iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def ml100k_archive(n_users: int = 150, n_files: int = 40) -> bytes:
    """An ML-100K-style zip (u.data, u.item and many other files: an unpack that takes a moment)."""
    lines = [f"{user}\t{(user * 7 + k) % 120 + 1}\t{k % 5 + 1}\t{880000000 + 100 * user + k}"
             for user in range(1, n_users + 1) for k in range(10 + user % 15)]
    files = {"ml-100k/u.data": "\n".join(lines) + "\n",
             "ml-100k/u.item": "".join(f"{i}|Film {i} (1995)|01-Jan-1995\n" for i in range(1, 121))}
    return zip_bytes({**files, **{f"ml-100k/u{k}.base": files["ml-100k/u.data"] for k in range(n_files)}})


@pytest.mark.slow
def test_concurrent_preparation_of_one_new_dataset_from_its_archive(tmp_path):
    """One process unpacks (the raw folder's lock); the others wait and use what it unpacked: no
    one deletes another's scratch folder or the files it moves into place."""
    raw = tmp_path / "Data" / "ml-100k"
    raw.mkdir(parents=True)
    (raw / "ml-100k.zip").write_bytes(ml100k_archive())
    runs = [start_cli(["data", "prepare", "--dataset_code", "ml-100k", "--local_data_folder", "Data",
                       "--test_negative_sample_size", "50"], tmp_path) for _ in range(4)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, outputs
    prepared = [{k: v for k, v in json.loads(out).items() if not k.endswith("_s")} for out, _ in outputs]
    assert all(p == prepared[0] for p in prepared)            # one cache, the same data
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith("u") or p.suffix != ".base") == \
        [".lock", "ml-100k.zip", "u.data", "u.item"]          # no scratch folder left
    assert (raw / "u.data").read_bytes() == zipfile.ZipFile(raw / "ml-100k.zip").read("ml-100k/u.data")


# --- damaged files ------------------------------------------------------------------------------------

@pytest.fixture()
def finished(workspace, tmp_path, monkeypatch):
    """A copy of the finished reference run to damage, worked on from beside it (its config.json
    records the workspace's data: a test that changes the data names the copy's file)."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "experiments" / "ratings" / "reference"
    shutil.copytree(workspace / "experiments" / "ratings" / "reference", folder)
    shutil.copy(workspace / "ratings.csv", tmp_path / "ratings.csv")
    return folder


DAMAGE = {"empty": b"", "garbage": b"\x00\x01garbage" * 10, "html": b"<!DOCTYPE html><html>Not found</html>",
          "truncated": None}


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("name", ["best_model.pth", "recent_checkpoint.pth"])
def test_a_damaged_checkpoint_is_one_line_and_keeps_the_status(finished, kind, name, capsys):
    path = finished / "models" / name
    path.write_bytes(DAMAGE[kind] if DAMAGE[kind] is not None else path.read_bytes()[:500])
    args = ["--experiment", str(finished)] if name == "best_model.pth" else \
        [*OPTIONS, "--data_file", str(finished.parents[2] / "ratings.csv"), "--experiment_root",
         str(finished.parents[1]), "--experiment_name", "reference", "--resume", "--num_epochs", "6"]
    assert main(["evaluate" if name == "best_model.pth" else "train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: " in err and ("--overwrite" in err or "--resume" in err), err
    assert (finished / "status").read_text() == "finished\n"


@pytest.mark.parametrize("name,content", [("config.json", "{not json"), ("config.json", ""),
                                          ("results.json", "[1, 2]"), ("results.json", "\x00\x00")])
def test_a_damaged_json_file_is_one_line(finished, name, content, capsys):
    (finished / name).write_text(content)
    commands = [["results", "--root", str(finished.parent)]]
    if name == "config.json":
        commands.append(["evaluate", "--experiment", str(finished)])
    for command in commands:
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{finished / name}: damaged" in err, err


def test_results_list_the_good_runs_and_name_the_damaged_ones(finished, capsys):
    good = finished.parent / "good"
    shutil.copytree(finished, good)
    (finished / "config.json").write_text("{")
    assert main(["results", "--root", str(finished.parent)]) == 0
    out = capsys.readouterr().out
    assert "VAE_tw" in out and f"left out, unreadable: {finished / 'config.json'}: damaged" in out


def test_a_partial_last_log_row_is_left_out(finished):
    path = finished / "tables" / "val_log.csv"
    text = path.read_text()
    path.write_text(text + "5,0.1")                      # a row cut short by an older writer
    rows = Experiment(finished).read_table("val_log")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 5))


def test_a_failed_resume_of_a_finished_run_keeps_it_finished(finished, capsys):
    (finished.parents[2] / "ratings.csv").write_text("user,item\n1,2\n")        # the data changed
    args = [*OPTIONS, "--data_file", str(finished.parents[2] / "ratings.csv"), "--experiment_root",
            str(finished.parents[1]), "--experiment_name", "reference", "--resume"]
    assert main(["train", *args]) == 2
    assert (finished / "status").read_text() == "finished\n"
    assert "Traceback" not in capsys.readouterr().err


# --- the data a run was trained on --------------------------------------------------------------------

def test_evaluate_and_resume_refuse_other_data_whatever_its_size(finished, capsys):
    data_file = finished.parents[2] / "ratings.csv"
    lines = data_file.read_text().splitlines()
    first_user, rest = lines[1].split(",")[0], lines[1].split(",", 1)[1]
    data_file.write_text("\n".join([lines[0], f"{first_user},{rest.replace(rest.split(',')[0], '9999', 1)}",
                                    *lines[2:]]) + "\n")      # same counts, one item id changed
    assert main(["evaluate", "--experiment", str(finished), "--data_file", str(data_file)]) == 2
    err = capsys.readouterr().err
    assert "the prepared data differs from the data this run was trained on" in err and err.count("\n") == 1
    assert main(["train", *OPTIONS, "--data_file", str(data_file), "--experiment_root", str(finished.parents[1]),
                 "--experiment_name", finished.name, "--resume", "--num_epochs", "6"]) == 2
    assert "the prepared data differs" in capsys.readouterr().err
    assert (finished / "status").read_text() == "finished\n"


# --- paths, overwrite, messages -------------------------------------------------------------------------

def test_overwrite_removes_the_old_run_only_once_the_new_one_is_ready(finished, capsys):
    before = sorted(p.relative_to(finished) for p in finished.rglob("*"))
    args = [*OPTIONS, "--data_file", str(finished.parents[2] / "missing.csv"), "--experiment_root",
            str(finished.parents[1]), "--experiment_name", "reference", "--overwrite"]
    assert main(["train", *args]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err
    assert sorted(p.relative_to(finished) for p in finished.rglob("*")) == before
    assert (finished / "status").read_text() == "finished\n"


def test_names_that_leave_the_root_are_refused(tmp_path):
    for option, value in (("experiment_name", "../../x"), ("experiment_name", "/etc"), ("experiment_group", ".."),
                          ("experiment_name", "a/b"), ("experiment_group", "x\\..")):
        with pytest.raises(UserError, match=f"option '{option}'.*plain folder name"):
            build_config(["train_vae"], {option: value, "experiment_root": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []


def test_resume_and_overwrite_together_are_refused():
    with pytest.raises(UserError, match="'resume' and option 'overwrite'"):
        build_config(["train_vae"], {"resume": True, "overwrite": True})


def test_a_run_killed_before_its_first_checkpoint_simply_starts_again(tmp_path):
    write_ratings_csv(tmp_path / "ratings.csv", n_users=50)
    config = build_config(["train_vae"], dict(data_file=str(tmp_path / "ratings.csv"), num_epochs=2, max_len=12,
                                              encoder_hidden_layer=[16], encode_len=8, device="cpu",
                                              local_data_folder=str(tmp_path / "data"),
                                              experiment_root=str(tmp_path / "runs")))
    folder = tmp_path / "runs" / "ratings" / "vae"
    (folder / "models").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config.values()))
    (folder / "status").write_text("running\n")
    with pytest.raises(UserError, match="stopped before its first checkpoint.*without --resume"):
        train(config.with_run(resume=True), progress="quiet")
    assert train(config, progress="quiet")["epochs"] == 2


@pytest.mark.slow
def test_resume_names_only_the_options_that_differ(workspace, capsys):
    name = "resume-message"
    assert cli(workspace, *train_args(name), kill=("recent_checkpoint.pth", 2, "after")).returncode == -9
    # a resume naming the model but not the templates: the saved options are used, nothing is reported
    plain = cli(workspace, "train", "--model_code", "vae", "--data_file", "ratings.csv", "--experiment_name", name,
                "--resume", "--quiet", "--num_epochs", "4")
    assert plain.returncode == 0, plain.stderr
    resumed, reference = results_of(folder_of(workspace, name)), results_of(folder_of(workspace, "reference"))
    # the same run, with the saved metric_ks (a resume keeps them unless it names others)
    assert {k: resumed[k] for k in ("best_epoch", "epochs")} == {k: reference[k] for k in ("best_epoch", "epochs")}
    assert resumed["test"] == reference["test"]
    changed = cli(workspace, *train_args(name), "--resume", "--lr", "0.03", "--dropout", "0.3")
    assert changed.returncode == 2
    assert "lr (saved 0.02, now 0.03), dropout (saved 0.5, now 0.3)" in changed.stderr
    assert "train_window" not in changed.stderr


# --- the environment ------------------------------------------------------------------------------------

@pytest.fixture()
def tiny_disk(tmp_path):
    """A 1.5 MB tmpfs (needs root and mount; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_leaves_no_temporary_file_and_a_resumable_run(workspace, tiny_disk):
    args = ["train", *OPTIONS, "--data_file", str(workspace / "ratings.csv"), "--experiment_root", str(tiny_disk),
            "--local_data_folder", str(workspace / "data"), "--encoder_hidden_layer", "400", "--encode_len", "64"]
    done = cli(workspace, *args)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "No space left on device; the disk is full" in done.stderr
    folder = tiny_disk / "ratings" / "vae"
    assert [p for p in folder.rglob("*.tmp")] == []
    assert (folder / "status").read_text() == "interrupted\n"


@pytest.mark.slow
def test_a_read_only_experiment_root_is_one_line(workspace, tmp_path):
    root = tmp_path / "readonly"
    root.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=100k", "tmpfs", str(root)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a read-only file system here")
    try:
        done = cli(workspace, *train_args("vae"), "--experiment_root", str(root))
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "Read-only file system; the file system is read-only" in done.stderr


def test_an_unreadable_data_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ratings.csv"
    folder.mkdir()                                   # a folder where a file should be (root reads anything)
    assert main(["data", "stats", "--data_file", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ratings.csv" in err


def test_the_package_itself_is_never_a_template_path(tmp_path, capsys):
    assert main(["train", "--templates", "../templates/train_vae", "--experiment_root", str(tmp_path)]) == 2
    assert "unknown template" in capsys.readouterr().err



# --- further attacks: options, templates, names ----------------------------------------------------------

@pytest.mark.parametrize("option,value,expected", [
    ("max_len", "99999999999999999999999", "option 'max_len'"), ("train_batch_size", "1e400", "expects one int"),
    ("lr", "1e400", "option 'lr'"), ("num_epochs", "2147483648", "option 'num_epochs'"),
    ("experiment_name", "a\nb", "plain folder name"), ("experiment_group", "x" * 300, "plain folder name")])
def test_values_out_of_any_sensible_range_are_one_line(tmp_path, capsys, option, value, expected):
    assert main(["train", "--templates", "train_vae", f"--{option}", value, "--experiment_root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text,expected", [("templates: 5\n", "'templates' must be a template name"),
                                           ("templates: [train_vae]\nlearning_rate: 0.1\n", "unknown option")])
def test_a_bad_template_is_named(tmp_path, text, expected):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"template '{path}': {expected}"):
        build_config([str(path)])


def test_a_data_file_whose_name_makes_no_folder_asks_for_a_group(tmp_path):
    with pytest.raises(UserError, match="makes no folder name.*--experiment_group"):
        build_config(["train_vae"], {"data_file": str(tmp_path / "..csv")})


# --- further attacks: resumes that would lose or rewrite a run ---------------------------------------------

def resume_args(finished: Path, *extra: str) -> list[str]:
    return ["train", *extra, "--data_file", str(finished.parents[2] / "ratings.csv"), "--experiment_root",
            str(finished.parents[1]), "--experiment_name", finished.name, "--resume", "--quiet"]


def test_a_finished_run_is_not_resumed_without_a_higher_epoch_limit(finished, capsys):
    def contents():
        return {p: p.read_bytes() for p in finished.rglob("*") if p.is_file() and p.name != ".lock"}

    before = contents()
    assert main(resume_args(finished, *OPTIONS)) == 2           # the same --num_epochs 4
    assert main(resume_args(finished, "--model_code", "vae")) == 2    # no --num_epochs: not "until early stopping"
    err = capsys.readouterr().err
    assert err.count("holds a finished run of 4 epochs; to continue it pass --resume --num_epochs N") == 2, err
    assert contents() == before


def test_a_resume_without_the_templates_keeps_the_saved_names(finished):
    (finished / "status").write_text("interrupted\n")          # as if killed after epoch 4's checkpoint
    assert main(resume_args(finished, "--model_code", "vae", "--num_epochs", "5")) == 0
    saved = json.loads((finished / "config.json").read_text())
    assert saved["model_label"] == "VAE_tw" and saved["templates"] == ["train_vae"] and saved["num_epochs"] == 5


def test_a_best_model_copied_over_the_checkpoint_is_one_line(finished, capsys):
    shutil.copy(finished / "models" / "best_model.pth", finished / "models" / "recent_checkpoint.pth")
    (finished / "status").write_text("interrupted\n")
    assert main(resume_args(finished, *OPTIONS)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a resumable checkpoint" in err and "--overwrite" in err, err


def test_a_checkpoint_of_another_model_is_one_line(finished, capsys):
    (finished / "status").write_text("interrupted\n")
    args = resume_args(finished, *OPTIONS)
    other = [*args[:args.index("--experiment_name")], "--experiment_name", "other", "--quiet",
             "--encoder_hidden_layer", "20"]
    assert main([a for a in other if a != "--resume"]) == 0
    shutil.copy(finished.parent / "other" / "models" / "recent_checkpoint.pth", finished / "models")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "size mismatch" in err, err


def test_a_damaged_checkpoint_message_gives_no_unpickling_advice(finished, capsys):
    (finished / "models" / "best_model.pth").write_bytes(b"<!DOCTYPE html><html>Not found</html>")
    assert main(["evaluate", "--experiment", str(finished)]) == 2
    err = capsys.readouterr().err
    assert "weights_only" not in err and "damaged or not an esapr checkpoint" in err, err


# --- further attacks: damaged tables and status -------------------------------------------------------------

def test_log_tables_with_nan_epochs_or_foreign_columns_are_read_and_rewritten_whole(tmp_path):
    experiment = Experiment(tmp_path / "run")
    experiment.tables.mkdir(parents=True)
    (experiment.tables / "train_log.csv").write_text("epoch,foo\n1,a\nnan,b\ninf,c\n2,d\n")
    assert [r["epoch"] for r in experiment.read_table("train_log")] == ["1", "2"]
    experiment.append_row("train_log", {"epoch": 3, "loss": 0.5})
    assert (experiment.tables / "train_log.csv").read_text().splitlines() == \
        ["epoch,foo,loss", "1,a,", "2,d,", "3,,0.5"]


def test_a_status_file_that_is_not_text_reads_as_interrupted(tmp_path):
    experiment = Experiment(tmp_path)
    (tmp_path / "status").write_bytes(b"\xff\xfe\x00")
    assert experiment.status() == "interrupted"


def test_results_leave_out_runs_with_values_of_the_wrong_kind(finished, capsys):
    for name, text in (("metrics", '{"test": {"NDCG@10": "abc"}}'), ("shape", '{"test": 5}')):
        shutil.copytree(finished, finished.parent / name)
        (finished.parent / name / "results.json").write_text(text)
    shutil.copytree(finished, finished.parent / "label")
    config = json.loads((finished / "config.json").read_text())
    (finished.parent / "label" / "config.json").write_text(json.dumps({**config, "model_label": ["x"]}))
    assert main(["results", "--root", str(finished.parent)]) == 0
    out = capsys.readouterr().out
    assert "VAE_tw" in out and all(f"{finished.parent / name}: damaged" in out for name in ("metrics", "label"))


@pytest.mark.parametrize("args,expected", [(["--digits", "-5"], "--digits is -5"),
                                           (["--png", "t.xyz"], "t.xyz: a figure is saved as one of")])
def test_results_options_are_checked_before_anything_is_shown(finished, capsys, args, expected):
    assert main(["results", "--root", str(finished.parent), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and expected in captured.err and captured.err.count("\n") == 1


def test_a_flag_that_takes_a_value_is_refused_bare(finished, capsys):
    assert main(["recommend", "--experiment", str(finished), "--user"]) == 2
    assert "option '--user' needs a value" in capsys.readouterr().err


# --- further attacks: files outside the folder, leftovers, permissions --------------------------------------

@pytest.mark.parametrize("link", ["models", ".lock", "group"])
def test_links_planted_in_the_root_are_refused(finished, tmp_path, capsys, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    target = {"models": finished / "models", ".lock": finished / ".lock", "group": finished.parent}[link]
    if link == "group":
        shutil.move(str(finished.parent), str(outside / "ratings"))
        target.symlink_to(outside / "ratings")
    else:
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        target.symlink_to(outside / "precious" if link == ".lock" else outside)
    assert main(["train", *OPTIONS, "--data_file", str(finished.parents[2] / "ratings.csv"), "--experiment_root",
                 str(finished.parents[1]), "--experiment_name", "reference", "--overwrite"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert (outside / "precious").read_text() == "keep"


def test_the_lock_holder_removes_temporary_files_of_killed_writers(finished):
    leftovers = [finished / ".config.json.x1.tmp", finished / "models" / ".recent_checkpoint.pth.x2.tmp"]
    for path in leftovers:
        path.write_text("half")
    with Experiment(finished).lock():
        assert not any(path.exists() for path in leftovers)
    assert (finished / "config.json").is_file()


def test_written_files_follow_the_umask(tmp_path):
    from esapr.files import atomic_write_text
    atomic_write_text(tmp_path / "a.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_data_file_edited_in_place_with_its_size_and_time_kept_is_prepared_again(tmp_path):
    from esapr.data.sources import file_fingerprint
    path = tmp_path / "ratings.csv"
    path.write_text("user,item\n1,2\n")
    before, stat = file_fingerprint(path), path.stat()
    path.write_text("user,item\n1,3\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert file_fingerprint(path) != before


def test_a_folder_or_a_pipe_as_data_file_says_what_it_is(tmp_path):
    pipe = tmp_path / "ratings.csv"
    os.mkfifo(pipe)
    with pytest.raises(UserError, match="not a regular file"):
        from esapr.data.prepare import raw_file
        raw_file(build_config(["train_vae"], {"data_file": str(pipe)}).data)


def test_an_unreadable_titles_file_is_left_out_with_a_warning(tmp_path):
    from esapr.data.sources import SOURCES
    (tmp_path / "u.item").write_bytes(b"")
    with pytest.warns(UserWarning, match="u.item: no titles"):
        assert SOURCES["ml-100k"].titles(tmp_path) == {}


@pytest.mark.slow
@pytest.mark.parametrize("every,expected", [("10000", "interrupted before the first checkpoint"),
                                            ("0", "keeps its last checkpoint: continue with --resume")])
def test_sigterm_ends_a_run_as_interrupted_saying_what_was_kept(workspace, every, expected):
    import signal
    import time
    name = f"terminated-{every}"
    process = start_cli([*train_args(name), "--num_epochs", "100000", "--saturation_wait_epochs", "100000",
                         "--checkpoint_every_seconds", every], workspace)
    folder = folder_of(workspace, name)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (folder / "tables" / "val_log.csv").is_file():
        time.sleep(0.05)
    if every == "0":
        while time.monotonic() < deadline and not (folder / "models" / "recent_checkpoint.pth").is_file():
            time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and expected in err and "Traceback" not in err, err
    assert (folder / "status").read_text() == "interrupted\n"


# --- Ctrl-C between taking and letting go: a lock or a write is never left half done -----------------------

def test_ctrl_c_while_a_checkpoint_is_written_takes_effect_once_it_is_written(tmp_path, monkeypatch):
    import signal
    import threading
    import time
    written = threading.Event()
    save = Experiment.save
    monkeypatch.setattr(Experiment, "save", lambda self, path, state: (written.wait(10), save(self, path, state)))
    experiment = Experiment(tmp_path / "run")
    experiment.save_in_background(experiment.recent_checkpoint, {"model": {}})

    def ctrl_c_then_let_the_write_end():
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        written.set()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_then_let_the_write_end).start()
        with pytest.raises(KeyboardInterrupt):
            experiment.wait_for_saves()
        # before: the interrupted join let go of the writer's own lock, so the run stopped mid-write and a
        # later join could fail with "RuntimeError: release unlocked lock"
        assert experiment.recent_checkpoint.is_file()
        experiment.wait_for_saves()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_a_folder_lock_leaves_it_held_and_recorded_or_not_held(tmp_path, monkeypatch):
    from esapr.files import lock_holder
    truncate, close = os.ftruncate, os.close

    def interrupted(*args):
        raise KeyboardInterrupt
    lock = FolderLock(tmp_path / "a", "test")
    monkeypatch.setattr(os, "ftruncate", interrupted)             # Ctrl-C just after the lock was taken
    with pytest.raises(KeyboardInterrupt):
        lock.acquire()
    monkeypatch.setattr(os, "ftruncate", truncate)
    lock.release()
    assert lock_holder(tmp_path / "a") is None                     # released, not held until the process ends

    lock.acquire()
    monkeypatch.setattr(os, "close", lambda fd: (close(fd), interrupted()))   # Ctrl-C just after the lock went
    with pytest.raises(KeyboardInterrupt):
        lock.release()
    monkeypatch.setattr(os, "close", close)
    other = os.open(tmp_path / "other", os.O_CREAT | os.O_RDWR)      # takes the number the lock's file had
    lock.release()                                                  # a second release lets go of nothing else
    os.fstat(other)
    os.close(other)


def test_a_process_waiting_for_a_lock_whose_folder_goes_on_release_locks_the_new_one(tmp_path):
    import threading
    import time
    folder = tmp_path / "made" / "for the lock"
    first, second = FolderLock(folder, "test"), FolderLock(folder, "test")
    first.acquire()
    waiter = threading.Thread(target=second.acquire, kwargs={"wait": True})
    waiter.start()
    time.sleep(0.3)
    first.release()                     # the folders it made hold only the lock: they go
    waiter.join(10)
    assert second._fd is not None and os.path.samestat(os.fstat(second._fd), os.stat(folder / ".lock"))
    with pytest.raises(UserError, match="is in use by another esapr process"):
        FolderLock(folder, "test").acquire()
    second.release()
    assert not (tmp_path / "made").exists()
