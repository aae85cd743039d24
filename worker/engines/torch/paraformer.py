"""tingji's own Paraformer predictor classes: decoding that does not depend on padding.

Batched decoding pads every sequence of a batch to the longest one.  Stock funasr
lets those padded frames leak into the real ones in two places:

- the CIF predictor's ``cif_conv1d`` looks one frame past the end of a sequence; the
  encoder's output there is LayerNorm of padding (not zero as for an unpadded
  sequence), so the last frames' firing weights change;
- the timestamp head (``CifPredictorV3``, ``upsample_type: cnn_blstm``) runs a
  bidirectional LSTM over the padded, upsampled frames, so the backward direction
  starts in the padding.

Either changes the last characters and the timestamps of a padded sequence (seen with a
6.6 s segment padded to 7.3 s).  The subclasses here zero the padded encoder frames
before the predictor and run the BLSTM on packed sequences, so a segment decodes to the
same text and timestamps alone or in any batch.  That is what lets the worker batch
speech across tasks (``worker.batching``) without changing anyone's transcript.

They also replace the CIF predictor's per-frame Python loops (integrate-and-fire, and
its twin for the timestamp head over 3x upsampled frames), which launch several tensor
operations per frame - on a GPU thousands of tiny kernels per batch - with compiled
loops (numba) that do the same float32 operations in the same order: bit-identical
results, without the per-frame overhead.

``worker.engines.torch.patches`` registers the classes with funasr's tables under
their own names (a model's ``config.yaml`` may name them), and ``make_padding_invariant``
switches an already loaded model's predictor to them in place; they add no parameters,
so the weights are the model's own.  Nothing in site-packages is edited.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numba
import numpy as np
import torch
from funasr.models.bicif_paraformer.cif_predictor import CifPredictorV3, cif, cif_wo_hidden
from funasr.models.paraformer.cif_predictor import CifPredictorV2
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from worker.engines.onnx.frontend import fires_kernel

# ----------------------------------------------------------------------------- CIF
# The loops of funasr.models.bicif_paraformer.cif_predictor.cif / cif_wo_hidden, one
# sequence at a time, in float32 like the tensors there: every value is produced by the
# same IEEE operations in the same order, so the results are equal bit for bit.

@numba.njit(cache=True)
def _cif_kernel(hidden: np.ndarray, alphas: np.ndarray, threshold: np.float32,
                max_len: int) -> tuple[np.ndarray, np.ndarray, bool]:  # pragma: no cover
    b_size, t_size, d_size = hidden.shape
    one = np.float32(1.0)
    embeds = np.zeros((b_size, max_len, d_size), dtype=np.float32)
    fires = np.empty((b_size, t_size), dtype=np.float32)
    frame = np.zeros(d_size, dtype=np.float32)
    overflow = False
    for b in range(b_size):
        integrate = np.float32(0.0)
        frame[:] = 0.0
        n = 0
        for t in range(t_size):
            alpha = alphas[b, t]
            completion = one - integrate
            integrate = integrate + alpha
            fires[b, t] = integrate
            fire = integrate >= threshold
            if fire:
                integrate = integrate - one
                cur = completion
            else:
                cur = alpha
            for d in range(d_size):
                frame[d] = frame[d] + cur * hidden[b, t, d]
            if fire:
                if n < max_len:
                    embeds[b, n, :] = frame
                else:
                    overflow = True
                n += 1
                rem = alpha - cur
                for d in range(d_size):
                    frame[d] = rem * hidden[b, t, d]
    return embeds, fires, overflow


def fast_cif_wo_hidden(alphas: torch.Tensor, threshold: float) -> torch.Tensor:
    """``cif_wo_hidden`` without a Python loop over frames; the same values."""
    if alphas.dtype != torch.float32:
        return cif_wo_hidden(alphas, threshold)
    a = alphas.detach().to("cpu").contiguous().numpy()
    t = np.float32(threshold)
    return torch.from_numpy(fires_kernel(a, t, t)).to(alphas.device)


_SCOPE = threading.local()  # .active: this thread is inside decode_scope
STOCK_CIF_WO_HIDDEN = cif_wo_hidden  # funasr's own loop, as imported
_REPLACED: dict[str, Any] = {}  # what install_cif_dispatcher replaced


def _in_decode_scope() -> bool:
    return bool(getattr(_SCOPE, "active", False))


def _scoped_cif_wo_hidden(alphas: torch.Tensor, threshold: float) -> torch.Tensor:
    """What funasr's timestamp step calls: the compiled loop on a thread inside
    ``decode_scope``, funasr's own loop on every other thread."""
    if _in_decode_scope():
        return fast_cif_wo_hidden(alphas, threshold)
    return STOCK_CIF_WO_HIDDEN(alphas, threshold)


