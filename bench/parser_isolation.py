"""What the parser child's confinement costs per document: parse time with it, as a ratio to the same
child without it, measured in the same run.

Both run the real child (`python -B -m knowledge.ingest.sandbox`, started as `parse_in_child` starts it,
limits included); the baseline child replaces `isolation.confine` with a no-op before `main` runs. The
documents are the test samples (DOCX, XLSX, HTML, Markdown, CSV, PDF), each parsed --repeat times,
alternating with and without, so both see the same machine. Prints the median wall time of each, the
ratio (with / without) and the added milliseconds per document.

    .venv/bin/python bench/parser_isolation.py [--repeat 15]

Needs root and unshare for the confinement to do anything; it prints what the child could not do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINE = ("import sys; from knowledge.ingest import isolation, sandbox; "
            "isolation.confine = lambda path: isolation.Confinement(path=path); sys.exit(sandbox.main(sys.argv[1:]))")


def _run(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=True)
    elapsed = time.perf_counter() - started
    notes = [line for line in result.stderr.decode().splitlines() if line.startswith("dsw-sandbox: ")]
    if notes:
        print("\n".join(notes))
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    from knowledge.tests import samples

    folder = Path(tempfile.mkdtemp(prefix="dsw-bench-parse-"))
    documents = [(samples.write_docx(folder), "docx"), (samples.write_xlsx(folder), "xlsx"),
                 (samples.write_html(folder), "html"), (samples.write_md(folder), "md"),
                 (samples.write_csv(folder), "csv"), (samples.write_pdf(folder, ["A page of text."] * 3), "pdf")]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT),
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    confined: list[float] = []
    baseline: list[float] = []
    try:
        for _ in range(args.repeat):
            for path, fmt in documents:
                limits = [str(path), fmt, "1024", "30"]
                confined.append(_run([sys.executable, "-B", "-m", "knowledge.ingest.sandbox", *limits], env))
                baseline.append(_run([sys.executable, "-B", "-c", BASELINE, *limits], env))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    with_ms, without_ms = statistics.median(confined) * 1000, statistics.median(baseline) * 1000
    print(f"documents parsed: {len(confined)} each way ({len(documents)} formats x {args.repeat})")
    print(f"median per document: confined {with_ms:.1f} ms, unconfined {without_ms:.1f} ms")
    print(f"ratio confined / unconfined: {with_ms / without_ms:.3f} (+{with_ms - without_ms:.1f} ms a document)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
