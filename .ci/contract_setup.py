"""Set-up for the contract run (.ci/contract): gives the node under test the things the
API's path parameters name, so schemathesis' requests reach the operations behind them
rather than a 404: a database with records and a snapshot, a restore, links (to
databases of the same node, so the node holds both a link and its replica; a logical one
with dead letters), topologies, and victims for the operations that delete. Prints `export NAME=value`
lines that .ci/schemathesis.toml reads as ${NAME}.

usage: python contract_setup.py URL TOKEN
"""

import json
import sys
import time
import urllib.error
import urllib.request

url, token = sys.argv[1], sys.argv[2]
T = "/v1/tenants/default"


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
    except urllib.error.HTTPError as e:
        sys.exit(f"contract set-up: {method} {path} -> {e.code} {e.read().decode()}")
    return json.loads(text) if text else None


def until(what, check, seconds=60):
    """Wait for a condition the node reaches on its own (a link connecting)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"contract set-up: {what} did not happen within {seconds} s")
        time.sleep(0.05)


out = {}
call("POST", "/v1/tenants", {"name": "scratch"})
files = [{"name": "orders", "alt_keys": ["customer"]}, {"name": "lines"}]
for db in ["shop", "victim", "replayed"]:
    call("POST", f"{T}/databases", {"name": db, "files": files})
db = f"{T}/databases/shop"
for key in ["k1", "k2", "gone"]:
    call("PUT", f"{db}/files/orders/records/{key}", {"data": {"total": 1}, "alt": {"customer": "ann"}})
call("POST", f"{db}/snapshots")
for key in ["r1", "r2", "r3"]:
    call("PUT", f"{T}/databases/replayed/files/orders/records/{key}", {"data": {"total": 1}})
serial = call("GET", db)["last_serial"]
out["DOPPEL_RESTORE"] = call("POST", f"{db}/restore", {"serial": serial, "into": "restored"})["id"]
for name, target in [("DOPPEL_LINK", "copy"), ("DOPPEL_LINK_VICTIM", "copy2")]:
    link = call("POST", f"{T}/links", {"database": "shop", "target": {"url": url, "database": target}})
    out[name] = link["id"]
for name in ["DOPPEL_LINK", "DOPPEL_LINK_VICTIM"]:
    until(
        f"link {out[name]} streaming",
        lambda: call("GET", f"{T}/links/{out[name]}")["status"]["state"] == "streaming",
    )
# A logical link whose stage (the built-in `rename`) fails on a record whose "s" is not
# an object: under the quarantine policy each such record becomes a dead letter.
rename = next(p for p in call("GET", f"{T}/plugins") if p["name"] == "rename")
out["DOPPEL_PLUGIN"], out["DOPPEL_PLUGIN_VERSION"] = rename["name"], rename["version"]
stage = {"plugin": f"rename@{rename['version']}", "config": {"default": {"orders": {"fields": {"a": "s.a"}}}}}
logical = call(
    "POST",
    f"{T}/links",
    {"database": "shop", "target": {"url": url, "database": "logical"}, "apply": "logical",
     "on_error": "quarantine", "stages": [stage]},
)
out["DOPPEL_LINK_LOGICAL"] = logical["id"]
for key in ["bad1", "bad2"]:
    call("PUT", f"{db}/files/orders/records/{key}", {"data": {"a": 1, "s": "x"}})
dead = f"{T}/links/{logical['id']}/dead-letters"
until("two dead letters", lambda: len(call("GET", dead)) >= 2)
letters = call("GET", dead)
out["DOPPEL_DEAD"], out["DOPPEL_DEAD_VICTIM"] = letters[0]["id"], letters[1]["id"]
for topology in ["t1", "t2"]:
    call("POST", f"{T}/topologies", {"name": topology, "nodes": {"a": {"url": url}}})
for name, value in out.items():
    print(f"export {name}={value}")
