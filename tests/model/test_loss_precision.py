"""`ModelConfig.loss_dtype`: a float64 log-softmax resolves the loss of very confident predictions,
which float32 rounds to a multiple of 1.2e-7 (the grokking runs need it; docs/grokking.md)."""

import torch

from icl_lab.model import ModelConfig, Transformer


def confident_model(loss_dtype: str) -> Transformer:
    cfg = ModelConfig(n_layers=1, d_model=8, n_heads=1, d_vocab=16, n_ctx=4, normalization="none", bias=True, loss_dtype=loss_dtype)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.b_U[3] = 20.0  # every position predicts token 3 with a margin of 20 nats
    return model


def test_fp64_resolves_the_loss_that_fp32_rounds_away():
    tokens = torch.full((2, 4), 3)
    exact = torch.log1p(torch.tensor(15 * torch.e ** -20.0, dtype=torch.float64))  # log(1 + 15 e^-20) ~ 3.1e-8
    fp32, fp64 = confident_model("fp32").per_token_loss(tokens), confident_model("fp64").per_token_loss(tokens)
    assert fp64.dtype == torch.float64 and torch.allclose(fp64, exact.expand_as(fp64), rtol=1e-9)
    assert fp32.dtype == torch.float32 and not torch.allclose(fp32.double(), exact.expand_as(fp64), rtol=0.1)
    assert torch.equal(confident_model("fp32")(tokens), confident_model("fp64")(tokens))  # the logits are the same
