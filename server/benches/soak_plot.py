#!/usr/bin/env python3
"""Plot a soak's CSV (server/benches/soak.py) into a PNG: RSS, open file descriptors
and data directory size of each node (each minute's median, and dotted its highest
probe when the CSV has it), and the writers' p50/p99 commit latency, per
minute; and print the issue's figures (growth after the first --baseline minutes, p99
against the first --baseline minutes).

    python3 -m venv target/plot-venv && target/plot-venv/bin/pip install matplotlib
    target/plot-venv/bin/python server/benches/soak_plot.py target/soak/soak.csv docs/soak.png
"""

import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NODES = ["src", "sync", "async"]


def highest(node, what, row):
    """The column of `what`'s highest probe in a minute (soak.py since the fifteenth
    session), or None for descriptors and for older CSVs, which have none."""
    column = f"{node}_{what[:-3]}_max_mb" if what.endswith("_mb") else None
    return column if column in row else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("png")
    ap.add_argument("--baseline", type=float, default=10,
                    help="minutes the growth and the p99 are measured against")
    ap.add_argument("--title", default="Doppel soak")
    args = ap.parse_args()
    with open(args.csv) as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    minute = [r["minute"] for r in rows]

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for (ax, what, label) in [
        (axes[0][0], "rss_mb", "RSS (MB)"),
        (axes[0][1], "fds", "open file descriptors"),
        (axes[1][0], "disk_mb", "data directory (MB)"),
    ]:
        for n in NODES:
            line, = ax.plot(minute, [r[f"{n}_{what}"] for r in rows], marker=".", label=n)
            top = highest(n, what, rows[0])
            if top:
                ax.plot(minute, [r[top] for r in rows], linestyle=":", color=line.get_color(),
                        label=f"{n}, highest")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes[1][1]
    ax.plot(minute, [r["p99_ms"] for r in rows], marker=".", label="p99")
    ax.plot(minute, [r["p50_ms"] for r in rows], marker=".", label="p50")
    ax.set_ylabel("commit latency of a 50-record batch (ms)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    for ax in axes[1]:
        ax.set_xlabel("minute")
    rate = sum(r["records_per_s"] for r in rows) / len(rows)
    fig.suptitle(f"{args.title}: {len(rows)} samples, {rate:.0f} records/s on average")
    fig.tight_layout()
    fig.savefig(args.png, dpi=90)

    base = [r for r in rows if r["minute"] <= args.baseline + 1e-9] or rows[:1]
    last = rows[-1]
    print(f"baseline: the first {args.baseline:g} minutes ({len(base)} samples); last sample "
          f"at minute {last['minute']:.1f}")
    for n in NODES:
        for what in ["rss_mb", "fds", "disk_mb"]:
            ref = base[-1][f"{n}_{what}"]
            growth = (last[f"{n}_{what}"] - ref) / ref * 100 if ref else 0.0
            print(f"{n} {what}: {ref:g} at minute {base[-1]['minute']:.1f} -> "
                  f"{last[f'{n}_{what}']:g} at the end ({growth:+.1f} %)")
            top = highest(n, what, last)
            if top:
                before = max(r[top] for r in base)
                after = max((r[top] for r in rows if r not in base), default=0.0)
                print(f"{n} {what}, highest probe: {before:g} in the baseline, {after:g} "
                      f"after it ({(after - before) / before * 100 if before else 0:+.1f} %)")
    p99_base = max(r["p99_ms"] for r in base)
    p99_after = max((r["p99_ms"] for r in rows if r not in base), default=0.0)
    print(f"p99: worst of the baseline {p99_base:.1f} ms, worst after it {p99_after:.1f} ms "
          f"({p99_after / p99_base if p99_base else 0:.2f}x)")
    print(f"errors: {sum(int(r['errors']) for r in rows)}")


if __name__ == "__main__":
    main()
