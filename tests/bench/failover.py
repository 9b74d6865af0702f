#!/usr/bin/env python3
"""Failover bench (issue 23): the first write the new primary acknowledges after the
failover call, and the bytes sent to each follower.

Three real nodes of the given binary on loopback, a -> b and a -> c both sync (k = 1),
`--records` records loaded on a in batches, then `--keys` keys updated in a loop on a
until both links have confirmed everything; `kill -9` of a; then, timed from the moment
the failover call (topology on c, promoting b) is sent: the failover call's answer and
the first 200 of a single-record put on b (tried again at once on a refusal). Then the
b -> c link's status: bootstraps, the serial it continued from, bytes sent.

    cargo build --release --bin doppel
    python3 tests/bench/failover.py --bin target/release/doppel --records 500000 --rounds 3
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

TENANT = "default"


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
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def call(token, method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def ok(answer):
    status, body = answer
    if status >= 300:
        raise RuntimeError(f"{status}: {body}")
    return body


def wait(cond, what, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def round_(binary, records, keys, config, token):
    root = tempfile.mkdtemp(prefix="doppel-failover-bench-")
    nodes = []
    try:
        a, b, c = (Node(binary, root, n, config) for n in "abc")
        nodes = [a, b, c]
        api = lambda n, rest: f"{n.url}/v1/tenants/{TENANT}{rest}"
        ok(call(token, "POST", api(a, "/databases"),
                {"name": "shop", "files": [{"name": "orders"}]}))
        for start in range(0, records, 5000):
            ops = [{"op": "upsert", "file": "orders", "key": f"r-{i:08}",
                    "data": {"n": i, "pad": "x" * 100}}
                   for i in range(start, min(records, start + 5000))]
            ok(call(token, "POST", api(a, "/databases/shop/transactions"), {"ops": ops}))
        def caught_up():
            links = ok(call(token, "GET", api(a, "/links")))
            return len(links) == 2 and all(
                l["status"]["state"] == "streaming"
                and l["status"]["acked_serial"] == l["status"]["source_serial"] for l in links)

        doc = {"name": "ha",
               "nodes": {n: {"url": x.url} for n, x in zip("abc", nodes)},
               "links": [{"from": {"node": "a", "database": "shop"},
                          "to": {"node": t, "database": "shop"}, "mode": "sync"}
                         for t in "bc"]}
        ok(call(token, "POST", api(c, "/topologies"), doc))
        # The replicas are bootstrapped first (the links come after the load).
        wait(lambda: caught_up(), "both links to bootstrap")
        for i in range(keys * 20):
            ok(call(token, "PUT", api(a, f"/databases/shop/files/orders/records/k-{i % keys}"),
                    {"data": {"n": i}}))

        wait(caught_up, "both links to catch up")
        a.kill9()

        started = time.monotonic()
        answer = {}
        t = threading.Thread(target=lambda: answer.update(
            r=call(token, "POST", api(c, "/topologies/ha/failover"),
                   {"node": "b", "database": "shop"})))
        t.start()
        tries = 0
        while True:
            tries += 1
            status, _ = call(token, "PUT", api(b, "/databases/shop/files/orders/records/first"),
                             {"data": {"after": True}})
            if status == 200:
                break
        first_ms = (time.monotonic() - started) * 1000
        t.join()
        failover = ok(answer["r"])
        def to_c():
            links = ok(call(token, "GET", api(b, "/links")))
            return next((l for l in links if l["target"]["url"] == c.url), None)

        def c_caught_up():
            link = to_c()
            return link is not None and link["status"]["state"] == "streaming" \
                and link["status"]["acked_serial"] == link["status"]["source_serial"]
        wait(c_caught_up, "b -> c to catch up")
        s = to_c()["status"]
        return {"first_write_ms": round(first_ms, 1),
                "failover_call_ms": failover.get("failover", {}).get("took_ms"),
                "tries": tries,
                "c_bootstraps": s["bootstraps"], "c_started_at": s.get("started_at"),
                "c_bytes_sent": s.get("bytes_sent"),
                "serial": failover["promoted"]["serial"]}
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(root, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/doppel")
    p.add_argument("--records", type=int, default=0)
    p.add_argument("--keys", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="doppel-failover-bench-config-")
    config = os.path.join(work, "doppel.toml")
    secret = base64.b64encode(os.urandom(32)).decode()
    with open(config, "w") as f:
        f.write(f'[auth]\n[[auth.keys]]\nkid = "bench"\nalg = "HS256"\nsecret = "{secret}"\n')
    token = subprocess.run([args.bin, "token", "--config", config, "--tenant", "*",
                            "--role", "admin"], check=True, capture_output=True,
                           text=True).stdout.strip()
    try:
        for i in range(args.rounds):
            print(json.dumps({"round": i + 1, "records": args.records, "keys": args.keys,
                              **round_(args.bin, args.records, args.keys, config, token)}),
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
