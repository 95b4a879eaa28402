"""Issue 15 on the CPU: every GPU-readiness path that does not need a GPU. The precision each card
gets, mixed-precision training with float32 evaluation, the fp16 GradScaler path, the kernels and
sizes chosen by device, Drive-friendly checkpoints (a background writer killed mid-write), the
deterministic option, the ML-20M template. Tiny data throughout."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import esapr.models.bert4rec as bert4rec
import esapr.models.relative as relative
import esapr.models.sasrec as sasrec
from esapr.cli import main
from esapr.config import build_config
from esapr.data.batches import training_ends
from esapr.data.prepare import prepare_data
from esapr.experiment import CHECKPOINT_INTERVAL, DRIVE_CHECKPOINT_INTERVAL, Experiment
from esapr.models import DataInfo, build_model
from esapr.models.length_groups import device_group_cost, length_groups
from esapr.models.positions import labelled_rows
from esapr.training.evaluator import load_run
from esapr.training.precision import choose_precision
from esapr.training.trainer import Trainer, train
from tests.conftest import REPO, cli_env, tiny
from tests.test_baselines import random_batch, tiny_config


def config_for(data_file: Path, tmp_path: Path, template: str = "train_vae", **overrides):
    options = tiny(template, data_file, experiment_root=str(tmp_path / "runs"), num_epochs=2, lr=0.02)
    return build_config([template], {**options, **overrides})


def evaluated(config, folder: Path) -> dict:
    """The test metrics of the run in ``folder``, loaded for evaluation under ``config``."""
    return load_run(Experiment(folder), config, prepare_data(config)).evaluate("test").metrics


# --- precision per card ------------------------------------------------------------------------------

@pytest.mark.parametrize("capability,expected", [((7, 5), torch.float16), ((7, 0), torch.float16),
                                                 ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16),
                                                 ((9, 0), torch.bfloat16)])
def test_auto_takes_bf16_only_where_the_gpu_has_it_natively(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)   # a T4 says yes
    cuda = torch.device("cuda")
    precision = choose_precision(None, "auto", cuda)
    assert precision.dtype == expected and precision.scaled == (expected == torch.float16)
    assert choose_precision(False, "auto", cuda).dtype is None
    assert choose_precision(None, "fp16", cuda).name == "fp16 + GradScaler"


def test_bf16_asked_for_on_an_older_gpu_warns(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.warns(UserWarning, match="emulated on this GPU"):
        assert choose_precision(True, "bf16", torch.device("cuda")).dtype == torch.bfloat16


def test_the_cpu_trains_in_fp32_unless_asked():
    cpu = torch.device("cpu")
    assert choose_precision(None, "auto", cpu).name == "fp32"
    assert choose_precision(True, "auto", cpu).name == "bf16"
    assert choose_precision(True, "fp16", cpu).name == "fp16 + GradScaler"


# --- mixed-precision training, float32 evaluation ----------------------------------------------------

def test_bf16_training_evaluates_in_float32(data_file, tmp_path):
    config = config_for(data_file, tmp_path, amp=True, experiment_name="bf16")
    results = train(config, progress=False)
    folder = Path(results["experiment"])
    assert results["precision"] == "bf16" and json.loads((folder / "results.json").read_text())["precision"] == "bf16"
    # the bf16 trainer's test of its best model and a plain float32 evaluation of it: the same numbers, to the bit
    assert evaluated(config, folder) == results["test"]
    # no autocast around scoring: the scores are float32
    trainer = Trainer(config, prepare_data(config), progress=False)
    assert "cpu, bf16" in trainer.summary(Experiment(folder))
    seen, scores = [], trainer.model.scores

    def recording(batch):
        out = scores(batch)
        seen.append(out.dtype)
        return out
    trainer.model.scores = recording
    trainer.evaluate("val", limit=1)
    assert seen == [torch.float32]


def test_fp16_with_the_cpu_grad_scaler_trains_and_resumes_exactly(data_file, tmp_path):
    fp16 = dict(amp=True, amp_dtype="fp16")
    straight = train(config_for(data_file, tmp_path, experiment_name="straight", **fp16), progress=False)
    assert straight["precision"] == "fp16 + GradScaler"
    checkpoint = torch.load(Path(straight["experiment"]) / "models/recent_checkpoint.pth", weights_only=True)
    assert checkpoint["scaler"]["scale"] > 0                 # the scaler ran and is saved for a resume
    train(config_for(data_file, tmp_path, experiment_name="resumed", num_epochs=1, **fp16), progress=False)
    resumed = train(config_for(data_file, tmp_path, experiment_name="resumed", resume=True, **fp16), progress=False)
    assert resumed["test"] == straight["test"]


def test_the_relative_terms_compute_in_float32_forward_and_backward_under_autocast():
    torch.manual_seed(0)
    times = torch.tensor([[0, 1, 3, 9], [0, 0, 2, 2]])
    drop = relative.PairDropout(0.3, training=True, streams=2)
    q = torch.randn(2, 2, 4, 3, requires_grad=True)
    tables = [torch.randn(6, 3, requires_grad=True) for _ in range(2)]
    term = lambda x: relative.IntervalTerm.apply(x, times, times, 5, drop, relative.KEYS, *tables)
    exact = term(q)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = term(q.to(torch.bfloat16))
    assert low.dtype == torch.float32
    assert torch.equal(low, term(q.to(torch.bfloat16).float()))          # inputs cast, nothing in bf16 inside
    low.sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()
    assert torch.allclose(low, exact, atol=0.05)


@pytest.mark.parametrize("template", ["train_tisas", "train_meantime", "train_bert", "train_sas"])
def test_transformers_train_a_step_under_bf16_autocast(template):
    model = build_model(tiny_config(template, dropout=0.2), DataInfo(n_users=12, n_items=30, n_days=80)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(random_batch(b=6, seed=1))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- kernels and sizes chosen by device --------------------------------------------------------------

def test_length_groups_split_on_a_cpu_and_keep_a_gpu_batch_whole_without_reading_it():
    assert device_group_cost(torch.device("cpu")) == 4e7 and device_group_cost(torch.device("cuda")) == float("inf")
    tokens = torch.zeros(64, 200, dtype=torch.long)
    for row in range(64):
        tokens[row, 200 - (3 * row + 5) % 200 - 1:] = 1
    assert len(length_groups(tokens, 64)) > 1
    # a tensor with no data (the meta device) cannot be read: the GPU's choice never syncs
    whole = length_groups(torch.zeros(64, 200, dtype=torch.long, device="meta"), 64)
    assert len(whole) == 1 and whole[0][1] == 200 and whole[0][0].shape == (64,)


def test_losses_gather_positions_on_a_cpu_and_mask_them_elsewhere():
    labels = torch.tensor([[0, 3, 0, 5]])
    assert labelled_rows(labels, 10).tolist() == [1, 3]
    assert labelled_rows(labels.to("meta"), 10) is None          # no data to read: no sync


@pytest.mark.parametrize("template,module", [("train_bert", bert4rec), ("train_sas", sasrec)])
def test_the_masked_loss_of_the_gpu_equals_the_gathered_one(monkeypatch, template, module):
    model = build_model(tiny_config(template, dropout=0.0), DataInfo(n_users=12, n_items=30, n_days=80)).train()
    batch = random_batch(b=6, seed=2)
    gathered = model(batch)
    grads = torch.autograd.grad(gathered, list(model.parameters()), allow_unused=True)
    monkeypatch.setattr(module, "labelled_rows", lambda labels, width: None)
    masked = model(batch)
    assert torch.allclose(masked, gathered, atol=1e-6)
    for a, b in zip(torch.autograd.grad(masked, list(model.parameters()), allow_unused=True), grads):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6))
    batch.labels.zero_()
    assert model(batch).item() == 0.0                           # no labelled position: 0, not NaN


def test_relation_chunks_by_device_and_fixed_for_a_forward_pass(monkeypatch):
    assert relative.chunk_elements(torch.device("cpu")) == relative.CHUNK_ELEMENTS
    memory = {"free": 16 << 30, "reserved": 2 << 30}           # the allocator holds 1 GiB unused: free too
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (memory["free"], 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: memory["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 << 30)
    cuda = torch.device("cuda")
    assert relative.chunk_elements(cuda) == int((17 << 30) * relative.GPU_MEMORY_SHARE) // (4 * relative.CHUNK_TENSORS)
    drop = relative.PairDropout(0.2, training=True, streams=1)
    first = drop.chunk_size(cuda)
    memory.update(free=1 << 20, reserved=1 << 30)               # memory changes within the pass: the backward
    assert drop.chunk_size(cuda) == first                        # must cut the same chunks
    assert relative.chunk_elements(cuda) == relative.CHUNK_ELEMENTS            # never below the CPU's size
    memory["free"] = 1 << 40
    assert relative.chunk_elements(cuda) == relative.MAX_CHUNK_ELEMENTS
    # a whole H200 batch of MEANTIME (256 x 200 x 200 x 64) in a few chunks, not ~1,200
    assert len(relative.chunk_starts(256, 200 * 200 * 64, relative.MAX_CHUNK_ELEMENTS)) == 1


def test_the_kl_weight_is_a_tensor_set_by_the_schedule():
    config = build_config(["train_vae"], dict(encoder_hidden_layer=[8], encode_len=4, total_anneal_steps=10))
    model = build_model(config, DataInfo(3, 10, 1))
    schedule = model.make_schedule()
    buffer = model.kl_weight
    assert isinstance(buffer, torch.Tensor) and "kl_weight" not in model.state_dict()
    for step in range(3):
        schedule.before_step(model)
        assert model.kl_weight is buffer and model.kl_weight.item() == pytest.approx(min(0.2, step / 10))


# --- checkpoints for a slow disk ---------------------------------------------------------------------

def test_best_model_is_written_once_at_the_end_and_travels_in_the_checkpoint(data_file, tmp_path, monkeypatch):
    writes = []
    save = Experiment.save
    monkeypatch.setattr(Experiment, "save", lambda self, path, state: (writes.append(path.name), save(self, path, state)))
    config = config_for(data_file, tmp_path, num_epochs=3, experiment_name="policy")
    results = train(config, progress=False)
    assert writes == ["recent_checkpoint.pth"] * 3 + ["best_model.pth"]
    folder = Path(results["experiment"])
    checkpoint = torch.load(folder / "models/recent_checkpoint.pth", weights_only=True)
    best = torch.load(folder / "models/best_model.pth", weights_only=True)
    assert all(torch.equal(checkpoint["best_model"][name], best["model"][name]) for name in best["model"])
    # a run without best_model.pth (interrupted, or still going): evaluate uses the checkpoint's best weights
    (folder / "models/best_model.pth").unlink()
    assert evaluated(config, folder) == results["test"]
    assert main(["evaluate", "--experiment", str(folder), "--json", "--device", "cpu"]) == 0


def test_the_background_writer_copies_first_and_reports_its_error(tmp_path):
    experiment = Experiment(tmp_path / "run")
    weights = torch.zeros(1000)
    experiment.save_in_background(experiment.recent_checkpoint, {"model": {"w": weights}})
    weights += 1                                                 # training goes on at once
    experiment.wait_for_saves()
    assert torch.equal(experiment.load(experiment.recent_checkpoint)["model"]["w"], torch.zeros(1000))
    (tmp_path / "blocked").write_text("a file where a folder should be")
    experiment.save_in_background(tmp_path / "blocked" / "x.pth", {"model": {}})
    with pytest.raises(OSError):
        experiment.wait_for_saves()
    experiment.wait_for_saves()                                  # reported once


KILLED_MID_WRITE = textwrap.dedent("""
    import shutil, sys, time, torch
    from pathlib import Path
    import esapr.experiment as module
    experiment = module.Experiment(Path(sys.argv[1]))
    experiment.save(experiment.recent_checkpoint, {"model": {"w": torch.zeros(10)}, "epoch": 1})
    def stalled(source, target, length=0):      # half of the new checkpoint is written, then the kill
        target.write(source.read(1000))
        target.flush()
        print("writing", flush=True)
        time.sleep(60)
    module.shutil.copyfileobj = stalled
    experiment.save_in_background(experiment.recent_checkpoint, {"model": {"w": torch.ones(100_000)}, "epoch": 2})
    experiment.wait_for_saves()
