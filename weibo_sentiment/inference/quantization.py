"""int8 ONNX models for onnxruntime, from the fp32 export.

Two schemes, both with int8 weights per output channel and the embeddings left in fp32 (a table lookup gains nothing
from int8, and quantising it cost half of the error against fp32):

- ``int8`` (the default): each row of activations (one token of one post) is quantised with its own scale, so a
  post's probabilities do not depend on which posts share its batch: the same post gets the same number from
  ``main.py predict``, the API, the page and a rerun over a database, alone or in any batch.
- ``int8-dynamic``: onnxruntime's dynamic quantisation as it comes, one scale for a whole batch's activations,
  padding included: a post's probability moves with its neighbours (by up to 0.09 on the quickstart model), but
  ``DynamicQuantizeMatMul`` fuses the quantisation into the product and runs ~1.25x faster on an AVX2 CPU.

Rows are quantised symmetrically to uint8 around 128 (what onnxruntime's fast u8s8 kernels take; its s8s8 path ran
3x slower than fp32 on AVX2), and the weights to 7 bits (``reduce_range``): without VNNI those kernels add pairs of
u8 x s8 products in 16 bits (``vpmaddubsw``), which 255 x 127 x 2 overflows and 255 x 64 x 2 does not. One file
behaves the same on every CPU, so an export made on one machine labels alike on another.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import get_args

from weibo_sentiment.settings import Quantization

QUANTIZATIONS = get_args(Quantization)
# onnxruntime's MatMulIntegerToFloat fusion takes a per-row scale for a per-tensor one and computes wrong products
# (seen in onnxruntime 1.32; its kernel supports per-tensor scales only, microsoft/onnxruntime#6008 meant to keep
# the fusion to those): sessions of the ``int8`` model run without it.
DISABLED_OPTIMIZERS = {"int8": ["MatMulIntegerToFloatFusion"], "int8-dynamic": []}
_ZERO_POINT = 128  # uint8 rows are symmetric around it


def quantize_onnx(source: Path, target: Path, scheme: str) -> None:
    """Write ``source`` (an fp32 ONNX model) quantised by ``scheme`` to ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    per_row = scheme == "int8"
    with tempfile.TemporaryDirectory(dir=target.parent) as work, quiet_root_logger():
        dynamic = Path(work) / "dynamic.onnx"
        quantize_dynamic(str(source), str(dynamic if per_row else target), weight_type=QuantType.QInt8,
                         per_channel=per_row, reduce_range=per_row,
                         op_types_to_quantize=["MatMul", "Gemm"] if per_row else None)  # fmt: skip
        if per_row:
            import onnx

            model = onnx.load(str(dynamic))
            quantize_rows_alone(model)
            onnx.save(model, str(target))


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantiser logs an advice to pre-process the model through the root logger: not for users."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.handlers[:] = handlers  # logging.warning() gives a bare root logger a handler of its own: take it back
        root.setLevel(level)


def quantize_rows_alone(model: object) -> None:
    """Replace each ``DynamicQuantizeLinear`` (one scale and zero point for the whole tensor) of a dynamically
    quantised model by a per-row quantisation: scale = max |row| / 127, q = round(x / scale) + 128, zero point 128.

    Its consumers stay as they are: ``MatMulInteger`` takes the rows and the scalar zero point, and the scale's
    ``Mul`` with the weights' scale broadcasts a (rows, 1) column against them. Every row's numbers depend on that
    row alone, and the integer products are exact, so a row comes out the same in any batch.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    constants = {"per_row_eps": np.array(1e-12, np.float32), "per_row_127": np.array(127.0, np.float32),
                 "per_row_128": np.array(float(_ZERO_POINT), np.float32), "per_row_1": np.array(1.0, np.float32),
                 "per_row_255": np.array(255.0, np.float32), "per_row_zero_point": np.array(_ZERO_POINT, np.uint8)}  # fmt: skip
    nodes = []
    zero_points = {}
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        x, (quantized, scale, zero_point) = node.input[0], node.output
        name = f"{node.name or x}_per_row"
        nodes += [
            helper.make_node("Abs", [x], [f"{name}_abs"]),
            helper.make_node("ReduceMax", [f"{name}_abs"], [f"{name}_max"], axes=[-1], keepdims=1),
            helper.make_node("Max", [f"{name}_max", "per_row_eps"], [f"{name}_max_eps"]),  # an all-zero row
            helper.make_node("Div", [f"{name}_max_eps", "per_row_127"], [scale]),
            helper.make_node("Div", [x, scale], [f"{name}_scaled"]),
            helper.make_node("Round", [f"{name}_scaled"], [f"{name}_rounded"]),
            helper.make_node("Add", [f"{name}_rounded", "per_row_128"], [f"{name}_shifted"]),
            helper.make_node("Clip", [f"{name}_shifted", "per_row_1", "per_row_255"], [f"{name}_clipped"]),
            helper.make_node("Cast", [f"{name}_clipped"], [quantized], to=TensorProto.UINT8),
        ]
        zero_points[zero_point] = "per_row_zero_point"
    for node in nodes:
        for index, name in enumerate(node.input):
            if name in zero_points:
                node.input[index] = zero_points[name]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
