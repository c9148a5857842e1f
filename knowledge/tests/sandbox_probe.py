"""Run as the parsing child is, under the same confinement, and report what it can reach: uid, network,
writes outside the workdir, the upload's copy. `test_sandbox_isolation.py` reads the JSON it prints.

    python -m knowledge.tests.sandbox_probe UPLOAD TCP_PORT UNIX_SOCKET OUTSIDE_DIR
"""

from __future__ import annotations

import json
import os
import socket
import sys

from knowledge.ingest import sandbox


def _attempt(action: str, *args: object) -> str:
    try:
        if action == "tcp":
            with socket.create_connection(("127.0.0.1", int(str(args[0]))), timeout=2):
                return "connected"
        if action == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
                unix.connect(str(args[0]))
                return "connected"
        if action == "create":
            os.close(os.open(str(args[0]), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return "created"
    except OSError as error:
        return error.__class__.__name__ + ": " + (error.strerror or str(error))
    raise ValueError(action)


def main(argv: list[str]) -> int:
    upload, port, unix_socket, outside = argv
    path = sandbox.confine(upload, 256, 10)
    with open("/proc/self/status", encoding="ascii") as status:
        no_new_privs = [line.split()[1] for line in status if line.startswith("NoNewPrivs:")]
    with open(path, "rb") as copy:
        content = copy.read().decode()
    report = {
        "uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(), "no_new_privs": no_new_privs,
        "cwd": os.getcwd(), "path": path, "content": content,
        "tcp": _attempt("tcp", port), "unix": _attempt("unix", unix_socket),
        "outside": _attempt("create", os.path.join(outside, "written-by-the-parser")),
        "workdir": _attempt("create", os.path.join(os.getcwd(), "scratch")),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
