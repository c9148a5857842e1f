"""Run `parse_file` in a child process with CPU, memory, file and wall-clock limits.

Parser libraries are C code (PDFium, libxml2, zlib) fed hostile input: they can hang, balloon or crash.
In a child with rlimits the worst case is a dead child and a clear reason; the Celery worker survives.

`subprocess` rather than `multiprocessing`: Celery prefork workers are daemonic and may not start
multiprocessing children. The child is `python -m knowledge.ingest.sandbox PATH FORMAT ...`; it imports
neither Django nor torch, so it starts in a fraction of a second and its memory limit measures the parser.

Before anything else the child confines itself (`isolation.py`): no network, a read-only filesystem with
a private tmpfs workdir holding a copy of the upload, user nobody, no_new_privs, as far as the OS allows.

Protocol: the child prints one JSON object on stdout, either a ParsedDocument or {"error": reason} for an
IngestError, and exits 0. A MemoryError exits with EXIT_MEMORY. Anything else is a crash.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from knowledge.ingest import isolation
from knowledge.ingest.types import IngestError, ParsedDocument

# The directory that contains the `knowledge` package, so `-m knowledge.ingest.sandbox` imports from any cwd.
IMPORT_ROOT = Path(__file__).resolve().parents[2]
EXIT_MEMORY = 86
# Enough descriptors for the interpreter, the shared libraries and the open file; too few for mischief.
MAX_OPEN_FILES = 64
# The child needs a little memory to report its own MemoryError after the parser hit the limit.
_RESERVE_BYTES = 2 * 1024 * 1024
# The loaders cap a document's text at 20 M characters; its JSON stays well below this.
MAX_STDOUT_BYTES = 256 * 1024 * 1024
MAX_STDERR_BYTES = 64 * 1024
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
    returncode, stdout, stderr_bytes = _run_bounded(command, env, timeout_s)
    stderr = stderr_bytes.decode("utf-8", "replace")
    isolation.log_notes(stderr)
    if returncode == 0:
        try:
            data = json.loads(stdout)
        except ValueError:
            raise IngestError("The parser crashed: it returned output that is not JSON.") from None
        if isinstance(data, dict) and "error" in data:
            raise IngestError(str(data["error"]))
        return ParsedDocument.from_json(data)
    if returncode == EXIT_MEMORY:
        raise IngestError(_too_big(memory_mb))
    if returncode == -signal.SIGXCPU or (
        returncode == -signal.SIGKILL and _children_cpu() - cpu_before >= cpu_s
    ):
        raise IngestError(_too_slow(cpu_s))
    if returncode == -signal.SIGKILL or any(hint in stderr.lower() for hint in _MEMORY_HINTS):
        # SIGKILL without the CPU time used up is the kernel's OOM killer; C libraries that abort on a
        # failed allocation say so on stderr.
        raise IngestError(_too_big(memory_mb))
    # The stored file's path means nothing to the person reading the reason, and is none of their business.
    crash = (_crash_line(stderr, returncode).replace(os.path.abspath(path), "the file")
             .replace(str(isolation.WORKDIR / os.path.basename(path)), "the file"))
    raise IngestError(f"The parser crashed: {crash}")


def _run_bounded(command: list[str], env: dict[str, str], timeout_s: int) -> tuple[int, bytes, bytes]:
    """Like `subprocess.run(..., capture_output=True, timeout=timeout_s)`, with bounded buffers.

    `subprocess.run` keeps whatever the child writes; a child stuck in a loop that logs could fill the
    worker's memory within its CPU allowance. Here stdout is capped and only the tail of stderr is kept.
    """
    deadline = time.monotonic() + timeout_s
    stdout = bytearray()
    stderr = bytearray()
    with subprocess.Popen(
        command,
        cwd=IMPORT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        try:
            assert process.stdout is not None and process.stderr is not None
            with selectors.DefaultSelector() as selector:
                selector.register(process.stdout, selectors.EVENT_READ, stdout)
                selector.register(process.stderr, selectors.EVENT_READ, stderr)
                while selector.get_map():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise subprocess.TimeoutExpired(command, timeout_s)
                    for key, _ in selector.select(remaining):
                        piece = os.read(key.fd, 64 * 1024)
                        if not piece:
                            selector.unregister(key.fileobj)
                            continue
                        buffer: bytearray = key.data
                        buffer += piece
                        if buffer is stderr:
                            del buffer[:-MAX_STDERR_BYTES]
                        elif len(buffer) > MAX_STDOUT_BYTES:
                            process.kill()
                            raise IngestError(
                                "The parser crashed: it produced more output than a document can."
                            )
            returncode = process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise IngestError(_too_slow(timeout_s)) from None
        except BaseException:
            process.kill()  # never leave a child running behind an error of our own
            raise
    return returncode, bytes(stdout), bytes(stderr)


def _too_slow(seconds: int) -> str:
    return f"Parsing took longer than {seconds} s and was stopped (the file may be damaged or hostile)."


def _too_big(memory_mb: int) -> str:
    return f"Parsing needed more than {memory_mb} MiB of memory and was stopped."


def _crash_line(stderr: str, returncode: int) -> str:
    """The signal that killed the child, else the last line of its stderr (the exception, for Python)."""
    if returncode < 0:
        # Whatever stderr holds (a warning, say) was written before the crash and does not explain it.
        try:
            return f"killed by {signal.Signals(-returncode).name}."
        except ValueError:
            return f"killed by signal {-returncode}."
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and not line.startswith(isolation.NOTE_PREFIX)]
    return lines[-1][:500] if lines else f"exit status {returncode}."


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


def confine(path: str, memory_mb: int, cpu_s: int) -> str:
    """Isolation, then the limits (the copy into the workdir needs to write a file); returns the
    upload's path inside the sandbox. Also what `knowledge/tests/sandbox_probe.py` runs under."""
    confinement = isolation.confine(path)
    for line in isolation.note_lines(confinement):
        print(line, file=sys.stderr, flush=True)
    _limit_self(memory_mb, cpu_s)
    return confinement.path


def main(argv: list[str]) -> int:
    """The child: set limits, parse, print JSON. Returns the exit status."""
    path, fmt, memory_mb, cpu_s = argv[0], argv[1], int(argv[2]), int(argv[3])
    path = confine(path, memory_mb, cpu_s)
    # SIGXCPU's default action kills the process, which is what we want; make sure nothing inherited
    # a handler that would swallow it.
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    # Keep the real stdout for the JSON alone: whatever a C library prints there goes to stderr instead.
    result = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
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
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except MemoryError:
        return EXIT_MEMORY
    with result:
        result.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
