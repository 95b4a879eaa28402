"""The model-family contract: every registered family trains, evaluates, resumes exactly and
recommends through the same code paths; the lists users see all come from the registries."""
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from esapr.config import ALL_OPTIONS, SHARED, build_config, owners, template_names, template_values
from esapr.data.batches.types import Batch
from esapr.data.prepare import prepare_data
from esapr.data.sources import SOURCES
from esapr.errors import UserError
from esapr.experiment import Experiment
from esapr.families import FAMILIES, model_label
from esapr.options.groups import DATASET_CODES
from esapr.options.spec import type_hints
from esapr.recommend import load_experiment
from esapr.training.trainer import Trainer, train
from tests.conftest import template_of, tiny

REPO = Path(__file__).resolve().parents[1]


def test_families_and_config_import_without_torch():
    code = "import sys, esapr.families, esapr.config, esapr.metrics; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"


def test_lists_come_from_the_registries():
    assert DATASET_CODES == tuple(SOURCES) and ALL_OPTIONS["dataset_code"] is SHARED["data"]
    for code, family in FAMILIES.items():
        assert model_label({"model_code": code}) == family.label
        assert issubclass(family.batch_class(), Batch)
    from esapr.cli import usage
    assert ", ".join(FAMILIES) in usage() and ", ".join(template_names()) in usage()


def test_an_option_has_one_type_wherever_it_is_declared():
    classes = [*SHARED.values(), *(f.options for f in FAMILIES.values())]
    for cls in classes:
        for f in fields(cls):
            assert type_hints(cls)[f.name] == type_hints(ALL_OPTIONS[f.name])[f.name], (cls.__name__, f.name)


@pytest.mark.parametrize("template", template_names())
def test_every_template_sets_only_what_its_family_reads(template):
    """A template that set an option its family ignores would be refused; each packaged one builds."""
    config = build_config([template])
    assert set(template_values([template])) <= set(owners(config.run.model_code))


def test_an_option_the_family_does_not_read_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"option 'linear_weight' is not read by model 'vae' \(VAE\); "
                                        r"it is read by esapr_plus"):
        build_config(["train_vae"], {"linear_weight": 0.5})
    with pytest.raises(UserError, match="option 'lr' is not read by model 'ease'"):
        build_config(["train_ease"], {"lr": 0.002})
    with pytest.raises(UserError, match="option 'mask_prob' is not read by model 'sas'"):
        build_config(["train_sas"], {"mask_prob": 0.3})
    with pytest.raises(UserError, match="no model chosen"):
        build_config([], {"dataset_code": "ml-100k"})


def test_models_and_builders_get_their_own_options(data_file):
    config = build_config(["train_esapr_plus"], tiny("train_esapr_plus", data_file))
    trainer = Trainer(config, prepare_data(config), progress="quiet")
    assert trainer.model.options is config.model and trainer.batches.options is config.model
    assert trainer.batches.evaluation is config.evaluation and trainer.batches.training is config.training
    ease = build_config(["train_ease"], tiny("train_ease", data_file))
    assert ease.training is None and "lr" not in ease.values() and "ease_lambdas" in ease.identity()
    assert "metric_ks" not in ease.identity() and "experiment_root" not in ease.identity()


def _form_choices(notebook: Path, variable: str) -> list[str]:
    """The choices of a Colab form field ``VARIABLE = "..."  #@param [...]``."""
    for cell in json.loads(notebook.read_text())["cells"]:
        for line in cell["source"]:
            match = re.match(rf'{variable} = "[^"]*"\s+#@param (\[[^\]]*\])', line)
            if match:
                return json.loads(match.group(1))
    return []


@pytest.mark.parametrize("notebook", [REPO / "ESAPR.ipynb", *sorted((REPO / "notebooks").glob("*.ipynb"))],
                         ids=lambda p: p.stem)
