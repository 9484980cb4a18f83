#!/usr/bin/env python3
"""Serve a big temp file through the sidecar to local readers; print MiB/s and this process's peak RSS.

    .venv/bin/python scripts/bench_sidecar.py                 # 1 GiB complete hit, then as a growing file
    .venv/bin/python scripts/bench_sidecar.py --size 256 --readers 4 --fallback

Readers are separate processes (plain blocking sockets, 1 MiB reads), so the RSS shown is the server's
alone: a complete hit is sent with sendfile, a growing file is written here in 64 KiB chunks (about what
mitmproxy's tee sees) while the readers follow it. Linux only (/proc/self/status).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fwdproxy.bodysource import BodySource, FileBody, GrowingBody, Progress  # noqa: E402
from fwdproxy.sidecar import Sidecar, response_head  # noqa: E402

MiB = 1024 * 1024
BLOCK = os.urandom(4 * MiB)
"""The file is this block repeated: real pages, not a sparse hole, at the cost of some compressibility."""
CHUNK = 64 * 1024


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    except OSError:
        return False
    return True


def read(port: int, token: str, verify: bool) -> None:
    """Reader process: GET the token, drain the body, print seconds, bytes and (optionally) sha256."""
    started = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"GET /{token} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    buf = bytearray(MiB)
    view = memoryview(buf)
    data = b""
    while b"\r\n\r\n" not in data:
        n = sock.recv_into(buf)
        if not n:
            raise SystemExit("closed before the head ended")
        data += bytes(view[:n])
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(v)
        for k, _, v in (h.partition(b":") for h in head.split(b"\r\n"))
        if k.lower() == b"content-length"
    )
    digest = hashlib.sha256(rest) if verify else None
    got = len(rest)
    while got < length:
        n = sock.recv_into(buf, min(MiB, length - got))
        if not n:
            break
        if digest:
            digest.update(view[:n])
        got += n
    print(time.perf_counter() - started, got, digest.hexdigest() if digest else "-", flush=True)


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = BLOCK[: min(left, len(BLOCK))]
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


async def run_readers(port: int, tokens: list[str], verify: bool) -> list[tuple[float, int, str]]:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            f"--read={port}/{t}",
            *(["--verify"] if verify else []),
            stdout=asyncio.subprocess.PIPE,
        )
        for t in tokens
    ]
    results = []
    for p in procs:
        out, _ = await p.communicate()
        if p.returncode:
            raise SystemExit(f"a reader failed (exit {p.returncode})")
        seconds, got, digest = out.decode().split()
        results.append((float(seconds), int(got), digest))
    return results


async def grow(path: Path, progress: Progress, size: int) -> None:
    """The leader's side: unbuffered 64 KiB writes, advance after each, let the loop run between."""
    with open(path, "ab", buffering=0) as f:
        done = 0
        while done < size:
            n = min(CHUNK, size - done)
            offset = done % len(BLOCK)  # CHUNK divides the block: a chunk never wraps
            f.write(memoryview(BLOCK)[offset : offset + n])
            done += n
            progress.advance(done)
            await asyncio.sleep(0)
    progress.finish(True)


async def bench(kind: str, args: argparse.Namespace, directory: Path) -> None:
    size = args.size * MiB
    path = directory / f"{kind}.body"
    expected = make_file(path, size) if kind == "complete" else None
    if kind == "growing":
        path.touch()
    sidecar = Sidecar()
    port = await sidecar.start()
    progress = Progress(length=size)
    head = response_head(
        200, "OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))]
    )
    sources: list[BodySource] = [
        FileBody(str(path)) if kind == "complete" else GrowingBody(str(path), progress)
        for _ in range(args.readers)
    ]
    tokens = [sidecar.offer(head, s) for s in sources]
    rss0 = status_kib("VmRSS")
    exact_peak = reset_peak()
    readers = asyncio.create_task(run_readers(port, tokens, args.verify))
    if kind == "growing":
        # Followers are parked on the empty file before the leader writes, so they time the whole body.
        while sidecar.stats.transfers_active < args.readers and not readers.done():
            await asyncio.sleep(0.01)
        await grow(path, progress, size)
    results = await readers
    slowest = max(s for s, _, _ in results)
    peak = status_kib("VmHWM") if exact_peak else status_kib("VmRSS")
    await sidecar.close()
    if kind == "growing" and args.verify:
        with open(path, "rb") as f:
            expected = hashlib.file_digest(f, "sha256").hexdigest()
    path.unlink()
    for _, got, digest in results:
        assert got == size, f"a reader got {got} of {size} bytes"
        assert not args.verify or digest == expected, "a reader got different bytes"
    rates = [size / MiB / s for s, _, _ in results]
    print(
        f"{kind:9} {'fallback' if args.fallback else 'sendfile':8} {args.readers} reader(s) x {args.size} MiB: "
        f"{min(rates):.0f}-{max(rates):.0f} MiB/s per reader, {args.readers * size / MiB / slowest:.0f} MiB/s total; "
        f"server RSS {rss0 / 1024:.1f} MiB idle, peak {peak / 1024:.1f} MiB "
        f"(+{(peak - rss0) / 1024:.1f}{'' if exact_peak else ', sampled'})"
        f"{', sha256 verified' if args.verify else ''}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--kind", choices=["complete", "growing", "both"], default="both")
    parser.add_argument("--fallback", action="store_true", help="no os.sendfile: asyncio's read/write path")
    parser.add_argument("--verify", action="store_true", help="readers hash what they get (costs reader CPU)")
    parser.add_argument("--read", metavar="PORT/TOKEN", help=argparse.SUPPRESS)  # tokens may start with "-"
    args = parser.parse_args()
    if args.read:
        port, _, token = args.read.partition("/")
        read(int(port), token, args.verify)
        return
    if args.fallback:
        del os.sendfile  # asyncio then takes its read/write fallback
    with tempfile.TemporaryDirectory(prefix="bench-sidecar-") as tmp:
        for kind in ["complete", "growing"] if args.kind == "both" else [args.kind]:
            asyncio.run(bench(kind, args, Path(tmp)))


if __name__ == "__main__":
    main()
