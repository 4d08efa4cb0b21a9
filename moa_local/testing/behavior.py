"""What the fake engine answers and how it misbehaves, and what it records.

`Behavior` is the fake engine's whole knob set: the reply (a template or a
fixed text, split into word tokens), latency, per-token delay, and the
faults (an HTTP error status, a stream cut after K chunks, a hang) with how
many requests they last. `RecordedRequest` and `FakeEvent` are what the fake
saw.

Left out on purpose: any I/O (`fake_engine.py` serves it over HTTP) and
the payloads (`payload.py` builds them).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_TEMPLATE = "{model} says: {words}"

# Field name -> accepted types; `None` in the tuple means the field is optional.
_FIELD_TYPES: dict[str, tuple[type | None, ...]] = {
    "tokens": (int,),
    "template": (str,),
    "reply": (str, None),
    "latency_ms": (float,),
    "token_delay_ms": (float,),
    "status": (int, None),
    "error_message": (str,),
    "retry_after": (float, None),
    "cut_after": (int, None),
    "hang": (bool,),
    "times": (int, None),
}


@dataclass
class Behavior:
    """How the fake answers chat completions. Mutable: tests change it live.

    The reply is `reply` if set, else `template` formatted with `{model}`,
    `{words}` (`tokens` filler words), `{request}` (1-based chat request
    counter), `{index}` (choice index) and `{prompt}` (last user message).
    Each whitespace-separated word of the reply is one token and one chunk.

    Faults: `status` answers with that HTTP error (OpenAI error body,
    `Retry-After` when `retry_after` is set); `cut_after` drops the
    connection after that many content chunks (no `[DONE]`); `hang` never
    answers until the client goes away. `times` limits the faults to the next
    `times` chat requests (then they clear); `None` means every request.
    `latency_ms` delays the response headers (and so the first token).

    `update` and `take` are atomic, also between threads (a test thread
    changing what the server thread answers): a patch that fails validation
    changes nothing, and two patches never mix. Setting one field directly
    is atomic too; a test that sets several at once uses `update`.
    """

    tokens: int = 8
    template: str = DEFAULT_TEMPLATE
    reply: str | None = None
    latency_ms: float = 0.0
    token_delay_ms: float = 0.0
    status: int | None = None
    error_message: str = "injected fault"
    retry_after: float | None = None
    cut_after: int | None = None
    hang: bool = False
    times: int | None = None

    def __post_init__(self) -> None:
        for name, kinds in _FIELD_TYPES.items():
            value = getattr(self, name)
            if value is None and None in kinds:
                continue
            if float in kinds and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, float(value))
                continue
            if isinstance(value, bool) and bool not in kinds:
                raise ValueError(f"behavior.{name}: expected {_kind_names(kinds)}, got {value!r}")
            if not isinstance(value, tuple(k for k in kinds if k is not None)):
                raise ValueError(f"behavior.{name}: expected {_kind_names(kinds)}, got {value!r}")
        if self.tokens < 0 or self.latency_ms < 0 or self.token_delay_ms < 0:
            raise ValueError("behavior: tokens, latency_ms and token_delay_ms must be >= 0")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"behavior.status: expected 400..599, got {self.status!r}")
        try:
            self.template.format(model="m", words="w1", request=1, index=0, prompt="p")
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            raise ValueError(f"behavior.template: cannot format {self.template!r}: {exc!r}") from exc
        self._lock = threading.Lock()  # not a field: equality, to_dict and replace ignore it

    def update(self, patch: Mapping[str, Any]) -> None:
        """Set several fields at once, validated; unknown names raise ValueError."""
        unknown = sorted(set(patch) - set(_FIELD_TYPES))
        if unknown:
            raise ValueError(f"behavior: unknown field(s) {unknown} (known: {sorted(_FIELD_TYPES)})")
        with self._lock:  # validated against, and applied to, the same current state
            checked = dataclasses.replace(self, **patch)
            for name in _FIELD_TYPES:
                setattr(self, name, getattr(checked, name))

    def take(self) -> Behavior:
        """A snapshot for one chat request; counts down `times` if a fault is set."""
        with self._lock:
            snapshot = copy.copy(self)  # no re-validation: this runs per request
            faulty = self.status is not None or self.cut_after is not None or self.hang
            if faulty and self.times is not None:
                self.times -= 1
                if self.times <= 0:
                    self.status = self.cut_after = self.times = None
                    self.hang = False
        return snapshot

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received. `at` is `time.monotonic()` at arrival."""

    seq: int
    method: str
    path: str
    body: Any
    headers: dict[str, str]
    at: float


@dataclass(frozen=True)
class FakeEvent:
    """Something seen while answering request `seq`.

    `kind` is "disconnect" (the client went away while the fake was still
    producing) or "cut" (the fake dropped the connection on purpose).
    `stage` is where the fake was: "latency", "hang", "generate" (a
    non-streamed answer's token time), "stream" or "body"; `chunks` counts
    content chunks produced so far. `at` is `time.monotonic()`.
    """

    kind: str
    seq: int
    path: str
    stage: str
    chunks: int
    at: float


def _kind_names(kinds: tuple[type | None, ...]) -> str:
    return " or ".join("null" if k is None else k.__name__ for k in kinds)
