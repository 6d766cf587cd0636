"""The official SDKs through routes whose targets are Bedrock Converse and Gemini on
Vertex AI, and a fallback across three formats (docs/unified-api.md).

usage: translate_cloud_check.py BASE_URL

  /bedrock       api: openai     -> Bedrock Converse (the mock checks Converse's rules)
  /gemini        api: openai     -> Gemini (the mock checks Gemini's rules, signatures)
  /bedrock-msgs  api: anthropic  -> Bedrock Converse
  /gemini-msgs   api: anthropic  -> Gemini
  /chain         api: openai     -> a failing Anthropic, then Bedrock, then OpenAI
  /chain2        api: openai     -> a failing Anthropic, a failing Bedrock, then OpenAI
Prints CLOUD-OK when every check passed.
"""
import json
import sys

import anthropic
import openai

base = sys.argv[1]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}}
NOW = {"type": "function", "function": {"name": "now", "description": "The time"}}
MOCK_TEXT = "This is a mock response from llm-sidecar-mock, streamed"


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def openai_target(path, model, image_url_ok):
    oa = openai.OpenAI(base_url=f"{base}/{path}/v1", api_key="unused", max_retries=0)
    where = path

    r = oa.chat.completions.create(model="gpt-4o", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}], max_tokens=5)
    check(r.choices[0].message.content.startswith("This is a mock"), f"{where}: content {r}")
    check(r.choices[0].finish_reason == "length", f"{where}: max_tokens 5 -> length, got {r.choices[0].finish_reason}")
    check(r.model == model, f"{where}: the target model answered: {r.model}")
    check(r.usage.prompt_tokens > 0 and r.usage.completion_tokens == 5, f"{where}: usage {r.usage}")

    text, last, finish, first = "", None, None, None
    for c in oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                        stream=True, stream_options={"include_usage": True}):
        last = c
        if c.choices:
            d = c.choices[0].delta.content
            if d and first is None:
                first = d
            text += d or ""
            finish = c.choices[0].finish_reason or finish
    check(text == MOCK_TEXT, f"{where}: streamed text {text!r}")
    check(first == "This", f"{where}: the first delta is kept: {first!r}")
    check(finish == "stop", f"{where}: finish {finish}")
    check(last.usage is not None and last.usage.completion_tokens == 8, f"{where}: final usage chunk {last}")

    msgs = [{"role": "user", "content": "weather in Paris, and the time?"}]
    r = oa.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER, NOW],
                                   extra_headers={"x-mock-tool-calls": "2"})
    m = r.choices[0].message
    check(r.choices[0].finish_reason == "tool_calls", f"{where}: finish tool_calls")
    check([t.function.name for t in m.tool_calls] == ["get_weather", "now"], f"{where}: tools {m.tool_calls}")
    check(len({t.id for t in m.tool_calls}) == 2, f"{where}: distinct call ids {m.tool_calls}")
    check(json.loads(m.tool_calls[0].function.arguments) == {"city": "mock-city-0"}, f"{where}: arguments")
    check(json.loads(m.tool_calls[1].function.arguments) == {}, f"{where}: a tool without arguments gets {{}}")

    with oa.chat.completions.stream(model="gpt-4o", messages=msgs, tools=[WEATHER, NOW],
                                    extra_headers={"x-mock-tool-calls": "2"}) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    check([c.function.name for c in calls] == ["get_weather", "now"], f"{where}: streamed tools {calls}")
    check(json.loads(calls[0].function.arguments) == {"city": "mock-city-0"}, f"{where}: streamed args {calls}")
    check(json.loads(calls[1].function.arguments) == {}, f"{where}: streamed empty args")

    # The results go back, twice: from the JSON answer and from the streamed one. The
    # mocks refuse a history that breaks their rules (Bedrock: toolConfig, toolResult
    # ids; Gemini: function names, the call's thought signature).
    for made in (m, final.choices[0].message):
        history = msgs + [made.model_dump(exclude_none=True)] + [
            {"role": "tool", "tool_call_id": made.tool_calls[0].id, "content": "sunny"},
            {"role": "tool", "tool_call_id": made.tool_calls[1].id, "content": "noon"},
        ]
        r = oa.chat.completions.create(model="gpt-4o", messages=history, tools=[WEATHER, NOW])
        check(r.choices[0].finish_reason == "stop", f"{where}: answer after tool results {r}")
        # and without tools offered on the last turn: the history still declares them
        r = oa.chat.completions.create(model="gpt-4o", messages=history)
        check(r.choices[0].finish_reason == "stop", f"{where}: history with calls, no tools {r}")

    r = oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": PNG}}]}])
    check(r.choices[0].message.content, f"{where}: image answer")
    url_image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]
    if image_url_ok:
        r = oa.chat.completions.create(model="gpt-4o", messages=url_image)
        check(r.choices[0].message.content, f"{where}: URL image")
    else:
        try:
            oa.chat.completions.create(model="gpt-4o", messages=url_image)
            check(False, f"{where}: an image URL cannot go to Bedrock")
        except openai.BadRequestError as e:
            check("data URI" in str(e), f"{where}: the error says what to do: {e}")
            check(e.response.headers.get("x-llm-sidecar-error") == "untranslatable_request", "error header")


