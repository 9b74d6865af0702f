"""The README's tour through a client generated from the live OpenAPI document
(openapi-python-client), and nothing else: tests/client.rs generates the package
`doppel_client` into a temporary directory and runs this with it on PYTHONPATH.

argv: source node URL, target node URL, token, path of a filter plugin's wasm."""

import sys
import time

from doppel_client import AuthenticatedClient
from doppel_client.api.default import (
    begin,
    commit,
    create_database,
    create_tenant,
    get_record,
    insert_record,
    links_create,
    links_show,
    plugins_dry_run,
    plugins_upload,
    put_record,
    scan_records,
    transaction,
    add_ops,
)
from doppel_client.models import (
    DatabaseSpec,
    DryRecord,
    DryRecordOp,
    DryRun,
    FileSchema,
    LinkSpec,
    Mode,
    NewRecord,
    NewTenant,
    OpInput,
    OpName,
    OpsBody,
    PluginsUploadRole,
    RecordBody,
)
from doppel_client.types import File

source_url, target_url, token, wasm_path = sys.argv[1:5]
a = AuthenticatedClient(base_url=source_url, token=token, raise_on_unexpected_status=True)
b = AuthenticatedClient(base_url=target_url, token=token, raise_on_unexpected_status=True)


def ok(response, status):
    assert response.status_code == status, (response.status_code, response.content)
    return response.parsed


# A tenant and a database in it.
tenant = ok(create_tenant.sync_detailed(client=a, body=NewTenant(name="shop-co")), 201)
assert tenant.name == "shop-co"
spec = DatabaseSpec(
    name="shop",
    files=[FileSchema(name="orders", alt_keys=["customer"]), FileSchema(name="lines")],
)
db = ok(create_database.sync_detailed("shop-co", client=a, body=spec), 201)
assert db.name == "shop" and [f.name for f in db.files] == ["orders", "lines"], db

# Records.
record = NewRecord.from_dict({"key": "o-1001", "alt": {"customer": "ann"}, "data": {"total": 42}})
written = ok(insert_record.sync_detailed("shop-co", "shop", "orders", client=a, body=record), 201)
assert written.serial >= 1
upsert = RecordBody.from_dict({"alt": {"customer": "bob"}, "data": {"total": 7}})
put = ok(put_record.sync_detailed("shop-co", "shop", "orders", "o-1002", client=a, body=upsert), 200)
assert put.created is True
got = ok(get_record.sync_detailed("shop-co", "shop", "orders", "o-1001", client=a), 200)
assert got.key == "o-1001" and got.data == {"total": 42}, got.to_dict()

# A batch transaction, then an interactive one.
ops = OpsBody(
    ops=[
        OpInput.from_dict({"op": "insert", "file": "lines", "key": "o-1001/1", "data": {"sku": "tea"}}),
        OpInput.from_dict({"op": "update", "file": "orders", "key": "o-1001", "alt": {"customer": "ann"}, "data": {"total": 50}}),
    ]
)
committed = ok(transaction.sync_detailed("shop-co", "shop", client=a, body=ops), 200)
assert committed.count == 2, committed.to_dict()
txn = ok(begin.sync_detailed("shop-co", "shop", client=a), 201).txn
added = ok(
    add_ops.sync_detailed(
        "shop-co", "shop", txn, client=a,
        body=OpsBody(ops=[OpInput(op=OpName.DELETE, file="orders", key="o-1002")]),
    ),
    200,
)
assert added.pending == 1
ok(commit.sync_detailed("shop-co", "shop", txn, client=a), 200)
page = ok(scan_records.sync_detailed("shop-co", "shop", "orders", client=a), 200)
assert [r.key for r in page.records] == ["o-1001"], page.to_dict()

# A link to the second node, and the replica following it.
ok(create_tenant.sync_detailed(client=b, body=NewTenant(name="shop-co")), 201)
link = ok(
    links_create.sync_detailed(
        "shop-co", client=a,
        body=LinkSpec.from_dict({"database": "shop", "target": {"url": target_url, "database": "shop"}, "mode": Mode.ASYNC.value}),
    ),
    201,
)
link_id = link.to_dict()["id"]
deadline = time.monotonic() + 60
while True:
    shown = ok(links_show.sync_detailed("shop-co", link_id, client=a), 200).to_dict()
    replica = get_record.sync_detailed("shop-co", "shop", "orders", "o-1001", client=b)
    if replica.status_code == 200 and replica.parsed.data == {"total": 50}:
        break
    assert time.monotonic() < deadline, ("the replica never caught up", shown)
    time.sleep(0.1)

# A plugin upload and a dry run.
with open(wasm_path, "rb") as f:
    wasm = f.read()
uploaded = ok(
    plugins_upload.sync_detailed(
        "shop-co", "eu-only", "1", client=a,
        body=File(payload=wasm, mime_type="application/wasm"), role=PluginsUploadRole.FILTER,
    ),
    201,
).to_dict()
assert uploaded["name"] == "eu-only" and uploaded["role"] == "filter", uploaded
dry = DryRun(
    config={"prefixes": ["eu-"]},
    records=[
        DryRecord(op=DryRecordOp.INSERT, file="orders", key="eu-1", data={"n": 1}),
        DryRecord(op=DryRecordOp.INSERT, file="orders", key="us-1", data={"n": 2}),
    ],
)
result = ok(plugins_dry_run.sync_detailed("shop-co", "eu-only", "1", client=a, body=dry), 200).to_dict()
print("dry run:", result)
assert result["kept"] == [True, False], result
assert [r["key"] for r in result["records"]] == ["eu-1"], result
print("tour done through the generated client")
