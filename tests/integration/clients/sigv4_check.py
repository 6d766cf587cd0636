"""SigV4 signatures computed by botocore's own signer for the requests the sidecar sent.

stdin: JSON list of {access_key, secret_key, session_token, region, service, method, url,
       headers (the signed ones except x-amz-date / x-amz-security-token), amz_date,
       body_file}
stdout: JSON list of Authorization header values, in order.
"""
import json
import sys

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

out = []
for c in json.load(sys.stdin):
    with open(c["body_file"], "rb") as f:
        body = f.read()
    request = AWSRequest(method=c["method"], url=c["url"], data=body, headers=c["headers"])
    signer = SigV4Auth(
        Credentials(c["access_key"], c["secret_key"], c.get("session_token")), c["service"], c["region"]
    )
    # add_auth() with the sidecar's timestamp instead of "now".
    request.context["timestamp"] = c["amz_date"]
    signer._modify_request_before_signing(request)
    canonical_request = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical_request)
    signature = signer.signature(string_to_sign, request)
    signer._inject_signature_to_request(request, signature)
    out.append(request.headers["Authorization"])
print(json.dumps(out))
