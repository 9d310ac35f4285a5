"""Entropy codecs of an input on the wire (stdlib zlib / bz2 / lzma), and the server's side of them.

A model's config.pbtxt may name a codec for one input:

  parameters { key: "edgeinfer_codec" value { string_value: "zlib" } }
  parameters { key: "edgeinfer_codec_input" value { string_value: "SYMBOLS" } }

The device then sends that input compressed, as UINT8 [len(compressed)], and the server
decompresses it (never past the input's declared size, so a hostile payload cannot blow up the
server's memory) before the ONNX model sees it as the declared UINT8 tensor. This is a
server-side step of this server; a stock Triton server would need it as a Python-backend
model in front of the ONNX one (see docs/deploy.md).
"""

from __future__ import annotations

import bz2
import lzma
import zlib

from common.errors import ServingError

NAMES = ("zlib", "bz2", "lzma")
CODEC_KEY, INPUT_KEY = "edgeinfer_codec", "edgeinfer_codec_input"


def compress(name: str, data: bytes) -> bytes:
  """The same settings as the payload table of agile (level 9, lzma extreme)."""
  if name == "zlib":
    return zlib.compress(data, 9)
  if name == "bz2":
    return bz2.compress(data, 9)
  if name == "lzma":
    return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
  raise ServingError(f"codec {name!r}: must be one of {list(NAMES)}")


def decompress(name: str, data: bytes, size: int) -> bytes:
  """Exactly `size` bytes out of `data` (raises ServingError on a corrupt, short or long stream)."""
  if name not in NAMES:
    raise ServingError(f"codec {name!r}: must be one of {list(NAMES)}")
  dec = {"zlib": zlib.decompressobj, "bz2": bz2.BZ2Decompressor, "lzma": lzma.LZMADecompressor}[name]()
  try:
    out = dec.decompress(data, size + 1)
  except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as e:
    raise ServingError(f"{name} payload does not decode ({e})") from None
  if len(out) != size:
    raise ServingError(
      f"{name} payload decodes to {'more than ' if len(out) > size else ''}{min(len(out), size)} bytes, must be {size}"
    )
  return out


def config_parameters(codec: str, input_name: str) -> str:
  """The config.pbtxt lines that declare `input_name` as sent compressed with `codec`."""
  if codec not in NAMES:
    raise ServingError(f"codec {codec!r}: must be one of {list(NAMES)}")
  return "".join(
    f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
    for k, v in ((CODEC_KEY, codec), (INPUT_KEY, input_name))
  )
