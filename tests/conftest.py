"""Shared fixtures. Keep each fixture small and documented; add new ones in their own section.

Data:    SHARED_DATA, ``ml100k_dir`` (the real MovieLens-100K under ../shared; skips when absent)
Network: ``http_server`` (a local http.server on 127.0.0.1 in a thread); helpers ``zip_bytes``,
         ``closed_port_url`` (import them: ``from tests.conftest import zip_bytes``)
Kernels: notebooks run in a "python3" kernel of this interpreter, whatever kernels the user has
CLI:     ``run_cli`` fixture / ``start_cli`` helper (``python -m esapr ...`` in a subprocess)
Runs:    ``tiny(template, data_file, **extra)``: a template's family's tiny preset on a test file
         (``from tests.conftest import tiny``); ``template_of(code)``; ``data_file`` fixture
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.synthetic import write_ratings_csv

# tiny models run fastest on one thread, and the CLI runs a test starts share the cores with it
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def python3_kernel(tmp_path_factory):
    """Jupyter's user folder replaced by one whose "python3" kernel is this interpreter: a kernel
    spec left in the user's folder (e.g. ``ipykernel install --user`` from another environment,
    now gone) would otherwise run the notebooks elsewhere, or not at all."""
    try:
        from ipykernel.kernelspec import install
    except ImportError:         # no kernel to run notebooks with: their tests skip
        yield
        return
    data = tmp_path_factory.mktemp("jupyter") / "share" / "jupyter"
    install(kernel_name="python3", prefix=str(data.parents[1]))
    before = os.environ.get("JUPYTER_DATA_DIR")
    os.environ["JUPYTER_DATA_DIR"] = str(data)
    yield
    if before is None:
        os.environ.pop("JUPYTER_DATA_DIR", None)
    else:
        os.environ["JUPYTER_DATA_DIR"] = before


# --- data -----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The real MovieLens-100K folder (u.data, u.item) shared beside the repository."""
    folder = SHARED_DATA / "ml-100k"
    if not (folder / "u.data").is_file():
        pytest.skip(f"real ML-100K data absent ({folder})")
    return folder


# --- network --------------------------------------------------------------------------------------

def zip_bytes(files: dict[str, bytes | str]) -> bytes:
    """A zip archive in memory holding ``{member name: content}``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content.encode() if isinstance(content, str) else content)
    return buffer.getvalue()


@dataclass
class Route:
    body: bytes
    truncate_first: int = 0        # the first N requests send only half the body (full Content-Length)
    status: int = 200
    hits: int = 0


@dataclass
class LocalServer:
    """``routes[path] = Route(...)``; ``url(path)`` is its address; ``requests`` lists every path asked."""
    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def serve(self, path: str, body: bytes, **options) -> str:
        self.routes[path] = Route(body, **options)
        return self.url(path)

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture()
def http_server():
    """A plain HTTP/1.0 server on 127.0.0.1 (random port) in a daemon thread. A truncated response
    announces the full Content-Length, sends half the bytes and closes the connection."""
    server_state: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            state: LocalServer = server_state["server"]
            state.requests.append(self.path)
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            route.hits += 1
            if route.status != 200:
                self.send_error(route.status)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            if route.hits <= route.truncate_first:
                self.wfile.write(route.body[: len(route.body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(route.body)

        def log_message(self, *args):   # keep the test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state = LocalServer(f"http://127.0.0.1:{httpd.server_address[1]}")
    server_state["server"] = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port_url(name: str = "missing.zip") -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting fails at once (no network needed)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


# --- CLI ------------------------------------------------------------------------------------------

def cli_env() -> dict:
    """Environment of a CLI subprocess: the repository importable, no proxy, no colour noise."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONWARNINGS"] = "ignore"
    return env


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """Start ``python -m esapr ARGS`` (returns at once; collect with ``.communicate()``)."""
    return subprocess.Popen([sys.executable, "-m", "esapr", *map(str, args)], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


@pytest.fixture()
def run_cli(tmp_path):
    """``run_cli(*args)`` -> CompletedProcess of ``python -m esapr ARGS`` run in tmp_path."""
    def run(*args, timeout: float = 60) -> subprocess.CompletedProcess:
        process = start_cli(list(args), tmp_path)
        out, err = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return run


# --- runs ---------------------------------------------------------------------------------------

def template_of(code: str) -> str:
    """A packaged template of the family (the one named after it where there is one)."""
    from esapr.config import template_names, template_values
    names = [name for name in template_names() if template_values([name]).get("model_code") == code]
    assert names, f"family {code} has no template"
    return f"train_{code}" if f"train_{code}" in names else names[0]


def as_args(options: dict) -> list[str]:
    """``{"lr": 0.1, "metric_ks": [1, 5]}`` as ``--lr 0.1 --metric_ks 1 5``."""
    return [word for name, value in options.items()
            for word in (f"--{name}", *map(str, value if isinstance(value, list) else [value]))]


def tiny(template: str, data_file: Path | None = None, **extra) -> dict:
    """Options for a run of ``template`` that trains in a second: its family's tiny preset
    (``esapr.families``), on the CPU, checkpointing every epoch, on ``data_file`` (caches beside
    it), then ``extra``."""
    from esapr.config import template_values
    from esapr.families import family
    options = {**family(template_values([template])["model_code"]).preset, "device": "cpu",
               "checkpoint_every_seconds": 0}
    if data_file is not None:
        options.update(data_file=str(data_file), local_data_folder=str(Path(data_file).parent / "data"))
    return {**options, **extra}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """A small synthetic ratings file (60 users), one per test module."""
    return write_ratings_csv(tmp_path_factory.mktemp("ratings") / "ratings.csv", n_users=60)
