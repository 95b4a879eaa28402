"""The CLI as a user meets it: every bad option ends in one line before anything is written,
help for every command (each listing only what it takes), plain progress lines in a log, quiet
runs, pipes that close early, and a saved run evaluated and asked for recommendations from
another working folder."""
import json
import re
import subprocess
import sys

import pandas as pd
import pytest

from esapr.cli import COMMANDS, main
from tests.conftest import REPO, as_args, cli_env, closed_port_url, start_cli, tiny
from tests.synthetic import write_ratings_csv


# option combinations that must fail validation: (arguments, the option the message names)
BAD = {
    "best_metric": (["--templates", "train_vae", "--best_metric", "NDCG@11"], "best_metric"),
    "bert_mask_prob": (["--templates", "train_bert", "--mask_prob", "0"], "mask_prob"),
    "sas_no_negatives": (["--templates", "train_sas", "--train_negative_sample_size", "0"],
                         "train_negative_sample_size"),
    "batch_size": (["--templates", "train_vae", "--train_batch_size", "0"], "train_batch_size"),
    "metric_ks": (["--templates", "train_vae", "--metric_ks", "0", "10"], "metric_ks"),
    "dropout": (["--templates", "train_vae", "--dropout", "2"], "dropout"),
    "lr_nan": (["--templates", "train_vae", "--lr", "nan"], "lr"),
    "max_len": (["--templates", "train_vae", "--max_len", "-4"], "max_len"),
    "bert_heads": (["--templates", "train_bert", "--num_heads", "3"], "num_heads"),
    "epochs": (["--templates", "train_vae", "--num_epochs", "0"], "num_epochs"),
    "meantime_kernels": (["--templates", "train_meantime", "--absolute_kernel_types", "p-x"], "absolute_kernel_types"),
    "name_escapes": (["--templates", "train_vae", "--experiment_name", "../../x"], "experiment_name"),
    "group_absolute": (["--templates", "train_vae", "--experiment_group", "/tmp"], "experiment_group"),
    "not_read_by_the_family": (["--templates", "train_vae", "--linear_weight", "0.5"], "linear_weight"),
    "epochs_of_a_closed_form_model": (["--templates", "train_ease", "--num_epochs", "3"], "num_epochs"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every bad case as `python -m esapr train ...`, all started at once; (code, stderr, folder)."""
    base = tmp_path_factory.mktemp("bad")
    runs = {}
    for name, (args, _) in BAD.items():
        folder = base / name
        folder.mkdir()
        common = ["--dataset_code", "ml-100k", "--data_url", closed_port_url(), "--device", "cpu",
                  "--local_data_folder", "data", "--experiment_root", "runs"]
        runs[name] = (start_cli(["train", *args, *common], folder), folder)
    done = {}
    for name, (process, folder) in runs.items():
        out, err = process.communicate(timeout=120)
        done[name] = (process.returncode, err, folder)
    return done


@pytest.mark.parametrize("name", list(BAD))
def test_bad_options_fail_in_one_line_before_any_folder(bad_runs, name):
    code, err, folder = bad_runs[name]
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"esapr: error: option '{BAD[name][1]}'"), err
    assert "Traceback" not in err
    assert list(folder.iterdir()) == []           # no experiment folder, no data folder


def test_template_with_a_yaml_error_is_one_line(tmp_path, capsys):
    broken = tmp_path / "mine.yaml"
    broken.write_text("lr: 0.1\nmax_len: [1, 2\n")
    assert main(["train", "--templates", str(broken), "--experiment_root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mine.yaml" in err and "not valid YAML at line" in err
    assert main(["train", "--templates", "mine"]) == 2              # a name is a packaged template only
    assert "unknown template 'mine'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_an_option_the_family_does_not_read_is_refused_naming_both(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--templates", "train_vae", "--linear_weight", "0.5"]) == 2
    assert capsys.readouterr().err == ("esapr: error: option 'linear_weight' is not read by model 'vae' (VAE); it is "
                                       "read by esapr_plus: drop it, or choose a model that reads it\n")
    assert main(["train", "--templates", "train_ease", "--lr", "0.1"]) == 2
    assert capsys.readouterr().err.startswith("esapr: error: option 'lr' is not read by model 'ease' (EASE); "
                                              "it is read by marank, sas, tisas, bert, meantime, vae, esapr_plus:")
    # a template's option that the family chosen on the command line does not read names the template
    assert main(["train", "--templates", "train_vae", "--model_code", "sas"]) == 2
    assert capsys.readouterr().err.startswith("esapr: error: option 'weight_type' (set by template 'train_vae') "
                                              "is not read by model 'sas' (SASRec)")
    assert main(["train", "--dataset_code", "ml-100k"]) == 2
    assert capsys.readouterr().err.startswith("esapr: error: no model chosen: name a template (--templates")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: esapr {command}")
    if command == "train":
        assert "--lr" in out and "learning rate" in out and "--quiet" in out


def help_sections(command: str, capsys) -> dict[str, list[str]]:
    """``esapr COMMAND --help`` as {section title: the --names listed under it}."""
    assert main([command, "--help"]) == 0
    sections: dict[str, list[str]] = {}
    title = None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  --"):
            sections[title].append(line.split()[0][2:])
        elif line and not line.startswith(("usage:", " ")) and ":" in line:
            title = line.split(":")[0].split(" (")[0]
            sections[title] = []
    return sections


def test_evaluate_and_recommend_help_list_only_what_they_take(capsys):
    evaluate = help_sections("evaluate", capsys)
    assert evaluate == {"flags": ["experiment", "split", "json"],
                        "options": ["data_file", "local_data_folder", "data_url", "device", "metric_ks",
                                    "val_batch_size", "test_batch_size"]}
    recommend = help_sections("recommend", capsys)
    assert recommend == {"flags": ["experiment", "user", "items", "k", "json"],
                         "options": ["data_file", "local_data_folder", "data_url", "device"]}


def test_train_help_lists_the_shared_groups_then_each_family_its_own(capsys):
    from esapr.families import FAMILIES
    sections = help_sections("train", capsys)
    assert list(sections) == ["flags", "options", "run", "data", "evaluation", "training", *FAMILIES]
    assert "lr" in sections["training"] and "local_data_folder" in sections["data"]
    assert sections["ease"] == ["ease_lambdas"]                       # EASE reads no training option
    assert "linear_weight" in sections["esapr_plus"] and "linear_weight" not in sections["vae"]
    assert "encode_len" in sections["vae"] and "encode_len" not in sections["sas"]
    shared = {name for group in ("run", "data", "evaluation", "training") for name in sections[group]}
    for code in FAMILIES:                                             # a family lists only its own
        assert not shared & set(sections[code]), code


def test_options_show_the_values_templates_give(capsys):
    assert main(["options", "--templates", "train_vae"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  --lr ") and "(value 0.005)" in line for line in lines)
    assert any(line.startswith("  --model_code ") and "(value 'vae')" in line for line in lines)
    assert main(["options"]) == 0
    assert "(default 0.001)" in capsys.readouterr().out


def test_templates_with_different_models_warn(tmp_path):
    env = {k: v for k, v in cli_env().items() if k != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, "-m", "esapr", "options", "--templates", "train_sas", "train_tisas"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 0
    assert done.stderr == ("esapr: warning: the templates set different model_code values (train_sas: sas, "
                           "train_tisas: tisas); the last one wins: tisas\n")


def test_options_piped_into_head_end_quietly(tmp_path):
    command = f"{sys.executable} -m esapr options --templates train_vae | head -3"
    done = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=tmp_path, env=cli_env(),
                          timeout=60)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 3
    assert done.stderr == ""


@pytest.mark.slow
def test_train_logs_plain_lines_when_not_a_terminal_and_nothing_when_quiet(tmp_path):
    data_file = write_ratings_csv(tmp_path / "ratings.csv", n_users=40)
    common = ["train", "--templates", "train_vae", *as_args(tiny("train_vae", data_file, num_epochs=2)),
              "--experiment_root", "runs"]
    process = start_cli(common + ["--experiment_name", "lines"], tmp_path)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    lines = err.splitlines()
    assert ": 40 users, 60 items, 969 interactions | VAE_tw (vae) | cpu, fp32 | runs/ratings/lines" in lines[0]
    assert [line.split()[:2] for line in lines[1:3]] == [["epoch", "1"], ["epoch", "2"]]
    assert "\r" not in err and "\x1b" not in err
    assert "test metrics of runs/ratings/lines" in out
    process = start_cli(common + ["--experiment_name", "quiet", "--quiet"], tmp_path)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and err == "" and "test metrics" in out


@pytest.mark.slow
def test_train_whose_output_closes_early_ends_interrupted_or_finished_without_a_traceback(tmp_path):
    data_file = write_ratings_csv(tmp_path / "ratings.csv", n_users=40)
    common = ["-m", "esapr", "train", "--templates", "train_vae", "--experiment_root", "runs",
              *as_args(tiny("train_vae", data_file, experiment_group="g"))]
    # ``2>&1 | head -1``: the reader goes away after the first line, mid-run
    merged = subprocess.Popen([sys.executable, *common, "--num_epochs", "500", "--experiment_name", "merged"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path, env=cli_env())
    assert b"VAE_tw" in merged.stdout.readline()
    merged.stdout.close()
    assert merged.wait(120) == 130          # before: 0 (the closing message itself failed), or 120
    assert (tmp_path / "runs/g/merged/status").read_text() == "interrupted\n"
    assert (tmp_path / "runs/g/merged/models/recent_checkpoint.pth").is_file()
    # ``| head -0``: stdout goes away at once; the run finishes, and its end says nothing more
    done = subprocess.Popen([sys.executable, *common, "--num_epochs", "2", "--experiment_name", "done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=cli_env(), text=True)
    done.stdout.close()
    err = done.stderr.read()
    assert done.wait(120) == 0 and "epoch 2" in err     # before: exit 120
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipeError" not in err, err
    assert (tmp_path / "runs/g/done/status").read_text() == "finished\n"


@pytest.mark.slow
def test_compare_whose_output_closes_early_stops_as_interrupted(tmp_path):
    data_file = write_ratings_csv(tmp_path / "ratings.csv", n_users=40)
    args = ["compare", "--templates", "train_ease", "--seeds", "0", "1", "--experiment_root", "runs",
            *as_args({k: v for k, v in tiny("train_ease", data_file).items() if k != "checkpoint_every_seconds"})]
    process = start_cli(args, tmp_path)
    process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(120) == 130, err        # before: 0, as if the comparison had been made
    assert err.endswith("esapr: its output was closed; compare stopped: run the same command again to go on\n")


def test_module_entry_point_runs(tmp_path):
    done = subprocess.run([sys.executable, "-m", "esapr", "--help"], capture_output=True, text=True, cwd=REPO,
                          env=cli_env(), timeout=60)
    assert done.returncode == 0 and "commands:" in done.stdout and "compare" not in done.stderr


def readme_commands() -> list[list[str]]:
    """Every `esapr ...` line of README's shell blocks, comments and redirections removed."""
    import re
    import shlex
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#")[0].split(">")[0].split("&&")[-1].strip()
            if line.startswith("esapr "):
                lines.append(shlex.split(line))
    return lines


@pytest.mark.parametrize("words", readme_commands(), ids=lambda words: " ".join(words[1:4]))
def test_readme_commands_are_accepted(words):
    """Each command README shows parses: the command exists and takes its flags and options."""
    from esapr.cli import parse_options
    from esapr.config import build_config, build_data_options
    if words[1] in ("--help", "-h"):
        return
    name, command = words[1], COMMANDS[words[1]]
    if {"--help", "-h"} & set(words):     # help is printed before any option is read
        return
    argv = words[3:] if name == "data" else words[2:]
    takes_no_option = command.options is None and command.option_groups == ()
    overrides, flags = parse_options(argv, extra=tuple(command.flags),
                                     allowed=() if takes_no_option else command.options)
    templates = overrides.pop("templates", None) or flags.pop("templates", None)
    templates = [templates] if isinstance(templates, str) else templates
    if name == "compare":          # every (template, seed) run, as compare plans them
        from esapr.comparison.plan import plan_runs
        seeds = flags.get("seeds", [0])
        assert plan_runs(templates, seeds.split() if isinstance(seeds, str) else seeds, overrides)
    elif name in ("train", "options") or templates:
        build_config(templates, overrides)
    elif name == "data":
        build_data_options(overrides)


# --- a saved run from another working folder (the run recorded where its data is) ----------------------
@pytest.fixture(scope="module")
def run_made_elsewhere(tmp_path_factory):
    """A VAE trained in ``project/`` with a relative --data_file and the default ./Data, and an
    empty ``elsewhere/`` folder; (run folder, project, elsewhere)."""
    base = tmp_path_factory.mktemp("moved")
    project, elsewhere = base / "project", base / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    write_ratings_csv(project / "ratings.csv", n_users=40)
    process = start_cli(["train", "--templates", "train_vae", "--data_file", "ratings.csv", "--quiet",
                         *as_args(tiny("train_vae", num_epochs=1))], project)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return project / "experiments" / "ratings" / "vae", project, elsewhere


def options_named(message: str) -> set[str]:
    return set(re.findall(r"--(\w+)", message))


def takes(command: str) -> set[str]:
    return {*COMMANDS[command].flags, *COMMANDS[command].options}


@pytest.mark.slow
def test_recommend_and_evaluate_from_another_folder(run_made_elsewhere, monkeypatch, capsys):
    run, project, elsewhere = run_made_elsewhere
    monkeypatch.chdir(elsewhere)
    assert main(["recommend", "--experiment", str(run), "--user", "1", "-k", "5", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)
    ratings = pd.read_csv(project / "ratings.csv")
    assert [row["rank"] for row in top] == [1, 2, 3, 4, 5]
    assert {row["item"] for row in top} <= set(ratings["item"]) - set(ratings.loc[ratings["user"] == 1, "item"])
    assert main(["evaluate", "--experiment", str(run), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "results.json").read_text())["test"]
    assert metrics == pytest.approx(saved)            # the best weights, tested again on the same data
    assert list(elsewhere.iterdir()) == []            # nothing written in the working folder


@pytest.mark.slow
def test_moved_data_is_named_with_the_options_the_command_takes(run_made_elsewhere, monkeypatch, capsys):
    run, project, elsewhere = run_made_elsewhere
    monkeypatch.chdir(elsewhere)
    moved = project / "moved.csv"
    (project / "ratings.csv").rename(moved)
    try:
        for command, extra in (("evaluate", []), ("recommend", ["--user", "1"])):
            assert main([command, "--experiment", str(run), *extra]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "ratings.csv: file not found" in err, err
            assert options_named(err) and options_named(err) <= takes(command), err
        assert main(["evaluate", "--experiment", str(run), "--data_file", str(moved), "--json"]) == 0
        saved = json.loads((run / "results.json").read_text())["test"]
        assert json.loads(capsys.readouterr().out) == pytest.approx(saved)     # the same data, found anew
    finally:
        moved.rename(project / "ratings.csv")


@pytest.mark.parametrize("command, extra", [("evaluate", []), ("recommend", ["--user", "1"])])
def test_evaluate_and_recommend_refuse_what_they_do_not_take(tmp_path, command, extra, capsys):
    for option in (["--lr", "0.1"], ["--data_folder", "Data"], ["--min_uc", "3"]):
        assert main([command, "--experiment", str(tmp_path), *extra, *option]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"esapr: error: unknown option '{option[0]}'") and err.count("\n") == 1
        assert options_named(err.split(";")[-1]) == takes(command)      # "this command takes ..." lists them all


def test_missing_registry_data_is_named_with_the_options_evaluate_takes(tmp_path, monkeypatch, capsys):
    """A registry dataset's raw files gone from where the run had them, and its mirror unreachable."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "Data" / "ml-100k").mkdir(parents=True)
    elsewhere.mkdir()
    (project / "Data" / "ml-100k" / "u.data").write_text("".join(
        f"{u}\t{i}\t{1 + (u * i) % 5}\t{900000000 + 100 * u + i}\n" for u in range(1, 31) for i in range(1, 13)
        if (u + i) % 3))
    monkeypatch.chdir(project)
    assert main(["train", "--templates", "train_ease", "--dataset_code", "ml-100k", "--data_url", closed_port_url(),
                 "--quiet", *as_args(tiny("train_ease", test_negative_sample_size=4))]) == 0
    capsys.readouterr()
    (project / "Data").rename(project / "Data.away")
    monkeypatch.chdir(elsewhere)
    for command, extra in (("evaluate", []), ("recommend", ["--user", "1"])):
        assert main([command, "--experiment", str(project / "experiments" / "ml-100k" / "ease"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and options_named(err) <= takes(command), err
