#!/usr/bin/env python3
"""fdatasync latency of small appends against overwrites of a zero-filled file, with one
file or two files synced at once (a source and its replica on one machine's disk):

    python3 server/benches/fdatasync_pair.py append|zeroed RECORDS PARALLEL

Writes RECORDS records of 180 bytes per file, each followed by an fdatasync, in
PARALLEL threads on files of their own under /work/scratch/fs (or $FS_DIR), and prints
each file's p50 and p99 in microseconds (docs/BENCHMARKS.md, issue 19, third part).
"""
import os, threading, time, statistics, sys
mode = sys.argv[1]  # append | zeroed
n = int(sys.argv[2]); par = int(sys.argv[3])
d = os.environ.get("FS_DIR", "/tmp/fdatasync-pair"); os.makedirs(d, exist_ok=True)
res = {}
def run(i):
    p = f"{d}/f{i}"
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    if mode == "zeroed":
        os.write(fd, b"\0" * (n * 200 + 4096)); os.fsync(fd)
    lat = []
    off = 0
    buf = b"x" * 180
    for _ in range(n):
        t = time.perf_counter()
        os.pwrite(fd, buf, off); off += len(buf)
        os.fdatasync(fd)
        lat.append((time.perf_counter() - t) * 1e6)
    os.close(fd); os.unlink(p)
    res[i] = lat
ts = [threading.Thread(target=run, args=(i,)) for i in range(par)]
[t.start() for t in ts]; [t.join() for t in ts]
for i, lat in res.items():
    lat.sort()
    print(mode, "par", par, "file", i, "p50 %.0f p99 %.0f us" % (lat[len(lat)//2], lat[int(len(lat)*.99)]))
