"""An adversarial pass over the CLI and the Python API: compare under concurrency and kills,
closed-form sizes, timestamps, encodings, the environment, real-world file shapes, CLI values.

Each attack runs in a fresh temporary folder ``<tmp>/<id>/work`` (the working folder and HOME,
with its own TMPDIR) on small synthetic data it writes itself, and runs ``python -m esapr ...``
(or ``python -c`` for the Python API) as subprocesses, with ``--code DIR`` put first on
PYTHONPATH, so the same attacks run against any checkout:

    python benchmarks/attacks.py --code . --out attacks.json --table attacks.md
    python benchmarks/attacks.py --code ../old_checkout --only kill-compare-sigkill-rerun

Every attack expects either ``clean`` (a non-zero exit, stderr's last line starting with
``esapr: error`` or ``esapr: interrupted``, no traceback) or ``works`` (exit 0 and an
attack-specific check), or either of them (``clean|works``). Beside ``work/`` each attack has a
sibling ``outside/`` (planted links point there); afterwards the attack folder outside ``work/``
must be unchanged (names, sizes, mtimes, modes). Outcomes: pass, traceback (in any process's
stderr or in any ``*.log`` under ``work/``), wrote-outside, lost-or-mixed (a run lost or
results mixed), unclear (exit code or message not as expected), timeout (90 s per attack).

Safety on a shared machine: every process runs with a soft address-space limit (8 GB), so a
dense allocation fails instead of waking the OOM killer, without the root capabilities that
bypass file permissions (so read-only folders are read-only even when run as root), and with an
unreachable HTTP proxy (no download). The pass takes 7-8 minutes on 2 cores. Exit status 0 when
every attack passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ATTACK_SECONDS = 90
ADDRESS_SPACE = 8 * 10**9
RUN_TOKEN = f"esapr-attacks-{uuid.uuid4().hex[:12]}"     # in every child's environment: finds strays
HEADER = ("user_id", "item_id", "rating", "timestamp")
NO_NETWORK = "http://127.0.0.1:9"      # every child's proxy: a download attempt fails at once

# tiny model and evaluation options per template family (an option a family does not read is refused)
EVAL = ["--test_negative_sample_size", "20", "--val_batch_size", "50", "--test_batch_size", "50",
        "--device", "cpu"]
FAMILY_OPTIONS = {
    "vae": {"max_len": "10", "train_window": "2", "train_batch_size": "40", "encoder_hidden_layer": "16",
            "encode_len": "8"},
    "ease": {"ease_lambdas": "10 100"},
    "slist": {"max_len": "10", "slist_lambdas": "10", "slist_alphas": "0.5"},
    "transformer": {"max_len": "10", "hidden_units": "8", "num_blocks": "1", "num_heads": "1",
                    "train_batch_size": "40"},
}
TEMPLATE_FAMILY = {"train_vae_net": "vae", "train_vae": "vae", "train_esapr_plus": "vae",
                   "train_ease": "ease", "train_slist": "slist", "train_meantime": "transformer",
                   "train_tisas": "transformer", "train_sas": "transformer"}
TRAINED_BY_STEPS = {"vae", "transformer"}


def model_options(*templates: str, epochs: int | str = 1) -> list[str]:
    """``--templates ...`` and the tiny options of their families (each option given once)."""
    families = {TEMPLATE_FAMILY[t.split(":")[0]] for t in templates if not t.endswith(".yaml")}
    options: dict[str, str] = {}
    for family in sorted(families):
        for name, values in FAMILY_OPTIONS[family].items():
            options.setdefault(name, values)
    if families & TRAINED_BY_STEPS:
        options["num_epochs"] = str(epochs)
    args = ["--templates", *templates]
    for name, values in options.items():
        args += [f"--{name}", *values.split()]
    return args + EVAL


# ---------------------------------------------------------------------------------------- data

def interactions(users: int = 60, items: int = 40, lo: int = 8, hi: int = 20, seed: int = 0,
                 t0: int = 1_000_000_000, step: int = 3600, user_ids=None) -> list[tuple]:
    """(user, item, rating, timestamp) rows: each user rates lo..hi distinct items, in time order."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        user = user_ids[u] if user_ids is not None else u + 1
        picked = rng.choice(np.arange(1, items + 1), size=int(rng.integers(lo, hi + 1)), replace=False)
        for j, item in enumerate(picked):
            rows.append((user, int(item), int(rng.integers(1, 6)), t0 + u * 100_000 + j * step))
    return rows


def table_text(rows, header=HEADER, sep: str = ",", newline: str = "\n") -> str:
    lines = ([sep.join(header)] if header else []) + [sep.join(str(v) for v in row) for row in rows]
    return newline.join(lines) + newline


