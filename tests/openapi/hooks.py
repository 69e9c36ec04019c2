"""schemathesis hooks for tests/openapi.rs, loaded through SCHEMATHESIS_HOOKS.

A plugin upload's body is raw bytes (`Content-Type: application/wasm`): send generated bodies
the way schemathesis sends `application/octet-stream`.
"""

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")

# An import's body is lines of text (NDJSON, or CSV with a header row): send generated bodies
# as text. Whatever schemathesis makes of them is a bad line, refused by number, or nothing.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")