""")


@pytest.mark.slow
def test_a_kill_in_the_middle_of_a_background_write_keeps_the_last_checkpoint(tmp_path):
    folder = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(folder)], stdout=subprocess.PIPE, text=True,
                             env=cli_env(), cwd=REPO)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    state = Experiment(folder).load(Experiment(folder).recent_checkpoint)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.zeros(10))
    assert [p.name for p in (folder / "models").iterdir() if p.suffix == ".tmp"]     # the half-written copy


def test_the_checkpoint_interval_is_longer_on_drive(tmp_path):
    assert Experiment(Path("/content/drive/MyDrive/esapr/ml-1m/vae")).default_checkpoint_interval() == \
        DRIVE_CHECKPOINT_INTERVAL
    assert Experiment(tmp_path / "ml-1m" / "vae").default_checkpoint_interval() == CHECKPOINT_INTERVAL


# --- determinism ---------------------------------------------------------------------------------------

@pytest.fixture()
def restore_determinism():
    before = os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    yield
    torch.use_deterministic_algorithms(False)
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    if before is not None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = before


def test_deterministic_sets_the_flags_and_changes_nothing_on_a_cpu(data_file, tmp_path, restore_determinism):
    plain = train(config_for(data_file, tmp_path, num_epochs=1, experiment_name="plain"), progress=False)
    assert not torch.are_deterministic_algorithms_enabled()
    strict = train(config_for(data_file, tmp_path, num_epochs=1, experiment_name="strict", deterministic=True),
                   progress=False)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert strict["test"] == plain["test"] and strict["deterministic"] and not plain["deterministic"]


# --- ML-20M ----------------------------------------------------------------------------------------------

def test_the_ml20m_template_is_train_vae_with_the_originals_ml20m_window():
    base, big = build_config(["train_vae"]).values(), build_config(["train_vae_20m"]).values()
    assert (big["train_window"], big["saturation_wait_epochs"], big["dataset_code"]) == (128, 16, "ml-20m")
    differences = {name for name, value in big.items() if value != base[name]}
    assert differences == {"templates", "train_window", "saturation_wait_epochs", "dataset_code", "experiment_group",
                           "experiment_name"}
    # a user with 1,000 training items: 219 windows at step 4, 7 at step 128
    offsets = torch.tensor([0, 1002]).numpy()
    assert [len(training_ends(offsets, 128, window)[0]) for window in (4, 128)] == [219, 7]


# --- torch.compile ------------------------------------------------------------------------------------

def test_compile_wraps_the_training_step_and_keeps_the_checkpoint_names(data_file, tmp_path):
    """Compiling takes a minute on this CPU, so only the wiring is tested here; benchmarks/gpu_check.py
    times a compiled epoch (on the CPU: 14-30% less time per VAE step)."""
    config = config_for(data_file, tmp_path, compile=True)
    trainer = Trainer(config, prepare_data(config), progress=False)
    assert trainer.model._compiled_call_impl is not None          # forward, i.e. the loss, is compiled
    assert set(trainer.model.state_dict()) == set(build_model(config, trainer.info).state_dict())
