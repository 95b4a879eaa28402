"""What a comparison trains: one run per (template, seed), each given only the options its family
reads, and what each run does with its folder (start, resume, extend, reuse, overwrite).

A seed sets every seed the run's family reads (model init, data order, training negatives); the
evaluation negatives stay fixed, so all runs rank the same candidates for the same users and are
paired. A template written ``train_meantime:1`` runs only the first of the seeds (a slow model
beside fast ones); its runs are the same a separate compare of it would train.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from esapr.config import (ALL_OPTIONS, Config, build_config, config_differences, describe_differences, owners,
                          readers, template_values)
from esapr.errors import UserError
from esapr.experiment import Experiment, experiment_path

SEED_OPTIONS = ("model_init_seed", "dataloader_random_seed", "train_negative_sampling_seed")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
CLI_HINT = "choose another --experiment_group, or pass --overwrite to train it again"


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
    fewer epochs than it already ran is refused. A finished closed-form run is reused."""
    experiment = Experiment(experiment_path(config))
    status = experiment.status()
    plain = config.with_run(resume=False, overwrite=False)
    if status is None and not experiment.config_file.is_file():
        return RunPlan("start", plain, "nothing there yet")
    if overwrite:
        return RunPlan("overwrite", plain.with_run(overwrite=True), "asked to train again")
    saved = experiment.read_config()
    changed = config_differences(saved, config, ignore=frozenset({"num_epochs"}))
    if changed:
        raise UserError(f"{experiment.path} holds a {status or 'started'} run with other options: "
                        f"{describe_differences(changed)}; {hint}")
    if status == "finished":
        return _plan_finished(experiment, saved, plain, hint)
    if experiment.recent_checkpoint.is_file():
        return RunPlan("resume", plain.with_run(resume=True), f"unfinished ({status}); resuming")
    return RunPlan("overwrite", plain.with_run(overwrite=True),
                   f"unfinished ({status}) without a checkpoint; starting again")


def _plan_finished(experiment: Experiment, saved: dict, config: Config, hint: str) -> RunPlan:
    """A finished run: reused, or (trained by steps, stopped at a lower limit) extended."""
    results = experiment.read_results() or {}
    done = int(results.get("epochs", 0))
    if config.training is None:
        return RunPlan("reuse", config, "finished (closed form)")
    before, now = int(saved.get("num_epochs", -1)), config.num_epochs
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


def plan_runs(templates: Sequence[str], seeds: Sequence[int], overrides: dict[str, Any] | None = None) -> list[Run]:
    """Every (template, seed) run, validated before anything is trained. Each template gets the
    options its family reads; an option that no template reads is refused."""
    overrides = {k: v for k, v in (overrides or {}).items() if k not in ("resume", "templates", "overwrite")}
    templates = list(templates)
    if not templates:
        raise UserError("compare needs templates: --templates train_vae train_sas ...")
    seeds = [_seed(s) for s in seeds]
    if not seeds:
        raise UserError("compare needs at least one seed: --seeds 0 1 2")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"a seed is named twice in --seeds {' '.join(map(str, seeds))}")
    limited = [_seed_limit(str(entry), len(seeds)) for entry in templates]
    templates = [template for template, _ in limited]
    if len(set(templates)) != len(templates):
        raise UserError(f"a template is named twice in --templates {' '.join(map(str, templates))}")
    for name in ("experiment_name",) + SEED_OPTIONS:
        if name in overrides:
            raise UserError(f"compare sets {name} itself (from --seeds and the template); drop --{name} "
                            f"(--experiment_group keeps a comparison apart)")
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
    for template, count in limited:
        # an unknown name goes on to build_config, which refuses it with the nearest valid one
        given = {k: v for k, v in overrides.items() if k in read[template] or k not in ALL_OPTIONS}
        base = build_config([template], given)
        stem = base.run.experiment_name
        if base.run.pilot:
            stem = stem.removesuffix("_pilot")      # build_config's default name of a pilot run
        for seed in seeds[:count]:
            name = f"{stem}_seed{seed}" + ("_pilot" if base.run.pilot else "")
            options = {**given, "experiment_name": name,
                       **{option: seed for option in SEED_OPTIONS if option in read[template]}}
            config = build_config([template], options)
            values = config.values()
            runs.append(Run(template, seed, config, {k: values[k] for k in options}))
    return runs


def _options_read(template: str, overrides: dict[str, Any]) -> frozenset[str]:
    """The options the template's family reads (none where it names no known family: building
    its config then says why)."""
    code = overrides.get("model_code", template_values([template]).get("model_code"))
    return frozenset(owners(str(code))) if code is not None else frozenset()


def _seed_limit(entry: str, n_seeds: int) -> tuple[str, int]:
    """``train_meantime:1`` -> (train_meantime, 1): a template that runs only the first N of
    --seeds (a slow model beside fast ones); a bare name runs them all."""
    template, colon, count = entry.rpartition(":")
    if not colon or not count.isdigit():     # no count (or a Windows path such as C:\\t.yaml)
        return entry, n_seeds
    if not 1 <= int(count) <= n_seeds:
        raise UserError(f"--templates {entry}: the number after ':' is how many of the {n_seeds} seeds "
                        f"{template} runs; allowed: 1 to {n_seeds}")
    return template, int(count)


def _seed(value: Any) -> int:
    try:
        seed = int(value)
    except (TypeError, ValueError):
        raise UserError(f"--seeds expects whole numbers, got '{value}'") from None
    if seed < 0:
        raise UserError(f"--seeds expects numbers >= 0, got {seed}")
    return seed
