"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks): WHIP/WHEP offers are SDP text."""

import schemathesis

schemathesis.serializer.alias("application/sdp", "text/plain")
