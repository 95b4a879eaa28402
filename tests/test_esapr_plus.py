"""ESAPR+: ESAPR's VAE with SLIST's closed-form path blended into its scores. Linear weight 0 is
ESAPR exactly; the path's weights are SLIST's; the blend is the standardised sum; the path is
solved once (never per improvement, never on load); resumes are exact (tests/test_registry.py
trains, resumes and recommends every family, ESAPR+ included)."""
import json
import shutil
import warnings

import pytest
import torch

import esapr.models.esapr_plus as esapr_plus
from esapr.cli import main
from esapr.config import build_config, resumed_config
from esapr.data.prepare import prepare_data
from esapr.errors import UserError
from esapr.experiment import Experiment, experiment_path
from esapr.files import lock_holder
from esapr.models.esapr_plus import EsaprPlus, linear_cache_file, standardised
from esapr.training.evaluator import load_run
from esapr.training.trainer import Trainer, train
from tests.conftest import tiny
from tests.synthetic import write_ratings_csv


def config_of(template, tmp_path, data_file, **extra):
    """The tiny preset; three epochs for a model trained by steps (a closed-form grid has none)."""
    epochs = {"num_epochs": 3} if template != "train_slist" else {}
    return build_config([template], {**tiny(template, data_file, experiment_root=str(tmp_path / "runs")), **epochs,
                                     **extra})


def test_standardised_rows_leave_the_padding_column_out_of_the_statistics():
    scores = torch.tensor([[100.0, 1.0, 2.0, 3.0], [-7.0, 4.0, 4.0, 10.0]])
    # row 1: mean 2, std 1; row 2: mean 6, std sqrt(((-2)^2 + (-2)^2 + 4^2) / 2) = sqrt(12)
    expected = torch.tensor([[98.0, -1.0, 0.0, 1.0], [-13 / 12 ** 0.5, -2 / 12 ** 0.5, -2 / 12 ** 0.5, 4 / 12 ** 0.5]])
    torch.testing.assert_close(standardised(scores), expected)


def test_linear_weight_zero_without_the_stage_rule_and_prefixes_is_esapr(tmp_path, data_file):
    esapr = train(config_of("train_vae", tmp_path, data_file, experiment_name="esapr"), progress="quiet")
    plus = train(config_of("train_esapr_plus", tmp_path, data_file, experiment_name="plus", linear_weight=0.0,
                           stage_patience=0, stop_at_idle_stage=False, prefix_decay=0.0), progress="quiet")
    assert plus["test"] == esapr["test"] and plus["best_epoch"] == esapr["best_epoch"]


def test_the_linear_path_is_slists_solution_and_the_scores_its_standardised_blend(tmp_path, data_file):
    lam, alpha = 3.0, 0.4
    slist_config = config_of("train_slist", tmp_path, data_file, slist_lambdas=[lam], slist_alphas=[alpha])
    slist = Trainer(slist_config, prepare_data(slist_config), progress="quiet")
    slist.model.fit_closed_form(slist.setting(1), slist.batches)
    config = config_of("train_esapr_plus", tmp_path, data_file, linear_lambda=lam, linear_alpha=alpha,
                       linear_weight=0.7)
    assert config.model.max_len == slist_config.model.max_len       # the same histories
    trainer = Trainer(config, prepare_data(config), progress="quiet")
    model = trainer.model
    assert isinstance(model, EsaprPlus)
    torch.testing.assert_close(model.linear, slist.model.weights, atol=1e-6, rtol=0)
    model.eval()
    batch = next(iter(trainer.batches.eval_batches("val")))
    with torch.no_grad():
        vae = super(EsaprPlus, model).scores(batch)
        expected = standardised(vae) + 0.7 * standardised(batch.bag @ slist.model.weights)
        torch.testing.assert_close(model.scores(batch), expected, atol=1e-5, rtol=0)