def anthropic_target(path, model):
    an = anthropic.Anthropic(base_url=f"{base}/{path}", api_key="unused", max_retries=0)
    where = path
    r = an.messages.create(model="claude-x", max_tokens=100, system="be brief",
                           messages=[{"role": "user", "content": "hello"}])
    check(r.type == "message" and r.content[0].text.startswith("This is a mock"), f"{where}: plain {r}")
    check(r.stop_reason == "end_turn" and r.model == model, f"{where}: stop/model {r}")
    check(r.usage.output_tokens == 8, f"{where}: usage {r.usage}")
    with an.messages.stream(model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    check(streamed == MOCK_TEXT, f"{where}: stream {streamed!r}")
    check(final.stop_reason == "end_turn" and final.usage.output_tokens == 8, f"{where}: final {final}")
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
             {"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    with an.messages.stream(model="claude-x", max_tokens=100, tools=tools,
                            messages=[{"role": "user", "content": "w?"}],
                            extra_headers={"x-mock-tool-calls": "2"}) as s:
        final = s.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    check(final.stop_reason == "tool_use", f"{where}: stop {final}")
    check([b.input for b in uses] == [{"city": "mock-city-0"}, {}], f"{where}: streamed tools {final}")
    r = an.messages.create(model="claude-x", max_tokens=100, tools=tools, messages=[
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id, "content": "ok"} for u in uses]}])
    check(r.stop_reason == "end_turn", f"{where}: history with tool results {r}")


openai_target("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", image_url_ok=False)
openai_target("gemini", "gemini-2.5-flash", image_url_ok=True)
# Gemini takes temperatures up to 2
oa = openai.OpenAI(base_url=f"{base}/gemini/v1", api_key="unused", max_retries=0)
r = oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], temperature=1.5)
check(r.choices[0].message.content, "gemini temperature 1.5")
anthropic_target("bedrock-msgs", "anthropic.claude-3-5-sonnet-20240620-v1:0")
anthropic_target("gemini-msgs", "gemini-2.5-flash")

# Fallback across three formats: one coherent answer, from the first target that works.
for path, model in (("chain", "anthropic.claude-3-5-sonnet-20240620-v1:0"), ("chain2", "mock-fallback")):
    oc = openai.OpenAI(base_url=f"{base}/{path}/v1", api_key="unused", max_retries=0)
    r = oc.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    check(r.choices[0].message.content.startswith("This is a mock") and r.model == model, f"{path}: answer {r}")
    check(r.object == "chat.completion" and r.choices[0].finish_reason == "stop", f"{path}: shape {r}")
    chunks = list(oc.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                             stream=True, stream_options={"include_usage": True}))
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    check(text == MOCK_TEXT, f"{path}: stream {text!r}")
    check({c.model for c in chunks} == {model}, f"{path}: one model in the stream {[c.model for c in chunks]}")
    check(len({c.id for c in chunks}) == 1, f"{path}: one id in the stream")
    check(chunks[-1].usage.completion_tokens == 8, f"{path}: usage {chunks[-1]}")
print("CLOUD-OK")
