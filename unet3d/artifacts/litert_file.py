"""Running exported ``.tflite`` U-Nets with LiteRT (``ai_edge_litert``).

:class:`LiteRTModel` wraps ``ai_edge_litert.interpreter.Interpreter`` (XNNPACK
is its default CPU delegate) behind the ``predict_fn`` contract of
:mod:`unet3d.inference.predictor`: float32 `(B, D, H, W, C)` in, float32 probabilities
`(B, D, H, W, K)` out, for the fixed window the file was exported for.

Metadata: :func:`unet3d.export.export_litert` writes ``<model>.tflite.json``
beside the file, holding the export report and, under ``"config"``, the
model's ``TrainConfig`` dict (modalities and their order, output mode, label
convention, architecture and so the stride). :func:`read_litert_config`
reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from unet3d_base.errors import InputError


def report_path(path: str | Path) -> Path:
    """The JSON file beside an exported model: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_litert_config(path: str | Path) -> dict[str, Any] | None:
    """The ``TrainConfig`` dict stored beside an exported ``.tflite``, or None.

    Args:
        path: str or Path of the ``.tflite`` file.

    Raises:
        InputError: the JSON file exists but is unreadable.
    """
    meta = report_path(path)
    if not meta.is_file():
        return None
    try:
        values = json.loads(meta.read_text())
    except (json.JSONDecodeError, OSError) as err:
        raise InputError(f"{meta}: not a readable export report ({err})") from None
    return values.get("config") if isinstance(values, dict) else None


def op_names(path_or_content: str | Path | bytes) -> dict[str, int]:
    """Counts the operators of a ``.tflite`` flatbuffer by name.

    Builtin ops are named as in LiteRT's schema (``CONV_2D``); custom ops by
    their custom code (Flex ops start with ``Flex``).

    Args:
        path_or_content: the file, or its bytes.

    Returns:
        dict op name -> number of operators, over all subgraphs.
    """
    from ai_edge_litert import schema_py_generated as schema

    content = path_or_content
    if not isinstance(content, (bytes, bytearray)):
        content = Path(content).read_bytes()
    model = schema.Model.GetRootAs(content, 0)
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = builtin.get(value, str(value))
        if name == "CUSTOM":
            name = (code.CustomCode() or b"CUSTOM").decode()
        codes.append(name)
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            name = codes[graph.Operators(o).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


class LiteRTModel:
    """An exported U-Net run by LiteRT's interpreter on the CPU.

    Args:
        path: str or Path of the ``.tflite`` file (static input
            `(1, D, H, W, C)`, or `(1, H, W, C)` for a 2D network).
        threads: int, default 2. Interpreter (and XNNPACK) threads.

    Attributes:
        window: (D, H, W), or (H, W) for a 2D network: the only size the model accepts.
        channels: int. Input channels C.
        out_channels: int. Output channels K.
        config: dict or None. The ``TrainConfig`` dict stored beside the file.
    """

    def __init__(self, path: str | Path, threads: int = 2) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: model file not found")
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=int(threads))
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"{self.path}: not a usable LiteRT model ({detail[:200]})") from None
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        shape = tuple(int(s) for s in self._input["shape"])
        if len(shape) not in (4, 5) or shape[0] != 1:
            raise InputError(f"{self.path}: expected an input (1, D, H, W, C) or (1, H, W, C), "
                             f"got {shape}")
        self.window: tuple[int, ...] = shape[1:-1]  # (H, W) for a 2D network
        self.channels = shape[-1]
        self.out_channels = int(self._output["shape"][-1])
        self.config = read_litert_config(self.path)

    def _invoke(self, volume: np.ndarray) -> np.ndarray:
        """One window: float32 `(D, H, W, C)` (or `(H, W, C)`) -> float32 `(..., K)`."""
        x = volume[None].astype(np.float32, copy=False)
        dtype = self._input["dtype"]
        if dtype != np.float32:  # integer input: quantize with the file's parameters
            scale, zero = self._input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self._input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._output["index"])[0]
        if y.dtype != np.float32:
            scale, zero = self._output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y

    def predict_fn(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities of a batch of windows.

        Args:
            batch: float32 `(B, *window, C)`: `(B, D, H, W, C)`, or `(B, H, W, C)` for
                a 2D network.

        Returns:
            float32 `(B, *window, K)`.
        """
        batch = np.asarray(batch)
        if batch.ndim != len(self.window) + 2 or tuple(batch.shape[1:-1]) != self.window \
                or batch.shape[-1] != self.channels:
            raise ValueError(f"{self.path.name}: expected (B, {', '.join(map(str, self.window))}, "
                             f"{self.channels}), got {batch.shape}")
        return np.stack([self._invoke(v) for v in batch]).astype(np.float32, copy=False)

    __call__ = predict_fn
