#!/usr/bin/env python3
"""Parse wrk and h2load output into checked results, and print the final report.

Used by bench/web-static/run; Python 3 standard library only.

  results.py wrk OUTPUT_FILE --size BYTES --head-bytes H --connections C [--exit-status S] [--labels JSON]
  results.py h2load OUTPUT_FILE --size BYTES --requests N [--exit-status S] [--labels JSON]
      -> one JSON object (the labels plus the checked result) on stdout, a progress line on stderr
  results.py report RESULTS_JSONL MEMORY_JSON META_JSON OUT_JSON   -> table on stdout, JSON file

A parse result always has "rps" (a number, or null) and "error" (null, or a sentence saying why the
run is not a result). A fast 404, a short body or a dropped connection is an error, never a figure:
that is the whole point of checking every run.
"""

import argparse
import json
import re
import statistics
import sys

# Slack in bytes around the response head size measured with curl before the runs (header values
# such as Date have a fixed length, but a server may vary a little with the request's headers).
HEAD_SLACK = 8
# A run during which other processes (builds, tests) took this share of all cores' time, in
# percent, is flagged: its figure is probably low.
OTHER_CPU_WARN = 5



def checked(result, problems, rps):
    """A run's figure, or its error: a run that failed a check never counts as a result."""
    if problems:
        result["error"] = "; ".join(problems)
        # Kept in the JSON for diagnosis only; never shown as a result.
        result["rps_unchecked"] = rps
    else:
        result["rps"] = rps
    return result

def parse_wrk(text, size, head, connections):
    """Checks one wrk run (with report.lua) and returns its requests/s, or an error.

    size is the body and head the response head size in bytes of one response."""
    result = {"rps": None, "error": None}
    problems = []

    match = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    line = re.search(r"^WRKRESULT (.*)$", text, re.M)
    if not match or not line:
        return {**result, "error": "wrk output not understood (no Requests/sec or WRKRESULT line)"}
    fields = dict(item.split("=") for item in line.group(1).split())
    counts = {key: int(value) for key, value in fields.items()}
    result.update(counts)

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non2xx:
        problems.append(f"{non2xx.group(1)} responses had a 4xx/5xx status")
    elif counts["status"]:
        problems.append(f"{counts['status']} responses had a 4xx/5xx status")
    socket_errors = {k: counts[k] for k in ("connect", "read", "write", "timeout") if counts[k]}
    if socket_errors:
        problems.append(f"socket errors {socket_errors}")
    requests = counts["requests"]
    if requests == 0:
        problems.append("no request completed")
    elif problems:
        # Error responses have their own sizes, so the byte count would only blur the message.
        problems.append("bytes per response not checked")
    else:
        # wrk's byte count covers every byte read, including the partial responses still in flight
        # when the run stops (at most one per connection): the lower bound is strict, the upper
        # bound allows for those. A body shorter than its Content-Length would also break wrk's
        # framing of the next response, which shows up as read errors or timeouts.
        per_request = counts["bytes"] / requests
        result["bytes_per_request"] = round(per_request, 1)
        expected = size + head
        low = expected - HEAD_SLACK
        high = expected + HEAD_SLACK + connections * expected / requests
        if not low <= per_request <= high:
            problems.append(
                f"{per_request:.0f} bytes per response, expected {expected} ({size} body bytes "
                f"and a {head} byte head): wrong response size")
    return checked(result, problems, float(match.group(1)))


