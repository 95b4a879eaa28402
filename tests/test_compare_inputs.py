"""esapr compare's arguments and where it writes, all checked before anything is trained: the
Python API's one-line refusals (naming keyword arguments; the CLI names flags), the metrics
asked, two templates with one file name, --output (a prefix, a folder, inside a run, through a
link), the default output named by the template set, and --dry_run output safe to pipe to a shell."""
import os
import shlex
import subprocess
from pathlib import Path

import pytest

import esapr
from esapr.cli import main
from esapr.comparison import PYTHON, plan_run, plan_runs, pool
from esapr.comparison.report import check_metrics, output_prefix, set_name
from esapr.config import python_words
from esapr.errors import UserError
from esapr.experiment import Experiment
from tests.conftest import tiny

BASE = {"data_file": "r.csv", "experiment_group": "g"}


def finished_run(root: Path, template: str, seed: int, ranks, users=None, full_ranks=None, results=None,
                 saved=None, **options) -> Path:
    """The folder of a finished run exactly as ``compare(template, seeds=[seed], experiment_root=root,
    experiment_group="g", **options)`` plans it, without training: config (``saved``: more of it; no data
    fingerprint unless given, as an older version saved it), per-user test ranks, results and status."""
    run = plan_runs([template], [seed], {"experiment_root": str(root), "experiment_group": "g", **options})[0]
    experiment = Experiment(run.path)
    users = [str(u) for u in (users if users is not None else range(1, len(ranks) + 1))]
    experiment.start(run.config, {"n_users": len(users), **(saved or {})})
    experiment.write_ranks("test", users, list(ranks), list(full_ranks if full_ranks is not None else ranks))
    experiment.write_results({"test": {}, "epochs": 3, "best_epoch": 2, "train_seconds": 1.5, "device": "cpu",
                              "dataset": "hand", **(results or {})})
    experiment.set_status("finished")
    return run.path


def refused(root: Path, **arguments) -> str:
    """The one-line UserError of ``esapr.compare(**arguments)``; nothing was written under ``root``."""
    arguments = {"templates": ["train_vae"], "experiment_root": str(root), "say": lambda *a: None, **BASE,
                 **arguments}
    with pytest.raises(UserError) as error:
        esapr.compare(**arguments)
    message = str(error.value)
    assert "\n" not in message and message
    assert not root.exists() or not any(root.rglob("*"))
    return message


