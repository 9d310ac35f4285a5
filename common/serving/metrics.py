"""The server's Prometheus metrics (`prometheus_client`, one registry per server, so that two
servers in one process keep their own counts); the text format is served at /metrics.

  edgeinfer_requests_total{model, protocol, status}       every inference request, status "ok" or
                                                            the refusal's code (INVALID_ARGUMENT, ...)
  edgeinfer_refusals_total{model, protocol, reason}       requests answered with an error
  edgeinfer_request_duration_seconds{model, protocol}     arrival to answer, answered requests
  edgeinfer_queue_duration_seconds{model, protocol}       arrival to the start of the model run
  edgeinfer_compute_duration_seconds{model}               the model run (onnxruntime)

`model` is the served model's name, or "" for a name the server does not serve (a client cannot
grow the label set).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BUCKETS_S = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
  def __init__(self):
    self.registry = CollectorRegistry(auto_describe=True)
    r = self.registry
    self.requests = Counter(
      "edgeinfer_requests", "Inference requests by outcome", ["model", "protocol", "status"], registry=r
    )
    self.refusals = Counter(
      "edgeinfer_refusals",
      "Inference requests answered with an error",
      ["model", "protocol", "reason"],
      registry=r,
    )
    self.latency = Histogram(
      "edgeinfer_request_duration_seconds",
      "Arrival to answer of answered inference requests",
      ["model", "protocol"],
      buckets=BUCKETS_S,
      registry=r,
    )
    self.queue = Histogram(
      "edgeinfer_queue_duration_seconds",
      "Arrival to the start of the model run (validation, hand-off, wait for an execution slot)",
      ["model", "protocol"],
      buckets=BUCKETS_S,
      registry=r,
    )
    self.compute = Histogram(
      "edgeinfer_compute_duration_seconds", "Model run time", ["model"], buckets=BUCKETS_S, registry=r
    )

  def answered(self, model: str, protocol: str, latency_s: float, queue_s: float, compute_s: float) -> None:
    self.requests.labels(model, protocol, "ok").inc()
    self.latency.labels(model, protocol).observe(latency_s)
    self.queue.labels(model, protocol).observe(queue_s)
    self.compute.labels(model).observe(compute_s)

  def refused(self, model: str, protocol: str, code: str) -> None:
    self.requests.labels(model, protocol, code).inc()
    self.refusals.labels(model, protocol, code).inc()

  def text(self) -> bytes:
    """The Prometheus text exposition of every metric."""
    return generate_latest(self.registry)
