"""When to try a failed live source again: exponential backoff with jitter, optionally bounded.

    policy = RetryPolicy(max_retries=None)      # live sources: keep trying (``--max-retries``)
    attempt = 1                                 # the first failure in a row
    while not policy.gives_up(attempt):
        sleep(policy.delay(attempt, rng))       # 0.5 s, 1 s, 2 s, ... up to 30 s, each +-25 %
        ...

The same policy covers a camera that is down at start and a stream that drops later. The jitter keeps
many cameras that dropped together (a switch rebooting) from all reconnecting at the same instant.
"""

from __future__ import annotations

import dataclasses
import math
import random

from strg_deploy.errors import StrgError


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """``max_retries``: retries after failures in a row before giving up (0: never retry; None: keep
    trying); ``base``: seconds before the first retry; ``factor``: growth per further failure;
    ``cap``: the longest delay in seconds; ``jitter``: each delay is scaled by a random factor in
    [1 - jitter, 1 + jitter] (then capped)."""

    max_retries: int | None = None
    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.max_retries is not None and (isinstance(self.max_retries, bool) or self.max_retries < 0):
            raise StrgError(f"max retries must be 0 or more (or unlimited), got {self.max_retries!r}")
        if not (self.base > 0 and math.isfinite(self.base)):
            raise StrgError(f"retry base delay must be a positive number of seconds, got {self.base!r}")
        if not (self.factor >= 1 and math.isfinite(self.factor)):
            raise StrgError(f"retry backoff factor must be at least 1, got {self.factor!r}")
        if not (self.cap >= self.base and math.isfinite(self.cap)):
            raise StrgError(
                f"retry delay cap must be at least the base delay ({self.base}), got {self.cap!r}"
            )
        if not 0 <= self.jitter < 1:
            raise StrgError(f"retry jitter must be in [0, 1), got {self.jitter!r}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempt``-th failure in a row (1, 2, ...): ``base * factor **
        (attempt - 1)``, at most ``cap``, times a uniform random factor in [1 - jitter, 1 + jitter], and
        at most ``cap`` again. ``rng``: any object with ``uniform(a, b)`` (default: the random module)."""
        if attempt < 1:
            raise ValueError(f"attempt counts failures from 1, got {attempt}")
        steps = attempt - 1
        if self.factor == 1 or steps < math.log(self.cap / self.base) / math.log(self.factor):
            seconds = min(self.cap, self.base * self.factor**steps)
        else:
            seconds = self.cap  # also avoids float overflow for very long outages
        if self.jitter:
            seconds *= 1.0 + (rng or random).uniform(-self.jitter, self.jitter)
        return min(seconds, self.cap)

    def gives_up(self, attempt: int) -> bool:
        """Whether the ``attempt``-th failure in a row is the last: more than ``max_retries`` retries
        would be needed (never when ``max_retries`` is None)."""
        return self.max_retries is not None and attempt > self.max_retries
