"""Drives the sidecar in HTTPS_PROXY mode with the official OpenAI SDK and httpx.

Usage: HTTPS_PROXY=http://127.0.0.1:PORT SSL_CERT_FILE=ca.pem OPENAI_API_KEY=dummy \
       python3 forward_check.py

Nothing but the environment points the clients at the sidecar: the SDK keeps its default
base URL (https://api.openai.com/v1), and trusts the sidecar's CA through SSL_CERT_FILE.
"""
import os

import httpx
import openai
from openai_checks import chat_and_stream

assert os.environ.get("HTTPS_PROXY"), "set HTTPS_PROXY"
assert os.environ.get("SSL_CERT_FILE"), "set SSL_CERT_FILE"

client = openai.OpenAI(max_retries=0)
assert str(client.base_url) == "https://api.openai.com/v1/", client.base_url
chat_and_stream(client)

# httpx on its own, also configured only by the environment (trust_env).
with httpx.Client(timeout=10) as h:
    resp = h.post(
        "https://api.openai.com/v1/chat/completions",
        headers={"Authorization": "Bearer sk-httpx-dummy"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 200, (resp.status_code, resp.text)
    assert resp.json()["choices"][0]["message"]["content"].startswith("This is a mock")
    # A host that is neither intercepted nor passed through is refused by the proxy.
    try:
        h.get("https://example.com/")
        raise AssertionError("expected the proxy to refuse example.com")
    except httpx.ProxyError as e:
        assert "403" in str(e), str(e)

print("FORWARD-OK")
