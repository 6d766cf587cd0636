"""Decodes an AWS event-stream body with botocore's own parser (an independent decoder:
prelude and message CRCs, header types), as the AWS SDKs read Bedrock's streams.

stdin: JSON {"body_file": path}
stdout: JSON list of {"headers": {name: value}, "payload": parsed JSON or text}
A framing or checksum error exits non-zero with botocore's message.
"""
import json
import sys

from botocore.eventstream import EventStreamBuffer

with open(json.load(sys.stdin)["body_file"], "rb") as f:
    data = f.read()
buf = EventStreamBuffer()
buf.add_data(data)
out = []
for m in buf:
    payload = m.payload.decode()
    try:
        payload = json.loads(payload)
    except ValueError:
        pass
    out.append({"headers": dict(m.headers), "payload": payload})
# Nothing left over: the body was whole messages.
assert not buf._data, f"{len(buf._data)} trailing bytes"
print(json.dumps(out))
