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

The classes are registered with funasr's tables under their own names (a model's
``config.yaml`` may name them) and ``make_padding_invariant`` switches an already
loaded model's predictor to them in place; they add no parameters, so the weights are
the model's own.  Nothing in site-packages is edited.
"""

from __future__ import annotations

from typing import Any

import torch
from funasr.models.bicif_paraformer.cif_predictor import CifPredictorV3, cif_wo_hidden
from funasr.models.paraformer.cif_predictor import CifPredictorV2
from funasr.register import tables
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def _zero_padding(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mask`` is funasr's ``(B, 1, T)`` validity mask (True/1 on real frames)."""
    if mask is None:
        return hidden
    return hidden * mask.transpose(-1, -2).to(hidden.dtype)


@tables.register("predictor_classes", "TingjiCifPredictorV2")
class TingjiCifPredictorV2(CifPredictorV2):
    def forward(self, hidden: torch.Tensor, target_label: Any = None,
                mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        return super().forward(_zero_padding(hidden, mask), target_label, mask,
                               *args, **kwargs)


@tables.register("predictor_classes", "TingjiCifPredictorV3")
class TingjiCifPredictorV3(CifPredictorV3):
    def forward(self, hidden: torch.Tensor, target_label: Any = None,
                mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        return super().forward(_zero_padding(hidden, mask), target_label, mask,
                               *args, **kwargs)

    def get_upsample_timestamp(self, hidden: torch.Tensor, mask: torch.Tensor | None = None,
                               token_num: torch.Tensor | None = None) -> Any:
        """``CifPredictorV3.get_upsample_timestamp`` with padded frames zeroed and the
        BLSTM over packed sequences; otherwise the same operations in the same order."""
        hidden = _zero_padding(hidden, mask)
        b = hidden.shape[0]
        context = hidden.transpose(1, 2)
        output = torch.relu(self.cif_conv1d(self.pad(context)))
        _output = output if self.use_cif1_cnn else context
        if self.upsample_type == "cnn":
            output2 = self.upsample_cnn(_output).transpose(1, 2)
        elif self.upsample_type == "cnn_blstm":
            output2 = self.upsample_cnn(_output).transpose(1, 2)
            output2 = self._blstm(output2, mask)
        elif self.upsample_type == "cnn_attn":
            output2 = self.upsample_cnn(_output).transpose(1, 2)
            output2, _ = self.self_attn(output2, mask)
        else:  # pragma: no cover - funasr's own class rejects this too
            raise ValueError(f"unknown upsample_type {self.upsample_type!r}")
        alphas2 = torch.sigmoid(self.cif_output2(output2))
        alphas2 = torch.nn.functional.relu(alphas2 * self.smooth_factor2 - self.noise_threshold2)
        if mask is not None:
            mask2 = (mask.repeat(1, self.upsample_times, 1).transpose(-1, -2)
                     .reshape(alphas2.shape[0], -1)).unsqueeze(-1)
            alphas2 = alphas2 * mask2
        alphas2 = alphas2.squeeze(-1)
        _token_num = alphas2.sum(-1)
        if token_num is not None:
            alphas2 *= (token_num / _token_num)[:, None].repeat(1, alphas2.size(1))
        ds_alphas = alphas2.reshape(b, -1, self.upsample_times).sum(-1)
        ds_cif_peak = cif_wo_hidden(ds_alphas, self.threshold - 1e-4)
        us_alphas = alphas2
        us_cif_peak = cif_wo_hidden(us_alphas, self.threshold - 1e-4)
        return ds_alphas, ds_cif_peak, us_alphas, us_cif_peak

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


__all__ = ["TingjiCifPredictorV2", "TingjiCifPredictorV3", "make_padding_invariant"]