# --- the Python API refuses what the CLI refuses, in one line naming its keyword arguments --------------------
@pytest.mark.parametrize("arguments, expected", [
    ({"templates": None}, "compare needs templates: templates=['train_vae', 'train_sas']"),
    ({"templates": []}, "compare needs templates"),
    ({"templates": [123]}, "templates expects template names or .yaml paths, got 123"),
    ({"seeds": None}, "seeds expects whole numbers, got None"),
    ({"seeds": []}, "compare needs at least one seed: seeds=[0, 1, 2]"),
    ({"seeds": [0.5, 1.7]}, "seeds expects whole numbers, got 0.5"),
    ({"seeds": ["1.5"]}, "seeds expects whole numbers, got '1.5'"),
    ({"seeds": [True]}, "seeds expects whole numbers, got True"),
    ({"seeds": [-1]}, "seeds expects numbers >= 0, got -1"),
    ({"seeds": [1, 1]}, "a seed is named twice in seeds=[1, 1]"),
    ({"jobs": 2.9}, "jobs expects a whole number, got 2.9"),
    ({"jobs": "2.9"}, "jobs expects a whole number, got '2.9'"),
    ({"jobs": None}, "jobs expects a whole number, got None"),
    ({"jobs": 0}, "jobs must be at least 1, got 0"),
    ({"output": 123}, "output expects a path (a file prefix or a folder), got 123"),
    ({"output": b"out"}, "output expects a path"),
    ({"output": "  "}, "output is '  '; give a file prefix or a folder"),
    ({"output": "a\0b"}, "give a file prefix or a folder"),
    ({"metric_ks": [5.7]}, "option 'metric_ks' expects a list of int, got [5.7]"),
    ({"metrics": "NDCG@x"}, "metrics 'NDCG@x': unknown metric; known: NDCG@k, Recall@k, MRR (k: one of the metric_ks"),
    ({"metrics": ["HR@10"]}, "metrics 'HR@10': unknown metric"),
    ({"metrics": ["full_NDCG@10"]}, "metrics full_NDCG@10: name it without 'full_' (NDCG@10)"),
    ({"metrics": ["NDCG@7"]}, "metrics NDCG@7: not computed by this comparison (metric_ks 1 5 10 20 50 100); add 7 "
                              "to metric_ks"),
    ({"metrics": [10]}, "metrics expects metric names such as NDCG@10, got [10]"),
    ({"templates": ["train_vae:²"]}, "templates train_vae:²: the number after ':' is how many of the 5 seeds "
                                     "train_vae runs; allowed: 1 to 5 (digits 0-9)"),
    ({"templates": ["train_vae:٣"]}, "(digits 0-9)"),
    ({"templates": ["train_vae:6"]}, "allowed: 1 to 5"),
    ({"dry_run": True, "aggregate_only": True}, "dry_run=True and aggregate_only=True exclude each other"),
    ({"model_init_seed": 3}, "compare sets model_init_seed itself (from seeds and the template); drop "
                             "model_init_seed (experiment_group keeps a comparison apart)"),
])
def test_python_api_bad_arguments_are_one_line_naming_keywords(arguments, expected, tmp_path):
    message = refused(tmp_path / "root", **arguments)
    assert expected in message
    assert "--" not in message.replace("--templates", "")     # keyword arguments, not flags


def test_python_api_takes_what_it_means(tmp_path):
    """One value where a list is taken; whole numbers however written; a str of metrics is one metric."""
    root = str(tmp_path / "root")
    runs = plan_runs("train_vae", 3, {**BASE, "experiment_root": root}, PYTHON)
    assert [r.seed for r in runs] == [3]
    assert [r.seed for r in plan_runs(["train_vae"], ["4", 5.0], {**BASE, "experiment_root": root}, PYTHON)] == [4, 5]
    assert check_metrics("NDCG@10", [10], PYTHON) == ["NDCG@10"]          # not N, D, C, G, @, 1, 0
    assert check_metrics(["MRR", "Recall@5"], [5, 10], PYTHON) == ["MRR", "Recall@5"]
    assert check_metrics([], [10], PYTHON) is None and check_metrics(None, [10], PYTHON) is None
    lines = esapr.compare("train_vae", seeds=[0], jobs="2", dry_run=True, experiment_root=root, say=lambda *a: None,
                          **BASE)
    assert lines[0].startswith("esapr train --templates train_vae ")
    assert not Path(root).exists()


def test_a_stale_run_is_refused_in_the_words_of_the_caller(tmp_path, capsys):
    """The same refusal names ``overwrite=True`` in Python and ``--overwrite`` on the command line."""
    path = finished_run(tmp_path, "train_vae", 0, [0, 1], num_epochs=3)
    common = {"experiment_root": str(tmp_path), "experiment_group": "g", "num_epochs": 3, "lr": 0.5}
    with pytest.raises(UserError) as error:
        esapr.compare(["train_vae"], seeds=[0], say=lambda *a: None, **common)
    assert "lr (saved 0.005, now 0.5); choose another experiment_group='NAME', or pass overwrite=True" \
           in str(error.value)
    args = ["compare", "--templates", "train_vae", "--seeds", "0"] + [w for k, v in common.items()
                                                                       for w in (f"--{k}", str(v))]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "choose another --experiment_group NAME, or pass --overwrite to train it again" in err
    assert Experiment(path).status() == "finished"