def write(path: Path, content: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def with_timestamps(rows, times) -> list[tuple]:
    return [(u, i, r, t) for (u, i, r, _), t in zip(rows, times)]


def wide_items_file(path: Path, n_items: int, per_item: int = 5, per_user: int = 50) -> Path:
    """n_items distinct items, each seen per_item times, users of per_user items each."""
    total = n_items * per_item
    users = np.arange(total) // per_user + 1
    items = np.arange(total) % n_items + 1
    times = 1_000_000_000 + np.arange(total) % per_user
    lines = "\n".join(f"{u},{i},{t}" for u, i, t in zip(users.tolist(), items.tolist(), times.tolist()))
    return write(path, "user_id,item_id,timestamp\n" + lines + "\n")


# ------------------------------------------------------------------------------- the harness

class Verdict(Exception):
    outcome = "unclear"


class Unclear(Verdict):
    outcome = "unclear"


class Lost(Verdict):
    outcome = "lost-or-mixed"


class TimedOut(Verdict):
    outcome = "timeout"


@dataclass
class Proc:
    label: str
    argv: list[str]
    rc: int | None
    out: str
    err: str
    seconds: float

    @property
    def last_line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""

    def evidence(self, work: Path) -> str:
        return f"rc={self.rc}: {cut(_short(self.last_line, work) or '(stderr empty)', 100)}"


@dataclass
class Spawned:
    """A process started in the background, its output going to files."""
    label: str
    argv: list[str]
    popen: subprocess.Popen
    out: Path
    err: Path
    started: float


def cut(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _child_setup(sigint=signal.SIG_DFL) -> None:
    """In the child before exec: SIGINT as a terminal leaves it (default; SIG_IGN as under
    ``nohup`` or ``&``), whatever this script inherited; a soft address-space limit; no
    capability that bypasses file permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so
    read-only folders hold for root too."""
    signal.signal(signal.SIGINT, sigint)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):
            libc.prctl(24, capability, 0, 0, 0)     # PR_CAPBSET_DROP


class Context:
    """One attack's folders, environment and processes."""

    def __init__(self, base: Path, code: Path, attack_id: str):
        self.base, self.code, self.attack_id = base, code, attack_id
        self.work = base / "work"
        self.outside = base / "outside"
        self.io = base / "_io"
        for folder in (self.work / ".tmp", self.io, self.outside / "grp", self.outside / "logs"):
            folder.mkdir(parents=True)
        write(self.outside / "victim.txt", "must stay as it is\n")
        write(self.outside / "logs" / "keep.log", "an unrelated log\n")
        self.procs: list[Proc] = []
        self.spawned: list[Spawned] = []
        self.deadline = time.monotonic() + ATTACK_SECONDS
        self.main: Proc | None = None        # the process whose exit and last line are the evidence
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(code),
            "HOME": str(self.work), "TMPDIR": str(self.work / ".tmp"), "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
            "PYTHONDONTWRITEBYTECODE": "1", "ESAPR_ATTACKS_TOKEN": f"{RUN_TOKEN}-{attack_id}",
            **{name: NO_NETWORK for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
        }

    # ---- processes
    def _argv(self, args) -> list:
        return [sys.executable, "-m", "esapr", *args]

    def _env(self, env: dict | None, unset: tuple = ()) -> dict:
        merged = {**self.env, **(env or {})}
        for name in unset:
            merged.pop(name, None)
        return merged

    def remaining(self, limit: float | None = None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimedOut(f"the attack ran past {ATTACK_SECONDS} s")
        return min(left, limit) if limit else left

    def spawn(self, *args, label: str = "", env: dict | None = None, unset: tuple = (),
              cwd: Path | None = None, argv: list | None = None, stdout=None,
              stderr=None, sigint=signal.SIG_DFL) -> subprocess.Popen:
        """Start ``esapr args`` (or argv) in the background, its output in files under _io/."""
        n = len(self.spawned)
        out_path, err_path = self.io / f"{n}.out", self.io / f"{n}.err"
        argv = argv or self._argv(args)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            popen = subprocess.Popen(argv, cwd=cwd or self.work, env=self._env(env, unset),
                                     stdout=stdout if stdout is not None else out,
                                     stderr=stderr if stderr is not None else err, stdin=subprocess.DEVNULL,
                                     preexec_fn=functools.partial(_child_setup, sigint),
                                     start_new_session=True)
        self.spawned.append(Spawned(label or (args[0] if args else "cmd"), [str(a) for a in argv], popen,
                                    out_path, err_path, time.monotonic()))
        return popen

    def _spawned(self, popen: subprocess.Popen) -> Spawned:
        return next(s for s in self.spawned if s.popen is popen)

    def finish(self, popen: subprocess.Popen, limit: float | None = None) -> Proc:
        """Wait for a spawned process (within the attack's time) and record it."""
        spawned = self._spawned(popen)
        try:
            popen.wait(timeout=self.remaining(limit))
        except subprocess.TimeoutExpired:
            self.kill_group(popen)
            raise TimedOut(f"'{spawned.label}' still running after {time.monotonic() - spawned.started:.0f} s")
        proc = Proc(spawned.label, spawned.argv, popen.returncode, _read(spawned.out), _read(spawned.err),
                    time.monotonic() - spawned.started)
        self.procs.append(proc)
        self.main = proc
        return proc

    def cli(self, *args, label: str = "", limit: float | None = None, **kwargs) -> Proc:
        """Run ``python -m esapr args`` to its end."""
        return self.finish(self.spawn(*args, label=label, **kwargs), limit)

    def api(self, expression: str, label: str = "api", setup: str = "") -> Proc:
        """Evaluate a Python-API expression in a fresh interpreter: a UserError is printed as the
        CLI prints it (one line expected), anything else raises (a traceback)."""
        code = (f"import sys, esapr\nfrom esapr.errors import UserError\n{setup}\n"
                f"try:\n    result = {expression}\n"
                f"except UserError as error:\n    print('esapr: error: ' + str(error), file=sys.stderr)\n"
                f"    sys.exit(2)\nprint('result:', type(result).__name__)\n")
        return self.finish(self.spawn(label=label, argv=[sys.executable, "-c", code]))

    def kill_group(self, popen: subprocess.Popen) -> None:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def signal(self, popen: subprocess.Popen, sig: int, group: bool = False) -> None:
        """Send sig to a running process (or its process group, as a terminal's Ctrl-C does);
        one that has already ended makes the attack unclear, not a pass or a failure."""
        if popen.poll() is not None:
            raise Unclear(f"'{self._spawned(popen).label}' had ended (exit {popen.returncode}) before "
                          f"{signal.Signals(sig).name} was sent")
        (os.killpg if group else os.kill)(popen.pid, sig)

    def strays(self) -> list[int]:
        """Processes still alive that this attack started (by the token in their environment)."""
        token = self.env["ESAPR_ATTACKS_TOKEN"].encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if token + b"\0" in (entry / "environ").read_bytes() + b"\0" \
                            and b"zombie" not in (entry / "status").read_bytes()[:200].lower():
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def cleanup(self) -> None:
        for spawned in self.spawned:
            if spawned.popen.poll() is None:
                self.kill_group(spawned.popen)
        for pid in self.strays():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def wait_for(self, predicate: Callable[[], bool], limit: float, what: str) -> None:
        end = time.monotonic() + self.remaining(limit)
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.05)
        raise Unclear(f"never saw {what} within {limit:.0f} s")

    def output_of(self, popen: subprocess.Popen) -> str:
        return _read(self._spawned(popen).out)

    # ---- expectations
    def clean(self, proc: Proc, mentions: tuple[str, ...] = (), warning: bool = False) -> None:
        """Non-zero exit, stderr ending in one 'esapr: error' (or 'interrupted') line; with warning,
        an 'esapr: warning' line too (compare's 'runs left out of the table')."""
        if proc.rc == 0:
            raise Unclear("exit 0 where a refusal was expected")
        if not proc.last_line.startswith(("esapr: error", "esapr: interrupted")
                                         + (("esapr: warning",) if warning else ())):
            raise Unclear("stderr does not end in one 'esapr: error' line")
        if mentions and not any(m.lower() in proc.last_line.lower() for m in mentions):
            raise Unclear(f"the message names none of {list(mentions)}")

    def works(self, proc: Proc) -> None:
        if proc.rc != 0:
            raise Unclear(f"exit {proc.rc} where success was expected")

    def clean_or_works(self, proc: Proc, check: Callable[[], None] | None = None,
                       mentions: tuple[str, ...] = (), warning: bool = False) -> None:
        if proc.rc == 0:
            if check:
                check()
        else:
            self.clean(proc, mentions, warning)

    # ---- files
    def data(self, name: str = "ratings.csv", rows=None, **kwargs) -> Path:
        return write(self.work / name, table_text(rows if rows is not None else interactions(), **kwargs))

    def run_dirs(self, group: str = "g") -> list[Path]:
        folder = self.work / "experiments" / group
        return sorted(p for p in folder.iterdir() if (p / "config.json").exists()) if folder.is_dir() else []

    def tracebacks(self) -> list[str]:
        found = [p.label for p in self.procs if "Traceback (most recent call last)" in p.err]
        for log in self.work.rglob("*.log"):
            if log.is_file() and not log.is_symlink() and "Traceback (most recent call" in _read(log):
                found.append(str(log.relative_to(self.work)))
        return found


def _short(text: str, work: Path) -> str:
    """A message with the attack's temporary folder written as <work>."""
    return text.replace(str(work), "<work>")


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", "backslashreplace")
    except OSError:
        return ""


def listing(base: Path, skip: tuple[str, ...] = ("work", "_io")) -> dict[str, tuple]:
    """Everything under base (but skip): kind, size, mtime and mode of each entry (links not followed)."""
    entries = {}
    for folder, dirs, files in os.walk(base):
        if Path(folder) == base:
            dirs[:] = [d for d in dirs if d not in skip]
            files = [f for f in files if f not in skip]
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            entries[os.path.relpath(path, base)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns,
                                                    stat.S_IMODE(st.st_mode))
    st = os.lstat(base)
    entries["."] = (st.st_mtime_ns,)
    return entries


def changed(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


# --------------------------------------------------------------------------- the attack table

@dataclass
class Attack:
    id: str
    kind: str
    what: str
    expect: str                       # clean | works | clean|works
    run: Callable[[Context], None] = field(repr=False)


ATTACKS: list[Attack] = []


def attack(id: str, kind: str, expect: str, what: str):
    def register(function: Callable[[Context], None]):
        ATTACKS.append(Attack(id, kind, what, expect, function))
        return function
    return register


def one_call(id: str, kind: str, expect: str, what: str, args: Callable[[Context], list],
             mentions: tuple[str, ...] = (), check: Callable[[Context, Proc], None] | None = None,
             env: dict | None = None, unset: tuple = ()) -> None:
    """An attack that is one esapr call on prepared input, then the expectation (and check)."""
    def run(ctx: Context) -> None:
        proc = ctx.cli(*args(ctx), env=env, unset=unset)
        after = (lambda: check(ctx, proc)) if check else None
        if expect == "clean":
            ctx.clean(proc, mentions)
        elif expect == "works":
            ctx.works(proc)
            if after:
                after()
        else:
            ctx.clean_or_works(proc, after, mentions)
    ATTACKS.append(Attack(id, kind, what, expect, run))


def train_args(data: Path, template: str = "train_ease", *extra, epochs: int | str = 1, group: str = "g",
               quiet: bool = True) -> list:
    return ["train", *model_options(template, epochs=epochs), "--data_file", data,
            "--experiment_group", group, *(["--quiet"] if quiet else []), *extra]


def compare_args(data: Path, templates=("train_ease", "train_vae_net"), seeds=("0", "1"), *extra,
                 epochs: int | str = 1) -> list:
    return ["compare", *model_options(*templates, epochs=epochs), "--seeds", *seeds,
            "--data_file", data, "--experiment_group", "g", *extra]


# ---- checks shared by attacks

def comparison_json(ctx: Context, where: Path | None = None) -> dict:
    folder = where or ctx.work / "experiments" / "g"
    files = sorted(folder.glob("comparison*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise Lost(f"no comparison*.json in {folder.relative_to(ctx.work)}")
    return json.loads(files[-1].read_text())


def table_holds(ctx: Context, expected_runs: int, test_users: int | None = None,
                where: Path | None = None, seeds: int = 2) -> None:
    """The newest comparison lists expected_runs finished runs, all in its models' seed counts. A
    closed-form model (EASE) may be one fit for its ``seeds`` seeds (this version) or one run per
    seed (versions before), so its runs count as ``seeds`` either way."""
    comparison = comparison_json(ctx, where)
    closed = {m["template"] for m in comparison.get("models", []) if m.get("closed_form")}
    finished = [r for r in comparison.get("runs", []) if r.get("state") == "finished"]
    def weight(template: str, runs: int) -> int:
        return seeds if template in closed and runs == 1 else runs
    per_template = {t: sum(r.get("template") == t for r in finished) for t in {r.get("template") for r in finished}}
    listed = sum(weight(t, runs) for t, runs in per_template.items())
    counted = sum(weight(m.get("template"), int(m.get("seeds", 0))) for m in comparison.get("models", []))
    if listed != expected_runs or counted != expected_runs:
        raise Lost(f"the table holds {counted} run(s), {listed} finished, of {expected_runs}")
    if test_users is not None and comparison.get("test_users") != test_users:
        raise Lost(f"test_users {comparison.get('test_users')} where the data has {test_users}")


def results_test(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["test"]


def status(folder: Path) -> str:
    try:
        return (folder / "status").read_text().strip()
    except OSError:
        return "(none)"


def no_strays(ctx: Context) -> None:
    alive = ctx.strays()
    if alive:
        raise Unclear(f"{len(alive)} process(es) of the attack still running: {alive}")


# ======================================================================== compare/concurrency

@attack("cmp-two-at-once", "compare/concurrency", "works",
        "two compares of the same 4 runs at once, --jobs 2 each: both exit 0, neither calls a run "
        "failed, the table holds all 4")
def _(ctx):
    data = ctx.data()
    args = compare_args(data, ("train_ease", "train_vae_net"), ("0", "1"), "--jobs", "2", epochs=3)
    first = ctx.spawn(*args, label="compare A")
    time.sleep(0.3)
    second = ctx.spawn(*args, label="compare B")
    a, b = ctx.finish(first), ctx.finish(second)
    for proc in (a, b):
        ctx.works(proc)
        if "failed" in proc.out.lower():
            raise Lost(f"{proc.label} calls a run failed")
    table_holds(ctx, 4)


@attack("cmp-output-run-folder", "compare/concurrency", "clean",
        "compare --output inside a finished run's folder: refused, the run's results.json intact")
def _(ctx):
    data = ctx.data()
    ctx.works(ctx.cli(*compare_args(data, ("train_ease",), ("0",)), "--quiet"))
    run = ctx.run_dirs()[0]
    before = (run / "results.json").read_bytes()
    proc = ctx.cli(*compare_args(data, ("train_ease",), ("0",)), "--output", run / "results")
    if (run / "results.json").read_bytes() != before:
        raise Lost(f"{run.name}/results.json was rewritten")
    ctx.clean(proc)


@attack("cmp-output-planted-link", "compare/concurrency", "clean|works",
        "compare --output through a link planted in the root (-> outside/): never written through")
def _(ctx):
    data = ctx.data()
    (ctx.work / "experiments" / "g").mkdir(parents=True)
    (ctx.work / "experiments" / "g" / "out").symlink_to(ctx.outside)
    ctx.clean_or_works(ctx.cli(*compare_args(data, ("train_ease",), ("0",)),
                               "--output", Path("experiments/g/out/table")))


@attack("cmp-output-dot", "compare/concurrency", "clean|works",
        "compare --output . : the table files in the working folder (no '.csv' / '...csv')")
def _(ctx):
    data = ctx.data()

    def check():
        names = [p.name for p in ctx.work.iterdir()]
        if not any(n.startswith("comparison") and n.endswith(".json") for n in names) \
                or any(n in (".csv", "..csv", "...csv", ".json") for n in names):
            raise Unclear(f"table files not as expected in '.': {sorted(names)}")
    proc = ctx.cli(*compare_args(data, ("train_ease",), ("0",)), "--output", ".")
    if proc.rc != 0 and ctx.run_dirs():
        raise Unclear("refused only after training")
    ctx.clean_or_works(proc, check)


@attack("cmp-output-folder", "compare/concurrency", "works",
        "compare --output tables/ (an existing folder): the table files inside it")
def _(ctx):
    data = ctx.data()
    (ctx.work / "tables").mkdir()
    ctx.works(ctx.cli(*compare_args(data, ("train_ease",), ("0",)), "--output", "tables"))
    table_holds(ctx, 1, where=ctx.work / "tables", seeds=1)


@attack("cmp-same-named-templates", "compare/concurrency", "clean",
        "two template files a/ease.yaml, b/ease.yaml (other lambdas) in one compare: refused")
def _(ctx):
    data = ctx.data()
    write(ctx.work / "a" / "ease.yaml", "model_code: ease\nease_lambdas: [10]\n")
    write(ctx.work / "b" / "ease.yaml", "model_code: ease\nease_lambdas: [1000]\n")
    ctx.clean(ctx.cli("compare", "--templates", "a/ease.yaml", "b/ease.yaml", "--seeds", "0", *EVAL,
                      "--data_file", data, "--experiment_group", "g"))
    if ctx.run_dirs():
        raise Unclear("refused only after training")


@attack("cmp-data-edited", "compare/concurrency", "clean|works",
        "data file edited (same 60 users, other items) between two compares (a seed added): refused, "
        "or every run on the new data")
def _(ctx):
    data = ctx.data()
    ctx.works(ctx.cli(*compare_args(data, ("train_ease", "train_vae_net"), ("0",)), "--quiet"))
    ctx.data(rows=interactions(seed=1))

    def check():
        prints = {json.loads((run / "config.json").read_text()).get("data_fingerprint")
                  for run in ctx.run_dirs()}
        if len(prints) != 1:
            raise Lost(f"runs on {len(prints)} different data fingerprints")
        table_holds(ctx, 4, test_users=60)
    ctx.clean_or_works(ctx.cli(*compare_args(data, ("train_ease", "train_vae_net"), ("0", "1"))), check)


def damaged_results(id: str, value: str, then: str) -> None:
    """A finished run whose results.json says epochs <value>; then a compare or a resume."""
    @attack(id, "compare/concurrency", "clean|works",
            f"a run's results.json says epochs {value}, then {then}: one line, or the run retrained "
            f"or named, never a silent gap")
    def _(ctx):
        data = ctx.data()
        ctx.works(ctx.cli(*compare_args(data, ("train_ease", "train_vae_net"), ("0",)), "--quiet"))
        run = ctx.work / "experiments" / "g" / "vae_net_seed0"
        text = (run / "results.json").read_text()
        write(run / "results.json", re.sub(r'"epochs": [^,\n]+', f'"epochs": {value}', text))
        if then == "compare":
            proc = ctx.cli(*compare_args(data, ("train_ease", "train_vae_net"), ("0",)))
            retrained = any(r.get("template") == "train_vae_net" and r.get("state") == "finished"
                            for r in comparison_json(ctx)["runs"])
            if not retrained and "vae_net_seed0" not in proc.out + proc.err:
                raise Lost("the damaged run is left out of the table without a word")
            check = None
        else:
            proc = ctx.cli("train", "--experiment_root", "experiments", "--experiment_group", "g",
                           "--experiment_name", "vae_net_seed0", "--data_file", data, "--resume",
                           *model_options("train_vae_net", epochs=2), "--quiet")

            def check():
                if status(run) != "finished":
                    raise Unclear(f"exit 0 and the run's status is {status(run)}")
        ctx.clean_or_works(proc, check, warning=True)


damaged_results("cmp-epochs-two", '"two"', "compare")
damaged_results("cmp-epochs-null", "null", "train --resume --num_epochs 2")
damaged_results("cmp-epochs-1e400", "1e400", "compare")


@attack("cmp-truncated-ranks", "compare/concurrency", "clean|works",
        "a run's test_ranks.csv cut mid-line: named (not 'test users differ'), never silently mixed")
def _(ctx):
    data = ctx.data()
    ctx.works(ctx.cli(*compare_args(data, ("train_ease", "train_vae_net"), ("0",)), "--quiet"))
    ranks = ctx.work / "experiments" / "g" / "vae_net_seed0" / "tables" / "test_ranks.csv"
    content = ranks.read_bytes()
    ranks.write_bytes(content[: len(content) // 2 + 3])
    proc = ctx.cli(*compare_args(data, ("train_ease", "train_vae_net"), ("0",)))
    said = proc.out + proc.err
    if "users differ" in said or "not on the same data" in said:
        raise Unclear("a truncated file is reported as other test users")
    if "test_ranks" not in said:
        raise Unclear("the truncated test_ranks.csv is not named")
    ctx.clean_or_works(proc, warning=True)


@attack("cmp-na-user-ids", "compare/concurrency", "works",
        "user ids NA, null, None, NaN, n/a, nan in the data: compare of 2 seeds holds all 60 users")
def _(ctx):
    ids = ["NA", "null", "None", "NaN", "n/a", "nan"] + [f"u{i}" for i in range(54)]
    data = ctx.data(rows=interactions(user_ids=ids))
    ctx.works(ctx.cli(*compare_args(data, ("train_ease", "train_vae_net"), ("0", "1"))))
    table_holds(ctx, 4, test_users=60)


@attack("cmp-seeds-duplicated", "compare/concurrency", "clean|works",
        "compare --seeds 0 0: refused, or one run counted once")
def _(ctx):
    data = ctx.data()
    ctx.clean_or_works(ctx.cli(*compare_args(data, ("train_ease",), ("0", "0"))),
                       lambda: table_holds(ctx, 1, seeds=1))


@attack("cmp-aggregate-only-empty", "compare/concurrency", "clean",
        "compare --aggregate_only with no run trained: one line")
def _(ctx):
    ctx.clean(ctx.cli(*compare_args(ctx.data(), ("train_ease",), ("0",)), "--aggregate_only"))


@attack("cmp-dry-run-newline-root", "compare/concurrency", "clean|works",
        "compare --dry_run with a newline and a command in --experiment_root, piped to bash: "
        "nothing injected runs")
def _(ctx):
    data = ctx.data()
    proc = ctx.cli(*compare_args(data, ("train_ease",), ("0",)), "--dry_run",
                   "--experiment_root", "r\ntouch PWNED\n#")

    def check():
        (ctx.work / "sh").mkdir()
        script = "esapr() { :; }\npython() { :; }\npython3() { :; }\n" + proc.out
        ctx.finish(ctx.spawn(label="bash", argv=["bash", "-c", script], cwd=ctx.work / "sh"))
        if list(ctx.work.rglob("PWNED")):
            raise Unclear("a line of the dry run's output ran as a command")
    ctx.clean_or_works(proc, check)


@attack("cmp-unknown-metric", "compare/concurrency", "clean",
        "compare --metrics NDCG@7 (not computed): refused before training")
def _(ctx):
    ctx.clean(ctx.cli(*compare_args(ctx.data(), ("train_ease",), ("0",)), "--metrics", "NDCG@7"))
    if ctx.run_dirs():
        raise Unclear("refused only after training")


# ===================================================================================== kills

LONG = ("--saturation_wait_epochs", "1000")     # with epochs=300: a VAE_net run trains for ~10 s


def training(ctx: Context, popen: subprocess.Popen, run: str = "vae_net_seed0", epochs: int = 2):
    """A predicate: compare's run `run` has validated `epochs` epochs (it is mid-training), or
    compare has ended."""
    folder = ctx.work / "experiments" / "g" / run
    return lambda: popen.poll() is not None or _val_rows(folder) >= epochs


def _val_rows(run: Path) -> int:
    try:
        return max(0, len((run / "tables" / "val_log.csv").read_text().splitlines()) - 1)
    except OSError:
        return 0


@attack("kill-compare-sigkill-rerun", "kills", "works",
        "SIGKILL of compare --jobs 2 mid-training, then the same command: every run accounted for, "
        "table of all 4, no process left")
def _(ctx):
    data = ctx.data()
    args = compare_args(data, ("train_ease", "train_vae_net"), ("0", "1"), "--jobs", "2", *LONG, epochs=300)
    first = ctx.spawn(*args, label="compare (killed)")
    ctx.wait_for(training(ctx, first), 40, "vae_net_seed0 training")
    ctx.signal(first, signal.SIGKILL)
    ctx.finish(first)
    rerun = ctx.cli(*args, label="compare (rerun)")
    ctx.works(rerun)
    table_holds(ctx, 4)
    no_strays(ctx)


def sigint_compare(id: str, ignored: bool) -> None:
    """Ctrl-C (SIGINT to compare's process group) mid-training, then a rerun; ignored: compare
    starts with SIGINT ignored (as under ``nohup`` or ``&``) and must still stop on it."""
    start = "started with SIGINT ignored (nohup, &)" if ignored else "from a terminal"

    @attack(id, "kills", "clean",
            f"Ctrl-C (SIGINT to the process group) on compare --jobs 2 {start}: one line, no traceback "
            f"in any log; a rerun then holds all 4")
    def _(ctx):
        data = ctx.data()
        args = compare_args(data, ("train_ease", "train_vae_net"), ("0", "1"), "--jobs", "2", *LONG, epochs=300)
        first = ctx.spawn(*args, label="compare (Ctrl-C)", sigint=signal.SIG_IGN if ignored else signal.SIG_DFL)
        ctx.wait_for(training(ctx, first), 40, "vae_net_seed0 training")
        ctx.signal(first, signal.SIGINT, group=True)
        interrupted = ctx.finish(first, 30)
        if interrupted.rc == 0:
            raise Unclear("compare exited 0 after Ctrl-C")
        rerun = ctx.cli(*args, label="compare (rerun)")
        ctx.works(rerun)
        table_holds(ctx, 4)
        ctx.main = interrupted
        ctx.clean(interrupted)


sigint_compare("kill-compare-sigint", ignored=False)
sigint_compare("kill-compare-sigint-ignored", ignored=True)


@attack("kill-compare-sigterm", "kills", "clean",
        "SIGTERM to compare --jobs 2 (the parent only): one line, its children stop too")
def _(ctx):
    data = ctx.data()
    first = ctx.spawn(*compare_args(data, ("train_vae_net",), ("0", "1"), "--jobs", "2", *LONG, epochs=300),
                      label="compare (SIGTERM)")
    ctx.wait_for(training(ctx, first), 40, "vae_net_seed0 training")
    ctx.signal(first, signal.SIGTERM)
    proc = ctx.finish(first, 30)
    time.sleep(3)
    no_strays(ctx)
    ctx.clean(proc)


def _training(ctx: Context, data: Path, epochs: int, *extra) -> subprocess.Popen:
    return ctx.spawn(*train_args(data, "train_vae_net", "--checkpoint_every_seconds", "0", *extra,
                                 epochs=epochs), label="train")


@attack("kill-train-sigterm-twice", "kills", "clean",
        "two SIGTERMs 20 ms apart to esapr train: one 'interrupted' line, status interrupted")
def _(ctx):
    data = ctx.data(rows=interactions(users=80))
    popen = _training(ctx, data, 500)
    run = ctx.work / "experiments" / "g" / "vae_net"
    ctx.wait_for(lambda: _val_rows(run) >= 2 or popen.poll() is not None, 60, "two epochs")
    ctx.signal(popen, signal.SIGTERM)
    time.sleep(0.02)
    try:
        os.kill(popen.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc = ctx.finish(popen, 30)
    ctx.clean(proc)
    if status(run) != "interrupted":
        raise Unclear(f"status is '{status(run)}'")


@attack("kill-train-sigkill-resume", "kills", "works",
        "SIGKILL of esapr train after epoch 3 of 8, then --resume: test metrics equal an "
        "uninterrupted run's")
def _(ctx):
    data = ctx.data()
    reference = ctx.cli(*train_args(data, "train_vae_net", "--experiment_name", "reference",
                                    epochs=8), label="reference")
    ctx.works(reference)
    popen = _training(ctx, data, 8)
    run = ctx.work / "experiments" / "g" / "vae_net"
    ctx.wait_for(lambda: _val_rows(run) >= 3 or popen.poll() is not None, 40, "three epochs")
    ctx.signal(popen, signal.SIGKILL)
    ctx.finish(popen)
    resumed = ctx.cli(*train_args(data, "train_vae_net", "--resume", epochs=8), label="resume")
    ctx.works(resumed)
    if results_test(run) != results_test(ctx.work / "experiments" / "g" / "reference"):
        raise Lost("the resumed run's test metrics differ from the uninterrupted run's")


@attack("kill-prepare-sigkill", "kills", "works",
        "SIGKILL of esapr data prepare 1.5 s in (large file), then train: works on complete data")
def _(ctx):
    data = ctx.data(rows=interactions(users=3000, items=200, lo=20, hi=60))
    popen = ctx.spawn("data", "prepare", "--data_file", data, "--test_negative_sample_size", "20",
                      label="prepare (killed)")
    time.sleep(1.5)
    ctx.kill_group(popen)
    ctx.finish(popen)
    proc = ctx.cli(*train_args(data))
    ctx.works(proc)
    stats = ctx.cli("data", "stats", "--data_file", data, "--json", label="stats")
    ctx.works(stats)
    ctx.main = proc
    if json.loads(stats.out or "{}").get("users") != 3000:
        raise Lost(f"the data after the kill is not the whole file: {cut(stats.out, 120)}")


@attack("kill-two-trains-one-folder", "kills", "clean|works",
        "two esapr train into one folder at once: one trains, the other waits or names the holder")
def _(ctx):
    data = ctx.data()
    first = _training(ctx, data, 20)
    time.sleep(0.2)
    second = _training(ctx, data, 20)
    a, b = ctx.finish(first), ctx.finish(second)
    if a.rc != 0 and b.rc != 0:
        raise Unclear("neither process trained")
    ctx.main = b if b.rc != 0 else a
    ctx.clean_or_works(ctx.main)


@attack("kill-evaluate-while-training", "kills", "clean|works",
        "esapr evaluate of a run while it trains: metrics from the checkpoint, or one line")
def _(ctx):
    data = ctx.data()
    popen = _training(ctx, data, 300)
    run = ctx.work / "experiments" / "g" / "vae_net"
    ctx.wait_for(lambda: (run / "models" / "recent_checkpoint.pth").exists() or popen.poll() is not None,
                 40, "a checkpoint")
    proc = ctx.cli("evaluate", "--experiment", run, label="evaluate")
    if popen.poll() is None:
        popen.terminate()
    ctx.finish(popen, 30)
    ctx.main = proc
    ctx.clean_or_works(proc)


# =========================================================================== closed-form size

def size_attack(id: str, template: str, n_items: int, estimate_only: bool, extra: tuple = ()) -> None:
    """A dense closed-form solve over n_items. estimate_only: its estimate is far above this
    machine's free memory, so it must be refused with the figure (GiB) before allocating; else it
    is near the free memory: refused, out of memory in one line, or trained."""
    what = (f"{template} on {n_items:,} distinct items (each seen 5 times; 8 GB address limit): "
            + ("refused before allocating, with the estimate in GiB" if estimate_only
               else "refused with the estimate, one out-of-memory line, or trained; never killed"))
    one_call(id, "closed-form size", "clean" if estimate_only else "clean|works", what,
             lambda ctx: train_args(wide_items_file(ctx.work / "wide.csv", n_items), template, *extra),
             mentions=("GiB",) if estimate_only else ("GiB", "memory"))


size_attack("size-ease-30k", "train_ease", 30_000, estimate_only=False)
size_attack("size-slist-30k", "train_slist", 30_000, estimate_only=True)
size_attack("size-esapr-plus-30k", "train_esapr_plus", 30_000, True, ("--linear_weight", "0.5"))
size_attack("size-ease-45k", "train_ease", 45_000, estimate_only=True)


@attack("size-compare-slist-30k", "closed-form size", "clean",
        "compare of train_slist on 30,000 items: the run fails in one line, its log names the memory")
def _(ctx):
    data = wide_items_file(ctx.work / "wide.csv", 30_000)
    proc = ctx.cli(*compare_args(data, ("train_slist",), ("0",)))
    logs = " ".join(_read(p) for p in ctx.work.rglob("*.log"))
    if "GiB" not in logs + proc.err:
        raise Unclear("no memory figure in the run's log")
    ctx.clean(proc)


# ============================================================================== timestamps

def _small_checkpoints(ctx: Context) -> None:
    for pth in ctx.work.rglob("*.pth"):
        if pth.stat().st_size > 20 * 2**20:
            raise Unclear(f"{pth.name} is {pth.stat().st_size / 2**20:.0f} MB")


def time_attack(id: str, what: str, times: Callable[[int], list], expect: str = "works",
                template: str = "train_meantime", mentions=("time",), extra: tuple = ()) -> None:
    def args(ctx):
        rows = interactions()
        return train_args(ctx.data(rows=with_timestamps(rows, times(len(rows)))), template, *extra)
    one_call(id, "timestamps", expect, what + f" ({template}; checkpoints stay small)", args,
             mentions=mentions, check=lambda ctx, proc: _small_checkpoints(ctx))


_rng = np.random.default_rng(7)
_ms = lambda n: (1_300_000_000_000 + np.sort(_rng.integers(0, 10 * 365 * 86400 * 1000, n))).tolist()
time_attack("ts-milliseconds", "timestamps in milliseconds over 10 years", _ms)
time_attack("ts-nanoseconds", "timestamps in nanoseconds",
            lambda n: [t * 1_000_000 for t in _ms(n)])
time_attack("ts-nanoseconds-tisas", "timestamps in nanoseconds", lambda n: [t * 1_000_000 for t in _ms(n)],
            template="train_tisas")
time_attack("ts-negative", "negative timestamps (before 1970)", lambda n: list(range(-10**9, -10**9 + 3600 * n, 3600)),
            expect="clean|works")
time_attack("ts-outlier-future", "one timestamp in the year 2500, the rest in 2001",
            lambda n: [1_000_000_000 + 60 * i for i in range(n - 1)] + [16_725_225_600], expect="clean|works")
time_attack("ts-all-equal", "every timestamp equal", lambda n: [1_500_000_000] * n)
time_attack("ts-non-numeric", "one timestamp 'yesterday' deep in the file",
            lambda n: [1_000_000_000 + i for i in range(n // 2)] + ["yesterday"]
            + [1_000_000_000 + i for i in range(n // 2 + 1, n)], expect="clean",
            mentions=("timestamp", "yesterday", "line"))
time_attack("ts-iso-dates", "ISO 8601 dates", lambda n: [
    f"2020-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z" for i in range(n)])
time_attack("ts-unit-mismatch", "--timestamp_unit s on nanosecond data",
            lambda n: [t * 1_000_000 for t in _ms(n)], expect="clean|works", extra=("--timestamp_unit", "s"))


# ============================================================================== encodings

LATIN1_NAME = os.fsdecode(b"donn\xe9es.csv")       # a file name that is not UTF-8


@attack("enc-latin1-file-name", "encodings", "works",
        "a data file whose name is Latin-1 bytes: trains, and results lists it")
def _(ctx):
    data = ctx.data(LATIN1_NAME)
    ctx.works(ctx.cli(*train_args(data)))
    ctx.works(ctx.cli("results", "--root", "experiments", label="results"))


one_call("enc-latin1-label", "encodings", "clean", "--model_label with Latin-1 bytes: refused in one line",
         lambda ctx: train_args(ctx.data(), "train_ease", "--model_label", os.fsdecode(b"mod\xe8le")),
         mentions=("model_label", "UTF-8", "utf"))


def encoded_data(id: str, what: str, content: Callable[[], bytes], expect: str = "works",
                 mentions=()) -> None:
    one_call(id, "encodings", expect, what,
             lambda ctx: train_args(write(ctx.work / "ratings.csv", content())), mentions=mentions)


_text = lambda **kw: table_text(interactions(), **kw)
encoded_data("enc-utf16", "a UTF-16 file with its BOM (a spreadsheet's 'Unicode text')",
             lambda: _text(sep="\t").encode("utf-16"))
encoded_data("enc-utf8-bom", "a UTF-8 BOM before the header", lambda: b"\xef\xbb\xbf" + _text().encode())
encoded_data("enc-crlf", "CRLF line ends", lambda: _text(newline="\r\n").encode())
encoded_data("enc-nul-in-item", "a NUL byte inside an item id on line 600",
             lambda: b"\n".join(_with_nul(_text().encode().split(b"\n"), 600)),
             expect="clean", mentions=("line", "NUL", "\\x00", "byte"))
encoded_data("enc-latin1-item-ids", "Latin-1 bytes in item ids (caf\\xe9_N)",
             lambda: b"\n".join(_latin1_items(_text().encode().split(b"\n"))))
encoded_data("enc-utf16-no-bom", "UTF-16-LE without a BOM", lambda: _text().encode("utf-16-le"),
             expect="clean|works", mentions=("UTF", "encod", "header", "column"))


def _with_nul(lines: list[bytes], at: int) -> list[bytes]:
    user, item, rest = lines[at].split(b",", 2)
    lines[at] = b",".join([user, item + b"\x00x", rest])
    return lines


def _latin1_items(lines: list[bytes]) -> list[bytes]:
    out = [lines[0]]
    for line in lines[1:]:
        if line:
            user, item, rest = line.split(b",", 2)
            line = b",".join([user, b"caf\xe9_" + item, rest])
        out.append(line)
    return out


one_call("enc-ascii-stdout", "encodings", "works",
         "PYTHONIOENCODING=ascii and a data file named données.csv: trains and prints",
         lambda ctx: train_args(ctx.data("données.csv"), quiet=False),
         env={"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"})
one_call("enc-latin1-experiment-name", "encodings", "clean|works",
         "--experiment_name with Latin-1 bytes: refused, or the folder inside the root",
         lambda ctx: train_args(ctx.data(), "train_ease", "--experiment_name", os.fsdecode(b"r\xe9sultat")),
         mentions=("experiment_name", "UTF"))


# ============================================================================= environment

@attack("env-readonly-root", "environment", "clean",
        "a read-only experiment root (mode 555, without root's override): one line naming it")
def _(ctx):
    data = ctx.data()
    (ctx.work / "experiments").mkdir()
    (ctx.work / "experiments").chmod(0o555)
    try:
        ctx.clean(ctx.cli(*train_args(data)), mentions=("experiments", "permission", "read-only"))
    finally:
        (ctx.work / "experiments").chmod(0o755)


@attack("env-readonly-data-folder", "environment", "clean",
        "a read-only --local_data_folder without caches: one line naming it")
def _(ctx):
    data = ctx.data()
    (ctx.work / "Data").mkdir()
    (ctx.work / "Data").chmod(0o555)
    try:
        ctx.clean(ctx.cli(*train_args(data)), mentions=("Data", "permission", "read-only"))
    finally:
        (ctx.work / "Data").chmod(0o755)


one_call("env-tmpdir-missing", "environment", "clean|works", "TMPDIR names a folder that does not exist",
         lambda ctx: train_args(ctx.data()), env={"TMPDIR": "/nonexistent/esapr-attacks"})


@attack("env-tmpdir-readonly", "environment", "clean|works", "TMPDIR is a read-only folder")
def _(ctx):
    readonly = ctx.work / "ro_tmp"
    readonly.mkdir(mode=0o555)
    try:
        ctx.clean_or_works(ctx.cli(*train_args(ctx.data(), "train_vae_net"), env={"TMPDIR": str(readonly)}),
                           mentions=("TMPDIR", "ro_tmp", "temporary"))
    finally:
        readonly.chmod(0o755)


one_call("env-home-unset", "environment", "works", "HOME unset",
         lambda ctx: train_args(ctx.data(), "train_vae_net"), unset=("HOME",))
one_call("env-omp-garbage", "environment", "works", "OMP_NUM_THREADS=abc",
         lambda ctx: train_args(ctx.data()), env={"OMP_NUM_THREADS": "abc"})


@attack("env-fifo-lock", "environment", "clean",
        "a FIFO named .lock in a run folder, then train --overwrite: one line naming .lock, no hang")
def _(ctx):
    data = ctx.data()
    ctx.works(ctx.cli(*train_args(data)))
    lock = ctx.work / "experiments" / "g" / "ease" / ".lock"
    lock.unlink()
    os.mkfifo(lock)
    ctx.clean(ctx.cli(*train_args(data, "train_ease", "--overwrite"), limit=40), mentions=(".lock",))


one_call("env-data-folder-is-file", "environment", "clean", "--local_data_folder names a file",
         lambda ctx: train_args(ctx.data(), "train_ease", "--local_data_folder", ctx.data("afile")),
         mentions=("afile", "not a folder", "folder"))
one_call("env-root-is-file", "environment", "clean", "--experiment_root names a file",
         lambda ctx: train_args(ctx.data(), "train_ease", "--experiment_root", ctx.data("afile")),
         mentions=("afile", "folder"))


@attack("env-group-link", "environment", "clean",
        "the group folder is a link planted to outside/: refused, nothing written there")
def _(ctx):
    (ctx.work / "experiments").mkdir()
    (ctx.work / "experiments" / "g").symlink_to(ctx.outside / "grp")
    ctx.clean(ctx.cli(*train_args(ctx.data())), mentions=("link",))


@attack("env-compare-logs-link", "environment", "clean|works",
        "compare_logs is a link planted to outside/logs: no log written through it")
def _(ctx):
    (ctx.work / "experiments" / "g").mkdir(parents=True)
    (ctx.work / "experiments" / "g" / "compare_logs").symlink_to(ctx.outside / "logs")
    ctx.clean_or_works(ctx.cli(*compare_args(ctx.data(), ("train_ease",), ("0",))), mentions=("link",))


@attack("env-evaluate-elsewhere", "environment", "works",
        "esapr evaluate from another, empty folder: metrics, and nothing written in that folder")
def _(ctx):
    data = ctx.data()
    ctx.works(ctx.cli(*train_args(data)))
    elsewhere = ctx.work / "elsewhere"
    elsewhere.mkdir()
    proc = ctx.cli("evaluate", "--experiment", ctx.work / "experiments" / "g" / "ease", cwd=elsewhere,
                   env={"HOME": str(elsewhere.parent)}, label="evaluate")
    ctx.works(proc)
    if list(elsewhere.iterdir()):
        raise Unclear(f"evaluate wrote {[p.name for p in elsewhere.iterdir()]} in its working folder")


one_call("env-group-escape", "environment", "clean",
         "--experiment_group ../../outside (a path, not a name): refused, nothing written outside",
         lambda ctx: train_args(ctx.data(), group="../../outside"),
         mentions=("experiment_group",))


# ============================================================================== file shapes

def shape(id: str, what: str, content: Callable[[], str | bytes], expect: str,
          template: str = "train_ease", mentions=(), name: str = "ratings.csv", check=None) -> None:
    one_call(id, "file shapes", expect, what,
             lambda ctx: train_args(write(ctx.work / name, content()), template), mentions=mentions,
             check=check)


def _long_line() -> str:
    lines = ["1 " + " ".join(str(1 + i % 40) for i in range(200_000))]
    for user, group in _by_user(interactions(users=59)).items():
        lines.append(" ".join([str(user + 1)] + [str(i) for i in group]))
    return "\n".join(lines) + "\n"


def _by_user(rows) -> dict:
    users: dict = {}
    for user, item, *_ in rows:
        users.setdefault(user, []).append(item)
    return users


def _one_heavy_user() -> str:
    """User 0 holds 90% of the rows (items 1-40 over and over); 40 others rate items 1-100."""
    rows = interactions(users=40, items=100)
    heavy = [(0, 1 + i % 40, 3, 900_000_000 + i) for i in range(9 * len(rows))]
    return table_text(heavy + rows)


def _test_users(expected: int):
    def check(ctx, proc):
        ranks = ctx.work / "experiments" / "g" / "ease" / "tables" / "test_ranks.csv"
        users = len(ranks.read_text().splitlines()) - 1
        if users != expected:
            raise Lost(f"{users} test users where the file has {expected}")
    return check


shape("shape-long-line", "a sequence file with one user of 200,000 items on one line", _long_line, "clean|works",
      name="seqs.txt", check=_test_users(60))
shape("shape-one-user-90pct", "one user holds 90% of the interactions", _one_heavy_user, "works",
      check=_test_users(41))
shape("shape-header-only", "a header and no rows", lambda: ",".join(HEADER) + "\n", "clean",
      mentions=("rows", "no ", "empty", "interactions"))
shape("shape-empty", "an empty file", lambda: b"", "clean", mentions=("empty",))
shape("shape-short-rows", "3 fields per row where the header names 4",
      lambda: ",".join(HEADER) + "\n" + "".join(f"{u},{i},{r}\n" for u, i, r, _ in interactions()),
      "clean|works", mentions=("line", "field", "column"))
shape("shape-long-row", "one row with 6 fields under a 4-field header (line 300)",
      lambda: "\n".join(line + (",7,8" if n == 300 else "") for n, line in
                        enumerate(table_text(interactions()).splitlines())) + "\n",
      "clean", mentions=("line 30", "300", "301", "field"))
shape("shape-header-repeated", "the header line again in the middle of the file",
      lambda: (lambda lines: "\n".join(lines[:500] + [lines[0]] + lines[500:]) + "\n")(
          table_text(interactions()).splitlines()), "clean|works", mentions=("line", "header"))
shape("shape-one-item", "every row has the same item", lambda: table_text(
    [(u, 1, r, t) for u, _, r, t in interactions()]), "clean", mentions=("item",))
shape("shape-all-filtered", "every user has 3 interactions (all filtered by min_uc 5)",
      lambda: table_text(interactions(lo=3, hi=3)), "clean", mentions=("min_uc", "user", "left"))
shape("shape-semicolon-decimal-comma", "';'-separated, decimal-comma ratings (a spreadsheet export)",
      lambda: table_text([(u, i, f"{r},5", t) for u, i, r, t in interactions()], sep=";"), "works",
      check=_test_users(60))
shape("shape-recbole-inter", "a RecBole .inter file (user_id:token, tab-separated)",
      lambda: table_text(interactions(), header=("user_id:token", "item_id:token", "rating:float",
                                                   "timestamp:float"), sep="\t"), "works",
      name="data.inter", check=_test_users(60))
shape("shape-pairs-no-header", "'user item' pairs in time order without a header",
      lambda: "".join(f"{u} {i}\n" for u, i, *_ in interactions()), "works", name="pairs.txt",
      check=_test_users(60))
shape("shape-pandas-index", "pandas to_csv with its index column and quoted ids",
      lambda: ",user_id,item_id,rating,timestamp\n" + "".join(
          f'{n},"{u}","{i}",{r}.0,{t}\n' for n, (u, i, r, t) in enumerate(interactions())), "works",
      check=_test_users(60))
shape("shape-gzip", "a gzip-compressed CSV named .csv.gz",
      lambda: __import__("gzip").compress(table_text(interactions()).encode(), mtime=0), "clean|works",
      name="ratings.csv.gz", mentions=("gzip", "compress", "text", "archive"))
one_call("shape-folder-as-file", "file shapes", "clean", "--data_file names a folder",
         lambda ctx: train_args(ctx.work), mentions=("folder", "file"))


# ============================================================================== CLI values

def refused_before_anything(id: str, what: str, args: Callable[[Context], list], mentions=(),
                            absent: str = "") -> None:
    """One line, exit status 2, and no experiment folder created (nor `absent` said)."""
    def check(ctx: Context) -> None:
        proc = ctx.cli(*args(ctx))
        if absent and absent in proc.err:
            raise Unclear(f"stderr says '{absent}'")
        ctx.clean(proc, mentions)
        if proc.rc != 2:
            raise Unclear(f"exit {proc.rc}, not 2")
        if (ctx.work / "experiments").exists():
            raise Unclear("an experiments/ folder was created")
    ATTACKS.append(Attack(id, "CLI values", what + " (exit 2, nothing created)", "clean", check))


refused_before_anything("cli-epochs-1.5", "--num_epochs 1.5",
                        lambda ctx: train_args(ctx.data(), "train_vae_net", epochs="1.5"),
                        mentions=("num_epochs",))
refused_before_anything("cli-epochs-1e400", "--num_epochs 1e400",
                        lambda ctx: train_args(ctx.data(), "train_vae_net", epochs="1e400"),
                        mentions=("num_epochs",))
refused_before_anything("cli-lr-nan", "--lr nan", lambda ctx: train_args(ctx.data(), "train_vae_net", "--lr", "nan"),
                        mentions=("lr",))
refused_before_anything("cli-data-folder-two", "--local_data_folder a b (a glob's two values)",
                        lambda ctx: train_args(ctx.data(), "train_ease", "--local_data_folder", "a", "b"),
                        mentions=("local_data_folder",))
refused_before_anything("cli-superscript-suffix", "compare --templates train_ease:\u00b2",
                        lambda ctx: compare_args(ctx.data(), ("train_ease:\u00b2",), ("0",)),
                        mentions=("train_ease", "\u00b2"))
refused_before_anything("cli-output-two", "compare --output a b (a glob's two values)",
                        lambda ctx: compare_args(ctx.data(), ("train_ease",), ("0",), "--output", "a", "b"),
                        mentions=("output",))
refused_before_anything("cli-jobs-zero", "compare --jobs 0",
                        lambda ctx: compare_args(ctx.data(), ("train_ease",), ("0",), "--jobs", "0"),
                        mentions=("jobs",))
refused_before_anything("cli-model-code-list", "a template whose model_code is a list",
                        lambda ctx: ["train", "--templates", write(ctx.work / "t.yaml", "model_code: [ease, vae]\n"),
                                     "--data_file", ctx.data(), *EVAL], mentions=("model_code",))
refused_before_anything("cli-no-template", "esapr train with no template (no download attempted)",
                        lambda ctx: ["train", "--device", "cpu", "--data_url", "http://127.0.0.1:9/none.zip"],
                        mentions=("template", "model"), absent="download")


@attack("cli-seed-2p53p1", "CLI values", "works",
        "--dataloader_random_seed 2**53+1: trains, and config.json keeps it exactly")
def _(ctx):
    seed = 2**53 + 1
    ctx.works(ctx.cli(*train_args(ctx.data(), "train_vae_net", "--dataloader_random_seed", str(seed))))
    saved = json.loads((ctx.work / "experiments" / "g" / "vae_net" / "config.json").read_text())
    if saved.get("dataloader_random_seed") != seed:
        raise Lost(f"config.json says {saved.get('dataloader_random_seed')!r}")


@attack("cli-glob-experiment", "CLI values", "clean", "evaluate --experiment p1 p2 (a glob's two runs)")
def _(ctx):
    data = ctx.data()
    ctx.works(ctx.cli(*compare_args(data, ("train_vae_net",), ("0", "1")), "--quiet"))
    runs = ctx.run_dirs()
    ctx.clean(ctx.cli("evaluate", "--experiment", *runs), mentions=("experiment",))


@attack("cli-glob-k", "CLI values", "clean", "recommend -k 1 2")
def _(ctx):
    data = ctx.data()
    ctx.works(ctx.cli(*train_args(data)))
    ctx.clean(ctx.cli("recommend", "--experiment", ctx.work / "experiments" / "g" / "ease",
                      "--user", "1", "-k", "1", "2"), mentions=("k",))


@attack("cli-alias-bomb", "CLI values", "clean", "a YAML template that is an alias bomb: one short line, fast")
def _(ctx):
    levels = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"&a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 9)]
    template = write(ctx.work / "bomb.yaml", "model_code: ease\nease_lambdas: [" + ", ".join(levels) + "]\n")
    proc = ctx.cli("train", "--templates", template, "--data_file", ctx.data(), *EVAL, limit=30)
    ctx.clean(proc)
    if len(proc.last_line) > 600:
        raise Unclear(f"a {len(proc.last_line)}-character line")


def head_one(id: str, merged: bool) -> None:
    """``esapr train ... | head -1`` (with ``2>&1`` when merged): the reader goes away after a line."""
    pipe = "2>&1 | head -1" if merged else "| head -1"

    @attack(id, "CLI values", "clean|works",
            f"esapr train ... {pipe} (the reader goes away): a non-zero exit and the run "
            f"'interrupted', or the run finished")
    def _(ctx):
        data = ctx.data(rows=interactions(users=80))
        popen = ctx.spawn(*train_args(data, "train_vae_net", *LONG, epochs=150, quiet=False),
                          label=f"train {pipe}", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merged else None)
        first = popen.stdout.readline()
        popen.stdout.close()
        proc = ctx.finish(popen, 60)
        if merged:
            proc.err = first.decode("utf-8", "backslashreplace")      # all the reader saw
        run = ctx.work / "experiments" / "g" / "vae_net"
        if proc.rc == 0 and status(run) != "finished":
            raise Lost(f"exit 0 and the run is left '{status(run)}'")
        if proc.rc != 0 and status(run) != "interrupted":
            raise Unclear(f"exit {proc.rc} and the run's status is '{status(run)}'")


head_one("cli-head-1", merged=False)
head_one("cli-head-1-stderr-too", merged=True)


# ============================================================================== Python API

def api_call(id: str, expression: str, expect: str, what: str, mentions=(), setup: str = "",
             check: Callable[[Context], None] | None = None) -> None:
    """A Python-API call in a fresh interpreter (never a download); `check` when it works."""
    def run(ctx: Context) -> None:
        ctx.data()
        proc = ctx.api(expression, setup=setup)
        if "download" in proc.err:
            raise Unclear("a download was attempted")
        if expect == "clean":
            ctx.clean(proc, mentions)
        else:
            ctx.clean_or_works(proc, check and (lambda: check(ctx)), mentions=mentions)
    ATTACKS.append(Attack(id, "Python API", what, expect, run))


_TINY = ("data_file='ratings.csv', experiment_group='g', ease_lambdas=[10, 100], "
         "test_negative_sample_size=20, device='cpu'")
api_call("api-compare-templates-none", "esapr.compare(templates=None)", "clean",
         "esapr.compare(templates=None)", mentions=("templates",))
api_call("api-compare-seed-float", f"esapr.compare(['train_ease'], seeds=[0.5], {_TINY})", "clean",
         "esapr.compare(['train_ease'], seeds=[0.5])", mentions=("seed",))
api_call("api-compare-jobs-float", f"esapr.compare(['train_ease'], seeds=[0], jobs=2.9, {_TINY})", "clean",
         "esapr.compare(..., jobs=2.9)", mentions=("jobs",))
api_call("api-results-table-none", "esapr.results_table(None)", "clean", "esapr.results_table(None)")
api_call("api-train-42", "esapr.train(42)", "clean", "esapr.train(42) (no download)")
def _table_shows(metric: str):
    def check(ctx: Context) -> None:
        files = sorted((ctx.work / "experiments" / "g").glob("comparison*.md"), key=lambda p: p.stat().st_mtime)
        head = next((line for line in _read(files[-1]).splitlines() if line.startswith("| model")), "") \
            if files else ""
        if f"full {metric}" not in head:
            raise Unclear(f"the table's columns are not {metric}: {cut(head, 80)}")
    return check


api_call("api-metrics-string", f"esapr.compare(['train_ease'], seeds=[0], metrics='Recall@5', {_TINY})",
         "clean|works", "esapr.compare(..., metrics='Recall@5'): the table shows that metric (not its characters)",
         check=_table_shows("Recall@5"))
api_call("api-recommend-k-text", "esapr.load_experiment('experiments/g/ease').recommend(user=1, k='abc')",
         "clean", "recommend(user=1, k='abc') on a trained run", mentions=("k",),
         setup=f"esapr.train(templates=['train_ease'], progress=False, {_TINY})")


# ================================================================================= running

def run_attack(attack: Attack, root: Path, code: Path, keep: bool) -> dict:
    base = root / attack.id
    ctx = Context(base, code, attack.id)
    before = listing(base)
    started = time.monotonic()
    outcome, note = "pass", ""
    try:
        attack.run(ctx)
    except Verdict as verdict:
        outcome, note = verdict.outcome, str(verdict)
    except Exception as error:      # the harness's own failure: reported, never fatal
        outcome, note = "unclear", f"harness error: {type(error).__name__}: {error}"
        traceback.print_exc()
    finally:
        ctx.cleanup()
    found = ctx.tracebacks()
    moved = changed(before, listing(base))
    if outcome != "timeout" and found:
        outcome, note = "traceback", f"traceback in {', '.join(found[:3])}" + (f"; {note}" if note else "")
    elif outcome != "timeout" and moved:
        outcome, note = "wrote-outside", f"changed outside work/: {', '.join(moved[:4])}" + (
            f"; {note}" if note else "")
    main = ctx.main or (ctx.procs[-1] if ctx.procs else None)
    evidence = main.evidence(ctx.work) if main else "(no process finished)"
    if note:
        evidence += f" [{cut(note, 140)}]"
    if found:
        tb = next((p for p in ctx.procs if "Traceback (most recent" in p.err), None)
        if tb:
            evidence += f" [{tb.label}: {cut(_short(tb.last_line, ctx.work), 120)}]"
    record = {
        "id": attack.id, "class": attack.kind, "attack": attack.what, "expected": attack.expect,
        "outcome": outcome, "evidence": evidence, "seconds": round(time.monotonic() - started, 1),
        "processes": [{"label": p.label, "argv": [_shown(_short(a, ctx.work)) for a in p.argv[1:]]
                       if p.argv[1] != "-c" else ["-c", "<script>"],
                       "rc": p.rc, "seconds": round(p.seconds, 1),
                       "stdout_tail": [_shown(_short(line, ctx.work)) for line in p.out.splitlines()[-3:]],
                       "stderr_tail": [_shown(_short(line, ctx.work)) for line in p.err.splitlines()[-4:]]}
                      for p in ctx.procs],
    }
    if not keep:
        _remove(base)
    return record


def _shown(text: str) -> str:
    return cut(str(text).encode("utf-8", "backslashreplace").decode("utf-8"), 300)


def _remove(path: Path) -> None:
    for folder, dirs, _ in os.walk(path):
        for name in dirs:
            try:
                os.chmod(os.path.join(folder, name), 0o755, follow_symlinks=False)
            except (OSError, NotImplementedError):
                pass
    shutil.rmtree(path, ignore_errors=True)


def markdown(records: list[dict], code: Path) -> str:
    counts = {}
    for record in records:
        counts[record["outcome"]] = counts.get(record["outcome"], 0) + 1
    lines = [f"Attacks against `{code}`: {len(records)} run; "
             + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), "",
             "| id | class | attack | expected | outcome | evidence |", "|---|---|---|---|---|---|"]
    for r in records:
        cells = [r["id"], r["class"], r["attack"], r["expected"], r["outcome"], r["evidence"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout whose esapr package is attacked (put first on PYTHONPATH)")
    parser.add_argument("--out", help="write the JSON list here (default: stdout)")
    parser.add_argument("--table", help="write the Markdown table here")
    parser.add_argument("--only", nargs="*", help="run only these attack ids (or id prefixes)")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    parser.add_argument("--keep", action="store_true", help="keep each attack's folder")
    args = parser.parse_args(argv)
    selected = [a for a in ATTACKS if not args.only or any(a.id.startswith(p) for p in args.only)]
    if args.list:
        for a in selected:
            print(f"{a.id:32} {a.kind:20} {a.expect:12} {a.what}")
        return 0
    code = Path(args.code).resolve()
    probe = subprocess.run([sys.executable, "-c", "import esapr; print(esapr.__file__)"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(code)}, cwd=tempfile.gettempdir())
    if not probe.stdout.startswith(str(code)):
        print(f"attacks: esapr does not import from {code}: {probe.stdout.strip() or probe.stderr.strip()}",
              file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="esapr-attacks-"))
    records = []
    try:
        for attack in selected:
            record = run_attack(attack, root, code, args.keep)
            records.append(record)
            print(f"{record['outcome']:14} {record['seconds']:6.1f}s {attack.id}: {cut(record['evidence'], 150)}",
                  file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            _remove(root)
        else:
            print(f"attack folders kept in {root}", file=sys.stderr)
    text = json.dumps(records, indent=1, ensure_ascii=False)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(markdown(records, code))
    return 0 if all(r["outcome"] == "pass" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
