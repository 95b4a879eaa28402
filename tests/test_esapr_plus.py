"""ESAPR+: ESAPR's VAE with SLIST's closed-form path blended into its scores. Linear weight 0 is
ESAPR exactly; the path's weights are SLIST's; the blend is the standardised sum; resumes are
exact (tests/test_registry.py trains, resumes and recommends every family, ESAPR+ included)."""
import pytest
import torch

from esapr.config import build_config
from esapr.data.prepare import prepare_data
from esapr.models.esapr_plus import EsaprPlus, standardised
from esapr.training.trainer import Trainer, train

TINY = dict(max_len=10, train_window=2, train_batch_size=40, val_batch_size=50, test_batch_size=50,
            encoder_hidden_layer=[16], encode_len=8, test_negative_sample_size=20, device="cpu",
            checkpoint_every_seconds=0, num_epochs=3)


def options(tmp_path, data_file, **extra) -> dict:
    return dict(TINY, data_file=str(data_file), local_data_folder=str(data_file.parent / "data"),
                experiment_root=str(tmp_path / "runs"), **extra)


def test_standardised_rows_leave_the_padding_column_out_of_the_statistics():
    scores = torch.tensor([[100.0, 1.0, 2.0, 3.0], [-7.0, 4.0, 4.0, 10.0]])
    # row 1: mean 2, std 1; row 2: mean 6, std sqrt(((-2)^2 + (-2)^2 + 4^2) / 2) = sqrt(12)
    expected = torch.tensor([[98.0, -1.0, 0.0, 1.0], [-13 / 12 ** 0.5, -2 / 12 ** 0.5, -2 / 12 ** 0.5, 4 / 12 ** 0.5]])
    torch.testing.assert_close(standardised(scores), expected)


def test_linear_weight_zero_is_esapr(tmp_path, data_file):
    esapr = train(build_config(["train_vae"], options(tmp_path, data_file, experiment_name="esapr")), progress="quiet")
    plus = train(build_config(["train_esapr_plus"], options(tmp_path, data_file, experiment_name="plus",
                                                            linear_weight=0.0)), progress="quiet")
    assert plus["test"] == esapr["test"] and plus["best_epoch"] == esapr["best_epoch"]


def test_the_linear_path_is_slists_solution_and_the_scores_its_standardised_blend(tmp_path, data_file):
    lam, alpha = 3.0, 0.4
    slist_config = build_config(["train_slist"], options(tmp_path, data_file, slist_lambdas=[lam],
                                                         slist_alphas=[alpha], max_len=10))
    slist = Trainer(slist_config, prepare_data(slist_config), progress="quiet")
    slist.model.fit_closed_form(slist.setting(1), slist.batches)
    config = build_config(["train_esapr_plus"], options(tmp_path, data_file, linear_lambda=lam, linear_alpha=alpha,
                                                        linear_weight=0.7))
    trainer = Trainer(config, prepare_data(config), progress="quiet")
    model = trainer.model
    assert isinstance(model, EsaprPlus)
    torch.testing.assert_close(model.linear, slist.model.weights, atol=1e-6, rtol=0)
    model.eval()
    batch = next(iter(trainer.batches.eval_batches("val")))
    with torch.no_grad():
        vae = super(EsaprPlus, model).scores(batch)
        expected = standardised(vae) + 0.7 * standardised(batch.bag @ slist.model.weights)
        torch.testing.assert_close(model.scores(batch), expected, atol=1e-5, rtol=0)


def test_the_linear_path_is_saved_with_the_model(tmp_path, data_file):
    config = build_config(["train_esapr_plus"], options(tmp_path, data_file, num_epochs=1))
    results = train(config, progress="quiet")
    saved = torch.load(f"{results['experiment']}/models/best_model.pth", weights_only=True)["model"]
    assert "linear" in saved and saved["linear"].abs().sum() > 0
    assert torch.count_nonzero(torch.diagonal(saved["linear"])) == 0      # an item never recommends itself


@pytest.mark.parametrize("weight", [-1.0, float("nan")])
def test_a_negative_or_missing_weight_is_refused(weight):
    from esapr.errors import UserError
    with pytest.raises(UserError, match="option 'linear_weight'"):
        build_config(["train_esapr_plus"], {"linear_weight": weight})
