"""Batch jobs: the OpenAI Batch file format, crash-safe result files, and the runner.

Between `api/` (which supplies the executor) and `engines/`: it may import
`engines/`, `mixture/` and the base modules, never `api/` or `cli/`.
"""

from moa_local.jobs.format import BatchItem, LineFailure, check_input, read_input
from moa_local.jobs.result_file import ResultFile
from moa_local.jobs.runner import BatchRunner, Execute, Progress

__all__ = ["BatchItem", "BatchRunner", "Execute", "LineFailure", "Progress", "ResultFile", "check_input", "read_input"]
