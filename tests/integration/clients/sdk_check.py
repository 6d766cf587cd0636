"""Drives the sidecar with the official OpenAI and Anthropic Python SDKs.

Usage: python3 sdk_check.py http://127.0.0.1:PORT
The app passes a dummy key: the sidecar replaces it with the provider's.
"""
import sys

import anthropic
import openai
from openai_checks import chat_and_stream

base = sys.argv[1]

client = openai.OpenAI(base_url=base + "/openai/v1", api_key="sk-app-dummy", max_retries=0)
chat_and_stream(client)

models = client.models.list()
assert any(m.id == "gpt-4o-mini" for m in models.data)

# A sidecar error reaches the app as a typed SDK error with a readable message.
lost = openai.OpenAI(base_url=base + "/nowhere/v1", api_key="x", max_retries=0)
try:
    lost.models.list()
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert "no route" in str(e), str(e)

claude = anthropic.Anthropic(base_url=base + "/anthropic", api_key="sk-app-dummy", max_retries=0)
msg = claude.messages.create(
    model="claude-3-5-haiku-latest", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
)
assert msg.content[0].text.startswith("This is a mock"), msg
assert msg.usage.output_tokens == 5 and msg.stop_reason == "max_tokens", msg.usage
with claude.messages.stream(
    model="claude-3-5-haiku-latest", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
assert streamed.startswith("This is a mock"), streamed
assert final.usage.output_tokens == 8, final.usage

print("SDK-OK")
