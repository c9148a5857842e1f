"""Concurrent streams through our engine, as the engine benches measure them (not run on its own).

Each prompt gets a thread that submits it and reads its deltas, as a chat turn's worker thread
does. Used by bench/gpu_generation.py and bench/cpu_engine.py, which put the repository root on
sys.path first.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from inference.engine.request import SamplingParams


def run_streams(engine: Any, prompts: list[list[int]], new: int) -> dict[str, float]:
    """Submit every prompt at once for `new` tokens each: output tok/s over the wall time, TTFT
    p50 and p99 (submit to first token), the median TPOT (after the first token) and the tokens."""
    results: list[tuple[float, float, float, int]] = []  # submitted, first token, finished, tokens
    lock = threading.Lock()

    def consume(prompt: list[int]) -> None:
        submitted = time.perf_counter()
        first = None
        handle = engine.submit(prompt, SamplingParams(max_new_tokens=new))
        count = 0
        for delta in handle:
            if first is None and delta.token_count:
                first = time.perf_counter()
            count = delta.token_count
            if delta.finished:
                if delta.finish_reason == "error":
                    raise RuntimeError(delta.error)
                break
        with lock:
            results.append((submitted, first or time.perf_counter(), time.perf_counter(), count))

    threads = [threading.Thread(target=consume, args=(p,)) for p in prompts]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    ttft = sorted((first - sub) * 1000 for sub, first, _, _ in results)
    tpot = [(end - first) / max(n - 1, 1) * 1000 for _, first, end, n in results]
    return {"tok_s": sum(n for *_, n in results) / wall, "ttft_p50": ttft[len(ttft) // 2],
            "ttft_p99": ttft[min(len(ttft) - 1, int(len(ttft) * 0.99))], "tpot_ms": statistics.median(tpot),
            "tokens": sum(n for *_, n in results)}
