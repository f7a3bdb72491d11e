"""Peak memory of a gateway taking one batch file upload (issue 27 item 5: an upload is streamed to the store).

Starts a gateway on SQLite (the sluice on PYTHONPATH), uploads a file of N MB of JSONL (Content-Length,
sent in 1 MiB writes) and prints the gateway's peak RSS (VmHWM) before and after, and the growth.

    PYTHONPATH=$PWD python bench/batch_upload_rss.py 100
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import start_gateway  # noqa: E402


def hwm(pid: int) -> int:
    """Peak resident set of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def main(mb: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        g = start_gateway(Path(tmp), upstreams=[{"name": "sim", "base_url": "http://127.0.0.1:9/v1"}],
                          models=[{"name": "m", "upstream": "sim"}],
                          identities=[{"name": "app", "owner": "a@example.com", "models": ["m"]}])
        try:
            pid = g.proc.popen.pid
            line = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "m", "messages": [{"role": "user", "content": "y" * 2600}]}})
            n = mb * 1024 * 1024 // (len(line) + 20)
            head = (b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b\r\n"
                    b"Content-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\r\n")
            body = head + b"".join(line.replace('"x"', f'"c{i}"', 1).encode() + b"\n" for i in range(n)) + b"\r\n--b--\r\n"
            size = len(body)
            before = hwm(pid)
            with socket.create_connection(("127.0.0.1", g.port), timeout=300) as s:
                s.sendall(f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {g.keys['app']}\r\n"
                          f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {size}\r\n\r\n".encode())
                for at in range(0, size, 1 << 20):
                    s.sendall(body[at:at + (1 << 20)])
                answer = s.recv(65536).decode("latin-1")
            after = hwm(pid)
            print(f"upload {size / 1e6:.1f} MB: {answer.splitlines()[0]}")
            print(f"peak RSS before {before / 1024:.1f} MiB, after {after / 1024:.1f} MiB, growth {(after - before) / 1024:.1f} MiB")
        finally:
            g.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
