"""Admission control at the server: the switch's token bucket on one model's requests.

`edgeinfer serve --switch=MODEL=q,p,m,slot_ms` gives MODEL a bucket of integer units, as
`offload.bucket` keeps one per camera and the multi-camera simulator one at the switch: it starts
full (m units), gains q units at the end of every slot of `slot_ms` milliseconds (never past m),
and a request is admitted when the bucket holds at least p units, which it then spends. A request
the bucket cannot pay for is answered at once, before the model runs, with the protocol's
RESOURCE_EXHAUSTED (HTTP 429); the device then keeps its own (weak) result and counts the frame
refused.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from common.errors import ConfigError


@dataclasses.dataclass
class Bucket:
  """One model's admission bucket (q, p, m units; slot seconds); thread-safe."""

  q: int
  p: int
  m: int
  slot_s: float
  clock: Callable[[], float] = time.monotonic

  def __post_init__(self):
    self.n, self.start, self.slots = self.m, self.clock(), 0
    self.lock = threading.Lock()

  def take(self) -> bool:
    """Refills for the slots that ended since the last call, then admits (spending p) or refuses."""
    with self.lock:
      slots = int((self.clock() - self.start) // self.slot_s)
      self.n = min(self.m, self.n + self.q * (slots - self.slots))
      self.slots = slots
      if self.n < self.p:
        return False
      self.n -= self.p
      return True


def parse(spec: str) -> tuple[str, Bucket]:
  """`MODEL=q,p,m,slot_ms` -> (model, its Bucket); ConfigError naming what is wrong."""
  model, _, rest = spec.partition("=")
  parts = rest.split(",")
  where = f"--switch={spec}"
  if not model or len(parts) != 4:
    raise ConfigError(f"{where}: must be MODEL=q,p,m,slot_ms (integer units q, p, m and a slot in ms)")
  try:
    q, p, m = (int(v) for v in parts[:3])
    slot_ms = float(parts[3])
  except ValueError:
    raise ConfigError(f"{where}: q, p, m must be integers and slot_ms a number") from None
  if q < 0 or p < 1 or m < p or not slot_ms > 0:
    raise ConfigError(f"{where}: needs q >= 0, p >= 1, m >= p and slot_ms > 0")
  return model, Bucket(q, p, m, slot_ms / 1e3)
