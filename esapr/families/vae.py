"""ESAPR's VAE: a recency-weighted bag of the window in, a weighted multinomial likelihood over
its last recover_len items out, and transfer training (recover_len halved at each plateau)."""
from __future__ import annotations

from dataclasses import dataclass

from esapr.families.base import TRAINING_SPACE, Choice, Family, Floats, Ints, RecencyWeights, WindowOptions
from esapr.options.spec import AT_LEAST_0, FRACTION, PROBABILITY, SIZE, option, require


@dataclass
class VaeOptions(WindowOptions, RecencyWeights):
    dropout: float = option(0.2, "input dropout", valid=FRACTION)
    aug_prob: float = option(0.0, "input augmentation probability", valid=PROBABILITY)
    legacy_bag: bool = option(False, "bag as the original: pad index 0 weighted in the input and the loss, repeats "
                                     "keep one weight")
    total_anneal_steps: int = option(262144, "KL annealing steps", valid=AT_LEAST_0)
    anneal_cap: float = option(0.2, "largest KL weight", valid=AT_LEAST_0)
    train_transfer: bool = option(True, "halve recover_len at each plateau (transfer training)")
    scaled_loss: bool = option(True, "rescale the loss by total/recovered weight")
    decrease_dropout: bool = option(False, "scale input dropout by recover_len/max_len after transfers")
    best_model_transfer: bool = option(True, "reload the best weights at each transfer")
    stage_patience: int = option(0, "epochs without improvement that end a transfer stage (0: "
                                    "saturation_wait_epochs, as the original)", valid=AT_LEAST_0,
                                 default_as_before=True)
    stop_at_idle_stage: bool = option(False, "end the run when a stage ends without raising the best validation "
                                             "metric (false: go on down to recover_len 1, as the original)",
                                      default_as_before=True)
    normalize_type: str = option("f", "input normalisation: f (L2) or batch (BatchNorm)", ("f", "batch"))
    encode_len: int = option(128, "latent size", valid=SIZE)
    encoder_hidden_layer: list[int] = option([512], "encoder hidden sizes", valid=SIZE)
    decoder_activation: str = option("relu", "decoder nonlinearity (none = the original's linear decoder)",
                                     ("none", "relu", "tanh"))


def check(options: VaeOptions) -> None:
    require(options.max_len >= 2, "max_len", options.max_len, "the VAE needs at least 2 (a bag and a target)")


TINY = {"max_len": 10, "train_window": 2, "train_batch_size": 40, "val_batch_size": 50, "test_batch_size": 50,
        "encoder_hidden_layer": [16], "encode_len": 8, "test_negative_sample_size": 20}
SPACE = {**TRAINING_SPACE, "dropout": Floats(0.0, 0.8), "anneal_cap": Floats(0.0, 1.0),
         "encoder_hidden_layer": Ints(128, 1024, log=True), "encode_len": Ints(32, 256, log=True),
         "weight_type": Choice("exp_stair", "exp", "linear", "constant"), "max_len": Ints(16, 256, log=True),
         "stage_patience": Ints(1, 32, log=True), "stop_at_idle_stage": Choice(True, False)}
FAMILY = Family("vae", "VAE", VaeOptions, "esapr.models.vae:VAE", "esapr.data.batches.vae:VaeBatches", "BagBatch",
                TINY, check, space=SPACE)
