"""CPU engine: the bundled SmolLM2-135M on this machine's cores, our engine against plain `generate`.

Plain `generate` serves one request at a time (the baseline, measured in the same run); the engine
serves 1 and 8 concurrent streams, through each batching mode named in --batching: "static" (our slot
cache, the default for Llama-family models) and "continuous" (transformers' batching manager).
The model loads and the baseline runs on a thread of their own, which ends before the engines
start, as in the gpu worker: see StaticBatcher.call for why a second thread computing with torch
would slow the engine's thread. Every request has the same chat
prompt and generates exactly --new-tokens tokens (end-of-sequence is ignored via min_new_tokens
for the baseline and a stop-free, length-bound request for the engine). It prints output tok/s,
TTFT p50 and TPOT, and the engine's tok/s as a ratio to the baseline's.

Run (after `./dsw run` or `./dsw test` has installed the venv and converted the model once):
    .venv/bin/python bench/cpu_engine.py [--streams 1 8] [--new-tokens 64] [--batching static continuous]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine_streams import run_streams

from inference.engine import Engine, SamplingParams, default_model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batching", nargs="+", default=["static", "continuous"])
    args = parser.parse_args()
    import torch

    from inference.engine import load_model

    data = Path(os.environ.get("DSW_DATA_DIR", Path(__file__).resolve().parent.parent / "var"))
    loaded: dict[str, Any] = {}

    def load_and_time_plain_generate() -> None:
        # On a short-lived thread, as the gpu worker loads: torch gives each thread that computes
        # an OpenMP team, and with a second team alive every CPU step slows down (StaticBatcher.call).
        model, tokenizer = load_model(default_model_dir(data / "models"))
        engine = Engine.from_model(model, tokenizer, batching="simple")
        prompt = engine.chat_prompt([{"role": "user", "content": "Write a short story about a lighthouse keeper."}])
        engine.close()
        ids = torch.tensor([prompt])
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or 0)
        loaded.update(model=model, tokenizer=tokenizer, prompt=prompt, seconds=time.perf_counter() - t0,
                      tokens=out.shape[1] - len(prompt))

    thread = threading.Thread(target=load_and_time_plain_generate)
    thread.start()
    thread.join()
    model, tokenizer, prompt, seconds = loaded["model"], loaded["tokenizer"], loaded["prompt"], loaded["seconds"]
    baseline = loaded["tokens"] / seconds
    print(f"SmolLM2-135M on {os.cpu_count()} CPUs, torch {torch.__version__}; prompt {len(prompt)} tokens,"
          f" {args.new_tokens} new tokens per request", flush=True)
    print(f"{'setup':<24}{'streams':>8}{'tok/s':>9}{'ratio':>8}{'TTFT p50 ms':>13}{'TPOT ms':>9}")
    print(f"{'plain generate':<24}{1:>8}{baseline:>9.1f}{1.0:>7.2f}x{'':>13}{seconds / args.new_tokens * 1000:>9.1f}")

    for batching, streams in [(b, s) for b in args.batching for s in args.streams]:
        engine = Engine.from_model(model, tokenizer, batching=batching, max_batch=max(args.streams))
        engine.generate(prompt, SamplingParams(max_new_tokens=4))  # warm-up
        # No stop strings and greedy decoding; an end-of-sequence token may still end a request
        # early, so tok/s counts what was generated.
        result = run_streams(engine, [prompt] * streams, args.new_tokens)
        tok_s, ttft, tpot = result["tok_s"], result["ttft_p50"], result["tpot_ms"]
        print(f"{'our engine, ' + batching:<24}{streams:>8}{tok_s:>9.1f}{tok_s / baseline:>7.2f}x{ttft:>13.1f}"
              f"{tpot:>9.1f}", flush=True)
        engine.close()


if __name__ == "__main__":
    main()
