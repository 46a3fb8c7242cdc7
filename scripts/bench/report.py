#!/usr/bin/env python3
"""Turn the measurements of one benchmark run into a table or one JSON object.

    report.py --results RESULTS.jsonl --size SIZE --db-bytes N --db-bytes-mutated N
              [--zstd3-bytes N] (size of the file compressed with zstd -3)
              [--version NAME=TEXT]... [--verify TOOL=TEXT]... [--custos-json STEP=FILE]...
              [--note TEXT]... [--json]

RESULTS.jsonl holds the lines written by measure.py. Steps are
`backup_initial`, `backup_incremental`, `restore`, `check` (and
`backup_history`, the rounds of `bench.sh --history`, of which the last
line counts, as the base of the incremental's added bytes); the tool
`reference` holds the machine's limits (`read`, `zstd3_single`, `zstd3_all`,
`blake3_single`, `blake3_all`).

Ratios compare custos with each peer on the same data in the same run:
  time ratio    = peer wall seconds / custos wall seconds (above 1: custos faster)
  storage ratio = custos bytes / peer bytes (below 1: custos stores less)
"""

import argparse
import json
import os
import sys

STEPS = ["backup_initial", "backup_incremental", "restore", "check"]
TOOLS = ["custos", "restic", "borg"]
PEERS = ["restic", "borg"]
REFERENCE = [
    ("read", "read (cat, warm)"),
    ("zstd3_single", "zstd -3 --single-thread"),
    ("zstd3_all", "zstd -3 -T0"),
    ("blake3_single", "b3sum --num-threads 1"),
    ("blake3_all", "b3sum (all threads)"),
]
MIB = 1024 * 1024


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = 0
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "ram_bytes": ram}


def ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return round(num / den, 3)


def mbps(nbytes, seconds):
    if not seconds:
        return None
    return round(nbytes / MIB / seconds, 1)


def build(a):
    rows = [json.loads(line) for line in open(a.results, encoding="utf-8") if line.strip()]
    by = {(r["tool"], r["step"]): r for r in rows}

    results = {}
    for tool in TOOLS:
        t = {}
        for step in STEPS:
            r = by.get((tool, step))
            if r is None:
                continue
            e = {
                "wall_s": r["wall_s"],
                "cpu_s": r["cpu_s"],
                "user_s": r["user_s"],
                "sys_s": r["sys_s"],
                "peak_rss_bytes": r["peak_rss_bytes"],
                "input_bytes": r["input_bytes"],
                "throughput_mib_s": mbps(r["input_bytes"], r["wall_s"]),
            }
            if "stored_bytes" in r:
                e["stored_bytes"] = r["stored_bytes"]
            t[step] = e
        # "Added" counts from the backup before the measured incremental:
        # the last history round (bench.sh --history), else the initial.
        base = by.get((tool, "backup_history"))
        if base is None and "backup_initial" in t:
            base = t["backup_initial"]
        if base is not None and "backup_incremental" in t:
            t["backup_incremental"]["added_bytes"] = (
                t["backup_incremental"]["stored_bytes"] - base["stored_bytes"]
            )
        if t:
            results[tool] = t

    ratios = {}
    c = results.get("custos", {})
    for peer in PEERS:
        p = results.get(peer)
        if not p or not c:
            continue
        rr = {}
        for step in STEPS:
            if step in p and step in c:
                rr[step] = {
                    "time": ratio(p[step]["wall_s"], c[step]["wall_s"]),
                    "cpu": ratio(p[step]["cpu_s"], c[step]["cpu_s"]),
                    "peak_rss": ratio(c[step]["peak_rss_bytes"], p[step]["peak_rss_bytes"]),
                }
        if "backup_initial" in p and "backup_initial" in c:
            rr["storage_initial"] = ratio(
                c["backup_initial"]["stored_bytes"], p["backup_initial"]["stored_bytes"]
            )
        if "backup_incremental" in p and "backup_incremental" in c:
            rr["storage_added"] = ratio(
                c["backup_incremental"]["added_bytes"], p["backup_incremental"]["added_bytes"]
            )
        ratios[peer] = rr

    reference = {}
    for key, label in REFERENCE:
        r = by.get(("reference", key))
        if r is None:
            continue
        reference[key] = {
            "what": label,
            "wall_s": r["wall_s"],
            "cpu_s": r["cpu_s"],
            "throughput_mib_s": mbps(r["input_bytes"], r["wall_s"]),
        }
        if key == "zstd3_single" and a.zstd3_bytes:
            reference[key]["compressed_bytes"] = a.zstd3_bytes

    custos_reported = {}
    for item in a.custos_json:
        step, _, path = item.partition("=")
        try:
            with open(path, encoding="utf-8") as f:
                custos_reported[step] = json.loads(f.read())
        except (OSError, ValueError) as e:
            custos_reported[step] = {"error": f"cannot read {os.path.basename(path)}: {e}"}

    def kv(items):
        out = {}
        for item in items:
            k, _, v = item.partition("=")
            out[k] = v
        return out

    verify = kv(a.verify)
    return {
        "size": a.size,
        "db_bytes": a.db_bytes,
        "db_bytes_mutated": a.db_bytes_mutated,
        "machine": machine(),
        "versions": kv(a.version),
        "reference": reference,
        "results": results,
        "ratios": ratios,
        "verification": verify,
        "verified": bool(verify) and all(v.startswith("ok") for v in verify.values()),
        "custos_reported": custos_reported,
        "notes": a.note,
    }


