"""`esapr data stats|prepare` through the real CLI (``python -m esapr`` in a subprocess, no network).

Bad input must end in ONE line on stderr starting with ``esapr: error:``, exit status 2, no
traceback, and nothing half-written. The subprocesses of all cases start together (module
fixture), so they cost about the time of the slowest, not the sum; further cases go through
``esapr.cli.main`` in-process.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, closed_port_url, start_cli, zip_bytes

OFFLINE = closed_port_url("dataset.zip")   # nothing listens there: any download fails at once


def put(folder: Path, relative: str, content: str | bytes) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def _ml100k_rows(n_users: int = 6, n_items: int = 7) -> str:
    return "".join(f"{u}\t{i}\t{1 + (u * i) % 5}\t{900000000 + 100 * u + i}\n"
                   for u in range(1, n_users + 1) for i in range(1, n_items + 1))


ML1M_ZIP = zip_bytes({"ml-1m/ratings.dat": "1::1::5::100\n", "ml-1m/README": "x"})

# name -> (files to write under the case folder, CLI arguments after `data stats`, expected text).
# The cases the CLI must handle, each run as `python -m esapr data stats ...` in a subprocess:
SUBPROCESS = {
    "missing_column": ({"ml-20m/ratings.csv": "userId,movieId,rating\n1,2,3.5\n"},
                       ["--dataset_code", "ml-20m"], "missing column 'timestamp'"),
    "non_numeric_timestamp": ({"ml-1m/ratings.dat": "1::2::5::978300760\n1::3::4::yesterday\n"},
                              ["--dataset_code", "ml-1m"],
                              "column 'timestamp' must be an integer, line 2 has 'yesterday'"),
    "empty_file": ({"ml-100k/u.data": ""}, ["--dataset_code", "ml-100k"], "u.data: the file is empty"),
    "empty_after_filtering": ({"ml-100k/u.data": "1\t1\t5\t100\n1\t2\t5\t101\n2\t1\t5\t102\n"},
                              ["--dataset_code", "ml-100k"], "no interactions left after filtering"),
    "unknown_dataset_code": ({}, ["--dataset_code", "ml-2m"],
                             "option 'dataset_code' must be one of ml-100k, ml-1m, ml-20m, beauty, game, got 'ml-2m'"),
    "unknown_option": ({}, ["--dataset_code", "ml-100k", "--min_ucc", "5"],
                       "unknown option '--min_ucc' (did you mean 'min_uc'?)"),
    "value_outside_choices": ({}, ["--dataset_code", "ml-100k", "--split", "random"],
                              "option 'split' must be one of leave_one_out, got 'random'"),
    "truncated_zip_in_raw_folder": ({"ml-1m/ml-1m.zip": ML1M_ZIP[: len(ML1M_ZIP) // 2]},
                                    ["--dataset_code", "ml-1m", "--data_url", OFFLINE],
                                    "ml-1m.zip is a truncated or corrupt archive and was not used. cannot download"),
}
# More of the same, run in-process through esapr.cli.main (same code path, no interpreter start-up):
IN_PROCESS = {
    "dataset_code_without_value": ({}, ["--dataset_code"], "option '--dataset_code' needs a value"),
    "ill_typed_value": ({}, ["--dataset_code", "ml-100k", "--min_uc", "five"],
                        "option 'min_uc' expects one int, got 'five'"),
    "min_uc_too_small": ({"ml-100k/u.data": _ml100k_rows()}, ["--dataset_code", "ml-100k", "--min_uc", "2"],
                         "min_uc must be at least 3"),
    "truncated_zip_beside_ratings": ({"ml-1m/ml-1m.zip": ML1M_ZIP[:100], "ml-1m/ratings.dat": "1::1::5::100\n"},
                                     ["--dataset_code", "ml-1m", "--data_url", OFFLINE],
                                     "so the existing ratings.dat is not trusted"),
    "no_network": ({}, ["--dataset_code", "ml-100k", "--data_url", OFFLINE], f"cannot download {OFFLINE}"),
    "data_file_missing": ({}, ["--data_file", "{dir}/nothere.csv"], "nothere.csv: file not found; check --data_file"),
    "data_file_bad_header": ({"mine.csv": "a,b\n1,2\n"}, ["--data_file", "{dir}/mine.csv"],
                             "must name a user column"),
    "bad_row_in_user_file": ({"mine.csv": "user,item,rating\n1,2,4\n1,3\n"}, ["--data_file", "{dir}/mine.csv"],
                             "line 3 has no value in column 'rating'"),
    "binary_user_file": ({"mine.csv": bytes(range(256)) * 4}, ["--data_file", "{dir}/mine.csv"],
                         "mine.csv: is not a text file (it holds binary data)"),
    "unknown_subcommand": ({}, None, "usage: esapr data stats|prepare"),
    "training_option": ({}, ["--dataset_code", "ml-100k", "--lr", "0.5"],
                        "option 'lr' is not a data option; without a template this command takes --dataset_code, "
                        "--data_file, --data_url, --local_data_folder,"),
}


def case_argv(name: str, cases: dict, folder: Path) -> list[str]:
    files, args, _ = cases[name]
    for relative, content in files.items():
        put(folder, relative, content)
    if args is None:
        return ["data", "frobnicate"]
    return ["data", "stats", *[a.replace("{dir}", str(folder)) for a in args], "--local_data_folder", str(folder)]


@pytest.fixture(scope="module")
def subprocess_runs(tmp_path_factory):
    """Start every SUBPROCESS case, and the real-data JSON run, at once;
    name -> (returncode, stdout, stderr, case folder)."""
    started = {}
    for name in SUBPROCESS:
        folder = tmp_path_factory.mktemp(name)
        started[name] = (start_cli(case_argv(name, SUBPROCESS, folder), folder), folder)
    real = SHARED_DATA / "ml-100k"
    if (real / "u.data").is_file():
        folder = tmp_path_factory.mktemp("real")
        (folder / "ml-100k").symlink_to(real, target_is_directory=True)
        started["real_ml100k_json"] = (start_cli(["data", "stats", "--dataset_code", "ml-100k", "--local_data_folder",
                                                  folder, "--json", "--data_url", OFFLINE], folder), folder)
    results = {}
    for name, (process, folder) in started.items():
        out, err = process.communicate(timeout=120)
        results[name] = (process.returncode, out, err, folder)
    return results


def check_one_line(code: int, out: str, err: str, expected: str) -> None:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("esapr: error: ")
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("name", list(SUBPROCESS))
def test_bad_input_is_one_clear_line(subprocess_runs, name):
    code, out, err, _ = subprocess_runs[name]
    check_one_line(code, out, err, SUBPROCESS[name][2])


@pytest.mark.parametrize("name", list(IN_PROCESS))
def test_more_bad_input_is_one_clear_line(tmp_path, capsys, monkeypatch, name):
    from esapr.cli import main
    monkeypatch.chdir(tmp_path)
    code = main(case_argv(name, IN_PROCESS, tmp_path))
    out, err = capsys.readouterr()
    check_one_line(code, out, err, IN_PROCESS[name][2])
    assert not (tmp_path / "preprocessed").exists()


def test_unreadable_user_file_is_one_line(tmp_path, capsys):
    from esapr.cli import main
    if os.geteuid() == 0:
        pytest.skip("root reads a file whatever its permissions")
    path = put(tmp_path, "mine.csv", "user,item\n1,2\n")
    path.chmod(0)
    code = main(["data", "stats", "--data_file", str(path), "--local_data_folder", str(tmp_path)])
    out, err = capsys.readouterr()
    check_one_line(code, out, err, f"{path}: cannot be read (Permission denied); check its permissions")


def test_truncated_zip_is_not_used(subprocess_runs):
    folder = subprocess_runs["truncated_zip_in_raw_folder"][3]
    assert sorted(p.name for p in (folder / "ml-1m").iterdir()) == [".lock", "ml-1m.zip"]    # nothing unpacked
    assert not (folder / "preprocessed").exists()


def test_failed_download_leaves_nothing_behind(tmp_path, capsys):
    from esapr.cli import main
    assert main(["data", "stats", "--dataset_code", "ml-20m", "--local_data_folder", str(tmp_path),
                 "--data_url", OFFLINE]) == 2
    assert list(tmp_path.iterdir()) == []


# --- good input -------------------------------------------------------------------------------------

def test_stats_json_and_cache(tmp_path, capsys):
    """6 users x 7 items, every pair once: the default filter keeps everything."""
    from esapr.cli import main
    put(tmp_path, "ml-100k/u.data", _ml100k_rows())
    args = ["data", "stats", "--dataset_code", "ml-100k", "--local_data_folder", str(tmp_path), "--json",
            "--data_url", OFFLINE]
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 7, 42)
    assert stats["length_quantiles"]["min"] == 7
    caches = list((tmp_path / "preprocessed").glob("ml-100k-*-min_uc5-min_sc5-splitleave_one_out"))
    assert len(caches) == 1 and (caches[0] / "sequences.npz").is_file()
    (caches[0] / "sequences.npz").write_bytes(b"")      # the cache answers ...
    raw = (tmp_path / "ml-100k" / "u.data").read_bytes()
    assert main(args) == 0                              # ... or is rebuilt from the raw file, the same
    assert json.loads(capsys.readouterr().out) == stats
    assert (tmp_path / "ml-100k" / "u.data").read_bytes() == raw


def test_real_ml100k_stats_json(subprocess_runs, ml100k_dir):
    code, out, err, _ = subprocess_runs["real_ml100k_json"]
    assert code == 0, err
    stats = json.loads(out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1349, 99287)


def test_stats_of_a_spreadsheet_file(tmp_path, capsys):
    """Excel's CSV in a decimal-comma locale: BOM, semicolons, CRLF, decimal commas, dates."""
    from esapr.cli import main
    rows = "".join(f"{u};{i};{1 + (u * i) % 5},5;2021-03-{i:02d} 10:{u:02d}\r\n"
                   for u in range(1, 7) for i in range(1, 8))
    put(tmp_path, "mine.csv", "\ufeffUser ID;Item ID;Rating;Date\r\n".encode() + rows.encode() + b"\r\n")
    assert main(["data", "stats", "--data_file", str(tmp_path / "mine.csv"), "--local_data_folder", str(tmp_path),
                 "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 7, 42)


def test_prepare_prints_json(tmp_path, capsys):
    from esapr.cli import main
    put(tmp_path, "mine.csv", "user_id,movieId,rating,timestamp\n" +
        "".join(f"u{u},{i},4,{100 * u + i}\n" for u in range(1, 9) for i in range(1, 13) if (u + i) % 4))
    code = main(["data", "prepare", "--data_file", str(tmp_path / "mine.csv"), "--local_data_folder", str(tmp_path),
                 "--test_negative_sample_size", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["users"] == 8 and summary["items"] == 12 and summary["interactions"] == 72
    cache = Path(summary["cache"])
    assert sorted(p.name for p in cache.glob("negatives-*")) == ["negatives-popular-size3-seed98765.npy"]


def test_prepare_with_a_template_makes_its_training_negatives_too(tmp_path, capsys):
    """SASRec's pool (random, seed 12345 in its template) is cached beside the test negatives;
    an option its family does not read is refused."""
    from esapr.cli import main
    put(tmp_path, "mine.csv", "user,item,timestamp\n" +
        "".join(f"{u},{i},{100 * u + i}\n" for u in range(1, 9) for i in range(1, 13) if (u + i) % 4))
    data = ["--data_file", str(tmp_path / "mine.csv"), "--local_data_folder", str(tmp_path),
            "--test_negative_sample_size", "3"]
    assert main(["data", "prepare", "--templates", "train_sas", "--train_negative_sample_size", "2", *data]) == 0
    cache = Path(json.loads(capsys.readouterr().out)["cache"])
    assert sorted(p.name for p in cache.glob("negatives-*")) == ["negatives-popular-size3-seed98765.npy",
                                                                 "negatives-random-size2-seed12345.npy"]
    assert main(["data", "prepare", "--templates", "train_ease", "--train_negative_sample_size", "2", *data]) == 2
    assert capsys.readouterr().err.startswith("esapr: error: option 'train_negative_sample_size' is not read by "
                                              "model 'ease' (EASE)")
