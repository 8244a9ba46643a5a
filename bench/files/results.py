#!/usr/bin/env python3
"""Dataset, checks and report of bench/files/run (Python 3 standard library only).

  results.py dataset DIR --entries N --tree-files M
      -> DIR/big/ (N small files: the PROPFIND folder) and DIR/../tree/ (M files of 1-8 KiB in
         nested folders: the rclone copy source); deterministic (seeded), so every run is alike
  results.py propfind-check FILE --entries N
      -> "RESPONSES CONTENT_LENGTHS" of a Depth 1 answer; exit 1 with the reason on stderr when
         it does not list the folder and its N entries (one <response> each, a length per file)
  results.py record KEY=VALUE...   -> one JSON object on stdout (values parsed as JSON if they can be)
  results.py report RESULTS_JSONL META_JSON OUT_JSON   -> table on stdout, JSON file; exit 1 on errors
"""

import argparse
import json
import random
import re
import statistics
import sys
from pathlib import Path

# The operations in the order of the table: (key, label).
OPS = [
    ("put-1m", "PUT 1 MiB"),
    ("put-1m-over", "PUT 1 MiB over an existing file"),
    ("put-100m", "PUT 100 MiB"),
    ("get-1m", "GET 1 MiB"),
    ("get-100m", "GET 100 MiB"),
    ("propfind-props", "PROPFIND Depth 1, named props"),
    ("propfind-allprop", "PROPFIND Depth 1, allprop"),
    ("tree", "rclone copy --transfers 8 of the tree"),
    ("tree-curl", "the tree by curl, 8 connections"),
]
PEER_LABELS = {
    "servente": "servente",
    "nginx": "nginx+dav-ext",
    "dufs": "dufs",
    "rclone": "rclone serve",
}


