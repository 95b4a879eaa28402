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

from esapr.config import DATASET_CODES, MODEL_CODES, OPTIONS, build_config, template_names
from esapr.data.batches.types import Batch
from esapr.data.prepare import prepare_data
from esapr.data.sources import SOURCES
from esapr.experiment import Experiment
from esapr.recommend import load_experiment
from esapr.registry import FAMILIES
from esapr.results import model_label
from esapr.training.trainer import Trainer, train

REPO = Path(__file__).resolve().parents[1]
TINY = dict(max_len=10, train_window=2, train_batch_size=40, val_batch_size=50, test_batch_size=50, hidden_units=16,
            num_heads=2, num_blocks=1, encoder_hidden_layer=[16], encode_len=8, test_negative_sample_size=20,
            train_negative_sample_size=20, device="cpu", checkpoint_every_seconds=0)


def template_of(code: str) -> str:
    """A packaged template of the family (the one named after it where there is one)."""
    names = [name for name in template_names() if build_config([name]).model_code == code]
    assert names, f"family {code} has no template"
    return f"train_{code}" if f"train_{code}" in names else names[0]


def test_registry_imports_without_torch():
    code = "import sys, esapr.registry, esapr.config; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"


def test_lists_come_from_the_registries():
    assert MODEL_CODES == tuple(FAMILIES) and OPTIONS["model_code"].metadata["choices"] == tuple(FAMILIES)
    assert DATASET_CODES == tuple(SOURCES) and OPTIONS["dataset_code"].metadata["choices"] == tuple(SOURCES)
    for code, family in FAMILIES.items():
        assert model_label({"model_code": code}) == family.label
        assert issubclass(family.batch_class(), Batch)
    from esapr.cli import usage
    assert ", ".join(FAMILIES) in usage() and ", ".join(template_names()) in usage()


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
    options = dict(TINY, data_file=str(data_file), local_data_folder=str(data_file.parent / "data"),
                   experiment_root=str(tmp_path / "runs"))
    template = template_of(code)
    straight = train(build_config([template], dict(options, num_epochs=2, experiment_name="straight")),
                     progress="quiet")
    assert straight["model_code"] == code and straight["epochs"] == 2
    # evaluation of the saved best model reproduces the reported test metrics
    config = build_config([template], dict(options, num_epochs=2, experiment_name="straight"))
    trainer = Trainer(config, prepare_data(config), progress="quiet")
    trainer.load_best(Experiment(Path(straight["experiment"])))
    evaluation = trainer.evaluate("test")
    assert evaluation.metrics == pytest.approx(straight["test"], abs=1e-12)
    ranks = Experiment(Path(straight["experiment"])).read_ranks()
    assert ranks["rank"].tolist() == evaluation.ranks.tolist()
    assert ranks["full_rank"].tolist() == evaluation.full_ranks.tolist()
    # one epoch, then resumed to two, equals two epochs straight
    train(build_config([template], dict(options, num_epochs=1, experiment_name="resumed")), progress="quiet")
    resumed = train(build_config([template], dict(options, num_epochs=2, experiment_name="resumed", resume=True)),
                    progress="quiet")
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
    config = build_config([template_of(code)], dict(TINY, data_file=str(data_file),
                                                    local_data_folder=str(data_file.parent / "data")))
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
