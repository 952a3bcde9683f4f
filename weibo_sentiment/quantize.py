"""int8 inference on CPU: dynamic quantisation of a merged model's linear layers.

Weights are stored as int8 and activations quantised on the fly per batch (``torch.ao.quantization.quantize_dynamic``),
which runs the matrix products through int8 kernels (fbgemm/onednn). GPT-2's layers are transformers' ``Conv1D``
(weights stored transposed), which dynamic quantisation does not know: they become ``nn.Linear`` first.
"""

from __future__ import annotations

import warnings

import torch
from transformers.pytorch_utils import Conv1D


def conv1d_to_linear(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``Conv1D`` (in place) by the equivalent ``nn.Linear``: same outputs, transposed weight."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = torch.nn.Linear(n_in, n_out, dtype=child.weight.dtype)
                linear.weight.data = child.weight.data.t().contiguous()
                linear.bias.data = child.bias.data
                setattr(module, child_name, linear)
    return model


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """An int8 dynamically quantised copy-in-place of an fp32 model with no adapters left (merge LoRA first)."""
    model = conv1d_to_linear(model).eval()
    with warnings.catch_warnings():
        # torch points new code to torchao; quantize_dynamic is still in torch and needs no extra package.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