def install_cif_dispatcher() -> None:
    """Bind funasr's module-level ``cif_wo_hidden`` to the thread-scoped dispatcher
    (``worker.engines.torch.patches``, change 2); idempotent."""
    from funasr.utils import timestamp_tools

    if timestamp_tools.cif_wo_hidden is not _scoped_cif_wo_hidden:
        _REPLACED["timestamp_tools"] = timestamp_tools.cif_wo_hidden
        timestamp_tools.cif_wo_hidden = _scoped_cif_wo_hidden


def remove_cif_dispatcher() -> None:
    """timestamp_tools' own function back (it has its own copy of the loop)."""
    from funasr.utils import timestamp_tools

    if timestamp_tools.cif_wo_hidden is _scoped_cif_wo_hidden:
        timestamp_tools.cif_wo_hidden = _REPLACED.pop("timestamp_tools")


@contextlib.contextmanager
def decode_scope() -> Iterator[None]:
    """Marks tingji's own decode calls (``worker.batching`` enters it around each
    ``AutoModel.inference`` on the model thread).  While active on this thread:

    - funasr's ``ts_prediction_lfr6_standard`` runs its fallback (taken whenever the
      timestamp head's peaks do not number tokens + 1: for every segment of an untrained
      model, for some of a trained one) through ``fast_cif_wo_hidden`` instead of a
      per-frame Python loop of tensor operations: the same values;
    - ``TingjiCifPredictorV3.forward`` leaves out the timestamp head (upsampling CNN,
      bidirectional LSTM over 3x the frames), whose only output there, ``token_num2``,
      funasr's inference throws away (``calc_predictor`` keeps the first four outputs;
      the timestamps come from ``get_upsample_timestamp``, which runs the head itself).
      It returns None in its place.  On a CPU that is 8 % of decoding.

    Scoped to the calling thread, not the process: funasr's module-level name is bound
    once to a dispatcher that asks a thread-local flag, so funasr on any other thread
    (stock funasr in ``bench/``, even while tingji decodes) runs its own code."""
    install_cif_dispatcher()
    outer = _in_decode_scope()
    _SCOPE.active = True
    try:
        yield
    finally:
        _SCOPE.active = outer