def dataset(args):
    rng = random.Random(20261126)
    big = Path(args.dir) / "big"
    big.mkdir(parents=True, exist_ok=True)
    for i in range(args.entries):
        # Small text files of 64-512 bytes: the folder's size is in its entry count, not its bytes.
        (big / f"entry-{i:05d}.txt").write_bytes(rng.randbytes(rng.randint(32, 256)).hex().encode())
    tree = Path(args.dir).parent / "tree"
    # 10 folders of 5 subfolders each, the files spread over all of them, 1-8 KiB each.
    folders = [tree / f"dir-{a}" / f"sub-{b}" for a in range(10) for b in range(5)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(args.tree_files):
        path = folders[i % len(folders)] / f"file-{i:04d}.bin"
        path.write_bytes(rng.randbytes(rng.randint(1024, 8192)))
    return 0


def propfind_check(args):
    text = Path(args.file).read_text(errors="replace")
    responses = len(re.findall(r"<(?:[A-Za-z][\w.-]*:)?response[\s>]", text))
    lengths = len(re.findall(r"<(?:[A-Za-z][\w.-]*:)?getcontentlength[\s>]", text))
    problems = []
    if responses != args.entries + 1:
        problems.append(f"{responses} <response> elements, expected {args.entries + 1} "
                        f"(the folder and its {args.entries} entries)")
    if lengths < args.entries:
        problems.append(f"{lengths} getcontentlength values, expected one per file ({args.entries})")
    if problems:
        print("; ".join(problems) + f"; answer starts: {text[:300]!r}", file=sys.stderr)
        return 1
    print(responses, lengths)
    return 0


def record(pairs):
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    print(json.dumps(out))
    return 0


def fmt_time(seconds):
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def summarize(results, servers):
    summary = {}
    for op, _ in OPS:
        per = {}
        for server in servers:
            runs = [r for r in results if r["op"] == op and r["server"] == server]
            if not runs:
                continue
            good = [r["seconds"] for r in runs if r.get("error") is None]
            errors = [r["error"] for r in runs if r.get("error") is not None]
            median = statistics.median(good) if good and not errors else None
            spread = ((max(good) - min(good)) / 2 / median * 100) if median else None
            info = {"median_s": median, "samples_s": good, "spread_pct": spread, "errors": errors}
            fsync = [r["fsync_ms"] for r in runs if r.get("error") is None and r.get("fsync_ms") is not None]
            if fsync:
                info["fsync_median_ms"] = statistics.median(fsync)
                shares = [r["fsync_ms"] / 1000 / r["seconds"] for r in runs
                          if r.get("error") is None and r.get("fsync_ms") is not None and r["seconds"]]
                info["fsync_share_median"] = statistics.median(shares) if shares else None
            if op.startswith("put") and server == "servente" and good and not fsync:
                info["fsync_missing"] = True
            sizes = [r["bytes"] for r in runs if r.get("bytes") is not None and r.get("error") is None]
            if sizes:
                info["answer_bytes"] = statistics.median(sizes)
            per[server] = info
        peers = {s: i["median_s"] for s, i in per.items() if s != "servente" and i["median_s"]}
        best = min(peers, key=peers.get) if peers else None
        own = per.get("servente", {}).get("median_s")
        ratio = (peers[best] / own) if best and own else None
        summary[op] = {"servers": per, "best_peer": best, "servente_ratio_to_best_peer": ratio}
        floor = [r["seconds"] for r in results
                 if r["op"] == op and r["server"] == "floor" and r.get("error") is None]
        if floor:
            summary[op]["client_floor_s"] = statistics.median(floor)
    return summary


def report(args):
    with open(args.results) as f:
        results = [json.loads(line) for line in f if line.strip()]
    with open(args.meta) as f:
        meta = json.load(f)
    servers = meta["servers"]
    summary = summarize(results, servers)
    peers = [s for s in servers if s != "servente"]

    width = 14
    print()
    print("== Time per operation: median of the samples, ± half their min-max range "
          "(lower is better)")
    print(f"   {meta['dataset']}")
    print(f"   samples per server: {meta['samples']}")
    head = f"   {'':<46}" + "".join(f"{PEER_LABELS.get(s, s):>{width + 6}}" for s in servers)
    if "servente" in servers and peers:
        head += f"{'servente vs best peer':>28}"
    print(head)
    for op, label in OPS:
        per = summary[op]["servers"]
        if not per:
            continue
        line = f"   {label:<46}"
        for server in servers:
            info = per.get(server)
            if info is None:
                cell = "-"
            elif info["errors"]:
                cell = "ERROR"
            else:
                cell = fmt_time(info["median_s"])
                if len(info["samples_s"]) > 1:
                    cell += f" ±{info['spread_pct']:.0f}%"
            line += f"{cell:>{width + 6}}"
        if "servente" in servers and peers:
            ratio = summary[op]["servente_ratio_to_best_peer"]
            best = summary[op]["best_peer"]
            line += f"{(f'{ratio:.2f}x (vs {PEER_LABELS.get(best, best)})' if ratio else '-'):>28}"
        print(line)
    if "servente" in servers and peers:
        print("   servente vs best peer = best peer's time / servente's time: above 1.00x servente "
              "is faster, below it is slower.")

    if "servente" in servers:
        print()
        print("== servente PUT: time spent in fsync (its Server-Timing: fsync;dur=<ms> header)")
        for op in ("put-1m", "put-1m-over", "put-100m"):
            info = summary[op]["servers"].get("servente")
            if not info or info["errors"]:
                continue
            label = dict(OPS)[op]
            if info.get("fsync_median_ms") is not None:
                share = info.get("fsync_share_median")
                print(f"   {label:<31} fsync {info['fsync_median_ms']:.1f} ms of "
                      f"{fmt_time(info['median_s'])} (median share of the request: "
                      f"{share * 100:.0f}%)")
            else:
                print(f"   {label:<31} no Server-Timing fsync header in servente's answers")
        print("   The header times the final wait only (fsync of the file, rename, fsync of its "
              "folder); servente asks the kernel to start writing back while the body is still "
              "arriving, so disk work done during the upload is inside the rest of the time.")
        print("   servente answers 201 only after the file and its folder are fsynced; nginx, dufs "
              "and rclone answer as soon as the bytes are in the page cache (the disk gets them "
              "later), so their PUT figures do not include any disk write.")
        floors = [op for op in ("put-1m", "put-100m") if summary[op].get("client_floor_s")]
        if floors:
            print()
            print("== PUT: the client's floor (the same curl PUT to an nginx that answers 201 and keeps "
                  "nothing: no server that stores the bytes can answer sooner)")
            for op in floors:
                entry = summary[op]
                line = f"   {dict(OPS)[op]:<31} floor {fmt_time(entry['client_floor_s'])}"
                own = entry["servers"].get("servente", {})
                if own.get("median_s") and own.get("fsync_median_ms") is not None:
                    rest = own["median_s"] - own["fsync_median_ms"] / 1000
                    line += (f"; servente {fmt_time(own['median_s'])}, {fmt_time(rest)} without its "
                             f"fsync")
                best = entry.get("best_peer")
                if best:
                    line += f"; {PEER_LABELS.get(best, best)} {fmt_time(entry['servers'][best]['median_s'])}"
                print(line)

    propfind_sizes = []
    for op in ("propfind-props", "propfind-allprop"):
        sizes = [f"{PEER_LABELS.get(s, s)} {info['answer_bytes'] / 1e6:.2f} MB"
                 for s, info in summary[op]["servers"].items() if info.get("answer_bytes")]
        if sizes:
            propfind_sizes.append(f"{dict(OPS)[op]}: {', '.join(sizes)}")

    errors = [f"{r['op']} {r['server']} round {r['round']}"
              + (f" #{r['rep']}" if r.get("rep") else "") + f": {r['error']}"
              for r in results if r.get("error") is not None]
    notes = list(meta.get("notes", []))
    if propfind_sizes:
        notes.append("PROPFIND answer sizes (median): " + "; ".join(propfind_sizes) + ".")
    print()
    print("== Notes")
    for note in notes:
        print(f"   - {note}")
    if errors:
        print()
        print(f"== {len(errors)} ERROR(S): these samples are errors, not results")
        for error in errors:
            print(f"   {error}")

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
    p = sub.add_parser("dataset")
    p.add_argument("dir")
    p.add_argument("--entries", type=int, required=True)
    p.add_argument("--tree-files", type=int, required=True)
    p = sub.add_parser("propfind-check")
    p.add_argument("file")
    p.add_argument("--entries", type=int, required=True)
    p = sub.add_parser("record")
    p.add_argument("pairs", nargs="*")
    p = sub.add_parser("report")
    p.add_argument("results")
    p.add_argument("meta")
    p.add_argument("out")
    args = parser.parse_args()
    if args.command == "dataset":
        return dataset(args)
    if args.command == "propfind-check":
        return propfind_check(args)
    if args.command == "record":
        return record(args.pairs)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
