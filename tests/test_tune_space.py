"""Search spaces (fast): every family's SPACE lies inside its options' own ranges and choices; a
--space file narrows, drops or replaces entries; options given are fixed; a list option takes
the one value drawn (a closed-form grid of one setting); a dead worker is told from a live one."""
import os
import socket
import subprocess
import sys
import time
from dataclasses import fields

import optuna
import pytest
from optuna.trial import TrialState

from esapr.config import SHARED, owners
from esapr.errors import UserError
from esapr.families import FAMILIES
from esapr.families.base import Choice, Floats, Ints
from esapr.options.spec import field_of
from esapr.tuning.space import as_options, check_entry, check_space, search_spaces
from esapr.tuning.study import STALE_SECONDS, dead


@pytest.mark.parametrize("code", list(FAMILIES))
def test_every_family_space_lies_inside_its_options_ranges_and_choices(code):
    fam = FAMILIES[code]
    check_space(code, fam.space, f"family {code}")
    read = owners(code)
    for name, entry in fam.space.items():
        cls = fam.options if read[name] == "model" else SHARED[read[name]]
        field = field_of(cls, name)
        values = entry.values if isinstance(entry, Choice) else (entry.low, entry.high)
        valid, choices = field.metadata["valid"], field.metadata["choices"]
        assert all(valid is None or valid.allows(v) for v in values), (name, values)
        assert choices is None or set(values) <= set(choices), (name, values)
    if fam.trained:     # a fair search tunes every model's optimizer
        assert {"lr", "weight_decay"} <= set(fam.space)
    else:               # and a closed-form model's grid options
        assert {f.name for f in fields(fam.options) if f.name.endswith("lambdas")} <= set(fam.space)


@pytest.mark.parametrize("code,name,entry,message", [
    ("ease", "lr", Floats(1e-4, 1e-2, log=True), "option 'lr' is not read by model 'ease'"),
    ("vae", "dropout", Floats(0.0, 1.5), "outside the option's range"),
    ("sas", "num_blocks", Floats(1.0, 3.0), "'num_blocks' takes whole numbers; search it with whole-number bounds"),
    ("vae", "weight_decay", Floats(0.0, 1e-3, log=True), "a log range starts above 0"),
    ("vae", "lr", Floats(1e-2, 1e-4), "low must be below high"),
    ("vae", "weight_type", Choice("exp_stair", "bogus"), "must be one of"),
    ("vae", "weight_type", Choice("exp_stair"), "give at least two"),
    ("sas", "num_heads", Ints(0, 4), "outside the option's range"),
])
def test_a_space_entry_outside_what_the_option_allows_is_refused(code, name, entry, message):
    with pytest.raises(UserError, match=message):
        check_entry(code, name, entry, "test space")


def test_a_space_file_narrows_drops_and_replaces_entries(tmp_path):
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text("lr: {low: 0.001, high: 0.005, log: true}\nnum_blocks: {low: 1, high: 2}\n"
                      "weight_type: [exp_stair, constant]\ndropout: null\n")
    spaces = search_spaces(["train_vae", "train_sas"], {}, narrow)
    vae, sas = spaces["train_vae"], spaces["train_sas"]
    assert vae["lr"] == sas["lr"] == Floats(0.001, 0.005, True)
    assert sas["num_blocks"] == Ints(1, 2) and "num_blocks" not in vae        # each family takes what it reads
    assert vae["weight_type"] == Choice("exp_stair", "constant")
    assert "dropout" not in vae and "dropout" not in sas
    assert vae["anneal_cap"] == FAMILIES["vae"].space["anneal_cap"]             # the rest is the family's
    replace = tmp_path / "replace.yaml"
    replace.write_text("replace: true\nease_lambdas: {low: 10, high: 1000, log: true}\n")
    assert search_spaces(["train_ease"], {}, replace) == {"train_ease": {"ease_lambdas": Floats(10.0, 1000.0, True)}}


@pytest.mark.parametrize("text,message", [
    ("marank_max_len: {low: 2, high: 4}", "read by none of the templates train_vae"),
    ("lr: {low: 0.001}", "write {low: A, high: B}"),
    ("encode_len: {low: 8.5, high: 64}", "takes whole numbers"),
    ("lr: {low: 0.001, high: 0.01, log: maybe}", "write true or false"),
    ("- lr", "maps option names"),
    ("lr: [", "not a YAML space file"),
])
def test_a_bad_space_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(UserError, match=message):
        search_spaces(["train_vae"], {}, path)


def test_options_given_are_fixed_and_a_space_left_empty_is_refused():
    spaces = search_spaces(["train_vae", "train_ease"], {"lr": 0.002, "max_len": 64})
    assert "lr" not in spaces["train_vae"] and "max_len" not in spaces["train_vae"] and "dropout" in spaces["train_vae"]
    with pytest.raises(UserError, match=r"nothing to search for train_ease: every option of its space is fixed "
                                        r"\(ease_lambdas\)"):
        search_spaces(["train_ease"], {"ease_lambdas": [10.0, 100.0]})


def test_a_list_option_takes_the_one_value_drawn():
    assert as_options("ease", {"ease_lambdas": 12.5}) == {"ease_lambdas": [12.5]}
    assert as_options("slist", {"slist_lambdas": 3.25, "slist_alphas": 0.5, "max_len": 16}) == \
        {"slist_lambdas": [3.25], "slist_alphas": [0.5], "max_len": 16}
    assert as_options("vae", {"encoder_hidden_layer": 300, "lr": 0.1 + 0.2}) == \
        {"encoder_hidden_layer": [300], "lr": 0.1 + 0.2}      # floats exactly as drawn


def _running(**user_attrs):
    return optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={"folder": "trial_0", **user_attrs})


def test_a_running_trial_is_dead_only_when_its_worker_is_gone(tmp_path):
    here = socket.gethostname()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert dead(_running(worker=f"{here}:{os.getpid()}"), tmp_path) is None            # this process
    assert "is gone" in dead(_running(worker=f"{here}:{finished.pid}"), tmp_path)     # exited and reaped
    other = "another-host:12"
    assert dead(_running(worker=other, heartbeat=time.time()), tmp_path) is None
    assert "no heartbeat" in dead(_running(worker=other, heartbeat=time.time() - STALE_SECONDS - 60), tmp_path)
    assert dead(_running(), tmp_path) is None      # just asked, not claimed yet


def test_only_the_face_imports_the_search():
    from tests.test_layers import imports
    users = {a for a, targets in imports().items() for b in targets
             if b.startswith("esapr.tuning") and not a.startswith("esapr.tuning")}
    assert users <= {"esapr.commands", "esapr", "esapr.colab"}
