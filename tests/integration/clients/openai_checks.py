"""Checks shared by the client scripts: one chat completion and one streamed one
through the sidecar, answered by the mock provider (8 completion tokens each)."""


def chat_and_stream(client):
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
