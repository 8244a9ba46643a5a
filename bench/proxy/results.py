#!/usr/bin/env python3
"""Check wrk runs of bench/proxy/run and print its report.

Used by bench/proxy/run; Python 3 standard library only. Each run is checked by the same code as
bench/web-static (its results.py's parse_wrk: wrk's non-2xx count, socket errors, bytes per
response), so a fast error page is an error, never a figure.

  results.py wrk OUTPUT_FILE --size BYTES --head-bytes H --connections C [--exit-status S] [--labels JSON]
      -> one JSON object (the labels plus the checked result) on stdout, a progress line on stderr
  results.py size PORT PATH   -> "STATUS HEAD_BYTES BODY_BYTES" of one response, as on the wire
  results.py report RESULTS_JSONL META_JSON OUT_JSON   -> table on stdout, JSON file; exit 1 on errors
"""

import argparse
import importlib.util
import json
import socket
import statistics
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "web_static_results", Path(__file__).resolve().parent.parent / "web-static" / "results.py")
_web_static = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_web_static)
parse_wrk = _web_static.parse_wrk
fmt_rps = _web_static.fmt_rps
cpu_per_request = _web_static.cpu_per_request
OTHER_CPU_WARN = _web_static.OTHER_CPU_WARN

# What the issue asks of servente as a reverse proxy, against nginx with the shared config.
TARGET = 1.0
GOAL = 1.2


