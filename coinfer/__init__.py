"""coinfer: RTCoInfer (Zhang et al., JSAC 2023), a switchable split CNN and an MPC controller
choosing the compression setup (channels x bits) of every frame. See docs/coinfer.md.

Public API: `compress.quantize`, `compress.residual_rate`, `controller.make_mpc`, `simulate.run`.
"""

from coinfer import compress, controller, simulate
from coinfer.compress import quantize, residual_rate
from coinfer.controller import make_mpc

__all__ = ["compress", "controller", "make_mpc", "quantize", "residual_rate", "simulate"]
