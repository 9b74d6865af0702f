#!/usr/bin/env python3
"""Automatic failover bench (issue 15): kill -9 of the primary under concurrent
synchronous writes, over many runs; failover time and acknowledged writes lost.

One real etcd (Debian's `etcd`, 3.4) on free loopback ports for the whole bench; per run a
fresh cluster name and three real nodes of the given binary, each with `[cluster]`
(node ids a, b, c, `lease_ttl_ms` as given, default the server's 2000). Node a holds
`shop`; the topology a -> b, a -> c (both sync, k = 1) is posted on c. Once a holds the
leader key, `--writers` threads write distinct keys to a and keep every key a 200
acknowledged; after `--acks` acknowledgements a is killed with SIGKILL. From the kill,
a client tries a put on b and c in turn (a refusal, 421 or 503, is tried again at once);
the failover time is the kill to the first 200. Then every acknowledged key is read
back from the new primary: a missing or different one is a lost acknowledged write.

Prints one JSON line per run, then p50/p99/max of the failover time and the total of
lost writes.

    cargo build --release --bin doppel
    python3 tests/bench/cluster_failover.py --bin target/release/doppel --runs 50
"""

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

TENANT = "default"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(token, method, url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (urllib.error.URLError, ConnectionError, socket.timeout, OSError) as e:
        return 0, str(e)


def ok(answer):
    status, body = answer
    if status >= 300 or status == 0:
        raise RuntimeError(f"{status}: {body}")
    return body


def wait(cond, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


class Etcd:
    def __init__(self, root):
        self.client = f"http://127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            ["etcd", "--name", "e0", "--data-dir", os.path.join(root, "etcd"),
             "--listen-client-urls", self.client, "--advertise-client-urls", self.client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"e0={peer}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def healthy():
            try:
                with urllib.request.urlopen(f"{self.client}/health", timeout=2) as r:
                    return b'"true"' in r.read()
            except Exception:
                return False
        wait(healthy, "etcd to be healthy")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Node:
    def __init__(self, binary, root, name, config):
        self.dir = os.path.join(root, name)
        self.proc = subprocess.Popen(
            [binary, "serve", "--data", self.dir, "--listen", "127.0.0.1:0",
             "--config", config, "--exit-with-stdin"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        for line in self.proc.stdout:
            if line.startswith("doppel listening on "):
                self.url = line.split("doppel listening on ", 1)[1].strip()
                break
        else:
            raise RuntimeError(f"node {name} did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def primary(token, node):
    status, c = call(token, "GET", f"{node.url}/v1/cluster")
    if status != 200:
        return None
    return next((p["node"] for p in c["primaries"] if p["database"] == "shop"), None)


def run(i, args, etcd, auth, token, root):
    here = os.path.join(root, f"run{i}")
    os.makedirs(here)
    nodes = {}
    try:
        for n in "abc":
            config = os.path.join(here, f"{n}.toml")
            ttl = f"lease_ttl_ms = {args.lease_ttl_ms}\n" if args.lease_ttl_ms else ""
            with open(config, "w") as f:
                f.write(auth + f'\n[cluster]\nname = "run{i}"\netcd = ["{etcd.client}"]\n'
                        f'node_id = "{n}"\n{ttl}')
            nodes[n] = Node(args.bin, here, n, config)
        a, b, c = nodes["a"], nodes["b"], nodes["c"]
        api = lambda n, rest: f"{n.url}/v1/tenants/{TENANT}{rest}"
        ok(call(token, "POST", api(a, "/databases"),
                {"name": "shop", "files": [{"name": "orders"}]}))
        doc = {"name": "ha", "nodes": {n: {"url": x.url} for n, x in nodes.items()},
               "links": [{"from": {"node": "a", "database": "shop"},
                          "to": {"node": t, "database": "shop"}, "mode": "sync"}
                         for t in "bc"]}
        ok(call(token, "POST", api(c, "/topologies"), doc))
        wait(lambda: primary(token, b) == "a", "a to hold the leader key")
        wait(lambda: call(token, "PUT", api(a, "/databases/shop/files/orders/records/first"),
                          {"data": {"n": 0}})[0] == 200, "a first write")

        acked = []
        refused = []  # refusals before the kill: a live primary fencing itself
        lock = threading.Lock()
        stop = threading.Event()
        alive = threading.Event()
        alive.set()

        def writer(w):
            j = 0
            while not stop.is_set():
                key = f"w{w}-{j:06}"
                status, _ = call(token, "PUT", api(a, f"/databases/shop/files/orders/records/{key}"),
                                 {"data": {"n": j}})
                if status == 200:
                    with lock:
                        acked.append((key, j))
                elif alive.is_set():
                    with lock:
                        refused.append(status)
                j += 1
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(args.writers)]
        for t in threads:
            t.start()
        wait(lambda: len(acked) >= args.acks, "acknowledged writes before the kill")
        alive.clear()
        a.kill9()
        killed = time.monotonic()
        stop.set()
        for t in threads:
            t.join()
        # The first write a new primary acknowledges, wherever it is.
        tries = 0
        winner = None
        deadline = killed + 60
        while winner is None and time.monotonic() < deadline:
            for n in (b, c):
                tries += 1
                status, _ = call(token, "PUT", api(n, "/databases/shop/files/orders/records/after"),
                                 {"data": {"n": -1}}, timeout=5)
                if status == 200:
                    winner = n
                    break
        took = (time.monotonic() - killed) * 1000
        if winner is None:
            raise RuntimeError("no new primary within 60 s")
        lost = 0
        for key, n in acked:
            status, body = call(token, "GET", api(winner, f"/databases/shop/files/orders/records/{key}"))
            if status != 200 or body.get("data") != {"n": n}:
                lost += 1
        status, cluster = call(token, "GET", f"{winner.url}/v1/cluster")
        record = (cluster.get("failovers") or [{}])[0] if status == 200 else {}
        return {"run": i + 1, "failover_ms": round(took, 1), "acked": len(acked),
                "lost": lost, "refused_before_kill": len(refused), "new_primary": "b" if winner is b else "c", "tries": tries,
                "elect_ms": record.get("took_ms"), "lost_entries": record.get("lost_entries")}
    finally:
        for n in nodes.values():
            n.stop()
        shutil.rmtree(here, ignore_errors=True)


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/doppel")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--writers", type=int, default=4)
    p.add_argument("--acks", type=int, default=200)
    p.add_argument("--lease-ttl-ms", type=int, default=0, help="0: the server's default")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="doppel-cluster-bench-")
    secret = base64.b64encode(os.urandom(32)).decode()
    auth = f'[auth]\n[[auth.keys]]\nkid = "bench"\nalg = "HS256"\nsecret = "{secret}"\n'
    config = os.path.join(root, "auth.toml")
    with open(config, "w") as f:
        f.write(auth)
    token = subprocess.run([args.bin, "token", "--config", config, "--tenant", "*",
                            "--role", "admin"], check=True, capture_output=True,
                           text=True).stdout.strip()
    etcd = Etcd(root)
    times, lost, failed, refused = [], 0, 0, 0
    try:
        for i in range(args.runs):
            try:
                r = run(i, args, etcd, auth, token, root)
            except RuntimeError as e:
                failed += 1
                print(json.dumps({"run": i + 1, "error": str(e)}), flush=True)
                continue
            times.append(r["failover_ms"])
            lost += r["lost"]
            refused += r["refused_before_kill"]
            print(json.dumps(r), flush=True)
    finally:
        etcd.stop()
        shutil.rmtree(root, ignore_errors=True)
    if times:
        print(json.dumps({"runs": len(times), "failed_runs": failed,
                          "failover_ms_p50": pct(times, 50), "failover_ms_p99": pct(times, 99),
                          "failover_ms_max": max(times), "acknowledged_writes_lost": lost,
                          "refused_before_kill": refused}))
    return 1 if lost or failed else 0


if __name__ == "__main__":
    sys.exit(main())
