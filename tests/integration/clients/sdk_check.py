"""Drives the sidecar with the official OpenAI and Anthropic Python SDKs.

Usage: python3 sdk_check.py http://127.0.0.1:PORT
The app passes a dummy key: the sidecar replaces it with the provider's.
"""
import sys

import anthropic
import openai

base = sys.argv[1]

client = openai.OpenAI(base_url=base + "/openai/v1", api_key="sk-app-dummy", max_retries=0)
r = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
)
assert r.choices[0].message.content.startswith("This is a mock"), r
assert r.usage.completion_tokens == 8, r.usage

text, usage, events = "", None, 0
stream = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Say hello"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    events += 1
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
assert text.startswith("This is a mock"), text
assert usage is not None and usage.completion_tokens == 8, usage
assert events >= 10, events

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
