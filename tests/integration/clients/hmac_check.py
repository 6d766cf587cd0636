"""Independent HMAC signature computation (Python standard library only).

stdin: JSON list of {secret, method, path, timestamp, nonce, body_file}
stdout: JSON list of base64 signatures, in order.
"""
import base64
import hashlib
import hmac
import json
import sys

out = []
for c in json.load(sys.stdin):
    with open(c["body_file"], "rb") as f:
        body = f.read()
    canonical = "\n".join(
        [c["method"], c["path"], c["timestamp"], c["nonce"], hashlib.sha256(body).hexdigest()]
    )
    digest = hmac.new(c["secret"].encode(), canonical.encode(), hashlib.sha256).digest()
    out.append(base64.b64encode(digest).decode())
print(json.dumps(out))
