"""Bad input of the kinds an outside pass found (issue 23): each ends in one line naming the
problem and what to do, or works as a user would expect; nothing saved is lost."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from esapr.cli import main
from esapr.config import build_config
from esapr.errors import UserError
from tests.conftest import as_args, cli_env, tiny
from tests.synthetic import write_ratings_csv


def one_line_error(capsys, code: int = 2) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("esapr: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("options, message", [
    ({"num_epochs": "1.5"}, "option 'num_epochs' expects one int, got '1.5'"),
    ({"dataset_code": ["ml-1m", "ml-20m"]}, "option 'dataset_code' expects one str"),
    ({"metric_ks": [1, [2, 3]]}, "option 'metric_ks' expects a list of int"),
    ({"model_code": ["vae", "ease"]}, "option 'model_code' expects one str"),
    ({"model_label": "caf\udce9"}, "option 'model_label' holds bytes that are not UTF-8 text"),
])
def test_values_of_the_wrong_shape_are_refused_exactly(options, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        build_config(["train_vae"], options)


def test_integers_stay_exact():
    config = build_config(["train_vae"], {"model_init_seed": str(2**53 + 1), "num_epochs": "1e3"})
    assert config.training.model_init_seed == 2**53 + 1 and config.training.num_epochs == 1000


def test_a_yaml_alias_bomb_is_refused_fast_and_shown_short(tmp_path, capsys):
    rows = ['a: &a ["x","x","x","x","x","x","x","x","x"]'] + [
        f'{n}: &{n} [{",".join(["*" + p] * 9)}]' for p, n in zip("abcdef", "bcdefg")]
    (tmp_path / "bomb.yaml").write_text("\n".join(rows + ["model_code: vae", "metric_ks: *g"]) + "\n")
    start = time.perf_counter()
    assert main(["train", "--templates", str(tmp_path / "bomb.yaml")]) == 2
    err = one_line_error(capsys)
    assert time.perf_counter() - start < 5 and len(err) < 300


def test_a_template_whose_model_code_is_a_list_is_one_line(tmp_path, capsys):
    (tmp_path / "t.yaml").write_text("model_code: [ease, vae]\n")
    assert main(["train", "--templates", str(tmp_path / "t.yaml"), "--data_file", "absent.csv"]) == 2
    assert "model_code" in one_line_error(capsys)


@pytest.mark.parametrize("args, flag", [
    (["evaluate", "--experiment", "a", "b"], "--experiment"),
    (["recommend", "--experiment", "a", "--user", "1", "-k", "1", "2"], "--k"),
    (["results", "--png", "a.png", "b.png"], "--png"),
    (["data", "stats", "--local_data_folder", "a", "b"], "--local_data_folder"),
])
def test_one_value_flags_given_several_name_the_glob(args, flag, capsys):
    assert main(args) == 2
    assert f"option '{flag}' takes one value, got 2" in one_line_error(capsys)


def test_a_fifo_named_lock_is_one_line(tmp_path, data_file, capsys):
    folder = tmp_path / "runs" / "g" / "vae_net"
    folder.mkdir(parents=True)
    os.mkfifo(folder / ".lock")
    options = tiny("train_vae_net", data_file, num_epochs=1, experiment_root=str(tmp_path / "runs"),
                   experiment_group="g")
    assert main(["train", "--templates", "train_vae_net", *as_args(options)]) == 2
    assert "not a regular file" in one_line_error(capsys)


def test_a_damaged_epoch_count_is_named_on_resume(tmp_path, data_file, capsys):
    options = tiny("train_vae_net", data_file, num_epochs=1, experiment_root=str(tmp_path))
    assert main(["train", "--templates", "train_vae_net", "--quiet", *as_args(options)]) == 0
    results = next(tmp_path.rglob("results.json"))
    results.write_text(json.dumps({**json.loads(results.read_text()), "epochs": None}))
    capsys.readouterr()
    assert main(["train", "--templates", "train_vae_net", "--resume", *as_args({**options, "num_epochs": 2})]) == 2
    assert "results.json: damaged (epochs None)" in one_line_error(capsys)


def test_a_seed_beyond_64_bits_of_arithmetic_trains_and_is_kept(tmp_path, data_file):
    options = tiny("train_vae_net", data_file, num_epochs=1, experiment_root=str(tmp_path),
                   dataloader_random_seed=2**53 + 1)
    assert main(["train", "--templates", "train_vae_net", "--quiet", *as_args(options)]) == 0
    saved = json.loads(next(tmp_path.rglob("config.json")).read_text())
    assert saved["dataloader_random_seed"] == 2**53 + 1


def test_millisecond_timestamps_are_read_as_such_and_impossible_ones_refused(tmp_path, capsys):
    lines = ["user,item,rating,timestamp"] + [f"{u},{1 + (u * 7 + j) % 30},5,{1_500_000_000_000 + (u * 9 + j) * 3_600_000}"
                                               for u in range(40) for j in range(9)]
    (tmp_path / "ms.csv").write_text("\n".join(lines) + "\n")
    assert main(["data", "stats", "--data_file", str(tmp_path / "ms.csv"), "--local_data_folder",
                 str(tmp_path / "d")]) == 0
    assert "read as ms" in capsys.readouterr().err
    assert main(["data", "stats", "--data_file", str(tmp_path / "ms.csv"), "--local_data_folder",
                 str(tmp_path / "d"), "--timestamp_unit", "s"]) == 2
    assert "are not s since 1970" in one_line_error(capsys)


def test_dense_closed_form_solves_beyond_the_free_memory_are_refused_first(monkeypatch, tmp_path, data_file):
    import esapr.models.linear as linear
    from esapr.data.prepare import prepare_data
    from esapr.training.trainer import Trainer
    monkeypatch.setattr(linear, "available_memory", lambda: 1000)
    for template in ("train_ease", "train_slist", "train_esapr_plus"):
        config = build_config([template], tiny(template, data_file, experiment_root=str(tmp_path)))
        with pytest.raises(UserError, match=r"needs about .* MiB for its dense .* item matrices and 0.0 MiB are free: .*--min_sc"):
            Trainer(config, prepare_data(config), progress="quiet")
    assert not (tmp_path / config.run.experiment_group).exists()


def test_an_undecodable_file_name_trains_end_to_end(tmp_path):
    name = os.fsdecode(b"caf\xe9.csv")
    write_ratings_csv(tmp_path / name, n_users=40)
    done = subprocess.run([sys.executable, "-m", "esapr", "train", "--templates", "train_vae_net", "--quiet",
                           *as_args(tiny("train_vae_net", num_epochs=1)), "--data_file", name],
                          cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_ml100k_unpacked_one_folder_too_deep_is_found(tmp_path, capsys):
    deep = tmp_path / "Data" / "ml-100k" / "ml-100k"
    deep.mkdir(parents=True)
    (deep / "u.data").write_text("".join(f"{u}\t{1 + (u * i) % 40}\t5\t{900000000 + u * 50 + i}\n"
                                         for u in range(1, 31) for i in range(1, 13)))
    assert main(["data", "stats", "--dataset_code", "ml-100k", "--local_data_folder", str(tmp_path / "Data")]) == 0
    assert "found one folder further down" in capsys.readouterr().err


def test_a_pilot_run_never_takes_the_real_runs_folder():
    assert build_config(["train_vae"], {"pilot": True}).run.experiment_name == "vae_pilot"
    assert build_config(["train_vae"], {"pilot": True, "experiment_name": "x"}).run.experiment_name == "x"


@pytest.mark.slow
def test_ctrl_c_interrupts_where_a_parent_ignored_it(tmp_path, data_file):
    """A command started from a script's background job inherits an ignored SIGINT; Ctrl-C still
    interrupts it (status interrupted, one line, exit 130)."""
    options = tiny("train_vae_net", data_file, num_epochs=100000, saturation_wait_epochs=100000,
                   experiment_root=str(tmp_path))
    process = subprocess.Popen([sys.executable, "-m", "esapr", "train", "--templates", "train_vae_net",
                                *as_args(options)], cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 120
    while not list(tmp_path.rglob("val_log.csv")) and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err.strip().splitlines()[-1].startswith("esapr: interrupted"), err
    assert (next(tmp_path.rglob("status"))).read_text().strip() == "interrupted"
