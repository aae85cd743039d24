"""``bench.train_fixture.predictor_once``: BiCif-Paraformer's training step computed
with one predictor pass gives the loss and gradients of funasr's two passes."""

from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("funasr")


def _step(once: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    from funasr.models.bicif_paraformer.cif_predictor import CifPredictorV3

    from bench.train_fixture import STAGE1, predictor_once
    from tests.helpers.tiny_funasr import asr_config, build_module

    torch.manual_seed(0)
    config = asr_config("bicif", "tiny", 40)
    config["model_conf"].update(STAGE1)  # the CTC head and the sampler, as stage 1 trains
    model = build_module(config, vocab_size=40).train()
    data = torch.Generator().manual_seed(1)
    speech = torch.randn(3, 50, 560, generator=data)  # LFR features, three lengths
    text = torch.randint(3, 38, (3, 6), generator=data)
    text[1, 5:], text[2, 4:] = -1, -1
    passes = 0
    forward = CifPredictorV3.forward

    def counted(self: object, *args: object, **kwargs: object) -> object:
        nonlocal passes
        passes += 1
        return forward(self, *args, **kwargs)  # type: ignore[arg-type]

    CifPredictorV3.forward = counted  # type: ignore[method-assign]
    try:
        torch.manual_seed(2)  # dropout and the sampler draw the same numbers both times
        with predictor_once() if once else contextlib.nullcontext():
            loss, _, _ = model(speech, torch.tensor([50, 41, 33]), text,
                               torch.tensor([6, 5, 4]))
    finally:
        CifPredictorV3.forward = forward  # type: ignore[method-assign]
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, passes


def test_one_predictor_pass_gives_the_same_loss_and_gradients() -> None:
    loss, grads, passes = _step(once=False)
    loss_once, grads_once, passes_once = _step(once=True)
    assert (passes, passes_once) == (2, 1)
    assert torch.equal(loss, loss_once)
    assert grads.keys() == grads_once.keys()
    assert any("blstm" in n for n in grads)  # the timestamp head is trained either way
    for name, grad in grads.items():  # summed in another order: equal to rounding
        assert torch.allclose(grad, grads_once[name], rtol=1e-4, atol=1e-6), name