def parse_h2load(text, size, requests):
    """Checks one h2load -n run and returns its requests/s, or an error."""
    result = {"rps": None, "error": None}
    problems = []

    finished = re.search(r"^finished in [^,]+, ([0-9.]+) req/s", text, re.M)
    counts = re.search(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout", text, re.M)
    codes = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    traffic = re.search(r"^traffic: .*\((\d+)\) data", text, re.M)
    if not (finished and counts and codes and traffic):
        tail = " | ".join(text.strip().splitlines()[-3:])
        return {**result, "error": f"h2load output not understood: {tail}"}

    total, _started, done, succeeded, failed, errored, timeout = map(int, counts.groups())
    ok2xx, s3xx, s4xx, s5xx = map(int, codes.groups())
    data = int(traffic.group(1))
    for key in ("TLS Protocol", "Cipher", "Application protocol"):
        found = re.search(rf"^{key}: (.*)$", text, re.M)
        result[key.lower().replace(" ", "_")] = found.group(1).strip() if found else None
    result.update(done=done, succeeded=succeeded, failed=failed, errored=errored,
                  timeout=timeout, status_2xx=ok2xx, data_bytes=data)

    if result["application_protocol"] != "h2":
        problems.append(f"negotiated {result['application_protocol']!r}, not h2")
    if done != requests or succeeded != requests:
        problems.append(f"{done} done and {succeeded} succeeded of {requests} requested")
    if failed or errored or timeout:
        problems.append(f"{failed} failed, {errored} errored, {timeout} timed out")
    if ok2xx != requests or s3xx or s4xx or s5xx:
        problems.append(f"status codes: {ok2xx} 2xx, {s3xx} 3xx, {s4xx} 4xx, {s5xx} 5xx "
                        f"for {requests} requests")
    # In -n mode every response is complete, so the body bytes must add up exactly.
    if data != requests * size:
        problems.append(f"{data} body bytes for {requests} responses of {size} bytes: "
                        f"wrong response size")
    return checked(result, problems, float(finished.group(1)))


def fmt_rps(value):
    if value is None:
        return "ERROR"
    if value >= 10000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def cpu_per_request(run):
    """The server's own CPU time (user + system) per answered request, in microseconds."""
    seconds = run.get("server_cpu_seconds")
    requests = run.get("requests", run.get("done"))
    return seconds * 1e6 / requests if seconds is not None and requests else None


def summarize(results, servers, protocols, files):
    """Median req/s per (view, protocol, file, server), with the spread of the rounds."""
    summary = []
    views = sorted({r["view"] for r in results}, key=lambda v: v != "shared")
    for view in views:
        for proto in protocols:
            for name in files:
                row = {"view": view, "protocol": proto, "file": name, "servers": {}}
                for server in servers:
                    runs = [r for r in results if (r["view"], r["protocol"], r["file"],
                                                   r["server"]) == (view, proto, name, server)]
                    if not runs:
                        continue
                    good = [r["rps"] for r in runs if r["error"] is None]
                    errors = [r["error"] for r in runs if r["error"] is not None]
                    median = statistics.median(good) if good and not errors else None
                    spread = ((max(good) - min(good)) / 2 / median * 100) if median else None
                    cpu = [cpu_per_request(r) for r in runs if r["error"] is None]
                    cpu = [c for c in cpu if c is not None]
                    row["servers"][server] = {
                        "median_rps": median, "rounds_rps": good, "spread_pct": spread,
                        "errors": errors,
                        "median_cpu_us": statistics.median(cpu) if cpu and not errors else None}
                own = row["servers"].get("servente", {}).get("median_rps")
                own_cpu = row["servers"].get("servente", {}).get("median_cpu_us")
                for peer in servers[1:]:
                    theirs = row["servers"].get(peer, {}).get("median_rps")
                    row[f"servente_over_{peer}"] = (own / theirs) if own and theirs else None
                    their_cpu = row["servers"].get(peer, {}).get("median_cpu_us")
                    # Above 1.0 servente spends less CPU per request than the peer.
                    row[f"cpu_{peer}_over_servente"] = (
                        their_cpu / own_cpu if own_cpu and their_cpu else None)
                summary.append(row)
    return summary


def print_table(summary, meta, servers):
    headers = {"h1": f"HTTP/1.1 keep-alive: {meta['wrk_command']}",
               "h2": f"HTTP/2 over TLS: {meta['h2load_command']}"}
    views = {"shared": "load generator and server share both cores",
             "pinned": "server pinned to CPU 0, load generator to CPU 1"}
    last = None
    for row in summary:
        key = (row["view"], row["protocol"])
        if key != last:
            last = key
            print()
            print(f"== {headers[row['protocol']]}")
            spread = ", ± half the min-max range" if meta["rounds"] > 1 else ""
            print(f"   ({views[row['view']]}; median req/s of {meta['rounds']} round(s){spread})")
            names = [s for s in servers if s in row["servers"]]
            line = f"   {'file':<9}" + "".join(f"{s:>16}" for s in names)
            line += "".join(f"{'servente/' + p:>17}" for p in names[1:])
            print(line)
        cells = []
        for server in names:
            info = row["servers"][server]
            cell = fmt_rps(info["median_rps"])
            if len(info["rounds_rps"]) > 1 and info["median_rps"]:
                cell += f" ±{info['spread_pct']:.0f}%"
            cells.append(cell)
        line = f"   {row['file']:<9}" + "".join(f"{c:>16}" for c in cells)
        for peer in names[1:]:
            ratio = row.get(f"servente_over_{peer}")
            line += f"{(f'{ratio:.2f}x' if ratio else '-'):>17}"
        print(line)


def print_cpu_table(summary, meta, servers):
    """The CPU each server's own processes spent per answered request: steadier than req/s when
    the machine's speed varies, and blind to how the load generator shared the cores."""
    names_of = {"h1": "HTTP/1.1", "h2": "HTTP/2 over TLS"}
    views = {"shared": "shared cores", "pinned": "pinned"}
    last = None
    for row in summary:
        key = (row["view"], row["protocol"])
        names = [s for s in servers if s in row["servers"]]
        if key != last:
            last = key
            print()
            print(f"== CPU µs per request, {names_of[row['protocol']]} ({views[row['view']]}; "
                  f"user + system time of the server's processes / responses, median of rounds)")
            line = f"   {'file':<9}" + "".join(f"{s:>16}" for s in names)
            line += "".join(f"{p + '/servente':>17}" for p in names[1:])
            print(line)
        cells = []
        for server in names:
            cpu = row["servers"][server].get("median_cpu_us")
            cells.append(f"{cpu:.1f}" if cpu is not None else "-")
        line = f"   {row['file']:<9}" + "".join(f"{c:>16}" for c in cells)
        for peer in names[1:]:
            ratio = row.get(f"cpu_{peer}_over_servente")
            line += f"{(f'{ratio:.2f}x' if ratio else '-'):>17}"
        print(line)
    print("   (peer/servente above 1.00x: servente spends less CPU per request than that peer)")


def print_memory(memory):
    if not memory:
        return
    print()
    print("== Memory (KiB; RSS is VmRSS summed over the processes, as asked; PSS from")
    print("   smaps_rollup counts shared pages once, fairer for nginx's master+workers)")
    print("   (held: while holding the idle connections; KiB/conn: held minus idle RSS, per connection;")
    print("   after load: idle again after all the load runs)")
    print(f"   {'server':<10}{'processes':>10}{'idle RSS':>12}{'idle PSS':>12}"
          f"{'held RSS':>12}{'held PSS':>12}{'KiB/conn':>10}{'after load':>12}")
    for server, m in memory.items():
        held = m.get("held") or {}
        per_conn = None
        if held.get("rss_kib") and m.get("idle", {}).get("rss_kib") and held.get("open"):
            per_conn = (held["rss_kib"] - m["idle"]["rss_kib"]) / held["open"]
        after = (m.get("after_load") or {}).get("rss_kib")
        print(f"   {server:<10}{m['idle']['processes']:>10}{m['idle']['rss_kib']:>12}"
              f"{m['idle']['pss_kib']:>12}{held.get('rss_kib', '-'):>12}"
              f"{held.get('pss_kib', '-'):>12}"
              f"{(f'{per_conn:.1f}' if per_conn is not None else '-'):>10}"
              f"{(after if after is not None else '-'):>12}")
        if held:
            print(f"   {'':<10}held {held.get('open')} of {held.get('requested')} connections "
                  f"open at measurement ({held.get('closed_by_server', 0)} closed by the "
                  f"server{'; ERROR: ' + held['error'] if held.get('error') else ''})")


def report(args):
    with open(args.results) as f:
        results = [json.loads(line) for line in f if line.strip()]
    with open(args.memory) as f:
        memory = json.load(f)
    with open(args.meta) as f:
        meta = json.load(f)
    servers = meta["servers"]
    summary = summarize(results, servers, meta["protocols"], meta["files"])
    print_table(summary, meta, servers)
    print_cpu_table(summary, meta, servers)
    print_memory(memory)

    errors = [f"{r['view']} {r['protocol']} {r['file']} {r['server']} round {r['round']}: "
              f"{r['error']}" for r in results if r["error"] is not None]
    errors += [f"memory {server}: {m['held']['error']}" for server, m in memory.items()
               if (m.get("held") or {}).get("error")]
    tls = {}
    for r in results:
        if r["protocol"] == "h2" and r.get("cipher"):
            tls.setdefault(r["server"], set()).add(f"{r['tls_protocol']} {r['cipher']}")
    if tls:
        print()
        print("== TLS negotiated by h2load: " + "; ".join(
            f"{s}: {', '.join(sorted(v))}" for s, v in tls.items()))
    notes = list(meta.get("notes", []))
    others = [r["other_cpu_percent"] for r in results if r.get("other_cpu_percent") is not None]
    disturbed = [r for r in results if (r.get("other_cpu_percent") or 0) >= OTHER_CPU_WARN]
    if others:
        notes.append(f"Other processes on the machine used {statistics.mean(others):.1f}% of the "
                     f"CPU on average during the runs (at most {max(others):.1f}%); "
                     f"{len(disturbed)} of {len(others)} runs had {OTHER_CPU_WARN}% or more"
                     + (": " + ", ".join(f"{r['protocol']} {r['file']} {r['server']} round "
                                         f"{r['round']} ({r['other_cpu_percent']:.0f}%)"
                                         for r in disturbed[:12])
                        + (" ..." if len(disturbed) > 12 else "") if disturbed else "") + ".")
    if len({value for values in tls.values() for value in values}) > 1:
        notes.append("The servers did not negotiate the same TLS version and cipher (above): the "
                     "HTTP/2 figures include that difference (nginx before 1.23.4 enables TLSv1.3 "
                     "only when ssl_protocols says so, and the shared config does not set it).")
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

    tls_json = {server: sorted(values) for server, values in tls.items()}
    document = {**meta, "notes": notes, "summary": summary, "memory": memory,
                "tls_negotiated": tls_json, "runs": results, "errors": errors}
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
    p = sub.add_parser("h2load")
    p.add_argument("output")
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--requests", type=int, required=True)
    for name in ("wrk", "h2load"):
        p = sub.choices[name]
        p.add_argument("--exit-status", type=int, default=0)
        p.add_argument("--labels", default="{}", help="JSON object merged into the result")
    p = sub.add_parser("report")
    p.add_argument("results")
    p.add_argument("memory")
    p.add_argument("meta")
    p.add_argument("out")
    args = parser.parse_args()

    if args.command == "report":
        return report(args)
    with open(args.output, errors="replace") as f:
        text = f.read()
    if args.command == "wrk":
        result = parse_wrk(text, args.size, args.head_bytes, args.connections)
    else:
        result = parse_h2load(text, args.size, args.requests)
    if args.exit_status != 0:
        # 124 is timeout(1) stopping a run that hung; anything else is the tool's own failure.
        tail = " | ".join(text.strip().splitlines()[-2:])
        reason = f"{args.command} exited with status {args.exit_status}: {tail}"
        result["error"] = reason + (f"; {result['error']}" if result["error"] else "")
        result["rps"] = None
    result = {**json.loads(args.labels), **result}
    progress = (f"{result['rps']:>10.0f} req/s" if result["error"] is None
                else f"ERROR: {result['error']}")
    other = result.get("other_cpu_percent")
    if other is not None and other >= OTHER_CPU_WARN:
        progress += f"  (other processes used {other:.0f}% of the CPU)"
    print(f"  {result.get('view', '')} round {result.get('round', '?')}: "
          f"{result.get('protocol', '')} {result.get('file', ''):<8} "
          f"{result.get('server', ''):<9} {progress}", file=sys.stderr, flush=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
