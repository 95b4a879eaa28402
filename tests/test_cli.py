"""The CLI as a user meets it: every bad option ends in one line before anything is written,
help for every command, plain progress lines in a log, quiet runs, pipes that close early."""
import subprocess
import sys

import pytest

from esapr.cli import COMMANDS, main
from tests.conftest import REPO, cli_env, closed_port_url, start_cli
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


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: esapr {command}")
    if command == "train":
        assert "--lr" in out and "learning rate" in out and "--quiet" in out


def test_options_show_the_values_templates_give(capsys):
    assert main(["options", "--templates", "train_vae"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("  --lr ") and "(value 0.005)" in line for line in lines)
    assert any(line.startswith("  --model_code ") and "(value 'vae')" in line for line in lines)
    assert main(["options"]) == 0
    assert "(default 0.001)" in capsys.readouterr().out


def test_templates_with_different_models_warn(tmp_path):
    env = {k: v for k, v in cli_env().items() if k != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, "-m", "esapr", "options", "--templates", "train_vae", "train_sas"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 0
    assert done.stderr == ("esapr: warning: the templates set different model_code values (train_vae: vae, "
                           "train_sas: sas); the last one wins: sas\n")


def test_options_piped_into_head_end_quietly(tmp_path):
    command = f"{sys.executable} -m esapr options --templates train_vae | head -3"
    done = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=tmp_path, env=cli_env(),
                          timeout=60)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 3
    assert done.stderr == ""


def test_train_logs_plain_lines_when_not_a_terminal_and_nothing_when_quiet(tmp_path):
    data_file = write_ratings_csv(tmp_path / "ratings.csv", n_users=40)
    common = ["train", "--templates", "train_vae", "--data_file", data_file, "--num_epochs", "2", "--max_len", "10",
              "--encoder_hidden_layer", "16", "--encode_len", "8", "--test_negative_sample_size", "10",
              "--device", "cpu", "--local_data_folder", "data", "--experiment_root", "runs"]
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
    """Each command README shows parses: the command exists and its flags and options are valid."""
    from esapr.cli import parse_options
    from esapr.config import OPTIONS, build_config
    if words[1] in ("--help", "-h"):
        return
    command = COMMANDS[words[1]]
    argv = words[3:] if words[1] == "data" else words[2:]
    overrides, flags = parse_options([a for a in argv if a not in ("--help", "-h")], extra=tuple(command.flags))
    templates = overrides.pop("templates", None) or flags.pop("templates", None)
    if words[1] == "compare":          # every (template, seed) run, as compare plans them
        from esapr.compare import plan_runs
        seeds = flags.get("seeds", [0])
        assert plan_runs(templates, seeds.split() if isinstance(seeds, str) else seeds, overrides)
    elif command.option_groups is None or words[1] == "data":
        build_config([templates] if isinstance(templates, str) else templates, overrides)
    else:
        assert all(OPTIONS[name].metadata["group"] in command.option_groups for name in overrides), overrides
