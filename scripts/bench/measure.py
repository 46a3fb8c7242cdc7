#!/usr/bin/env python3
"""Run one command and record what it cost.

    measure.py --out RESULTS.jsonl --tool NAME --step NAME [--input-bytes N]
               [--stored DIR]... [--stdout FILE] [--stderr FILE] -- COMMAND [ARG]...

Appends one JSON line to RESULTS.jsonl: wall seconds, CPU seconds (user and
system, of the command and every descendant it waited for), peak resident
set size (the largest of those processes), the exit status, and, for each
--stored folder, the bytes of the regular files under it after the step.

The command's standard output goes to --stdout (default: discarded), its
standard error to --stderr (default: passed through; when captured, its last
lines are shown if the command fails). The exit status of measure.py is the
command's, so a failing step stops a `set -e` caller.
"""

import argparse
import json
import os
import subprocess
import sys
import time


def tree_bytes(path):
    """Sum of the sizes of the regular files under `path` (0 if absent);
    the size of `path` itself if it is a regular file."""
    if os.path.isfile(path) and not os.path.islink(path):
        return os.path.getsize(path)
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tool", required=True)
    ap.add_argument("--step", required=True)
    ap.add_argument("--input-bytes", type=int, default=0)
    ap.add_argument("--stored", action="append", default=[])
    ap.add_argument("--stdout")
    ap.add_argument("--stderr")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no command given after --")

    out = open(a.stdout, "wb") if a.stdout else subprocess.DEVNULL
    err = open(a.stderr, "wb") if a.stderr else None
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if a.stdout:
        out.close()
    if err is not None:
        err.close()

    rec = {
        "tool": a.tool,
        "step": a.step,
        "cmd": cmd,
        "exit": proc.returncode,
        "wall_s": round(wall, 4),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 4),
        "user_s": round(ru.ru_utime, 4),
        "sys_s": round(ru.ru_stime, 4),
        # Linux reports ru_maxrss in KiB.
        "peak_rss_bytes": ru.ru_maxrss * 1024,
        "input_bytes": a.input_bytes,
    }
    if a.stored:
        rec["stored_bytes"] = sum(tree_bytes(d) for d in a.stored)
    with open(a.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    if proc.returncode != 0:
        print(
            f"bench: {a.tool} {a.step} failed with exit status {proc.returncode}: {' '.join(cmd)}",
            file=sys.stderr,
        )
        if a.stderr:
            with open(a.stderr, "r", encoding="utf-8", errors="replace") as f:
                for line in f.readlines()[-20:]:
                    sys.stderr.write("  | " + line)
    return proc.returncode if proc.returncode >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
