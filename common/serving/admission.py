"""Admission control at the server: the switch's token bucket on one model's requests.

`edgeinfer serve --switch=MODEL=q,p,m,slot_ms[,POLICY.json]` gives MODEL a bucket of integer
units, as `offload.bucket` keeps one per camera and the multi-camera simulator one at the switch:
it starts full (m units), gains q units at the end of every slot of `slot_ms` milliseconds (never
past m), and a request is admitted when the bucket holds at least p units, which it then spends
(m = 0: a closed switch, which admits nothing).
Slots are counted on the grid of the monotonic clock (multiples of slot_ms since the machine
booted), so device processes on the same machine can align their frames with them (a frame
arriving at the start of a slot and sent within the slot is judged in that slot). A request the
bucket cannot pay for is answered at once, before the model runs, with the protocol's
RESOURCE_EXHAUSTED (HTTP 429); the device then keeps its own (weak) result and counts the frame
refused.

With POLICY.json (`{"threshold": [...]}`, one value per unit count n, null for +inf) the switch
also decides, as the multi-camera simulator's smart switch: a request that carries its offloading
metric (the request parameter `metric`) is admitted only if also metric >= threshold[n].
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
  thresholds: tuple | None = None  # the smart switch's policy: metric threshold per unit count n

  def __post_init__(self):
    self.n, self.slots = self.m, int(self.clock() // self.slot_s)
    self.lock = threading.Lock()

  def take(self, metric: float | None = None) -> bool:
    """Refills for the slots that ended since the last call, then admits (spending p) or refuses;
    with thresholds, a request with a metric below threshold[n] is refused too."""
    with self.lock:
      slots = int(self.clock() // self.slot_s)
      self.n = min(self.m, self.n + self.q * (slots - self.slots))
      self.slots = slots
      if self.n < self.p:
        return False
      if self.thresholds is not None and metric is not None:
        if not metric >= self.thresholds[min(self.n, len(self.thresholds) - 1)]:
          return False
      self.n -= self.p
      return True


def parse(spec: str) -> tuple[str, Bucket]:
  """`MODEL=q,p,m,slot_ms[,POLICY.json]` -> (model, its Bucket); ConfigError naming what is wrong."""
  model, _, rest = spec.partition("=")
  parts = rest.split(",")
  where = f"--switch={spec}"
  if not model or len(parts) not in (4, 5):
    raise ConfigError(
      f"{where}: must be MODEL=q,p,m,slot_ms[,POLICY.json] (integer units q, p, m and a slot in ms)"
    )
  try:
    q, p, m = (int(v) for v in parts[:3])
    slot_ms = float(parts[3])
  except ValueError:
    raise ConfigError(f"{where}: q, p, m must be integers and slot_ms a number") from None
  if q < 0 or p < 1 or (m < p and m != 0) or not slot_ms > 0:
    raise ConfigError(f"{where}: needs q >= 0, p >= 1, m >= p (or m = 0: a closed switch) and slot_ms > 0")
  th = _policy(parts[4], m, where) if len(parts) == 5 else None
  return model, Bucket(q, p, m, slot_ms / 1e3, thresholds=th)


def _policy(path: str, m: int, where: str) -> tuple:
  """The smart switch's thresholds from POLICY.json (one per unit count 0..m; null: +inf)."""
  import math

  from common import safeio

  obj = safeio.load_json(path, what="switch policy", keys=("threshold",))
  raw = obj["threshold"]
  if not isinstance(raw, list) or len(raw) < m + 1:
    raise ConfigError(f"{where}: {path}'s threshold must be a list of at least m + 1 = {m + 1} values")
  try:
    th = tuple(math.inf if v is None else float(v) for v in raw)
  except (TypeError, ValueError):
    raise ConfigError(f"{where}: {path}'s thresholds must be numbers or null") from None
  if any(math.isnan(v) for v in th):
    raise ConfigError(f"{where}: {path}'s thresholds must not be NaN")
  return th
