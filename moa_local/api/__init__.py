"""The OpenAI-compatible gateway: request protocol, routes, the chat response, errors as HTTP."""
