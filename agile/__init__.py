"""agile: AgileNN (Huang & Gao, MobiCom'22), XAI-driven split inference trained with grad-of-grad."""

from agile import losses, xai
from agile.losses import disorder_loss, skewness, skewness_loss
from agile.models import AgileConfig, AgileNN, quantize
from agile.xai import integrated_gradients

__all__ = [
  "AgileConfig",
  "AgileNN",
  "disorder_loss",
  "integrated_gradients",
  "losses",
  "quantize",
  "skewness",
  "skewness_loss",
  "xai",
]
