"""A delaying TCP relay: the propagation delay of the tc link, through the kernel.

  python -m common.serving.relay --listen HOST:PORT --target HOST:PORT --delay_ms 20

Accepts connections on `--listen` and forwards every byte to `--target` and back, each chunk
written `--delay_ms` after it was read, in order (a fixed one-way delay in each direction, so a
round trip gains twice it). The kernel's sockets carry the bytes on both sides, so the tbf
shaping and TCP's own behaviour are untouched; the relay only holds them, as a long wire would.
This kernel has no netem qdisc, so `common.serving.link.TcLink` runs this relay in the server's
namespace when a delay is asked for. Prints `relaying HOST:PORT -> HOST:PORT` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
  """Copies reader to writer, each chunk held until `delay_s` after it arrived (order kept)."""
  queue: asyncio.Queue = asyncio.Queue()

  async def read():
    while data := await reader.read(CHUNK):
      await queue.put((time.monotonic() + delay_s, data))
    await queue.put((time.monotonic() + delay_s, b""))

  async def write():
    while True:
      due, data = await queue.get()
      await asyncio.sleep(max(due - time.monotonic(), 0.0))
      if not data:
        break
      writer.write(data)
      await writer.drain()
    if writer.can_write_eof():
      writer.write_eof()

  try:
    await asyncio.gather(read(), write())
  except (ConnectionError, OSError):
    pass
  finally:
    writer.close()


def handler(target: tuple[str, int], delay_s: float):
  async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
      up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
      writer.close()
      return
    await asyncio.gather(_pipe(reader, up_writer, delay_s), _pipe(up_reader, writer, delay_s))

  return serve


async def relay(listen: tuple[str, int], target: tuple[str, int], delay_s: float) -> None:
  server = await asyncio.start_server(handler(target, delay_s), *listen)
  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for sig in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(sig, stop.set)
  print(f"relaying {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
  async with server:
    await stop.wait()


def _address(text: str) -> tuple[str, int]:
  host, _, port = text.rpartition(":")
  if not host or not port.isdigit():
    raise argparse.ArgumentTypeError(f"{text!r}: must be HOST:PORT")
  return host, int(port)


def start(listen: str, target: str, delay_ms: float, *, prefix=(), timeout_s: float = 30.0):
  """Starts the relay process (behind `prefix`, e.g. `ip netns exec NS`) and waits until it listens."""
  from common.serving.process import start_helper

  args = [f"--listen={listen}", f"--target={target}", f"--delay_ms={delay_ms}"]
  return start_helper("common.serving.relay", args, ready="relaying", what="the delay relay", prefix=prefix,
                      timeout_s=timeout_s)  # fmt: skip


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m common.serving.relay", description=__doc__.splitlines()[0])
  p.add_argument("--listen", type=_address, required=True)
  p.add_argument("--target", type=_address, required=True)
  p.add_argument("--delay_ms", type=float, required=True, help="one-way delay in each direction")
  a = p.parse_args(argv)
  if a.delay_ms < 0:
    p.error("--delay_ms must be >= 0")
  asyncio.run(relay(a.listen, a.target, a.delay_ms / 1e3))
  return 0


if __name__ == "__main__":
  main()
