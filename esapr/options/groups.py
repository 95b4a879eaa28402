"""The option groups every run shares: where it lives and runs (``RunOptions``), what data it
reads (``DataOptions``), how it is evaluated (``EvalOptions``) and, for models trained by
gradient steps, how it is trained (``TrainOptions``). A family's own options are in
``esapr.families``."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.options.spec import AT_LEAST_0, POSITIVE, SEED, SIZE, ANY_NUMBER, Range, option

# the datasets of the registry (``esapr.data.sources.SOURCES`` reads them from each raw layout)
DATASET_CODES = ("ml-100k", "ml-1m", "ml-20m", "beauty", "game")


@dataclass
class RunOptions:
    templates: list[str] = option([], "YAML templates applied in order (e.g. train_vae)", identity=False, path=True)
    model_code: str | None = option(None, "model family (a template sets it)")
    model_label: str | None = option(None, "the model's name in result tables (default: the family's)",
                                     identity=False)
    experiment_root: str = option("experiments", "root folder of all experiments", identity=False, path=True)
    experiment_group: str | None = option(None, "sub-folder grouping experiments (default: the dataset)",
                                          identity=False, path=True)
    experiment_name: str | None = option(None, "experiment folder name (default: the template's)", identity=False,
                                         path=True)
    resume: bool = option(False, "continue an interrupted run from its last checkpoint", identity=False)
    overwrite: bool = option(False, "replace a finished experiment in the same folder", identity=False)
    checkpoint_every_seconds: float | None = option(
        None, "write the resumable checkpoint (it holds the best weights) at most this often, in the background "
              "(0: every epoch; default: 30 s, 300 s on Google Drive); best_model.pth is written at the end",
        valid=AT_LEAST_0, identity=False)
    pilot: bool = option(False, "smoke test: one epoch of one batch, then test")
    device: str = option("auto", "where to train", ("auto", "cpu", "cuda"), identity=False)
    amp: bool | None = option(None, "mixed precision (bf16, or fp16 with a scaler); default: on for CUDA")
    amp_dtype: str = option("auto", "mixed-precision type; auto: bf16 where the GPU has it natively (compute "
                                    "capability >= 8.0: A100, L4, H100), else fp16 with a GradScaler (T4, V100); "
                                    "bf16 on a CPU", ("auto", "bf16", "fp16"))
    compile: bool = option(False, "torch.compile the training step (fuses the VAE's elementwise work: 14-30% less "
                                  "time per step on a CPU); the first steps and each transfer stage compile first",
                           identity=False)
    deterministic: bool = option(False, "deterministic GPU kernels (torch.use_deterministic_algorithms, warn-only, "
                                        "and CUBLAS_WORKSPACE_CONFIG): reruns and resumes on one GPU give identical "
                                        "numbers, a little slower; the CPU is always deterministic", identity=False)


@dataclass
class DataOptions:
    dataset_code: str | None = option("ml-1m", "dataset in the registry (ignored with data_file)", DATASET_CODES)
    data_file: str | None = option(None, "your own ratings CSV/TSV (with header) or sequence file", path=True)
    data_url: str | None = option(None, "mirror URL (http(s) or Google Drive link) for the dataset")
    local_data_folder: str = option("./Data", "where raw data and caches live", identity=False, path=True)
    min_rating: float = option(0, "keep interactions with rating >= this", valid=ANY_NUMBER)
    min_uc: int = option(5, "keep users with at least this many interactions (after item filter)", valid=AT_LEAST_0)
    min_sc: int = option(5, "keep items with at least this many interactions", valid=AT_LEAST_0)
    split: str = option("leave_one_out", "evaluation split", ("leave_one_out",))
    timestamp_unit: str = option("auto", "unit of the file's timestamps (auto: seconds, or ms/us/ns where the values "
                                         "are too large for seconds since 1970)", ("auto", "s", "ms", "us", "ns"))
    test_negative_sampler_code: str = option("popular", "evaluation negative sampler", ("random", "popular"))
    test_negative_sample_size: int = option(100, "evaluation negatives per user", valid=SIZE)
    test_negative_sampling_seed: int = option(98765, "seed of the evaluation negatives", valid=SEED)
    legacy_negatives: bool = option(False, "reproduce the original's per-user numpy draws exactly")


@dataclass
class EvalOptions:
    metric_ks: list[int] = option([1, 5, 10, 20, 50], "cut-offs of the metrics with a cut-off (NDCG@k, Recall@k); "
                                                      "computed from the saved ranks, so not part of a run",
                                  valid=SIZE, identity=False)
    best_metric: str = option("NDCG@10", "validation metric that selects the best model (or setting)")
    full_ranking: bool = option(True, "also report metrics ranked against every unseen item")
    val_batch_size: int = option(256, "validation batch size", valid=SIZE, identity=False)
    test_batch_size: int = option(256, "test batch size", valid=SIZE, identity=False)


@dataclass
class TrainOptions:
    """Read only by the families trained by gradient steps (a closed-form model has none of these)."""
    optimizer: str = option("Adam", "optimizer", ("Adam", "SGD"))
    lr: float = option(1e-3, "learning rate", valid=POSITIVE)
    weight_decay: float = option(0.0, "L2 weight decay", valid=AT_LEAST_0)
    momentum: float | None = option(None, "SGD momentum", valid=AT_LEAST_0)
    decay_step: int = option(25, "StepLR step (epochs)", valid=Range(1, 2**31 - 1))
    gamma: float = option(1.0, "StepLR factor", valid=POSITIVE)
    clip_grad_norm: float | None = option(5.0, "clip the global gradient norm (None: off)", valid=POSITIVE)
    num_epochs: int = option(-1, "maximum epochs (-1: until early stopping)", valid=Range(1, 2**31 - 1, also=(-1,)))
    saturation_wait_epochs: int = option(20, "patience (epochs without improvement)", valid=AT_LEAST_0)
    train_batch_size: int = option(256, "training batch size", valid=SIZE)
    train_window: int | None = option(100, "step between sliding training windows (0/None: one per user)",
                                      valid=AT_LEAST_0)
    model_init_seed: int = option(0, "seed of the weight initialisation", valid=SEED)
    dataloader_random_seed: int = option(0, "seed of every random draw in training: shuffling, masking, training "
                                            "negatives, dropout and noise (with the epoch number)", valid=SEED)
