"""Run `parse_file` in a child process with CPU, memory, file and wall-clock limits.

Parser libraries are C code (PDFium, libxml2, zlib) fed hostile input: they can hang, balloon or crash.
In a child with rlimits the worst case is a dead child and a clear reason; the Celery worker survives.

`subprocess` rather than `multiprocessing`: Celery prefork workers are daemonic and may not start
multiprocessing children. The child is `python -m knowledge.ingest.sandbox PATH FORMAT ...`; it imports
neither Django nor torch, so it starts in a fraction of a second and its memory limit measures the parser.

Protocol: the child prints one JSON object on stdout, either a ParsedDocument or {"error": reason} for an
IngestError, and exits 0. A MemoryError exits with EXIT_MEMORY. Anything else is a crash.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from knowledge.ingest.types import IngestError, ParsedDocument

# The directory that contains the `knowledge` package, so `-m knowledge.ingest.sandbox` imports from any cwd.
IMPORT_ROOT = Path(__file__).resolve().parents[2]
EXIT_MEMORY = 86
# Enough descriptors for the interpreter, the shared libraries and the open file; too few for mischief.
MAX_OPEN_FILES = 64
# The child needs a little memory to report its own MemoryError after the parser hit the limit.
_RESERVE_BYTES = 2 * 1024 * 1024
_MEMORY_HINTS = ("memoryerror", "out of memory", "cannot allocate memory", "bad_alloc", "allocation failed")


def parse_in_child(
    path: str, fmt: str, *, memory_mb: int = 1024, cpu_s: int = 30, timeout_s: int = 45
) -> ParsedDocument:
    """Parse `path` as `fmt` in a limited child process; raise IngestError with the reason if it fails."""
    command = [
        sys.executable,
        "-B",  # no .pyc writes: the child may not create files
        "-m",
        "knowledge.ingest.sandbox",
        os.path.abspath(path),
        fmt,
        str(memory_mb),
        str(cpu_s),
    ]
    # Limits are set by the child itself, first thing, before it imports a parser or opens the file. A
    # preexec_fn would do the same but is documented as unsafe in a process with threads (the worker may
    # have some), since it runs Python code between fork and exec.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(p for p in (str(IMPORT_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "PYTHONDONTWRITEBYTECODE": "1",
        # Single-threaded BLAS/OpenMP if some library pulls them in: threads reserve address space.
        "OMP_NUM_THREADS": "1",
    }
    cpu_before = _children_cpu()
    try:
        result = subprocess.run(
            command,
            cwd=IMPORT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise IngestError(_too_slow(timeout_s)) from None
    returncode = result.returncode
    stderr = result.stderr.decode("utf-8", "replace")
    if returncode == 0:
        try:
            data = json.loads(result.stdout)
        except ValueError:
            raise IngestError("The parser crashed: it returned output that is not JSON.") from None
        if "error" in data:
            raise IngestError(str(data["error"]))
        return ParsedDocument.from_json(data)
    if returncode == EXIT_MEMORY:
        raise IngestError(_too_big(memory_mb))
    if returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and _children_cpu() - cpu_before >= cpu_s):
        raise IngestError(_too_slow(cpu_s))
    if returncode == -signal.SIGKILL or any(hint in stderr.lower() for hint in _MEMORY_HINTS):
        # SIGKILL without the CPU time used up is the kernel's OOM killer; C libraries that abort on a
        # failed allocation say so on stderr.
        raise IngestError(_too_big(memory_mb))
    raise IngestError(f"The parser crashed: {_last_line(stderr, returncode)}")


def _too_slow(seconds: int) -> str:
    return f"Parsing took longer than {seconds} s and was stopped (the file may be damaged or hostile)."


def _too_big(memory_mb: int) -> str:
    return f"Parsing needed more than {memory_mb} MiB of memory and was stopped."


def _last_line(stderr: str, returncode: int) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if lines:
        return lines[-1][:500]
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}."
        except ValueError:
            return f"killed by signal {-returncode}."
    return f"exit status {returncode}."


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _limit_self(memory_mb: int, cpu_s: int) -> None:
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # The soft limit sends SIGXCPU; the hard one, a little later, SIGKILL in case SIGXCPU is ignored.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 2))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))


def _peak_memory_fraction(memory_mb: int) -> float:
    """This process's peak address-space size as a fraction of its limit (0.0 when unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmPeak:"):
                    return int(line.split()[1]) / (memory_mb * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def main(argv: list[str]) -> int:
    """The child: set limits, parse, print JSON. Returns the exit status."""
    path, fmt, memory_mb, cpu_s = argv[0], argv[1], int(argv[2]), int(argv[3])
    _limit_self(memory_mb, cpu_s)
    # SIGXCPU's default action kills the process, which is what we want; make sure nothing inherited
    # a handler that would swallow it.
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    reserve: bytearray | None = bytearray(_RESERVE_BYTES)
    try:
        from knowledge.ingest.loaders import parse_file

        payload = parse_file(path, fmt).to_json()
    except IngestError as error:
        payload = {"error": str(error)}
    except MemoryError:
        reserve = None  # hand the headroom back so the exit path can run
        return EXIT_MEMORY
    except Exception:
        reserve = None
        # C code that fails an allocation does not always say so; having come close to the address-space
        # limit is the tell. Otherwise let the traceback reach stderr: the parent reports its last line.
        if _peak_memory_fraction(memory_mb) >= 0.8:
            return EXIT_MEMORY
        raise
    del reserve
    try:
        text = json.dumps(payload, ensure_ascii=True)
    except MemoryError:
        return EXIT_MEMORY
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