def test_a_finished_run_is_refused_in_the_words_of_the_python_api(tmp_path, data_file):
    """esapr.train's advice names its keyword arguments (the CLI's message names flags)."""
    options = {**tiny("train_ease", data_file), "experiment_root": str(tmp_path)}
    esapr.train(templates="train_ease", progress=False, **options)
    with pytest.raises(UserError) as error:
        esapr.train(templates="train_ease", progress=False, **options)
    assert str(error.value).endswith("holds a finished run; pass overwrite=True to replace it or choose another "
                                     "experiment_name")
    assert python_words("--resume --num_epochs N, --data_url MIRROR or esapr train --help") == \
        "resume=True num_epochs=N, data_url=MIRROR or esapr train --help"


def test_cli_metrics_are_checked_before_training(tmp_path, capsys):
    assert main(["compare", "--templates", "train_vae", "--data_file", "r.csv", "--experiment_root",
                 str(tmp_path / "root"), "--metrics", "NDCG@10,Bogus@3"]) == 2
    err = capsys.readouterr().err
    assert err == ("esapr: error: --metrics 'Bogus@3': unknown metric; known: NDCG@k, Recall@k, MRR (k: one of the "
                   "metric_ks 1 5 10 20 50 100)\n")
    assert not (tmp_path / "root").exists()


