#!/usr/bin/env python3
"""Resident memory of server processes, idle and while holding many idle keep-alive connections.

Used by bench/web-static/run; Python 3 standard library only.

  memory.py rss PID[,PID...]
      {"processes", "rss_kib", "pss_kib"} summed over the processes.
  memory.py hold --port P --count N --path /1k.bin --size BYTES PID[,PID...]
      Opens N TCP connections to 127.0.0.1:P, sends one HTTP/1.1 request on each and reads the
      whole response (checking status 200 and the body size), keeps them all open and idle, waits
      a moment, measures the processes' memory, checks how many connections the server still
      holds open, then closes them all.

RSS (VmRSS) is what the issue asks for; for a multi-process server such as nginx the sum of RSS
counts the shared pages (code, shared memory zones) once per process, so PSS (proportional set
size, from /proc/PID/smaps_rollup) is reported beside it.
"""

import argparse
import json
import resource
import selectors
import socket
import sys
import time


def read_kib(path, key):
    try:
        f = open(path)
    except FileNotFoundError:
        raise SystemExit(f"memory.py: {path} is gone: the server process exited") from None
    with f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in {path}")


def measure(pids):
    rss = sum(read_kib(f"/proc/{pid}/status", "VmRSS") for pid in pids)
    pss = sum(read_kib(f"/proc/{pid}/smaps_rollup", "Pss") for pid in pids)
    return {"processes": len(pids), "rss_kib": rss, "pss_kib": pss}


def read_response(sock, size):
    """Reads one HTTP/1.1 response; returns an error sentence or None."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return "connection closed before the response head"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "200":
        return f"status line {lines[0]!r}"
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length != size:
        return f"content-length {length}, expected {size}"
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return "connection closed inside the body"
        body += chunk
    if len(body) != length:
        return f"{len(body)} body bytes, expected {length}"
    return None


def hold(args, pids):
    # Each connection is a file descriptor here; the server needs as many on its side.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.count + 1000), hard))
    request = (f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n\r\n").encode()
    result = {"requested": args.count, "opened": 0, "open": 0, "closed_by_server": 0,
              "error": None}
    sockets = []
    started = time.monotonic()
    try:
        # One connection at a time: on loopback this takes a few seconds for 10,000, and it never
        # overflows a listen backlog, so a slow accept loop cannot turn into client-side retries.
        for _ in range(args.count):
            sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
            sockets.append(sock)
            sock.sendall(request)
            problem = read_response(sock, args.size)
            if problem:
                result["error"] = f"connection {len(sockets)}: {problem}"
                break
            result["opened"] += 1
    except OSError as error:
        result["error"] = f"after {len(sockets)} connections: {error}"
    result["seconds_to_open"] = round(time.monotonic() - started, 2)

    # Let the server settle (free per-request buffers, finish any lazy work) before measuring.
    time.sleep(args.settle)
    result.update(measure(pids))

    # A connection the server has closed is readable (EOF); an idle open one is not.
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    readable = {key.fileobj for key, _ in selector.select(timeout=0)}
    selector.close()
    result["closed_by_server"] = len(readable)
    result["open"] = len(sockets) - len(readable)
    if result["error"] is None and result["open"] != args.count:
        result["error"] = (f"only {result['open']} of {args.count} connections still open "
                           f"when measured")
    for sock in sockets:
        sock.close()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rss")
    p.add_argument("pids")
    p = sub.add_parser("hold")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--path", default="/1k.bin")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("pids")
    args = parser.parse_args()
    pids = [int(pid) for pid in args.pids.split(",") if pid]
    if args.command == "rss":
        print(json.dumps(measure(pids)))
    else:
        print(json.dumps(hold(args, pids)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