def test_notebook_form_lists_equal_the_registries(notebook):
    """Colab forms need literal lists; where a notebook has one, it is the registry's."""
    datasets = _form_choices(notebook, "DATASET")
    assert datasets in ([], list(SOURCES)), notebook.name
    templates = _form_choices(notebook, "TEMPLATES")
    assert sorted(templates) in ([], template_names()), notebook.name     # the form's own order


@pytest.mark.parametrize("code", list(FAMILIES))
def test_every_family_trains_evaluates_resumes_and_recommends(tmp_path, data_file, code):
    template = template_of(code)
    options = tiny(template, data_file, experiment_root=str(tmp_path / "runs"))
    trained = FAMILIES[code].trained
    steps = {"num_epochs": 2} if trained else {}
    straight = train(build_config([template], dict(options, **steps, experiment_name="straight")),
                     progress="quiet")
    assert straight["model_code"] == code and straight["epochs"] == (2 if trained else len(Trainer(
        build_config([template], options), prepare_data(build_config([template], options)), "quiet").grid))
    # evaluation of the saved best model reproduces the reported test metrics
    config = build_config([template], dict(options, **steps, experiment_name="straight"))
    trainer = Trainer(config, prepare_data(config), progress="quiet")
    trainer.load_best(Experiment(Path(straight["experiment"])))
    evaluation = trainer.evaluate("test")
    assert evaluation.metrics == pytest.approx(straight["test"], abs=1e-12)
    ranks = Experiment(Path(straight["experiment"])).read_ranks()
    assert ranks["rank"].tolist() == evaluation.ranks.tolist()
    assert ranks["full_rank"].tolist() == evaluation.full_ranks.tolist()
    if trained:     # one epoch, then resumed to two, equals two epochs straight
        train(build_config([template], dict(options, num_epochs=1, experiment_name="resumed")), progress="quiet")
        resumed = train(build_config([template], dict(options, num_epochs=2, experiment_name="resumed",
                                                      resume=True)), progress="quiet")
        assert resumed["test"] == straight["test"]
    # recommendations for a known user: the top items are not in the history, scores descend
    loaded = load_experiment(straight["experiment"])
    user = loaded.data.sequences.user_ids[5]
    top = loaded.recommend(user=user, k=5)
    assert len(top) == 5 and not set(top["item"]) & set(loaded.history(user)["item"])
    assert (top["score"].diff().dropna() <= 0).all()


@pytest.mark.parametrize("code", list(FAMILIES))
def test_forward_is_the_loss_seen_by_a_wrapper(tmp_path, data_file, code):
    """A wrapper around the module (as DistributedDataParallel or torch.compile) sees the step."""
    config = build_config([template_of(code)], tiny(template_of(code), data_file))
    trainer = Trainer(config, prepare_data(config), progress="quiet")
    if trainer.grid is not None:        # a closed-form model: no loss, nothing for an optimizer
        assert not list(trainer.model.parameters()) and trainer.optimizer is None
        return
    batch = next(trainer.batches.train_batches(1))
    assert isinstance(batch, FAMILIES[code].batch_class())
    calls = []
    handle = trainer.model.register_forward_hook(lambda module, args, output: calls.append(output))
    loss = torch.nn.Sequential(trainer.model)(batch)
    handle.remove()
    assert loss.ndim == 0 and torch.isfinite(loss) and len(calls) == 1
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.model.parameters())


def test_batch_rows_keep_types_and_trim_windows():
    from esapr.data.batches.types import SequenceBatch
    batch = SequenceBatch(users=torch.arange(3), tokens=torch.arange(12).view(3, 4),
                          labels=torch.arange(12).view(3, 4) + 100, candidates=torch.arange(6).view(3, 2))
    part = batch.rows(torch.tensor([2, 0]), length=2)
    assert isinstance(part, SequenceBatch) and part.negatives is None
    assert part.tokens.tolist() == [[10, 11], [2, 3]] and part.labels.tolist() == [[110, 111], [102, 103]]
    assert part.candidates.tolist() == [[4, 5], [0, 1]] and part.users.tolist() == [2, 0]
    assert {f.name for f in fields(batch)} >= set(SequenceBatch.WINDOW_FIELDS)
