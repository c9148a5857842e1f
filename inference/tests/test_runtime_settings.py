"""The gpu worker's model settings: MODEL_QUANTIZATION at load, MODEL_CUDA_ALLOC_CONF before torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Starts a Celery worker object the way `celery -A deepseek_web worker -Q <queues>` does (Django
# setup and task imports included, no broker connection), then imports torch, and reports the
# allocator variable as it was at torch's first import.
_WORKER_START = textwrap.dedent(
    """
    import importlib.abc, os, sys

    seen = {}

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch" and "conf" not in seen:
                seen["conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "<unset>")
            return None

    sys.meta_path.insert(0, Watch())
    from deepseek_web.celery import app

    app.Worker(hostname="probe@test", queues=sys.argv[1].split(","), pool_cls="solo", quiet=True)
    imported_during_start = "torch" in sys.modules
    import torch  # noqa: F401
    print(f"RESULT {imported_during_start} {seen['conf']}")
    """
)


def _worker_start(queues: str, **env: str) -> tuple[bool, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", _WORKER_START, queues], cwd=ROOT, env=environ, check=False,
                          capture_output=True, text=True, timeout=180)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, done.stdout + done.stderr
    _, imported, conf = line[-1].split(" ", 2)
    return imported == "True", conf


def test_it_sets_the_cuda_allocator_before_the_gpu_worker_imports_torch() -> None:
    imported_during_start, conf = _worker_start("gpu")
    assert not imported_during_start
    assert conf == "expandable_segments:True"


def test_it_takes_the_allocator_setting_from_settings_and_lets_the_environment_win() -> None:
    assert _worker_start("gpu", MODEL_CUDA_ALLOC_CONF="max_split_size_mb:256")[1] == "max_split_size_mb:256"
    assert _worker_start("gpu", PYTORCH_CUDA_ALLOC_CONF="garbage_collection_threshold:0.6")[1] == (
        "garbage_collection_threshold:0.6")
    # torch 2.9+ reads the new name first; an operator's value there must not be overridden either.
    assert _worker_start("gpu", PYTORCH_ALLOC_CONF="expandable_segments:False")[1] == "<unset>"
    # Only the worker that holds the models is configured.
    assert _worker_start("ingest")[1] == "<unset>"


def test_it_rejects_an_unknown_quantization_mode() -> None:
    environ = {**os.environ, "MODEL_QUANTIZATION": "int3"}
    done = subprocess.run([sys.executable, "-c", "from django.conf import settings; settings.MODEL_QUANTIZATION"],
                          cwd=ROOT, env={**environ, "DJANGO_SETTINGS_MODULE": "deepseek_web.settings"}, check=False,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "MODEL_QUANTIZATION must be none, int8 or int4" in done.stderr


@pytest.mark.parametrize(("mode", "kernel"), [("int8", "dequant"), ("int4", "dequant")])
def test_it_quantizes_the_worker_model(use_model: Any, tiny_model_dir: str, mode: str, kernel: str) -> None:
    from inference import runtime
    from inference.engine.quantization import quantization_summary

    # The CPU default dtype is fp32, where the dequantize path wins (see quantized_linear).
    use_model(tiny_model_dir, MODEL_QUANTIZATION=mode)
    engine = runtime.get_engine()
    # 2 layers x 7 projections; the output head stays in full precision by default.
    assert quantization_summary(engine.model) == {kernel: 14, "nn.Linear": 1}
    assert engine.generate(engine.chat_prompt([{"role": "user", "content": "Hi"}]))
