"""How ``bench/train_fixture.py`` changes a BiCif-Paraformer training step, each a
context manager around funasr's own trainer, checked against funasr's own step in
``tests/unit/test_train_fixture.py``: ``without_timestamp_head`` leaves the predictor's
timestamp head out of stage 1 (``TIMESTAMPS`` trains it alone afterwards), and
``predictor_once`` answers the second predictor pass of a step from the first."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def predictor_once() -> Iterator[None]:
    """BiCif-Paraformer's training step calls its predictor twice on the same input,
    for the acoustic embeddings (``_calc_att_loss``) and for the timestamp head's count
    (``_calc_pre2_loss``), and each call computes both of the predictor's heads (the
    CIF loop, and a BLSTM over the upsampled frames) to use one.  Inside this block the
    second call is answered with the first call's outputs: the same values, the same
    gradients (nothing in the predictor draws random numbers), one BLSTM forward a step
    fewer.  On 2 CPU cores the BLSTM is about 40 % of a training step, and the block
    takes 8 % off a step (250 batches of the full corpus: 288 s, 264 s with it).  The
    timestamp head's own stage trains with it (the weights differ from two passes' in
    the last bits: the gradients are summed in another order)."""
    from funasr.models.bicif_paraformer.cif_predictor import CifPredictorV3

    original = CifPredictorV3.forward
    last: list[tuple[Any, ...]] = []  # the training call before: inputs and outputs

    def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
        return a is b or (a is not None and b is not None and a.shape == b.shape
                          and bool(torch.equal(a, b)))

    def forward(self: Any, hidden: torch.Tensor, target_label: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, ignore_id: int = -1,
                **rest: Any) -> Any:
        if target_label is None or rest:  # decoding, or a call this block does not know
            return original(self, hidden, target_label, mask, ignore_id, **rest)
        if last:
            before = last.pop()
            if (before[0] is self and before[1] is hidden and before[4] == ignore_id
                    and same(before[2], target_label) and same(before[3], mask)):
                return before[5]
        out = original(self, hidden, target_label, mask, ignore_id)
        last.append((self, hidden, target_label, mask, ignore_id, out))
        return out

    CifPredictorV3.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        CifPredictorV3.forward = original  # type: ignore[method-assign]
        last.clear()


# the timestamp head of BiCif's predictor (paraformer-zh's ``cnn_blstm``): an upsampling
# convolution, a BLSTM over the upsampled frames, and the linear layer of its weights.
# It reads the CIF head's convolution and nothing reads it in training but its own count
# loss (``_calc_pre2_loss``), so stage 1 can leave it out and a short stage train it on
# the trained encoder (``TIMESTAMPS``: everything else frozen)
TIMESTAMP_HEAD = ("upsample_cnn", "blstm", "cif_output2")
TIMESTAMPS = "encoder,decoder,ctc,predictor.cif_conv1d,predictor.cif_output"


class _Frames(torch.nn.Module):
    """Stands in for the timestamp head's layers in ``without_timestamp_head``: one
    zero channel, upsampled in time as the real convolution would (B, 1, T * times)."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 1, x.shape[2] * self.times)


class _Through(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[None, None]]:
        return x, (None, None)


@contextlib.contextmanager
def without_timestamp_head() -> Iterator[None]:
    """Trains BiCif-Paraformer without its timestamp head: inside this block a training
    call of the predictor runs funasr's own forward with the head's three layers stood
    in for by zeros (the CIF head, its outputs and their gradients unchanged), and
    the head's count loss is zero.  The head's BLSTM, about 40 % of a step on 2 CPU
    cores, is then neither run nor trained; ``TIMESTAMPS`` trains it afterwards."""
    from funasr.models.bicif_paraformer.cif_predictor import CifPredictorV3
    from funasr.models.bicif_paraformer.model import BiCifParaformer

    forward, count_loss = CifPredictorV3.forward, BiCifParaformer._calc_pre2_loss

    def cif_head_only(self: Any, hidden: torch.Tensor, target_label: Any = None,
                      mask: Any = None, ignore_id: int = -1, **rest: Any) -> Any:
        if target_label is None or rest:  # decoding, or a call this block does not know
            return forward(self, hidden, target_label, mask, ignore_id, **rest)
        real = {name: self._modules[name] for name in TIMESTAMP_HEAD}
        self._modules.update(upsample_cnn=_Frames(self.upsample_times), blstm=_Through(),
                             cif_output2=torch.nn.Identity())
        try:
            return forward(self, hidden, target_label, mask, ignore_id)
        finally:
            self._modules.update(real)

    def no_count_loss(self: Any, encoder_out: torch.Tensor, *args: Any) -> torch.Tensor:
        return encoder_out.new_zeros(())

    CifPredictorV3.forward = cif_head_only  # type: ignore[method-assign]
    BiCifParaformer._calc_pre2_loss = no_count_loss  # type: ignore[method-assign]
    try:
        yield
    finally:
        CifPredictorV3.forward = forward  # type: ignore[method-assign]
        BiCifParaformer._calc_pre2_loss = count_loss  # type: ignore[method-assign]
