"""schemathesis hooks for Doppel's contract run: a plugin upload is raw bytes
(Content-Type: application/wasm), which schemathesis has no serializer for."""

import schemathesis


@schemathesis.serializer("application/wasm")
def wasm(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")