def test_the_kept_best_weights_share_the_linear_path_and_copy_the_rest(tmp_path, data_file, monkeypatch):
    """The V x V buffer never changes in training: every improvement's copy of the best weights
    holds the model's own tensor, while every trained tensor is a copy of its value then."""
    config = config_of("train_esapr_plus", tmp_path, data_file, saturation_wait_epochs=100)
    trainer = Trainer(config, prepare_data(config), progress="quiet")
    keep, kept = Trainer._keep_best, []

    def checked(self, evaluation):
        keep(self, evaluation)
        kept.append(self.best_weights)
    monkeypatch.setattr(Trainer, "_keep_best", checked)
    experiment = Experiment(experiment_path(config))
    with experiment.lock():
        experiment.start(config, {})
        trainer.fit(experiment)
    assert kept and trainer.model.fixed_state() == {"linear"}
    linear = trainer.model.linear
    assert linear.abs().sum() > 0
    state = trainer.model.state_dict()
    for weights in kept:
        assert weights["linear"].data_ptr() == linear.data_ptr()          # the same memory, not a copy
        assert all(value.data_ptr() != state[name].data_ptr() for name, value in weights.items() if name != "linear")


def test_a_saved_run_is_loaded_without_solving_its_linear_path_again(tmp_path, data_file, monkeypatch):
    config = config_of("train_esapr_plus", tmp_path, data_file, num_epochs=1)
    results = train(config, progress="quiet")
    saved = torch.load(f"{results['experiment']}/models/best_model.pth", weights_only=True)["model"]
    assert "linear" in saved and saved["linear"].abs().sum() > 0
    assert torch.count_nonzero(torch.diagonal(saved["linear"])) == 0      # an item never recommends itself

    def no_solve(*args):
        raise AssertionError("the linear path was solved again")
    monkeypatch.setattr(esapr_plus, "slist_grams", no_solve)
    experiment = Experiment(results["experiment"])
    loaded = load_run(experiment, experiment.run_config(), prepare_data(config))
    assert torch.equal(loaded.model.linear, saved["linear"])
    assert loaded.evaluate("test").metrics == results["test"]
    Trainer(config, prepare_data(config), progress="quiet")              # training reads the cached solution
    shutil.rmtree(linear_cache_file(prepare_data(config), config.model).parent)
    with pytest.raises(AssertionError, match="solved again"):           # without it, training solves; loading never
        Trainer(config, prepare_data(config), progress="quiet")


# --- the linear path's cache and its sparse scoring ------------------------------------------------------

@pytest.fixture()
def own_data(tmp_path):
    """A ratings file of this test's own, so its cache starts empty."""
    (tmp_path / "own").mkdir()
    return write_ratings_csv(tmp_path / "own" / "ratings.csv", n_users=60)


def test_the_linear_path_is_solved_once_per_data_and_options_and_read_by_every_later_run(tmp_path, own_data,
                                                                                          monkeypatch):
    """Solved under the lock of its cache folder; then another run of the same options, another
    seed and another VAE option read it (results identical to the run that solved); a changed
    option of the linear path is another entry, solved anew."""
    data_file = own_data
    config = config_of("train_esapr_plus", tmp_path, data_file, experiment_name="first")
    path = linear_cache_file(prepare_data(config), config.model)
    solve, held = EsaprPlus.solve_linear, []

    def solve_under_the_lock(self, data):
        held.append(lock_holder(path.parent))
        return solve(self, data)
    monkeypatch.setattr(EsaprPlus, "solve_linear", solve_under_the_lock)
    first = train(config, progress="quiet")
    assert len(held) == 1 and held[0] is not None and path.is_file()

    def no_solve(self, data):
        raise AssertionError("solved again")
    monkeypatch.setattr(EsaprPlus, "solve_linear", no_solve)
    again = train(config.with_run(experiment_name="again"), progress="quiet")
    assert {k: again[k] for k in ("test", "best_epoch", "best_val")} == \
        {k: first[k] for k in ("test", "best_epoch", "best_val")}
    for extra in ({"model_init_seed": 1, "dataloader_random_seed": 1}, {"dropout": 0.5}):
        train(config_of("train_esapr_plus", tmp_path, data_file, experiment_name=str(extra), **extra),
              progress="quiet")
    assert [entry.name for entry in path.parent.parent.iterdir()] == [path.parent.name]
    with pytest.raises(AssertionError, match="solved again"):
        Trainer(config_of("train_esapr_plus", tmp_path, data_file, linear_lambda=7.0), prepare_data(config),
                progress="quiet")


