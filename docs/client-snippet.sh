#!/bin/sh
# Stream a Mixture-of-Agents answer from moa-local with curl (server-sent events, ending in "data: [DONE]").
curl -sSN "${MOA_BASE_URL:-http://127.0.0.1:8080/v1}/chat/completions" \
  -H "Content-Type: application/json" \
  -H "Authorization: Bearer ${MOA_API_KEY:-none}" \
  -d '{"model": "self-moa-qwen-select", "stream": true,
       "messages": [{"role": "user", "content": "What are some fun things to do in SF?"}]}'
