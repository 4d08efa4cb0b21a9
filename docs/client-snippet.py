"""Stream a Mixture-of-Agents answer from moa-local with the OpenAI Python SDK.

    MOA_BASE_URL=http://127.0.0.1:8080/v1 python docs/client-snippet.py "Why is the sky blue?"
"""

import os
import sys

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("MOA_BASE_URL", "http://127.0.0.1:8080/v1"),
    api_key=os.environ.get("MOA_API_KEY", "none"),  # any text, unless the gateway requires a key
)
question = " ".join(sys.argv[1:]) or "What are some fun things to do in SF?"
stream = client.chat.completions.create(
    model="self-moa-qwen-select",  # a mixture from the config (or an endpoint name, for a single model)
    messages=[{"role": "user", "content": question}],
    stream=True,
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