def wire_size(port, path):
    """Sends wrk's own request (GET, Host only, keep-alive) to 127.0.0.1:PORT and returns the
    status and the bytes of the response head and body exactly as they came over the wire: chunk
    framing included (a PHP page comes chunked), which is what wrk counts and curl does not."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        data = b""

        def need(n):
            nonlocal data
            while len(data) < n:
                more = sock.recv(65536)
                if not more:
                    raise ValueError(f"connection closed after {len(data)} bytes")
                data += more

        def line_end(start):
            while (end := data.find(b"\r\n", start)) < 0:
                need(len(data) + 1)
            return end

        while (head_end := data.find(b"\r\n\r\n")) < 0:
            need(len(data) + 1)
        head = data[:head_end + 4]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                fields[name.strip().lower()] = value.strip().lower()
        pos = len(head)
        if "chunked" in fields.get("transfer-encoding", ""):
            while True:
                end = line_end(pos)
                size = int(data[pos:end].split(b";")[0], 16)
                pos = end + 2
                if size == 0:
                    break
                need(pos + size + 2)
                pos += size + 2
            while True:  # trailer fields, up to the empty line
                end = line_end(pos)
                empty = end == pos
                pos = end + 2
                if empty:
                    break
        elif "content-length" in fields:
            pos += int(fields["content-length"])
            need(pos)
        else:
            raise ValueError("response has neither Content-Length nor chunked framing")
        return status, len(head), pos - len(head)


def summarize(results, part, servers):
    """Median req/s per server of one part ("proxy" or "php"), with the spread of the rounds."""
    out = {}
    for server in servers:
        runs = [r for r in results if r["part"] == part and r["server"] == server]
        if not runs:
            continue
        good = [r["rps"] for r in runs if r["error"] is None]
        errors = [r["error"] for r in runs if r["error"] is not None]
        median = statistics.median(good) if good and not errors else None
        spread = ((max(good) - min(good)) / 2 / median * 100) if median else None
        counted = [r for r in runs if r.get("upstream_connections") is not None and r.get("requests")]
        opened = [r["upstream_connections"] for r in counted]
        share = [r["upstream_connections"] / r["requests"] for r in counted]
        # CPU the server itself spent per answered request, in microseconds.
        cpu = [c for c in (cpu_per_request(r) for r in runs if r["error"] is None) if c is not None]
        out[server] = {"median_rps": median, "rounds_rps": good, "spread_pct": spread,
                       "errors": errors, "cpu_us_per_request": statistics.median(cpu) if cpu else None,
                       "upstream_connections_opened": statistics.median(opened) if opened else None,
                       "upstream_connections_per_request": statistics.median(share) if share else None}
    own = out.get("servente", {}).get("median_rps")
    theirs = out.get("nginx", {}).get("median_rps")
    return {"servers": out, "servente_over_nginx": (own / theirs) if own and theirs else None}


def cell(info):
    text = fmt_rps(info["median_rps"])
    if len(info["rounds_rps"]) > 1 and info["median_rps"]:
        text += f" ±{info['spread_pct']:.0f}%"
    return text


def print_part(title, command, summary, labels, rounds, verdict):
    print()
    print(f"== {title}: {command}")
    spread = ", ± half the min-max range" if rounds > 1 else ""
    print(f"   (load generator and servers share the cores; median req/s of {rounds} round(s){spread})")
    counted = any(info.get("upstream_connections_opened") is not None
                  for info in summary["servers"].values())
    print(f"   {'':<40}{'req/s':>16}{'CPU µs/request':>16}"
          + (f"{'new upstream connections per run':>36}" if counted else ""))
    for server, label in labels:
        info = summary["servers"].get(server)
        if info is not None:
            opened = info.get("upstream_connections_opened")
            share = info.get("upstream_connections_per_request")
            extra = (f"{f'{opened:.0f} ({share * 100:.1f}% of requests)':>36}" if opened is not None
                     else (f"{'-':>36}" if counted else ""))
            cpu = info.get("cpu_us_per_request")
            print(f"   {label:<40}{cell(info):>16}{(f'{cpu:.1f}' if cpu else '-'):>16}{extra}")
    ratio = summary["servente_over_nginx"]
    own_cpu = summary["servers"].get("servente", {}).get("cpu_us_per_request")
    their_cpu = summary["servers"].get("nginx", {}).get("cpu_us_per_request")
    cpu_ratio = f"{their_cpu / own_cpu:.2f}x" if own_cpu and their_cpu else "-"
    line = f"   {'servente/nginx':<40}{(f'{ratio:.2f}x' if ratio else '-'):>16}{cpu_ratio:>16}"
    if verdict and ratio:
        if ratio >= GOAL:
            line += f"   (goal {GOAL:.1f}x reached)"
        elif ratio >= TARGET:
            line += f"   (target {TARGET:.1f}x reached, goal {GOAL:.1f}x not yet)"
        else:
            line += f"   (BELOW the target {TARGET:.1f}x; goal {GOAL:.1f}x)"
    print(line)


def report(args):
    with open(args.results) as f:
        results = [json.loads(line) for line in f if line.strip()]
    with open(args.meta) as f:
        meta = json.load(f)
    rounds = meta["rounds"]

    proxy = summarize(results, "proxy", ["upstream", "servente", "nginx"])
    print_part("Reverse proxy, HTTP/1.1 keep-alive", meta["proxy_wrk_command"], proxy, [
        ("upstream", "upstream (nginx) directly, :19000"),
        ("servente", "servente -> upstream, :18091"),
        ("nginx", "nginx -> upstream, :18090"),
    ], rounds, verdict=True)

    php = None
    if meta.get("php_servente_unavailable") is not None or any(r["part"] == "php" for r in results):
        php = summarize(results, "php", ["servente", "nginx"])
        print_part(f"PHP through php-fpm ({meta['php_children']} children)",
                   meta["php_wrk_command"], php, [
                       ("servente", "servente -> php-fpm, :18093"),
                       ("nginx", "nginx -> php-fpm, :18092"),
                   ], rounds, verdict=False)
        if meta.get("php_servente_unavailable"):
            print(f"   php: servente FastCGI not available: {meta['php_servente_unavailable']}")

    errors = [f"{r['part']} {r['server']} round {r['round']}: {r['error']}"
              for r in results if r["error"] is not None]
    notes = list(meta.get("notes", []))
    # nginx-proxy.conf (shared, used as it is) and nginx-php.conf (written in its style) listen
    # without reuseport: how the kernel spread wrk's connections over nginx's workers decides
    # whether nginx served them on one core or on both.
    for part, server in (("proxy", "nginx"), ("php", "nginx")):
        spreads = [r["connections_per_worker"] for r in results
                   if r["part"] == part and r["server"] == server and r.get("connections_per_worker")]
        lopsided = [x for x in spreads if "+" not in x]
        if spreads and meta["machine"]["cores"] > 1:
            notes.append(
                f"{part}: wrk's connections per nginx worker, halfway through each run: "
                f"{', '.join(spreads)}. " + (
                    f"In {len(lopsided)} of {len(spreads)} runs one worker held them all and served "
                    "them on one core (which helps or hurts depending on what else needs the CPU: "
                    "the upstream, php-fpm): nginx's configs listen without `reuseport`, as the "
                    "shared one does, so which worker accepts is up to the kernel; servente's "
                    "per-core listeners use SO_REUSEPORT." if lopsided else
                    "Both workers had connections in every run."))
    for server in ("servente", "nginx"):
        share = proxy["servers"].get(server, {}).get("upstream_connections_per_request")
        if share is not None and share > 0.01:
            notes.append(
                f"{server} opened a new upstream connection for {share * 100:.0f}% of the requests "
                "(median of the rounds): it does not keep its upstream connections alive, so its "
                "figure includes a TCP connect and close for those requests. (nginx opens a few "
                "hundred per run: its upstream keepalive_requests, 1000 by default, closes a "
                "connection after 1000 requests.)")
    others = [r["other_cpu_percent"] for r in results if r.get("other_cpu_percent") is not None]
    disturbed = [r for r in results if (r.get("other_cpu_percent") or 0) >= OTHER_CPU_WARN]
    if others:
        notes.append(f"Other processes on the machine used {statistics.mean(others):.1f}% of the "
                     f"CPU on average during the runs (at most {max(others):.1f}%); "
                     f"{len(disturbed)} of {len(others)} runs had {OTHER_CPU_WARN}% or more"
                     + (": " + ", ".join(f"{r['part']} {r['server']} round {r['round']} "
                                         f"({r['other_cpu_percent']:.0f}%)"
                                         for r in disturbed[:12])
                        + (" ..." if len(disturbed) > 12 else "") if disturbed else "") + ".")
    if notes:
        print()
        print("== Notes")
        for note in notes:
            print(f"   - {note}")
    if errors:
        print()
        print(f"== {len(errors)} ERROR(S): these runs are errors, not results")
        for error in errors:
            print(f"   {error}")

    summary = {"proxy": proxy}
    if php is not None:
        summary["php"] = php
    document = {**meta, "notes": notes, "summary": summary, "runs": results, "errors": errors}
    with open(args.out, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    print()
    print(f"JSON written to {args.out}")
    return 1 if errors else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wrk")
    p.add_argument("output")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--head-bytes", type=int, required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--exit-status", type=int, default=0)
    p.add_argument("--labels", default="{}", help="JSON object merged into the result")
    p = sub.add_parser("size")
    p.add_argument("port", type=int)
    p.add_argument("path")
    p = sub.add_parser("report")
    p.add_argument("results")
    p.add_argument("meta")
    p.add_argument("out")
    args = parser.parse_args()

    if args.command == "report":
        return report(args)
    if args.command == "size":
        try:
            print(*wire_size(args.port, args.path))
        except (OSError, ValueError) as e:
            print(f"results.py size: {e}", file=sys.stderr)
            return 1
        return 0
    with open(args.output, errors="replace") as f:
        text = f.read()
    result = parse_wrk(text, args.size, args.head_bytes, args.connections)
    if args.exit_status != 0:
        # 124 is timeout(1) stopping a run that hung; anything else is wrk's own failure.
        tail = " | ".join(text.strip().splitlines()[-2:])
        reason = f"wrk exited with status {args.exit_status}: {tail}"
        result["error"] = reason + (f"; {result['error']}" if result["error"] else "")
        result["rps"] = None
    result = {**json.loads(args.labels), **result}
    # Behind a proxy, every response must have come from the upstream (its request counter).
    upstream = result.get("upstream_requests")
    if upstream is not None and result.get("requests") and upstream < result["requests"]:
        problem = (f"the upstream served {upstream} requests, fewer than the {result['requests']} "
                   "responses wrk counted: answers did not come from the upstream")
        result["error"] = f"{result['error']}; {problem}" if result["error"] else problem
        if result["rps"] is not None:
            result["rps_unchecked"], result["rps"] = result["rps"], None
    progress = (f"{result['rps']:>10.0f} req/s" if result["error"] is None
                else f"ERROR: {result['error']}")
    if result.get("connections_per_worker"):
        progress += f"  (connections per worker: {result['connections_per_worker']})"
    if result.get("upstream_connections") is not None:
        progress += f"  ({result['upstream_connections']} upstream connections opened)"
    other = result.get("other_cpu_percent")
    if other is not None and other >= OTHER_CPU_WARN:
        progress += f"  (other processes used {other:.0f}% of the CPU)"
    print(f"  round {result.get('round', '?')}: {result.get('part', ''):<6} "
          f"{result.get('server', ''):<9} {progress}", file=sys.stderr, flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