def test_dry_run_quiet_still_prints_the_commands(tmp_path, capsys):
    """--quiet silences progress, not the output a dry run is asked for."""
    args = ["compare", "--templates", "train_vae", "--seeds", "0", "1", "--data_file", "r.csv",
            "--experiment_root", str(tmp_path / "root")]
    assert main(args + ["--dry_run", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("esapr train ") and lines[2].startswith("# afterwards: ")


# --- two templates, one file name ------------------------------------------------------------------------
def test_two_templates_with_one_file_name_are_refused(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "vae.yaml").write_text("model_code: vae\n")
    (tmp_path / "b" / "other.yaml").write_text("model_code: vae\n")
    a, b = str(tmp_path / "a" / "vae.yaml"), str(tmp_path / "b" / "vae.yaml")
    options = {**BASE, "experiment_root": str(tmp_path / "root")}
    with pytest.raises(UserError) as error:
        plan_runs([a, b], [0, 1], options)
    message = str(error.value)
    assert message.startswith(f"templates {a} and {b} would train into the same run folders (")
    assert "vae_seed*" in message and "\n" not in message
    # neighbours: other file names are apart; one file named twice is its own error
    runs = plan_runs([a, str(tmp_path / "b" / "other.yaml")], [0], options)
    assert [r.name for r in runs] == ["vae_seed0", "other_seed0"]
    with pytest.raises(UserError, match="a template is named twice"):
        plan_runs([a, a], [0], options)
    # a packaged template and a file of the same name
    with pytest.raises(UserError, match="would train into the same run folders"):
        plan_runs(["train_vae", str(tmp_path / "a" / "vae.yaml")], [0], options)


# --- --output ------------------------------------------------------------------------------------------------
@pytest.fixture()
def runs(tmp_path):
    """One planned VAE run under tmp_path/root/g (nothing written)."""
    return plan_runs(["train_vae"], [0], {**BASE, "experiment_root": str(tmp_path / "root")})


def test_output_prefix_file_or_folder(tmp_path, runs, monkeypatch):
    name = set_name(["train_vae"])
    group = tmp_path / "root" / "g"
    assert output_prefix(None, runs, ["train_vae"]) == group / name
    (tmp_path / "out").mkdir()
    assert output_prefix(tmp_path / "out", runs, ["train_vae"]) == tmp_path / "out" / name       # an existing folder
    assert output_prefix(f"{tmp_path}/new/", runs, ["train_vae"]) == tmp_path / "new" / name   # a folder to make
    assert output_prefix(tmp_path / "out" / "table", runs, ["train_vae"]) == tmp_path / "out" / "table"
    assert output_prefix(tmp_path / "out" / "table.CSV", runs, ["train_vae"]) == tmp_path / "out" / "table"
    assert output_prefix(tmp_path / "out" / "t.v2", runs, ["train_vae"]) == tmp_path / "out" / "t.v2"
    monkeypatch.chdir(tmp_path / "out")
    assert output_prefix(".", runs, ["train_vae"]) == Path(".") / name
    assert output_prefix("..", runs, ["train_vae"]) == Path("..") / name
    assert output_prefix("/", runs, ["train_vae"]) == Path("/") / name
    assert not (tmp_path / "new").exists()                       # checked, not made


def test_output_names_differ_by_template_set():
    assert set_name(["train_vae", "train_sas"]) == set_name(["train_sas", "train_vae"])
    assert set_name(["train_vae", "train_sas"]) != set_name(["train_vae", "train_bert"])
    assert set_name(["train_sas:1", "train_vae"]) != set_name(["train_sas", "train_vae"])
    assert set_name(["train_vae"]).startswith("comparison_") and len(set_name(["train_vae"])) == 19


def test_output_inside_a_run_is_refused(tmp_path, runs):
    finished = finished_run(tmp_path / "root", "train_vae", 1, [0, 1], data_file="r.csv")
    for inside in (finished / "results", finished / "models" / "x", finished / "tables" / "t", finished,
                   runs[0].path / "sub" / "x"):             # the last: a run this compare is about to make
        with pytest.raises(UserError) as error:
            output_prefix(inside, runs, ["train_vae"])
        assert "lies inside the run folder" in str(error.value) and "\n" not in str(error.value)
    # a folder holding some other config.json is no run folder
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "config.json").write_text("{}")
    assert output_prefix(tmp_path / "project" / "t", runs, ["train_vae"]) == tmp_path / "project" / "t"


def test_output_through_links_or_onto_folders_is_refused(tmp_path, runs):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "t.csv").symlink_to(elsewhere / "victim.csv")
    (tmp_path / "linked").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "out" / "d.json").mkdir()
    for output, problem in ((tmp_path / "out" / "t", "is a symbolic link"), (tmp_path / "linked", "is a symbolic link"),
                            (tmp_path / "linked" / "t", "is a symbolic link"),
                            (tmp_path / "out" / "d", "exists and is not a file")):
        with pytest.raises(UserError, match=problem):
            output_prefix(output, runs, ["train_vae"])
    # the group folder planted as a link: refused for the default output too
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "g").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match="g is a symbolic link"):
        output_prefix(None, runs, ["train_vae"])
    assert not any(elsewhere.iterdir())


def test_output_in_a_folder_that_cannot_be_written_is_refused(tmp_path, runs):
    """Tried before training, not guessed from the permissions: root passes those, yet not in /proc."""
    if Path("/proc/self").is_dir():
        with pytest.raises(UserError, match="cannot write in /proc"):
            output_prefix(Path("/proc/t"), runs, ["train_vae"])
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(UserError, match=r"cannot write in .*locked \(Permission denied\)"):
            output_prefix(locked / "t", runs, ["train_vae"])


def test_file_as_folder_is_refused(tmp_path, runs):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        output_prefix(tmp_path / "file" / "sub" / "t", runs, ["train_vae"])