def fmt(v, spec):
    """`v` formatted with `spec`, or a dash as wide as the spec asks."""
    if v is None:
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width) if width else 1)
    return format(v, spec)


def table(doc):
    out = []
    m = doc["machine"]
    out.append(
        f"custos benchmark, size {doc['size']}: database {doc['db_bytes'] / MIB:.1f} MiB "
        f"({doc['db_bytes_mutated'] / MIB:.1f} MiB after the 1% change)"
    )
    out.append(
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['ram_bytes'] / 2**30:.1f} GiB RAM"
    )
    out.append("versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()))
    out.append("")
    out.append("Reference limits on the same file (warm):")
    for key, r in doc["reference"].items():
        extra = ""
        if "compressed_bytes" in r:
            extra = f"  (output {r['compressed_bytes'] / MIB:.1f} MiB)"
        out.append(
            f"  {r['what']:<26} {fmt(r['throughput_mib_s'], '8.1f')} MiB/s"
            f"  {r['wall_s']:7.2f} s wall  {r['cpu_s']:7.2f} s CPU{extra}"
        )
    out.append("")
    head = (
        f"{'step':<19} {'tool':<7} {'wall s':>8} {'MiB/s':>8} {'CPU s':>8} "
        f"{'RSS MiB':>8} {'stored MiB':>11} {'added MiB':>10}"
    )
    out.append(head)
    out.append("-" * len(head))
    for step in STEPS:
        for tool in TOOLS:
            e = doc["results"].get(tool, {}).get(step)
            if e is None:
                continue
            stored = e.get("stored_bytes")
            added = e.get("added_bytes")
            out.append(
                f"{step:<19} {tool:<7} {e['wall_s']:8.2f} {fmt(e['throughput_mib_s'], '8.1f')} "
                f"{e['cpu_s']:8.2f} {e['peak_rss_bytes'] / MIB:8.1f} "
                f"{fmt(None if stored is None else stored / MIB, '11.2f')} "
                f"{fmt(None if added is None else added / MIB, '10.3f')}"
            )
    out.append("")
    out.append("Ratios (time: peer/custos wall, above 1 = custos faster;")
    out.append("        storage: custos/peer bytes, below 1 = custos stores less):")
    for peer, rr in doc["ratios"].items():
        parts = [f"{s} {fmt(rr[s]['time'], '.2f')}" for s in STEPS if s in rr]
        out.append(f"  vs {peer:<6} time: " + ", ".join(parts))
        out.append(
            f"  vs {peer:<6} storage: initial {fmt(rr.get('storage_initial'), '.2f')}, "
            f"incremental added {fmt(rr.get('storage_added'), '.2f')}"
        )
    out.append("")
    out.append("Restores verified:")
    for tool, v in doc["verification"].items():
        out.append(f"  {tool:<7} {v}")
    for n in doc["notes"]:
        out.append(f"note: {n}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--size", required=True)
    ap.add_argument("--db-bytes", type=int, required=True)
    ap.add_argument("--db-bytes-mutated", type=int, required=True)
    ap.add_argument("--zstd3-bytes", type=int, default=0)
    ap.add_argument("--version", action="append", default=[])
    ap.add_argument("--verify", action="append", default=[])
    ap.add_argument("--custos-json", action="append", default=[])
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    doc = build(a)
    if a.json:
        print(json.dumps(doc, indent=2))
    else:
        print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
