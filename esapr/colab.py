"""Notebook helpers: Google Drive, downloads, runtime checks, the project's folders, and the
automatic resume decision.

Everything Colab-specific is a no-op outside Colab that says so in one line, so the notebooks
run top to bottom on any machine with local folders.
"""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from esapr.errors import UserError, first_line
from esapr.files import DRIVE_MOUNTPOINT


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ImportError:             # not even a google package
        return False


def _drive_module():
    from google.colab import drive  # only inside Colab
    return drive


def mount_drive(mountpoint: str = DRIVE_MOUNTPOINT) -> Path | None:
    """Mount Google Drive and return its "MyDrive" folder; outside Colab do nothing and return None.

    A Drive that cannot be mounted inside Colab is a UserError with one line saying what to do."""
    if not in_colab():
        print("Not running in Colab: Google Drive is not mounted; results stay in local folders.")
        return None
    my_drive = Path(mountpoint) / "MyDrive"
    if not my_drive.is_dir():
        try:
            _drive_module().mount(mountpoint)
        except Exception as error:  # the Colab client raises plain exceptions (e.g. access denied)
            first = first_line(error)
            raise UserError(f"Google Drive could not be mounted at {mountpoint} ({first}); run the cell "
                            f"again and allow access, or set USE_DRIVE = False to keep results on "
                            f"the runtime's disk") from None
    if not my_drive.is_dir():
        raise UserError(f"Google Drive is not mounted: {my_drive} does not exist; run the Drive cell "
                        f"again or set USE_DRIVE = False")
    print(f"Google Drive mounted: {my_drive}")
    return my_drive


def check_drive_path(path) -> Path:
    """Refuse a folder on /content/drive when Drive is not mounted (it would vanish with the runtime)."""
    path = Path(path)
    mount = Path(DRIVE_MOUNTPOINT)
    if in_colab() and (path == mount or mount in path.parents) and not (mount / "MyDrive").is_dir():
        raise UserError(f"{path} is on Google Drive but Drive is not mounted; run the Drive cell first "
                        f"(USE_DRIVE = True) or choose a local folder")
    return path


def unmount_drive(mountpoint: str = DRIVE_MOUNTPOINT) -> None:
    """Flush pending writes to Drive and unmount it (Colab); outside Colab say so and return."""
    if not in_colab():
        print("Not running in Colab: no Google Drive to flush or unmount.")
        return
    if not (Path(mountpoint) / "MyDrive").is_dir():
        print("Google Drive is not mounted; nothing to flush.")
        return
    _drive_module().flush_and_unmount()
    print("Google Drive flushed and unmounted; the results are saved on Drive.")


PROJECT_MARKERS = ("experiments", "Data", "setup.py")


def project_root(start=None) -> Path:
    """The folder README's commands and ESAPR.ipynb keep ``experiments/`` and ``Data/`` in: the
    working folder or the nearest parent holding one of them (or setup.py), so a notebook run
    from a clone's ``notebooks/`` finds the runs made at the clone's root. The home folder and
    those above it are not searched (a ``~/Data`` of documents is no project); with no such
    folder, the working folder."""
    start = Path(start or Path.cwd()).resolve()
    home = Path.home().resolve()
    for folder in (start, *start.parents):
        if folder != start and (folder == home or folder in home.parents):
            break
        if any((folder / name).exists() for name in PROJECT_MARKERS):
            return folder
    return start


def offer_download(path) -> Path:
    """Start a browser download of ``path`` in Colab; elsewhere just say where the file is."""
    path = Path(path)
    if in_colab():
        from google.colab import files
        files.download(str(path))
        print(f"Downloading {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
    else:
        print(f"Saved {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return path


def zip_experiment(path, destination) -> Path:
    """``destination``/<group>-<name>.zip holding the experiment folder (made elsewhere first, so
    a zip never contains itself)."""
    path = Path(path)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    base = destination / f"{path.parent.name}-{path.name}"
    return Path(shutil.make_archive(str(base), "zip", root_dir=path.parent, base_dir=path.name))


NOTEBOOK_HINT = "set OVERWRITE = True to train it again, or choose another EXPERIMENT_NAME"


def plan_run(config, overwrite: bool = False):
    """Decide what a notebook does with the chosen experiment folder. Returns (action, config):

    * ``start``: nothing there yet; train from scratch;
    * ``resume``: an unfinished run with a checkpoint; train with ``resume=True``;
    * ``show``: a finished run with these options; nothing to train (unless ``overwrite``);
    * ``extend``: a finished run that stopped at a lower epoch limit; continue it to the new one;
    * ``overwrite``: replace what is there (asked for, or an unfinished run without a checkpoint).

    A folder holding a run with other options (another dataset file, another option value) is
    never shown or resumed as this one: a UserError names each option with both values."""
    from esapr.comparison import plan_run as _plan

    plan = _plan(config, overwrite, hint=NOTEBOOK_HINT)
    return {"reuse": "show"}.get(plan.action, plan.action), plan.config


def run_or_resume(config, overwrite: bool = False, progress="auto", data=None) -> dict:
    """Train, resume an interrupted run, extend a finished one to a raised NUM_EPOCHS, or read a
    finished one (see ``plan_run``); the results."""
    from esapr.experiment import Experiment, experiment_path
    from esapr.training.trainer import train

    action, config = plan_run(config, overwrite)
    path = experiment_path(config)
    limit = "early stopping" if config.num_epochs < 0 else f"{config.num_epochs} epochs"
    messages = {
        "start": f"Training a new run in {path}",
        "resume": f"Resuming the unfinished run in {path} from its last checkpoint",
        "show": f"{path} holds a finished run with these options; showing it (set OVERWRITE = True to train again)",
        "extend": f"{path} holds a finished run that stopped at its epoch limit; continuing it to {limit}",
        "overwrite": f"Starting {path} again from scratch",
    }
    print(messages[action])
    if action == "show":
        return Experiment(path).read_results()
    return train(config, data=data, progress=progress)


def _show_user_error(shell, etype, value, tb, tb_offset=None):
    from esapr.config import python_words
    print(f"esapr: error: {python_words(str(value))}", file=sys.stderr)    # a notebook calls Python: overwrite=True


def setup_notebook() -> None:
    """In IPython, show esapr's UserErrors as one line (no traceback); the cell still fails."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((UserError,), _show_user_error)

