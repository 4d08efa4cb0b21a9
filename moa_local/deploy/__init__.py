"""Running engines: vLLM arguments, processes on this machine, compose files, GPU memory plans."""
