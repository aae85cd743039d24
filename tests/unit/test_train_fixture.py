"""``bench.train_steps``: BiCif-Paraformer's training step computed
with one predictor pass gives the loss and gradients of funasr's two passes."""

from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("funasr")


def _step(once: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    from funasr.models.bicif_paraformer.cif_predictor import CifPredictorV3

    from bench.train_fixture import STAGE1
    from bench.train_steps import predictor_once
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


def _stats(head: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    from bench.train_fixture import STAGE1
    from bench.train_steps import without_timestamp_head
    from tests.helpers.tiny_funasr import asr_config, build_module

    torch.manual_seed(0)
    config = asr_config("bicif", "tiny", 40)
    config["model_conf"].update(STAGE1)
    model = build_module(config, vocab_size=40).train()
    data = torch.Generator().manual_seed(1)
    speech = torch.randn(3, 50, 560, generator=data)
    text = torch.randint(3, 38, (3, 6), generator=data)
    text[1, 5:], text[2, 4:] = -1, -1
    runs = 0

    def count(*_: object) -> None:
        nonlocal runs
        runs += 1

    hook = model.predictor.blstm.register_forward_hook(count)
    torch.manual_seed(2)
    with contextlib.nullcontext() if head else without_timestamp_head():
        loss, stats, _ = model(speech, torch.tensor([50, 41, 33]), text,
                               torch.tensor([6, 5, 4]))
    hook.remove()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {k: v for k, v in stats.items() if isinstance(v, torch.Tensor)}, grads, runs


def test_stage_one_without_the_timestamp_head() -> None:
    """``without_timestamp_head``: the BLSTM is not run, the head gets no gradient, the
    other losses are funasr's own, and the decoder learns exactly as it would."""
    from funasr.models.bicif_paraformer.cif_predictor import CifPredictorV3

    forward = CifPredictorV3.forward
    stats, grads, runs = _stats(head=True)
    stats_off, grads_off, runs_off = _stats(head=False)
    assert CifPredictorV3.forward is forward  # restored
    assert (runs, runs_off) == (2, 0)
    assert float(stats["loss_pre2"]) > 0 and float(stats_off["loss_pre2"]) == 0
    for name in ("loss_att", "loss_ctc", "loss_pre"):
        assert torch.equal(stats[name], stats_off[name]), name
    head = {n for n in grads if n.split(".")[1:2] in (["upsample_cnn"], ["blstm"],
                                                       ["cif_output2"])}
    assert head and not head & grads_off.keys()
    assert grads_off.keys() == grads.keys() - head
    for name in grads_off:  # the count loss reaches the encoder, never the decoder
        if name.startswith("decoder."):
            assert torch.equal(grads[name], grads_off[name]), name


def test_the_timestamp_stage_trains_the_head_alone() -> None:
    """``TIMESTAMPS`` (funasr's ``freeze_param`` prefixes) freezes every parameter of
    the stage 1 model but the timestamp head's."""
    from bench.train_fixture import STAGE1
    from bench.train_steps import TIMESTAMP_HEAD, TIMESTAMPS
    from tests.helpers.tiny_funasr import asr_config, build_module

    config = asr_config("bicif", "tiny", 40)
    config["model_conf"].update(STAGE1)
    names = [n for n, _ in build_module(config, vocab_size=40).named_parameters()]
    frozen = {n for n in names for t in TIMESTAMPS.split(",")
              if n.startswith(t + ".") or n == t}  # funasr.bin.train's own rule
    assert set(names) - frozen == {n for n in names
                                   if n.split(".")[:2] in [["predictor", h]
                                                           for h in TIMESTAMP_HEAD]}
    assert set(names) - frozen
