"""schemathesis hooks for Doppel's contract run: a plugin upload is raw bytes
(Content-Type: application/wasm) and a binary batch has a layout of its own
(Content-Type: application/vnd.doppel.batch), which schemathesis has no serializers
for."""

import schemathesis


@schemathesis.serializer("application/wasm")
def wasm(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")



@schemathesis.serializer("application/vnd.doppel.batch")
def batch(ctx, value):
    """The transaction routes' binary batch (docs/API.md). A generated string (the
    document's schema: a binary string) becomes a batch the node takes, one upsert of
    orders/k1 whose data is the string's bytes in hex; anything else (negative data) is
    sent as bytes that are no batch, which the node must refuse."""
    import json
    import struct

    raw = getattr(value, "data", value)
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not isinstance(raw, (bytes, bytearray)):
        return b"not a batch: " + str(value).encode("utf-8")
    data = json.dumps(bytes(raw).hex()).encode("utf-8")
    out = b"DPB1" + struct.pack("<I", 1) + bytes([3])
    for s in (b"orders", b"k1"):
        out += struct.pack("<H", len(s)) + s
    return out + bytes([0]) + struct.pack("<I", len(data)) + data