@pytest.mark.parametrize("option,value", [("max_len", 12), ("weight_type", "exp"), ("weight_constant", 3.0),
                                          ("linear_lambda", 7.0), ("linear_alpha", 0.3)])
def test_every_option_that_changes_the_linear_path_names_another_cache_entry(tmp_path, data_file, option, value):
    config = config_of("train_esapr_plus", tmp_path, data_file)
    data = prepare_data(config)
    other = config_of("train_esapr_plus", tmp_path, data_file, **{option: value})
    assert linear_cache_file(data, other.model) != linear_cache_file(data, config.model)
    assert linear_cache_file(data, config_of("train_esapr_plus", tmp_path, data_file, lr=0.5).model) == \
        linear_cache_file(data, config.model)


def test_a_damaged_cache_entry_is_solved_again_and_replaced(tmp_path, own_data):
    data_file = own_data
    config = config_of("train_esapr_plus", tmp_path, data_file)
    solved = Trainer(config, prepare_data(config), progress="quiet").model.linear
    path = linear_cache_file(prepare_data(config), config.model)
    path.write_bytes(path.read_bytes()[:100])
    again = Trainer(config, prepare_data(config), progress="quiet").model.linear
    assert torch.equal(again, solved) and torch.equal(torch.load(path, weights_only=True), solved)


def test_sparse_scoring_gives_the_dense_scores_and_the_same_ranks(tmp_path, data_file, monkeypatch):
    config = config_of("train_esapr_plus", tmp_path, data_file)
    trainer = Trainer(config, prepare_data(config), progress="quiet")
    model = trainer.model.eval()
    assert model.compute_note() == "sparse item-item scoring"
    batch = next(iter(trainer.batches.eval_batches("val")))
    sparse = trainer.evaluate("val")
    with torch.no_grad():
        sparse_scores = model.scores(batch)
        monkeypatch.setattr(esapr_plus, "sparse_scoring", lambda device: False)
        dense_scores = model.scores(batch)
    dense = trainer.evaluate("val")
    torch.testing.assert_close(sparse_scores, dense_scores, atol=1e-5, rtol=0)
    assert (sparse.ranks == dense.ranks).all() and (sparse.full_ranks == dense.full_ranks).all()
    assert sparse.metrics == dense.metrics


@pytest.mark.parametrize("weight", [-1.0, float("nan")])
def test_a_negative_or_missing_weight_is_refused(weight):
    with pytest.raises(UserError, match="option 'linear_weight'"):
        build_config(["train_esapr_plus"], {"linear_weight": weight})


# --- a run saved by an older version, without linear_weight ---------------------------------------------

def test_a_run_saved_without_linear_weight_is_read_as_the_default_and_said_once(tmp_path, data_file, recwarn):
    results = train(config_of("train_esapr_plus", tmp_path, data_file, num_epochs=1), progress="quiet")
    run = results["experiment"]
    assert main(["evaluate", "--experiment", run, "--json"]) == 0
    assert not [w for w in recwarn if "config.json has no" in str(w.message)]     # a complete config.json: silent

    older = tmp_path / "older"
    shutil.copytree(run, older)
    saved = json.loads((older / "config.json").read_text())
    assert saved.pop("linear_weight") == 0.5
    (older / "config.json").write_text(json.dumps(saved))
    recwarn.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("always")        # "once" is the package's doing, not the warning filter's
        config = Experiment(older).run_config()
        Experiment(older).run_config()
    said = [str(w.message) for w in recwarn if "config.json has no" in str(w.message)]
    assert said == [f"{older / 'config.json'} has no linear_weight: read as 0.0, today's default; a run trained "
                    f"with another value scores differently"]
    assert config.model.linear_weight == 0.0
    loaded = load_run(Experiment(older), config, prepare_data(config))
    assert loaded.evaluate("test").metrics != results["test"]     # why it is said: the numbers are other ones
    # a resume says it too, before refusing the template's 0.5 against the 0.0 it reads
    with pytest.warns(UserWarning, match="resumed/config.json has no linear_weight: read as 0.0"), \
            pytest.raises(UserError, match=r"linear_weight \(saved 0.0, now 0.5\)"):
        resumed_config(saved, config_of("train_esapr_plus", tmp_path, data_file), tmp_path / "resumed")
