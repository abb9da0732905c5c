"""What a user of the official openai SDK sees through Switchyard's HTTP door.

Driven by tests/http_sdk.rs, which scripted the fake providers for these calls in this order;
prints one JSON object of observations for the Rust side to assert on.
"""
import json
import os

import openai
from openai import OpenAI

base = os.environ["SWITCHYARD_BASE_URL"] + "/v1"
hi = [{"role": "user", "content": "hi"}]
client = OpenAI(base_url=base, api_key=os.environ["SDK_KEY"], max_retries=0)
out = {"sdk": openai.__version__}

r = client.chat.completions.create(model="chat", messages=hi)
out["create"] = {"text": r.choices[0].message.content, "tokens": r.usage.total_tokens}

stream = client.chat.completions.create(
    model="chat", messages=hi, stream=True, stream_options={"include_usage": True}
)
text, usage = "", None
for chunk in stream:
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage.total_tokens
out["stream"] = {"text": text, "tokens": usage}

raw = client.chat.completions.with_raw_response.create(model="chat", messages=hi)
out["fallback"] = {
    "llm_fallback": raw.headers.get("llm-fallback"),
    "deployment": raw.headers.get("llm-deployment"),
    "text": raw.parse().choices[0].message.content,
}

out["models"] = sorted(m.id for m in client.models.list())


def error_of(call):
    try:
        call()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {"class": type(e).__name__, "status": e.status_code, "code": body.get("code"),
                "retry_after": e.response.headers.get("retry-after")}
    return None


errors = {}
wrong = OpenAI(base_url=base, api_key="sk-not-a-key", max_retries=0)
errors["401"] = error_of(lambda: wrong.chat.completions.create(model="chat", messages=hi))
errors["403"] = error_of(lambda: client.chat.completions.create(model="backup", messages=hi))
errors["404"] = error_of(lambda: client.chat.completions.create(model="gpt-17", messages=hi))
big = [{"role": "user", "content": "x" * 8192}]
errors["413"] = error_of(lambda: client.chat.completions.create(model="chat", messages=big))
slow = OpenAI(base_url=base, api_key=os.environ["SLOW_KEY"], max_retries=0)
slow.chat.completions.create(model="chat", messages=hi)
errors["429"] = error_of(lambda: slow.chat.completions.create(model="chat", messages=hi))
errors["503"] = error_of(lambda: client.chat.completions.create(model="chat", messages=hi))
errors["504"] = error_of(lambda: client.chat.completions.create(
    model="chat", messages=hi, extra_headers={"Llm-Deadline": "300ms"}))
out["errors"] = errors

# A client that leaves mid-stream: one chunk, then the stream is closed.
stream = client.chat.completions.create(model="chat", messages=hi, stream=True)
first = next(iter(stream))
out["left_after"] = first.object
stream.close()

# Embeddings as the SDK asks for them (base64 by default, decoded by the SDK into floats).
e = client.embeddings.create(model="embed", input=["alpha", "beta"])
raw = client.embeddings.with_raw_response.create(model="embed", input="alpha", encoding_format="float")
out["embed"] = {
    "n": len(e.data),
    "dims": len(e.data[0].embedding),
    "alpha": e.data[0].embedding,
    "beta": e.data[1].embedding,
    "model": e.model,
    "tokens": e.usage.prompt_tokens,
    "float_alpha": raw.parse().data[0].embedding,
    "space": raw.headers.get("llm-embedding-space"),
}

print(json.dumps(out))