def test_aggregate_only_obeys_the_output_rules_and_each_set_keeps_its_files(tmp_path):
    """Two template sets in one group write two tables; --aggregate_only refuses a prefix inside a run
    and a planted group link, before reading anything."""
    root = tmp_path / "root"
    for template in ("train_vae", "train_bert"):
        finished_run(root, template, 0, [0, 1, 5, 3], num_epochs=3)
    common = {"seeds": [0], "aggregate_only": True, "experiment_root": str(root), "experiment_group": "g",
              "num_epochs": 3, "say": lambda *a: None}
    one = esapr.compare(["train_vae"], **common)
    both = esapr.compare(["train_vae", "train_bert"], **common)
    assert one.files["csv"] != both.files["csv"] and one.files["csv"].is_file() and both.files["csv"].is_file()
    assert one.files["csv"].parent == both.files["csv"].parent == root / "g"
    with pytest.raises(UserError, match="lies inside the run folder"):
        esapr.compare(["train_vae"], output=root / "g" / "vae_seed0" / "results", **common)
    assert Experiment(root / "g" / "vae_seed0").read_results()["epochs"] == 3
    moved = tmp_path / "moved"
    (root / "g").rename(moved)
    (root / "g").symlink_to(moved, target_is_directory=True)
    before = sorted(p.name for p in moved.iterdir())
    with pytest.raises(UserError, match="is a symbolic link"):
        esapr.compare(["train_vae"], **common)
    assert sorted(p.name for p in moved.iterdir()) == before


def test_compare_logs_are_never_written_through_links(tmp_path, runs):
    """A planted compare_logs link or log-file link is refused; the file it points to is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    group = runs[0].path.parent
    group.mkdir(parents=True)
    logs = group / "compare_logs"
    logs.mkdir()
    (logs / f"{runs[0].name}.{os.getpid()}.log").symlink_to(victim)
    with pytest.raises(UserError, match="is a symbolic link"):
        pool._open_log(runs[0])
    logs.rename(tmp_path / "real_logs")
    logs.symlink_to(tmp_path / "real_logs", target_is_directory=True)
    with pytest.raises(UserError, match="compare_logs is a symbolic link"):
        pool._open_log(runs[0])
    assert victim.read_text() == "keep me"


def test_output_is_checked_before_any_training(tmp_path, capsys):
    root = tmp_path / "root"
    finished_run(root, "train_vae", 0, [0, 1], num_epochs=3)
    args = ["compare", "--templates", "train_vae", "--seeds", "0", "1", "--experiment_root", str(root),
            "--experiment_group", "g", "--num_epochs", "3", "--output", str(root / "g" / "vae_seed0" / "models")]
    assert main(args) == 2
    assert "lies inside the run folder" in capsys.readouterr().err
    assert not (root / "g" / "vae_seed1").exists()


# --- a dry run's output can be piped to a shell ----------------------------------------------------------
def test_dry_run_quotes_every_path_and_value(tmp_path):
    """A newline and ';' in the root (and a '$(...)' in the data file's name) never run as commands: piped to
    bash with ``esapr`` recording its arguments, each command gives back exactly the run's words."""
    root = tmp_path / "r\n; touch PWNED #"
    data = "d $(touch PWNED2).csv"
    finished = finished_run(root, "train_vae", 0, [0, 1], num_epochs=3)
    assert "\n" in str(finished)
    common = {"experiment_root": str(root), "experiment_group": "g", "num_epochs": 3}
    lines = esapr.compare(["train_vae"], seeds=[0, 1], dry_run=True, say=lambda *a: None, **common)
    assert lines[0].startswith("# ") and "reused" in lines[0]
    script = "esapr() { printf '%s\\0' \"$@\" >> args; printf '\\n' >> args; }\n" + "\n".join(lines) + "\n"
    done = subprocess.run(["bash", "-s"], input=script, text=True, cwd=tmp_path, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("PWNED*"))
    recorded = (tmp_path / "args").read_text().split("\0\n")
    run = plan_runs(["train_vae"], [1], common)[0]
    assert recorded[0].split("\0") == run.command(plan_run(run.config))[1:]
    assert len([r for r in recorded if r]) == 1           # the comments ran nothing
    # a value with shell syntax, quoted on the command line too
    lines = esapr.compare(["train_vae"], seeds=[1], dry_run=True, say=lambda *a: None, data_file=data, **common)
    assert shlex.split(lines[0])[shlex.split(lines[0]).index("--data_file") + 1] == data
