"""The official SDKs through translating routes (docs/unified-api.md).

usage: translate_check.py BASE_URL

  /claude  api: openai     -> an Anthropic provider (the mock checks the Messages schema)
  /gpt     api: anthropic  -> an OpenAI provider (the mock checks the Chat schema)
  /chain   api: openai     -> a dead Anthropic provider, then an OpenAI-compatible one
Prints TRANSLATE-OK when every check passed.
"""
import json
import sys

import anthropic
import openai

base = sys.argv[1]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
NOW = {"type": "function", "function": {"name": "now", "description": "The time"}}


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


oa = openai.OpenAI(base_url=f"{base}/claude/v1", api_key="unused", max_retries=0)

# plain chat
r = oa.chat.completions.create(model="gpt-4o", messages=[
    {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}], max_tokens=5)
check(r.object == "chat.completion", "object")
check(r.choices[0].message.content.startswith("This is a mock"), f"content {r.choices[0].message.content!r}")
check(r.choices[0].finish_reason == "length", f"max_tokens 5 < 8 chunks -> length, got {r.choices[0].finish_reason}")
check(r.model == "claude-sonnet-4-5", f"the target model answered: {r.model}")
check(r.usage.prompt_tokens > 0 and r.usage.completion_tokens == 5, f"usage {r.usage}")

# streaming, with the usage chunk
text, last, finish = "", None, None
for c in oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                    stream=True, stream_options={"include_usage": True}):
    last = c
    if c.choices:
        text += c.choices[0].delta.content or ""
        finish = c.choices[0].finish_reason or finish
check(text == "This is a mock response from llm-sidecar-mock, streamed", f"streamed text {text!r}")
check(finish == "stop", f"finish {finish}")
check(last.usage is not None and last.usage.completion_tokens == 8, f"final usage chunk {last}")

# parallel tool calls, not streamed
msgs = [{"role": "user", "content": "weather in Paris, and the time?"}]
r = oa.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER, NOW],
                               extra_headers={"x-mock-tool-calls": "2"})
m = r.choices[0].message
check(r.choices[0].finish_reason == "tool_calls", "finish tool_calls")
check([t.function.name for t in m.tool_calls] == ["get_weather", "now"], f"tools {m.tool_calls}")
check(json.loads(m.tool_calls[0].function.arguments) == {"city": "mock-city-0"}, "arguments")
check(json.loads(m.tool_calls[1].function.arguments) == {}, "a tool without arguments gets {}")

# the same, streamed: reassembled by the SDK's own helper
with oa.chat.completions.stream(model="gpt-4o", messages=msgs, tools=[WEATHER, NOW],
                                extra_headers={"x-mock-tool-calls": "2"}) as s:
    for _ in s:
        pass
    final = s.get_final_completion()
calls = final.choices[0].message.tool_calls
check([c.function.name for c in calls] == ["get_weather", "now"], f"streamed tools {calls}")
check(json.loads(calls[0].function.arguments) == {"city": "mock-city-0"}, f"streamed args {calls[0].function.arguments}")
check(json.loads(calls[1].function.arguments) == {}, "streamed empty args")

# the tool results go back: the mock refuses a history that breaks Anthropic's rules
msgs2 = msgs + [m.model_dump(exclude_none=True)] + [
    {"role": "tool", "tool_call_id": m.tool_calls[0].id, "content": "sunny"},
    {"role": "tool", "tool_call_id": m.tool_calls[1].id, "content": "noon"},
]
r = oa.chat.completions.create(model="gpt-4o", messages=msgs2, tools=[WEATHER, NOW], tool_choice="auto")
check(r.choices[0].finish_reason == "stop", "answer after tool results")

# images: a data URI and a URL
r = oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": [
    {"type": "text", "text": "what is this?"},
    {"type": "image_url", "image_url": {"url": PNG}},
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
check(r.choices[0].message.content, "image answer")

# out-of-range temperature: the client's error, in OpenAI's shape
try:
    oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], temperature=1.7)
    check(False, "temperature 1.7 must be refused")
except openai.BadRequestError as e:
    check("temperature" in str(e), f"error names the field: {e}")
    check(e.response.headers.get("x-llm-sidecar-error") == "untranslatable_request", "error header")

