#!/usr/bin/env python3
"""Summarise `CONVMART_EXPLAIN=1 convmart run ...` stderr: per explained stage,
the operators with the most elapsed_compute (CPU time summed over partitions,
not wall time), their output rows, memory and spill metrics.

    explain_top.py STDERR_FILE [--top 5]
"""
import argparse
import re
import sys

UNIT = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
SIZE = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "K": 1e3, "M": 1e6, "B_": 1e9}


def seconds(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(ns|µs|us|ms|s)", v.strip())
    return float(m.group(1)) * UNIT[m.group(2)] if m else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("stderr")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    text = open(args.stderr, errors="replace").read().splitlines()
    stages, current, plan = [], None, []
    for line in text:
        if "Plan with Metrics" in line or (current is not None and line.startswith("|  ")):
            if current is None:
                current = plan = []
            body = line.split("|")[2] if line.count("|") >= 3 else line
            plan.append(body.rstrip())
        elif current is not None and (line.startswith("+") or "stage computed" in line):
            if "stage computed" in line or line.startswith("+"):
                pass
        m = re.search(r'stage computed stage="(\w+)".*elapsed_ms=(\d+)', line)
        if m:
            stages.append((m.group(1), int(m.group(2)), plan or []))
            current, plan = None, []
    for name, ms, plan in stages:
        ops = []
        for p in plan:
            m = re.match(r"(\s*)(\w+Exec):.*?metrics=\[(.*)\]", p)
            if not m:
                continue
            metrics = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", m.group(3)) if "=" in kv)
            ops.append({
                "depth": len(m.group(1)) // 2, "op": m.group(2),
                "compute": seconds(metrics.get("elapsed_compute", "0ns")),
                "rows": metrics.get("output_rows", "?"),
                "mem": metrics.get("peak_mem_used", metrics.get("build_mem_used", "")),
                "spill": metrics.get("spill_count", ""),
                "spilled": metrics.get("spilled_bytes", ""),
                "extra": {k: v for k, v in metrics.items()
                          if k in ("build_time", "join_time", "time_elapsed_opening",
                                   "time_elapsed_scanning_total", "bytes_scanned")},
            })
        total = sum(o["compute"] for o in ops)
        spills = [o for o in ops if o["spill"] not in ("", "0")]
        print(f"## stage {name}: {ms / 1000:.1f}s wall (EXPLAIN ANALYZE run + real run), "
              f"{len(ops)} operators, elapsed_compute total {total:.1f}s, "
              f"operators that spilled: {len(spills)}")
        for o in sorted(ops, key=lambda o: -o["compute"])[:args.top]:
            extra = ", ".join(f"{k}={v}" for k, v in o["extra"].items())
            print(f"  {o['compute']:7.2f}s  {o['op']:<28} depth {o['depth']:<2} rows={o['rows']}"
                  + (f" mem={o['mem']}" if o["mem"] else "")
                  + (f" spill_count={o['spill']} spilled={o['spilled']}" if o["spill"] else "")
                  + (f"  [{extra}]" if extra else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
