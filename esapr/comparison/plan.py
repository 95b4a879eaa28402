"""What a comparison trains: one run per (template, seed), each given only the options its family
reads, and what each run does with its folder (start, resume, extend, reuse, overwrite).

A seed sets every seed the run's family reads (model init, data order, training negatives); the
evaluation negatives stay fixed, so all runs rank the same candidates for the same users and are
paired. A template written ``train_meantime:1`` runs only the first of the seeds (a slow model
beside fast ones); its runs are the same a separate compare of it would train. A closed-form
model (EASE, SLIST) does not read a seed: it is fitted once, in the first seed's folder, and
that one fit stands for every seed.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Sequence

from esapr.config import (ALL_OPTIONS, Config, build_config, config_differences, describe_differences, owners,
                          readers, template_values, warn_assumed_defaults)
from esapr.errors import UserError
from esapr.experiment import Experiment, experiment_path
from esapr.files import lock_holder
from esapr.options.spec import short

SEED_OPTIONS = ("model_init_seed", "dataloader_random_seed", "train_negative_sampling_seed")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
KEEPS_DATA = ("reuse", "extend", "resume")      # plans that go on with what a folder holds, on its data


@dataclass(frozen=True)
class Names:
    """How a message names an argument: ``--overwrite`` on the command line, ``overwrite=True``
    in the Python API (the words a user can act on where the message is read)."""
    cli: bool

    def arg(self, name: str) -> str:
        return f"--{name}" if self.cli else name

    def set(self, name: str, value: Any = True) -> str:
        """``--overwrite`` / ``overwrite=True``; ``--seeds 0 1 2`` / ``seeds=[0, 1, 2]``."""
        if self.cli:
            values = value if isinstance(value, (list, tuple)) else [] if value is True else [value]
            return " ".join([f"--{name}", *map(str, values)])
        return f"{name}={list(value) if isinstance(value, tuple) else value!r}"

    @property
    def hint(self) -> str:
        return (f"choose another {self.set('experiment_group', 'NAME')}, or pass {self.set('overwrite')} to train "
                f"it again")


CLI, PYTHON = Names(cli=True), Names(cli=False)
CLI_HINT = CLI.hint


class DamagedRun(UserError):
    """A finished run whose results.json cannot be read as written: compare leaves it out."""


def whole(value: Any) -> int | None:
    """``value`` as an exact whole number (an int, an integral finite float, ASCII digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        digits = text.removeprefix("-")
        return int(text) if digits.isascii() and digits.isdigit() else None
    return None


# --- what to do with one experiment folder ---------------------------------------------------------
@dataclass(frozen=True)
class RunPlan:
    """``action``: start | resume | extend | reuse | overwrite; ``config`` carries the matching
    resume/overwrite/num_epochs; ``reason`` says why in one line."""
    action: str
    config: Config
    reason: str

    @property
    def path(self) -> Path:
        return experiment_path(self.config)


def plan_run(config: Config, overwrite: bool = False, hint: str = CLI_HINT) -> RunPlan:
    """Decide what training ``config`` does with its folder, before anything is written.

    A folder whose saved run reads other values (``config_differences``) is refused with a
    UserError naming each option with both values, followed by ``hint``. The epoch limit of a
    model trained by steps may differ: a finished run that hit its old limit is extended to a
    higher one; one that stopped early (or ran exactly the epochs asked) is reused; one asked for
    fewer epochs than it already ran is refused. A finished closed-form run is reused. A finished
    run whose saved files cannot say how far it ran is a DamagedRun; a "running" one whose lock
    no process holds was interrupted by its process's death."""
    experiment = Experiment(experiment_path(config))
    status = experiment.status()
    plain = config.with_run(resume=False, overwrite=False)
    if status is None and not experiment.config_file.is_file():
        return RunPlan("start", plain, "nothing there yet")
    if overwrite:
        return RunPlan("overwrite", plain.with_run(overwrite=True), "asked to train again")
    saved = experiment.read_config()
    warn_assumed_defaults(saved, config, experiment.path, frozenset({"num_epochs"}))
    changed = config_differences(saved, config, ignore=frozenset({"num_epochs"}))
    if changed:
        raise UserError(f"{experiment.path} holds a {status or 'started'} run with other options: "
                        f"{describe_differences(changed)}; {hint}")
    if status == "finished":
        return _plan_finished(experiment, saved, plain, hint)
    if status == "running" and lock_holder(experiment.path) is None:
        status = "interrupted: its process died"
    if experiment.recent_checkpoint.is_file():
        return RunPlan("resume", plain.with_run(resume=True), f"unfinished ({status}); resuming")
    return RunPlan("overwrite", plain.with_run(overwrite=True),
                   f"unfinished ({status}) without a checkpoint; starting again")


def _plan_finished(experiment: Experiment, saved: dict, config: Config, hint: str) -> RunPlan:
    """A finished run: reused, or (trained by steps, stopped at a lower limit) extended; one whose
    results.json is damaged is a DamagedRun."""
    done = count(finished_results(experiment)["epochs"])
    if config.training is None:
        return RunPlan("reuse", config, "finished (closed form)")
    limit = saved.get("num_epochs", -1)
    if isinstance(limit, str) or whole(limit) is None:
        raise DamagedRun(f"{experiment.config_file}: damaged (num_epochs is {short(limit)}); delete the run's "
                         f"folder to train it again")
    before, now = whole(limit), config.num_epochs
    if 0 < now < done:
        raise UserError(f"{experiment.path} holds a finished run of {done} epochs, more than num_epochs {now}; "
                        f"ask for num_epochs {before if before >= done or before < 0 else done} to reuse it, "
                        f"or {hint}")
    # done > before > 0: extended by hand (esapr train --resume --num_epochs N keeps config.json's limit)
    hit_limit = before > 0 and done >= before
    if now in (before, done) or not hit_limit:
        return RunPlan("reuse", config, f"finished ({done} epochs)" if hit_limit or now == done
                       else f"finished (stopped early at epoch {done})")
    if not experiment.recent_checkpoint.is_file():
        raise UserError(f"{experiment.path}: the finished run stopped at num_epochs {done} and has no "
                        f"checkpoint to extend to {now}; {hint}")
    return RunPlan("extend", config.with_run(resume=True),
                   f"finished at num_epochs {done}; extending to {'early stopping' if now < 0 else now}")


def finished_results(experiment: Experiment) -> dict:
    """A finished run's results.json, checked for what compare reads of it (its epochs, a
    mapping of test metrics); a file that cannot say is a DamagedRun."""
    path = experiment.path / "results.json"
    try:
        results = experiment.read_results()
    except UserError as error:
        raise DamagedRun(str(error)) from None
    fix = "delete the run's folder to train it again"
    if results is None:
        raise DamagedRun(f"{path}: missing, though the run says it finished; {fix}")
    if count(results.get("epochs")) is None:
        epochs = f"epochs is {short(results['epochs'])}" if "epochs" in results else "no epochs"
        raise DamagedRun(f"{path}: damaged ({epochs}); {fix}")
    if not isinstance(results.get("test", {}), dict):
        raise DamagedRun(f"{path}: damaged (test is {short(results['test'])}); {fix}")
    return results


def count(value: Any) -> int | None:
    """A number read from a saved file as a count >= 0 (an int or an integral finite float), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return whole(value)


# --- the runs of a comparison ------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One (template, seed): its config and the options its ``esapr train`` command gives."""
    template: str
    seed: int
    config: Config
    options: dict[str, Any]

    @property
    def path(self) -> Path:
        return experiment_path(self.config)

    @property
    def name(self) -> str:
        return self.config.run.experiment_name

    def command(self, plan: RunPlan | None = None) -> list[str]:
        """The ``esapr train`` command of this run (with --resume/--overwrite as planned)."""
        argv = ["esapr", "train", "--templates", self.template]
        for name, value in self.options.items():
            argv += [f"--{name}", *cli_values(value)]
        if plan is not None and plan.action in ("resume", "extend"):
            argv.append("--resume")
        if plan is not None and plan.action == "overwrite":
            argv.append("--overwrite")
        return argv


def cli_values(value: Any) -> list[str]:
    """An option's value as ``esapr`` command-line words."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    return ["none" if value is None else str(value)]


def plan_runs(templates: Sequence[str], seeds: Sequence[int], overrides: dict[str, Any] | None = None,
              names: Names = CLI) -> list[Run]:
    """Every (template, seed) run, validated before anything is trained. Each template gets the
    options its family reads; an option that no template reads is refused, and so are two
    templates whose runs would share folders. ``names``: how messages name the arguments."""
    overrides = {k: v for k, v in (overrides or {}).items() if k not in ("resume", "templates", "overwrite")}
    templates = _templates(templates, names)
    seeds = [_seed(s, names) for s in _listed(seeds, "seeds", "whole numbers", names)]
    if not seeds:
        raise UserError(f"compare needs at least one seed: {names.set('seeds', [0, 1, 2])}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"a seed is named twice in {names.set('seeds', seeds)}")
    limited = [_seed_limit(entry, len(seeds), names) for entry in templates]
    templates = [template for template, _ in limited]
    if len(set(templates)) != len(templates):
        raise UserError(f"a template is named twice in {names.set('templates', templates)}")
    for name in ("experiment_name",) + SEED_OPTIONS:
        if name in overrides:
            raise UserError(f"compare sets {name} itself (from {names.arg('seeds')} and the template); drop "
                            f"{names.arg(name)} ({names.arg('experiment_group')} keeps a comparison apart)")
    read = {t: _options_read(t, overrides) for t in templates}
    unread = [name for name in overrides if name in ALL_OPTIONS and not any(name in r for r in read.values())]
    if unread:
        by = list(dict.fromkeys(code for name in unread for code in readers(name)))
        several = len(unread) > 1
        raise UserError(f"option{'s' if several else ''} {', '.join(repr(n) for n in unread)} "
                        f"{'are' if several else 'is'} read by none of the templates {', '.join(templates)} "
                        f"(read by {', '.join(by)}): drop {'them' if several else 'it'}, or add a template that "
                        f"reads {'them' if several else 'it'}")
    runs = []
    for template, n_seeds in limited:
        # an unknown name goes on to build_config, which refuses it with the nearest valid one
        given = {k: v for k, v in overrides.items() if k in read[template] or k not in ALL_OPTIONS}
        base = build_config([template], given)
        stem = base.run.experiment_name
        if base.run.pilot:
            stem = stem.removesuffix("_pilot")      # build_config's default name of a pilot run
        # a closed-form model fits the same weights whatever the seed: one run serves every seed
        for seed in seeds[:1] if base.training is None else seeds[:n_seeds]:
            name = f"{stem}_seed{seed}" + ("_pilot" if base.run.pilot else "")
            options = {**given, "experiment_name": name,
                       **{option: seed for option in SEED_OPTIONS if option in read[template]}}
            config = build_config([template], options)
            values = config.values()
            runs.append(Run(template, seed, config, {k: values[k] for k in options}))
    _refuse_shared_folders(runs)
    return runs


def _listed(value: Any, name: str, kind: str, names: Names) -> list:
    """A list argument of the Python API as a list (one value as a list of it)."""
    if isinstance(value, (str, int, os.PathLike)) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{names.arg(name)} expects {kind}, got {short(value)}")
    return list(value)


def _templates(templates: Any, names: Names) -> list[str]:
    """Template names or .yaml paths, as text."""
    if templates is None:
        raise UserError(f"compare needs templates: {names.set('templates', ['train_vae', 'train_sas'])}")
    entries = _listed(templates, "templates", "template names or .yaml paths", names)
    if not entries:
        raise UserError(f"compare needs templates: {names.set('templates', ['train_vae', 'train_sas'])}")
    for entry in entries:
        if not isinstance(entry, (str, os.PathLike)) or isinstance(entry, bytes):
            raise UserError(f"{names.arg('templates')} expects template names or .yaml paths, got {short(entry)}")
    return [os.fspath(entry) for entry in entries]


def _refuse_shared_folders(runs: list[Run]) -> None:
    """Runs of two templates in one folder would replace each other (``a/vae.yaml``,
    ``b/vae.yaml``: a run folder is named after the template's file name)."""
    owner: dict[Path, str] = {}
    for run in runs:
        other = owner.setdefault(run.path, run.template)
        if other != run.template:
            raise UserError(f"templates {other} and {run.template} would train into the same run folders "
                            f"({run.path.parent / run.path.name.replace(f'_seed{run.seed}', '_seed*')}); rename "
                            f"one of the files (a run folder is named after it), or compare them apart")


def _options_read(template: str, overrides: dict[str, Any]) -> frozenset[str]:
    """The options the template's family reads (none where it names no known family: building
    its config then says why)."""
    code = overrides.get("model_code", template_values([template]).get("model_code"))
    return frozenset(owners(str(code))) if code is not None else frozenset()


def _seed_limit(entry: str, n_seeds: int, names: Names) -> tuple[str, int]:
    """``train_meantime:1`` -> (train_meantime, 1): a template that runs only the first N of
    the seeds (a slow model beside fast ones); a bare name runs them all."""
    template, colon, n = entry.rpartition(":")
    if not colon or not n.isnumeric():      # no count (or a Windows path such as C:\\t.yaml)
        return entry, n_seeds
    if not (n.isascii() and 1 <= int(n) <= n_seeds):
        raise UserError(f"{names.arg('templates')} {entry}: the number after ':' is how many of the {n_seeds} "
                        f"seeds {template} runs; allowed: 1 to {n_seeds} (digits 0-9)")
    return template, int(n)


def _seed(value: Any, names: Names) -> int:
    seed = whole(value) if isinstance(value, (str, numbers.Number)) else None
    if seed is None:
        raise UserError(f"{names.arg('seeds')} expects whole numbers, got {short(value)}")
    if seed < 0:
        raise UserError(f"{names.arg('seeds')} expects numbers >= 0, got {seed}")
    return seed


def tune_folder(config: Config, template: str) -> Path:
    """Where ``esapr tune`` keeps ``template``'s study on ``config``'s data: <root>/<group>/tune/<template>."""
    return Path(config.run.experiment_root) / config.run.experiment_group / "tune" / PurePath(template).stem


def tuned_templates(templates: Any, overrides: dict[str, Any], names: Names, say) -> list[str]:
    """Each template replaced by the best.yaml its study left (``esapr tune``), where there is
    one (a ``:N`` seed count kept); each said in one line."""
    entries = []
    for entry in _templates(templates, names):
        template, colon, n = entry.rpartition(":")
        template, suffix = (template, colon + n) if colon and n.isnumeric() else (entry, "")
        config = build_config([template], {k: v for k, v in overrides.items()
                                           if k in _options_read(template, overrides) and k != "experiment_name"})
        best = tune_folder(config, template) / "best.yaml"
        if best.is_file():
            head = best.read_text(errors="replace").splitlines()[0].removeprefix("# esapr tune: ")
            say(f"{template}: tuned: {best} ({head})")
            entries.append(str(best) + suffix)
        else:
            say(f"{template}: no study ({best} is absent): the template's own values")
            entries.append(entry)
    return entries


# --- the data a kept run was trained on ------------------------------------------------------------------
class Planner:
    """What each run does with its folder (``plan_run``), where a run that is kept (reused,
    extended or resumed) must have been trained on the data the comparison trains on now: the
    data is prepared once per distinct data options (from the cache) and its fingerprint
    compared with the one the run recorded. A finished run whose results are damaged is planned
    as ``damaged`` and left out."""

    def __init__(self, overwrite: bool = False, names: Names = CLI):
        self.overwrite, self.names = overwrite, names
        self._fingerprints: dict[str, str] = {}

    def __call__(self, run: Run, overwrite: bool | None = None) -> RunPlan:
        try:
            plan = plan_run(run.config, self.overwrite if overwrite is None else overwrite, self.names.hint)
        except DamagedRun as error:
            return RunPlan("damaged", run.config, str(error))
        if plan.action in KEEPS_DATA:
            self.check_data(run)
        return plan

    def check_data(self, run: Run) -> None:
        saved = Experiment(run.path).read_config().get("data_fingerprint")
        if saved is None:            # a run of a version that recorded none
            return
        now = self.fingerprint(run.config)
        if saved != now:
            raise UserError(f"{run.path} was trained on other data (fingerprint {saved}, now {now}): the data "
                            f"file or a data option changed since; pass {self.names.set('overwrite')} to train it "
                            f"again, or choose another {self.names.set('experiment_group', 'NAME')}")

    def fingerprint(self, config: Config) -> str:
        """The fingerprint of the data ``config`` trains on (what ``PreparedData.fingerprint`` hashes:
        the data options and the family's training negatives)."""
        from esapr.data.prepare import prepare_data
        pool = config.negative_pool
        key = repr((config.data, None if pool is None else (pool.train_negative_sampler_code,
                                                            pool.train_negative_sample_size,
                                                            pool.train_negative_sampling_seed)))
        if key not in self._fingerprints:
            self._fingerprints[key] = prepare_data(config).fingerprint
        return self._fingerprints[key]
