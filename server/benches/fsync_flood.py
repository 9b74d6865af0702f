#!/usr/bin/env python3
"""What an fdatasync waits for next to a flood on the same file system (issue 24 point 4,
docs/BENCHMARKS.md seventh part). Outside Doppel: a quiet writer appends a 120 B record
and calls fdatasync every 2 ms, 3,000 times, into a file that grows (`grow`) or one
preallocated and zero-filled first (`prealloc`), while a thread writes 1 MiB chunks into
four rotating 256 MiB files without syncing (`flood`), the same paced to 100 MB/s
(`paced`), or paced with write-behind (`sfr`: sync_file_range every 4 MiB, as the log
does), or nothing (`alone`). Prints the quiet writer's p50, p99 and max.

    server/benches/fsync_flood.py DIR grow|prealloc alone|flood|paced|sfr
"""

import ctypes
import os
import sys
import threading
import time

SYNC_FILE_RANGE_WRITE = 2


def flooder(d, mode, stop):
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    buf = b"x" * (1 << 20)
    n = 0
    while not stop.is_set():
        fd = os.open(os.path.join(d, f"flood{n % 4}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        for i in range(256):
            if stop.is_set():
                break
            started = time.perf_counter()
            os.write(fd, buf)
            if mode == "sfr" and i % 4 == 3:
                libc.sync_file_range(fd, ctypes.c_int64((i - 3) << 20), ctypes.c_int64(4 << 20),
                                     SYNC_FILE_RANGE_WRITE)
            if mode in ("paced", "sfr"):
                time.sleep(max(0.0, 0.01 - (time.perf_counter() - started)))
        os.close(fd)
        n += 1


def main():
    d, layout, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    stop = threading.Event()
    if mode != "alone":
        threading.Thread(target=flooder, args=(d, mode, stop), daemon=True).start()
        time.sleep(1)
    path = os.path.join(d, "quiet.seg")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    if layout == "prealloc":
        zeros = b"\0" * (1 << 20)
        for _ in range(32):
            os.write(fd, zeros)
        os.fsync(fd)
    record, at, took = b"r" * 120, 0, []
    for _ in range(3000):
        started = time.perf_counter()
        os.pwrite(fd, record, at)
        at += len(record)
        os.fdatasync(fd)
        took.append((time.perf_counter() - started) * 1000)
        time.sleep(0.002)
    stop.set()
    took.sort()
    print(f"{layout} {mode}: p50 {took[len(took) // 2]:.3f} p99 {took[int(len(took) * 0.99)]:.3f} "
          f"max {took[-1]:.3f} ms")
    for name in os.listdir(d):
        if name.startswith("flood") or name == "quiet.seg":
            os.remove(os.path.join(d, name))


if __name__ == "__main__":
    main()