an = anthropic.Anthropic(base_url=f"{base}/gpt", api_key="unused", max_retries=0)
r = an.messages.create(model="claude-x", max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hello"}])
check(r.type == "message" and r.content[0].text.startswith("This is a mock"), f"anthropic plain {r}")
check(r.stop_reason == "end_turn", f"stop {r.stop_reason}")
check(r.usage.output_tokens == 8, f"usage {r.usage}")
with an.messages.stream(model="claude-x", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
check(streamed == "This is a mock response from llm-sidecar-mock, streamed", f"anthropic stream {streamed!r}")
check(final.stop_reason == "end_turn" and final.usage.output_tokens == 8, f"final {final}")
tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
         {"name": "now", "input_schema": {"type": "object", "properties": {}}}]
r = an.messages.create(model="claude-x", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "w?"}],
                       extra_headers={"x-mock-tool-calls": "2"})
check(r.stop_reason == "tool_use" and [b.name for b in r.content] == ["get_weather", "now"], f"anthropic tools {r}")
with an.messages.stream(model="claude-x", max_tokens=100, tools=tools, messages=[{"role": "user", "content": "w?"}],
                        extra_headers={"x-mock-tool-calls": "2"}) as s:
    final = s.get_final_message()
uses = [b for b in final.content if b.type == "tool_use"]
check([b.input for b in uses] == [{"city": "mock-city-0"}, {}], f"anthropic streamed tools {final}")
r = an.messages.create(model="claude-x", max_tokens=100, tools=tools, messages=[
    {"role": "user", "content": [{"type": "text", "text": "look"},
                                 {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG.split(",")[1]}}]},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "noon"}, {"type": "text", "text": "so?"}]}])
check(r.stop_reason == "end_turn", "anthropic history with tool results and an image")

# The Responses API on the same route: told as Chat, then as Anthropic Messages
r = oa.responses.create(model="gpt-4o", instructions="be brief", input="hello", max_output_tokens=5)
check(r.object == "response" and r.status == "incomplete", f"responses: max_output_tokens 5 -> incomplete {r}")
check(r.incomplete_details.reason == "max_output_tokens", f"responses: reason {r.incomplete_details}")
check(r.output_text.startswith("This is a"), f"responses: text {r.output_text!r}")
check(r.usage.output_tokens == 5 and r.usage.input_tokens > 0, f"responses: usage {r.usage}")
events = list(oa.responses.create(model="gpt-4o", input=[{"role": "user", "content": "hi"}], stream=True))
types = [e.type for e in events]
check(types[0] == "response.created" and types[-1] == "response.completed", f"responses stream: {types}")
text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
check(text == "This is a mock response from llm-sidecar-mock, streamed", f"responses stream text {text!r}")
check([e.sequence_number for e in events] == list(range(len(events))), "sequence numbers")
done = events[-1].response
check(done.output_text == text and done.usage.output_tokens == 8, f"responses completed {done}")
# tool calls, streamed, then their outputs go back as items
RTOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
          {"type": "function", "name": "now", "parameters": {"type": "object", "properties": {}}}]
with oa.responses.stream(model="gpt-4o", input="weather and time?", tools=RTOOLS,
                         extra_headers={"x-mock-tool-calls": "2"}) as s:
    for _ in s:
        pass
    final = s.get_final_response()
calls = [o for o in final.output if o.type == "function_call"]
check([c.name for c in calls] == ["get_weather", "now"], f"responses calls {final.output}")
check(json.loads(calls[0].arguments) == {"city": "mock-city-0"} and json.loads(calls[1].arguments) == {}, f"args {calls}")
follow = [{"role": "user", "content": "weather and time?"}] + [c.model_dump(exclude_none=True) for c in final.output] + [
    {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
    {"type": "function_call_output", "call_id": calls[1].call_id, "output": "noon"}]
r = oa.responses.create(model="gpt-4o", input=follow, tools=RTOOLS)
check(r.status == "completed" and r.output_text, f"responses after tool outputs {r}")
try:
    oa.responses.create(model="gpt-4o", input="x", previous_response_id="resp_123")
    check(False, "previous_response_id must be refused")
except openai.BadRequestError as e:
    check("previous_response_id" in str(e), f"names the field: {e}")

# a dead Anthropic target, then an OpenAI one: one coherent answer
oc = openai.OpenAI(base_url=f"{base}/chain/v1", api_key="unused", max_retries=0)
r = oc.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
check(r.choices[0].message.content.startswith("This is a mock") and r.model == "mock-fallback", f"fallback answer {r}")
text = "".join((c.choices[0].delta.content or "") for c in oc.chat.completions.create(
    model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
check(text.startswith("This is a mock"), f"fallback stream {text!r}")
print("TRANSLATE-OK")
