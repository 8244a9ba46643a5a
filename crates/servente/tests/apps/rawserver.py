#!/usr/bin/env python3
"""A misbehaving HTTP server for servente's proxy failure tests (standard library only).

`rawserver.py MODE` listens on 127.0.0.1 (a free port), prints `listening 127.0.0.1:PORT`,
reads each request head and then, by MODE:
  hang      never answers (the connection stays open until the peer closes it)
  truncate  sends a head with Content-Length: 1000, 10 bytes of body, and closes
  stall     sends a head with Content-Length: 1000 and 10 bytes of body, then nothing more
            (the connection stays open until the peer closes it)
  garbage   sends bytes that are not an HTTP status line, and closes
"""

import socket
import sys
import threading


def read_head(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(4096)
        if not more:
            return None
        data += more
        if len(data) > 1 << 20:
            return None
    return data


def serve(conn, mode):
    try:
        if read_head(conn) is None:
            return
        if mode == "stall":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n0123456789")
        if mode in ("hang", "stall"):
            # Keep the connection open, and silent, until the peer gives up.
            while conn.recv(4096):
                pass
            return
        if mode == "truncate":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n0123456789")
        elif mode == "garbage":
            conn.sendall(b"this is not HTTP at all\r\n\r\n")
    except OSError:
        pass
    finally:
        conn.close()


def main():
    mode = sys.argv[1]
    assert mode in ("hang", "stall", "truncate", "garbage"), mode
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    print("listening 127.0.0.1:%d" % s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn, mode), daemon=True).start()


if __name__ == "__main__":
    main()
