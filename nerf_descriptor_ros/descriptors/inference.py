"""Running an exported descriptor model fast: device, half precision, channels-last, compilation.

The live node describes every camera image with :class:`DescriptorEngine`. On CUDA the network
can run in fp16 with channels-last tensors (what tensor cores want) and be compiled with
TorchScript (``torch.jit.trace``) or ``torch.compile``; on the CPU it runs in fp32. The model is
warmed up at construction, so compilation (and a compile error) happens at start-up, not on the
first camera image. Calls are serialised by a lock: one network, several callers (live frames,
keypoint definitions) never interleave. The engine converts the model's network in place (dtype,
memory format): describe through the engine, not the model, once it exists.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from nerf_descriptor_ros.descriptors.model import DescriptorModel, ModelError

COMPILE_MODES = ("none", "torchscript", "torch_compile")


class DescriptorEngine:
    """``describe(rgb)`` -> (D, h, w) float32 descriptors at the model's input size, on its device."""

    def __init__(
        self,
        model: DescriptorModel,
        half_precision: bool = True,
        channels_last: bool = True,
        compile_mode: str = "none",
    ):
        if compile_mode not in COMPILE_MODES:
            raise ModelError(f"compile mode {compile_mode!r} unknown; choose one of {COMPILE_MODES}")
        self.model = model
        self.on_cuda = model.device.type == "cuda"
        # fp16 and channels-last pay off on GPUs; on CPUs they are slower or unsupported.
        self.dtype = torch.float16 if half_precision and self.on_cuda else torch.float32
        self.memory_format = torch.channels_last if channels_last and self.on_cuda else torch.contiguous_format
        self.compile_mode = compile_mode
        self._lock = threading.Lock()
        net = model.net.to(dtype=self.dtype, memory_format=self.memory_format).eval()
        width, height = model.input_size
        example = self._input(np.zeros((height, width, 3), np.uint8))
        with torch.inference_mode():
            if compile_mode == "torchscript":
                net = torch.jit.freeze(torch.jit.trace(net, example, check_trace=False))
            elif compile_mode == "torch_compile":
                net = torch.compile(net)
            try:
                net(example)  # warm-up: compile now, and allocate the working memory once
            except Exception as exc:  # a compiler that is missing or fails says so at start-up
                raise ModelError(
                    f"the descriptor network does not run with compile mode {compile_mode!r} on {model.device}: {exc}"
                ) from exc
        self._net = net

    @property
    def description(self) -> str:
        return (
            f"{self.model.manifest['backbone']} D={self.model.descriptor_dim} at "
            f"{self.model.input_size[0]}x{self.model.input_size[1]} on {self.model.device} "
            f"({str(self.dtype).replace('torch.', '')}"
            f"{', channels-last' if self.memory_format == torch.channels_last else ''}"
            f"{'' if self.compile_mode == 'none' else ', ' + self.compile_mode})"
        )

    def _input(self, rgb: np.ndarray) -> torch.Tensor:
        x = self.model.preprocess(rgb)  # checks the image and resizes it to the model's input size
        return x.to(dtype=self.dtype, memory_format=self.memory_format)

    def describe(self, rgb: np.ndarray) -> torch.Tensor:
        x = self._input(rgb)
        with self._lock, torch.inference_mode():
            return self._net(x)[0].float()
