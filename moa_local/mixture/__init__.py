"""The Mixture-of-Agents method: run specs, the pipeline, references, traces. No HTTP, no SDK."""
