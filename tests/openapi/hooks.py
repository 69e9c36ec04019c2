"""schemathesis hooks for tests/openapi.rs, loaded through SCHEMATHESIS_HOOKS.

A plugin upload's body is raw bytes (`Content-Type: application/wasm`): send generated bodies
the way schemathesis sends `application/octet-stream`.
"""

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")
