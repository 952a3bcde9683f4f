"""int8 ONNX models for onnxruntime, from the fp32 export.

Two schemes, both with int8 weights per output channel and the embeddings left in fp32 (a table lookup gains nothing
from int8, and quantising it cost half of the error against fp32):

- ``int8`` (the default): each row of activations (one token of one post) is quantised with its own scale, so a
  post's probabilities do not depend on which posts share its batch: the same post gets the same number from
  ``main.py predict``, the API, the page and a rerun over a database, alone or in any batch.
- ``int8-dynamic``: onnxruntime's dynamic quantisation as it comes, one scale for a whole batch's activations,
  padding included: a post's probability moves with its neighbours (by up to 0.09 on the quickstart model), but
  ``DynamicQuantizeMatMul`` fuses the quantisation, the product and the bias into one kernel, a little faster.

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
# the fusion to those): sessions of the ``int8`` model run without it. Files written now hold no MatMulInteger for
# it to fuse (``quantize_rows_alone`` gives the kernel a unit scale and applies the rows' own after it), but int8
# files of earlier exports (format 2) do.
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
    """Turn a dynamically quantised model (``quantize_dynamic``: one scale for a whole tensor of activations) into one
    that quantises each row of activations alone: scale = max |row| / 127, q = round(x / scale) + 128.

    For each ``DynamicQuantizeLinear`` on activations x (..., K), rows are flattened to (rows, K) and quantised by
    one per-axis ``QuantizeLinear`` (rounding, shift and clipping in one pass). Each ``MatMulInteger`` -> ``Cast`` ->
    ``Mul(x_scale * w_scale)`` it fed becomes onnxruntime's ``MatMulIntegerToFloat`` with a unit activation scale
    (the integer product, times the weights' per-channel scales, in one kernel), then a ``Mul`` by the rows' scales
    and a ``Reshape`` back to (..., N). Every row's numbers depend on that row alone and the integer products are
    exact, so a row comes out the same in any batch. (Handing the per-row scale to ``MatMulIntegerToFloat`` itself
    would be wrong: it reads the first element as the scale of every row, see ``DISABLED_OPTIMIZERS``.)
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    weights = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {"per_row_eps": np.array(1e-12, np.float32), "per_row_127": np.array(127.0, np.float32),
                 "per_row_1": np.array(1.0, np.float32), "per_row_zero_point": np.array(_ZERO_POINT, np.uint8),
                 "per_row_last_axis": np.array([1], np.int64), "per_row_all_but_last": np.array([0], np.int64),
                 "per_row_minus_1": np.array([-1], np.int64)}  # fmt: skip
    before: dict[int, list] = {}  # id of a node to replace -> the nodes that take its place
    removed: set[int] = set()
    for quantize in graph.node:
        if quantize.op_type != "DynamicQuantizeLinear":
            continue
        x, (quantized, x_scale, _) = quantize.input[0], quantize.output
        products = [node for node in consumers.get(quantized, []) if node.op_type == "MatMulInteger"]
        if not products or len(products) != len(consumers[quantized]):
            raise ValueError(f"{quantize.name}: a quantised input that feeds something other than MatMulInteger")
        k = weights[products[0].input[1]][0]
        name = f"{quantize.name or x}_per_row"
        constants[f"{name}_shape"] = np.array([-1, k], np.int64)
        before[id(quantize)] = [
            helper.make_node("Shape", [x], [f"{name}_x_shape"]),
            helper.make_node("Slice", [f"{name}_x_shape", "per_row_all_but_last", "per_row_minus_1"], [f"{name}_lead"]),
            helper.make_node("Reshape", [x, f"{name}_shape"], [f"{name}_rows"]),
            helper.make_node("Abs", [f"{name}_rows"], [f"{name}_abs"]),
            helper.make_node("ReduceMax", [f"{name}_abs"], [f"{name}_max"], axes=[1], keepdims=0),
            helper.make_node("Max", [f"{name}_max", "per_row_eps"], [f"{name}_max_eps"]),  # an all-zero row
            helper.make_node("Div", [f"{name}_max_eps", "per_row_127"], [f"{name}_scale"]),
            helper.make_node("Shape", [f"{name}_scale"], [f"{name}_rows_count"]),
            helper.make_node("Expand", ["per_row_zero_point", f"{name}_rows_count"], [f"{name}_zero_points"]),
            helper.make_node("QuantizeLinear", [f"{name}_rows", f"{name}_scale", f"{name}_zero_points"],
                             [f"{name}_quantized"], axis=0),
            helper.make_node("Unsqueeze", [f"{name}_scale", "per_row_last_axis"], [f"{name}_scale_column"]),
        ]
        removed.add(id(quantize))
        for product in products:
            (cast,) = consumers[product.output[0]]
            (rescale,) = consumers[cast.output[0]]
            scales = producer[next(i for i in rescale.input if i != cast.output[0])]
            weight_scale = next(i for i in scales.input if i != x_scale)
            out = f"{product.name}_per_row"
            constants[f"{out}_columns"] = np.array([weights[product.input[1]][1]], np.int64)
            before[id(rescale)] = [
                helper.make_node("MatMulIntegerToFloat", [f"{name}_quantized", product.input[1], "per_row_1",
                                 weight_scale, "per_row_zero_point", product.input[3]], [f"{out}_unscaled"],
                                 domain="com.microsoft"),
                helper.make_node("Mul", [f"{out}_unscaled", f"{name}_scale_column"], [f"{out}_scaled"]),
                helper.make_node("Concat", [f"{name}_lead", f"{out}_columns"], [f"{out}_shape"], axis=0),
                helper.make_node("Reshape", [f"{out}_scaled", f"{out}_shape"], [rescale.output[0]]),
            ]
            removed |= {id(product), id(cast), id(rescale), id(scales)}
    nodes = [new for node in graph.node for new in before.get(id(node), []) + ([] if id(node) in removed else [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):  # type: ignore[attr-defined]
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))  # type: ignore[attr-defined]
