"""Two workers share one study through ``--storage postgresql://...``, against a real PostgreSQL
server that the test starts itself from the distribution's binaries (initdb, pg_ctl: on PATH or
under /usr/lib/postgresql/*/bin; .ci/run installs them). Skipped, with the reason, where the
binaries or the Python driver (the test extra's psycopg) are missing."""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import as_args, start_cli, tiny

VAE = "train_vae_net"


def server_binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server on 127.0.0.1 in a temporary folder, trusting local connections, stopped
    at the end. PostgreSQL refuses to run as root: as root it runs as the 'postgres' user."""
    import sqlalchemy
    try:
        sqlalchemy.create_engine("postgresql://esapr@127.0.0.1/postgres")   # loads the driver, connects to nothing
    except ImportError as error:
        pytest.skip(f"no PostgreSQL driver for SQLAlchemy ({error}): pip install -e \".[test]\"")
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    run_as = {}
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the server as")

        def drop():
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        run_as = {"preexec_fn": drop}
    folder = Path(tempfile.mkdtemp(prefix="esapr-pg-"))
    if run_as:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "data", free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run([binaries / "initdb", "-D", data, "-U", "esapr", "--auth=trust", "-E", "UTF8"], check=True,
                   capture_output=True, env=env, cwd=folder, **run_as)
    subprocess.run([binaries / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", "60", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True, env=env, cwd=folder, **run_as)
    try:
        yield f"postgresql://esapr@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([binaries / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True,
                       env=env, cwd=folder, **run_as)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_share_a_study_through_postgresql(postgres_url, tmp_path, data_file):
    """Two workers with their own experiment roots (two machines) on one database: 6 distinct
    trials, each machine holding the folders of the trials it trained."""
    options = tiny(VAE, data_file, num_epochs=2)
    workers = []
    for machine in ("a", "b"):
        args = ["tune", "--templates", VAE, "--trials", "6", "--storage", postgres_url,
                "--experiment_root", str(tmp_path / machine), *as_args(options)]
        workers.append(start_cli(args, tmp_path))
    for worker in workers:
        out, err = worker.communicate(timeout=400)
        assert worker.returncode == 0, err
        assert "study train_vae_net@ratings (postgresql://esapr@127.0.0.1" in out
    study = optuna.load_study(study_name=f"{VAE}@ratings", storage=postgres_url)
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 6 and len({t.number for t in done}) == 6
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    folders = {machine: sorted(p.name for p in (tmp_path / machine / "ratings" / "tune" / VAE).glob("trial_*"))
               for machine in ("a", "b")}
    assert sorted(folders["a"] + folders["b"]) == sorted(t.user_attrs["folder"] for t in done)
    assert folders["a"] and folders["b"]        # both machines trained
    settings = study.user_attrs["settings"]        # one attribute: a worker sees all of them or none
    assert settings["template"] == VAE and settings["budget"] == {"trials": 6, "hours": None}
