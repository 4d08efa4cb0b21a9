"""moa-local: a local Mixture-of-Agents over OpenAI-compatible model servers."""

__version__ = "0.1.0"
