#!/usr/bin/env python3
"""Soak (issue 16 §4): a source with a sync replica and an async replica behind a plugin
chain, written at about 80 % of the throughput this setup measured, for a given time,
sampling each node's RSS, open file descriptors and data directory size every
--probe-secs, and writing one CSV row per sample interval: the writers' p50/p99 commit
latency, and per node the median and the highest of that interval's probes (a single
reading once a minute aliases the node's cycles: snapshots every few seconds made the
async node's disk look as if it climbed for half an hour, RELIABILITY §4). Each node's log
and its database's snapshot list at the end are kept beside the CSV (`<node>.log`,
`<node>-snapshots.json`).

    server/benches/soak.py --bin target/release/doppel --minutes 60 --out target/soak
    server/benches/soak_plot.py target/soak/soak.csv docs/soak.png

Nodes: `src` (database `soak`, one file `orders`, durability group), `sync` (a mirror
link, mode sync) and `async` (a logical link, async, through the built-in prefix-filter
and namespace plugins); each node takes a snapshot every 200,000 updates, which bounds
its log. The keyspace is fixed (100,000 keys, overwritten), so the data held stays the
same size and any growth is the node's. Python standard library only. The throughput
is measured first (--measure-secs of unpaced writing by --threads writers in batches
of 50), then the writers are paced to --load of it.
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

SECRET = "c29hay1iZW5jaC1rZXktb2YtYXQtbGVhc3QtdGhpcnR5LXR3by1ieXRlcw=="
KEYS = 100_000
BATCH = 50


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Node:
    def __init__(self, binary, root, name):
        self.name = name
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "c.toml")
        with open(self.config, "w") as f:
            f.write(
                "[node]\nsnapshot_every_entries = 200000\n"
                f'[auth]\nkeys = [{{ kid = "k1", alg = "HS256", secret = "{SECRET}" }}]\n'
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = os.path.join(self.dir, "data")
        self.log = open(os.path.join(self.dir, "node.log"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--data", self.data, "--listen", f"127.0.0.1:{self.port}",
             "--config", self.config],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/v1/health", timeout=1).read()
                return
            except Exception:
                if self.proc.poll() is not None:
                    sys.exit(f"node {name} exited: see {self.dir}/node.log")
                time.sleep(0.1)
        sys.exit(f"node {name} did not answer within 60 s")

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def disk_bytes(self):
        total = 0
        for root, _, files in os.walk(self.data):
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_blocks * 512
                except FileNotFoundError:
                    pass
        return total

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def call(token, method, url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        text = r.read()
        return json.loads(text) if text else None


def wait_for(what, cond, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit(f"{what}: not within {timeout} s")


def percentile(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


class Probes:
    """Each node's RSS, descriptors and disk every `every` seconds, on a thread of its
    own; `take` hands over what was seen since the last call, per node and figure."""

    def __init__(self, nodes, every):
        self.nodes, self.every = nodes, every
        self.lock = threading.Lock()
        self.seen = self.empty()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def empty(self):
        return {n.name: {"rss_mb": [], "fds": [], "disk_mb": []} for n in self.nodes}

    def run(self):
        while not self.stop.wait(self.every):
            for node in self.nodes:
                try:
                    probe = {"rss_mb": node.rss_kb() / 1024, "fds": node.fds(),
                             "disk_mb": node.disk_bytes() / 1e6}
                except OSError:  # the node is going away: its log says why
                    continue
                with self.lock:
                    for what, value in probe.items():
                        self.seen[node.name][what].append(value)

    def take(self):
        with self.lock:
            seen, self.seen = self.seen, self.empty()
        return seen

    def join(self):
        self.stop.set()
        self.thread.join()


def median(values):
    return sorted(values)[len(values) // 2] if values else 0.0


class Writers:
    """Threads writing batches of upserts; paced to `rate` records/s when set."""

    def __init__(self, token, db_url, threads):
        self.token, self.db_url, self.threads = token, db_url, threads
        self.lock = threading.Lock()
        self.latencies = []
        self.records = 0
        self.errors = 0
        self.stop = threading.Event()
        self.rate = None
        self.seq = 0

    def take(self):
        with self.lock:
            lat, self.latencies = self.latencies, []
            n, self.records = self.records, 0
            e, self.errors = self.errors, 0
        return lat, n, e

    def run_one(self, index):
        payload_pad = "x" * 150
        next_at = time.time()
        n = index
        while not self.stop.is_set():
            if self.rate:
                per_thread = self.rate / self.threads / BATCH  # batches/s per thread
                next_at += 1.0 / per_thread
                delay = next_at - time.time()
                if delay > 0:
                    self.stop.wait(delay)
                elif delay < -1.0:
                    next_at = time.time()  # behind by more than a second: do not burst
            ops = []
            for _ in range(BATCH):
                n += self.threads
                ops.append({"op": "upsert", "file": "orders", "key": f"k{n % KEYS:06d}",
                            "data": {"n": n, "pad": payload_pad}})
            started = time.time()
            try:
                call(self.token, "POST", self.db_url + "/transactions", {"ops": ops})
                with self.lock:
                    self.latencies.append(time.time() - started)
                    self.records += BATCH
            except Exception:
                with self.lock:
                    self.errors += 1

    def start(self):
        self.pool = [threading.Thread(target=self.run_one, args=(i,), daemon=True)
                     for i in range(self.threads)]
        for t in self.pool:
            t.start()

    def join(self):
        self.stop.set()
        for t in self.pool:
            t.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/doppel")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--sample-secs", type=float, default=60, help="seconds per CSV row")
    ap.add_argument("--probe-secs", type=float, default=1,
                    help="seconds between two readings of each node's RSS, fds and disk")
    ap.add_argument("--measure-secs", type=float, default=30,
                    help="seconds of unpaced writing that measure the throughput")
    ap.add_argument("--load", type=float, default=0.8, help="share of the measured throughput")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--out", default="target/soak")
    ap.add_argument("--min-free-gb", type=float, default=8,
                    help="stop early if the scratch disk has less free than this")
    args = ap.parse_args()

    binary = os.path.abspath(args.bin)
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="doppel-soak-", dir="/tmp")
    nodes = []
    try:
        for name in ["src", "sync", "async"]:
            nodes.append(Node(binary, work, name))
        src, sync, asyn = nodes
        # The writers, the status calls and the links' registrations use it for the
        # whole run: a token of the default hour expired in the hour's last minute.
        ttl = int(args.minutes * 60 + args.measure_secs + 3600)
        token = subprocess.check_output(
            [binary, "token", "--tenant", "*", "--role", "admin", "--config", src.config,
             "--ttl-secs", str(ttl)],
            text=True).strip()
        tenant = "/v1/tenants/default"
        call(token, "POST", src.url + tenant + "/databases",
             {"name": "soak", "files": [{"name": "orders"}], "durability": "group"})
        plugins = {p["name"]: p["version"] for p in call(token, "GET", src.url + tenant + "/plugins")
                   if p.get("builtin")}
        links = []
        for node, extra in [
            (sync, {"mode": "sync"}),
            (asyn, {"mode": "async", "apply": "logical", "stages": [
                {"plugin": f"prefix-filter@{plugins['prefix-filter']}",
                 "config": {"files": ["orders"], "prefixes": ["k"]}},
                {"plugin": f"namespace@{plugins['namespace']}",
                 "config": {"default": {"key_prefix": "ns/"}}}]}),
        ]:
            body = {"database": "soak",
                    "target": {"url": node.url, "database": "soak", "token": token}}
            body.update(extra)
            link = call(token, "POST", src.url + tenant + "/links", body)
            links.append(src.url + tenant + "/links/" + link["id"])
        for link in links:
            wait_for(f"link {link}",
                     lambda: call(token, "GET", link)["status"]["state"] == "streaming")

        db_url = src.url + tenant + "/databases/soak"
        writers = Writers(token, db_url, args.threads)
        writers.start()
        time.sleep(args.measure_secs)
        _, measured, _ = writers.take()
        throughput = measured / args.measure_secs
        writers.rate = throughput * args.load
        print(f"measured {throughput:.0f} records/s unpaced; soaking at {writers.rate:.0f} "
              f"records/s ({args.load:.0%}) for {args.minutes} min", flush=True)
        writers.take()

        csv_path = os.path.join(args.out, "soak.csv")
        with open(csv_path, "w") as csv:
            cols = ["minute", "records_per_s", "errors", "p50_ms", "p99_ms"]
            for n in nodes:
                cols += [f"{n.name}_rss_mb", f"{n.name}_rss_max_mb", f"{n.name}_fds",
                         f"{n.name}_disk_mb", f"{n.name}_disk_max_mb"]
            cols += ["sync_lag", "async_lag"]
            csv.write(",".join(cols) + "\n")
            started = time.time()
            probes = Probes(nodes, args.probe_secs)
            samples = int(args.minutes * 60 / args.sample_secs)
            for i in range(1, samples + 1):
                time.sleep(max(0.0, started + i * args.sample_secs - time.time()))
                lat, n, errors = writers.take()
                row = [f"{(time.time() - started) / 60:.2f}", f"{n / args.sample_secs:.0f}",
                       str(errors), f"{percentile(lat, 0.50) * 1000:.2f}",
                       f"{percentile(lat, 0.99) * 1000:.2f}"]
                seen = probes.take()
                for node in nodes:
                    rss, fds, disk = (seen[node.name][w] for w in ("rss_mb", "fds", "disk_mb"))
                    row += [f"{median(rss):.1f}", f"{max(rss, default=0):.1f}",
                            str(max(fds, default=0)), f"{median(disk):.1f}",
                            f"{max(disk, default=0):.1f}"]
                # Confirmations first, then the serial: the lag is never negative.
                acked = [call(token, "GET", link)["status"].get("acked_serial") or 0
                         for link in links]
                serial = call(token, "GET", db_url)["last_serial"]
                row += [str(serial - a) for a in acked]
                csv.write(",".join(row) + "\n")
                csv.flush()
                print(" ".join(f"{c}={v}" for c, v in zip(cols, row)), flush=True)
                free = shutil.disk_usage(work).free / 1e9
                if free < args.min_free_gb:
                    print(f"stopping early: {free:.1f} GB free on {work}", flush=True)
                    break
        probes.join()
        writers.join()
        print(f"wrote {csv_path}")
        # What each node's database holds at the end, for a disk figure that moved.
        for node in nodes:
            try:
                listing = call(token, "GET", node.url + tenant + "/databases/soak/snapshots")
            except Exception as e:  # a node that died says so in its log
                listing = {"error": str(e)}
            with open(os.path.join(args.out, f"{node.name}-snapshots.json"), "w") as f:
                json.dump(listing, f, indent=1)
    finally:
        for node in nodes:
            node.stop()
            # The node's log stays with the samples: the scratch directory goes.
            try:
                shutil.copy(os.path.join(node.dir, "node.log"),
                            os.path.join(args.out, f"{node.name}.log"))
            except OSError:
                pass
        if os.environ.get("SOAK_KEEP"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
