"""The machine's matrix-multiply peaks on the real model's projection shapes: what share of the hardware a mode's
FLOP/s reach. A worker of ``harness.Runner.worker`` (``matmul_peak:matmul_peak``).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

PEAK_WIDTH = 768  # the machine's matmul peak is measured on the real model's shapes, whatever model is benchmarked


def _best_rate(run: Any, operations: float, repeats: int) -> float:
    """The best of ``repeats`` timed windows of about 0.2 s each (after a warm-up), in operations per second / 1e9.

    A peak is what the machine can do: the best window, not the median (other work only ever slows a window)."""
    for _ in range(3):  # warm-up: oneDNN/MKL/MLAS pick and cache their kernels
        run()
    start, iterations = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:
        run()
        iterations += 1
    per_repeat, best = max(1, iterations), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(per_repeat):
            run()
        best = max(best, operations * per_repeat / (time.perf_counter() - start) / 1e9)
    return best


def _int8_matmul(m: int, k: int, n: int, threads: int, kernel: str) -> Any:
    """One onnxruntime int8 product of the kernel our int8 models run: ``DynamicQuantizeMatMul`` (float A quantised
    per call, int8 B; int8-dynamic's projections once onnxruntime has fused them) or ``MatMulInteger`` (uint8 A,
    int8 B in 7 bits, int32 out: the integer product of int8's ``MatMulIntegerToFloat``, whose rows are quantised by
    an operator of their own)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kernel == "DynamicQuantizeMatMul":
        weights = rng.integers(-127, 128, (k, n), dtype=np.int8)
        a_type, feed = TensorProto.FLOAT, {"a": rng.standard_normal((m, k), dtype=np.float32)}
        node = helper.make_node(kernel, ["a", "b", "b_scale", "b_zero"], ["y"], domain="com.microsoft")
        extra = [numpy_helper.from_array(np.array(0.01, np.float32), "b_scale"),
                 numpy_helper.from_array(np.array(0, np.int8), "b_zero")]  # fmt: skip
        y_type = TensorProto.FLOAT
    else:
        weights = rng.integers(-64, 65, (k, n), dtype=np.int8)
        a_type, feed = TensorProto.UINT8, {"a": rng.integers(1, 256, (m, k), dtype=np.uint8)}
        node = helper.make_node(kernel, ["a", "b", "a_zero"], ["y"])
        extra, y_type = [numpy_helper.from_array(np.array(128, np.uint8), "a_zero")], TensorProto.INT32
    graph = helper.make_graph([node], "int8_peak", [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", y_type, [m, n])],
                              [numpy_helper.from_array(weights, "b"), *extra])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feed)


def matmul_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """The machine's matrix-multiply peaks on the real model's projection shapes (tokens x 768 @ 768 x 2304, ...):
    fp32 and (where the CPU has it natively) bf16 through ``torch.mm``, int8 through the two onnxruntime kernels our
    int8 models run (the better of them is the int8 peak); each the best window of several on its best shape."""
    import torch

    width, tokens = PEAK_WIDTH, 2048
    shapes = [(tokens, width, 3 * width), (tokens, width, width), (tokens, width, 4 * width), (tokens, 4 * width, width)]
    kinds = ["fp32", "int8 DynamicQuantizeMatMul", "int8 MatMulInteger"] + (["bf16"] if spec.get("native_bf16") else [])
    by_kind: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    for m, k, n in shapes:
        name, operations = f"({m}x{k})@({k}x{n})", 2 * m * k * n
        for kind in kinds:
            if kind.startswith("int8"):
                run = _int8_matmul(m, k, n, torch.get_num_threads(), kernel=kind.split()[1])
            else:
                dtype = torch.float32 if kind == "fp32" else torch.bfloat16
                a, b, out = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype), torch.empty(m, n, dtype=dtype)
                run = partial(torch.mm, a, b, out=out)
            by_kind[kind][name] = _best_rate(run, operations, spec["repeats"])
    best = {kind: max(rates, key=rates.get) for kind, rates in by_kind.items()}
    peaks = {kind: by_kind[kind][shape] for kind, shape in best.items() if not kind.startswith("int8")}
    int8_kernel = max((kind for kind in by_kind if kind.startswith("int8")), key=lambda kind: by_kind[kind][best[kind]])
    peaks["int8"], best["int8"] = by_kind[int8_kernel][best[int8_kernel]], f"{best[int8_kernel]} {int8_kernel.split()[1]}"
    return {"torch_threads": torch.get_num_threads(), "by_shape": by_kind, "best_shape": best, "peaks": peaks,
            "peak_gflops": peaks["fp32"]}  # fmt: skip