def fast_cif(hidden: torch.Tensor, alphas: torch.Tensor, threshold: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``cif`` (acoustic embeddings at the fired frames, and the fires) without a Python
    loop over frames; the same values."""
    if hidden.dtype != torch.float32 or alphas.dtype != torch.float32:
        return cif(hidden, alphas, threshold)
    max_len = int(torch.round(alphas.sum(-1)).int().max())
    embeds, fires, overflow = _cif_kernel(
        hidden.detach().to("cpu").contiguous().numpy(),
        alphas.detach().to("cpu").contiguous().numpy(), np.float32(threshold), max(0, max_len))
    if overflow:  # more fires than tokens: let funasr's own code handle (and report) it
        return cif(hidden, alphas, threshold)
    return (torch.from_numpy(embeds).to(hidden.device),
            torch.from_numpy(fires).to(alphas.device))


def _zero_padding(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mask`` is funasr's ``(B, 1, T)`` validity mask (True/1 on real frames)."""
    if mask is None:
        return hidden
    return hidden * mask.transpose(-1, -2).to(hidden.dtype)


class TingjiCifPredictorV2(CifPredictorV2):
    def forward(self, hidden: torch.Tensor, target_label: Any = None,
                mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        return super().forward(_zero_padding(hidden, mask), target_label, mask,
                               *args, **kwargs)


class TingjiCifPredictorV3(CifPredictorV3):
    def forward(self, hidden: torch.Tensor, target_label: Any = None,
                mask: torch.Tensor | None = None, ignore_id: int = -1,
                mask_chunk_predictor: torch.Tensor | None = None,
                target_label_length: torch.Tensor | None = None) -> Any:
        """Decoding through ``CifPredictorV3``: the CIF weights of every frame (zero on
        padded ones) integrated by the compiled loop into acoustic embeddings.  The
        arithmetic is funasr's, step for step, so the embeddings are the same numbers;
        training, and a forward given target lengths, run funasr's own method."""
        if self.training or target_label is not None or target_label_length is not None:
            return super().forward(hidden, target_label, mask, ignore_id,
                                   mask_chunk_predictor, target_label_length)
        hidden = _zero_padding(hidden, mask)
        timestamp_tokens: torch.Tensor | None = None  # what the timestamp head counts
        if _in_decode_scope():  # tingji's decoding reads no timestamp head here
            conv = self._cif_conv(hidden)
        else:
            conv, head_weights = self._conv_and_timestamp_alphas(hidden, mask)
            timestamp_tokens = head_weights.sum(-1)
        weights = torch.sigmoid(self.cif_output(conv.transpose(1, 2)))
        weights = torch.nn.functional.relu(weights * self.smooth_factor - self.noise_threshold)
        frame_mask = None if mask is None else mask.transpose(-1, -2).float()
        for factor in (frame_mask, mask_chunk_predictor):
            if factor is not None:
                weights = weights * factor
        weights = weights.squeeze(-1)
        tokens = weights.sum(-1)
        if self.tail_threshold <= 0.0:
            embeds, fires = fast_cif(hidden, weights, self.threshold)
            return embeds, tokens, weights, fires, timestamp_tokens
        hidden, weights, tokens = self.tail_process_fn(
            hidden, weights, tokens, mask=None if frame_mask is None else frame_mask.squeeze(-1))
        embeds, fires = fast_cif(hidden, weights, self.threshold)
        embeds = embeds[:, :int(tokens.max().to(torch.int32))]
        return embeds, tokens, weights, fires, timestamp_tokens

    def _conv_and_timestamp_alphas(self, hidden: torch.Tensor, mask: torch.Tensor | None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The part ``forward`` and ``get_upsample_timestamp`` share: the CIF conv's
        output ``(B, D, T)`` and the timestamp head's firing weights ``(B, T * upsample)``,
        zero on padded frames."""
        context = hidden.transpose(1, 2)
        output = self._cif_conv(hidden)
        output2 = self._upsampled(output if self.use_cif1_cnn else context, mask)
        alphas2 = torch.sigmoid(self.cif_output2(output2))
        alphas2 = torch.nn.functional.relu(alphas2 * self.smooth_factor2 - self.noise_threshold2)
        if mask is not None:
            mask2 = (mask.repeat(1, self.upsample_times, 1).transpose(-1, -2)
                     .reshape(alphas2.shape[0], -1)).unsqueeze(-1)
            alphas2 = alphas2 * mask2
        return output, alphas2.squeeze(-1)

    def _cif_conv(self, hidden: torch.Tensor) -> torch.Tensor:
        """The CIF convolution's output ``(B, D, T)``."""
        return torch.relu(self.cif_conv1d(self.pad(hidden.transpose(1, 2))))

    def _upsampled(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.upsample_type == "cnn":
            return self.upsample_cnn(x).transpose(1, 2)  # type: ignore[no-any-return]
        if self.upsample_type == "cnn_blstm":
            return self._blstm(self.upsample_cnn(x).transpose(1, 2), mask)
        if self.upsample_type == "cnn_attn":
            out, _ = self.self_attn(self.upsample_cnn(x).transpose(1, 2), mask)
            return out  # type: ignore[no-any-return]
        raise ValueError(f"unknown upsample_type {self.upsample_type!r}")

    def get_upsample_timestamp(self, hidden: torch.Tensor, mask: torch.Tensor | None = None,
                               token_num: torch.Tensor | None = None) -> Any:
        """``CifPredictorV3.get_upsample_timestamp`` with padded frames zeroed, the BLSTM
        over packed sequences and the compiled fire loop; otherwise the same operations in
        the same order."""
        _, upsampled = self._conv_and_timestamp_alphas(_zero_padding(hidden, mask), mask)
        if token_num is not None:  # scaled so that they add up to the decoded tokens
            scale = token_num / upsampled.sum(-1)
            upsampled *= scale[:, None].repeat(1, upsampled.size(1))
        level = self.threshold - 1e-4
        frames = upsampled.reshape(upsampled.shape[0], -1, self.upsample_times).sum(-1)
        return (frames, fast_cif_wo_hidden(frames, level),
                upsampled, fast_cif_wo_hidden(upsampled, level))

    def _blstm(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None or x.shape[0] == 1:
            out, _ = self.blstm(x)
            return out
        lengths = mask.reshape(x.shape[0], -1).sum(-1).long() * self.upsample_times
        if bool((lengths == x.shape[1]).all()):
            out, _ = self.blstm(x)
            return out
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.blstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


_SUBCLASSES: dict[type, type] = {
    CifPredictorV2: TingjiCifPredictorV2,
    CifPredictorV3: TingjiCifPredictorV3,
}


def make_padding_invariant(model: Any) -> str | None:
    """Switch ``model.predictor`` (a loaded Paraformer-family model) to tingji's subclass
    of its class, in place.  Returns the new class name, or None when the model has no
    predictor tingji knows (it then decodes as stock funasr does)."""
    predictor = getattr(model, "predictor", None)
    if predictor is None:
        return None
    cls = type(predictor)
    if cls in _SUBCLASSES.values():
        return cls.__name__
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        return None
    predictor.__class__ = sub
    return sub.__name__


__all__ = ["TingjiCifPredictorV2", "TingjiCifPredictorV3", "decode_scope",
           "fast_cif", "fast_cif_wo_hidden",
           "make_padding_invariant"]
