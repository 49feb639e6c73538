"""`gpt-serve`: a model behind OpenAI's HTTP API, its requests decoded together in one batch.

Nothing heavy is imported at module level: `--help` and `--version` answer without PyTorch or the
web stack, and without the ``serve`` extra installed the command says which extra to install.
The listening socket is bound before the model loads, so a port in use is one line at once, not
after the load. SIGTERM drains: new requests get 503, running ones go on for ``--drain`` seconds
and then end with finish_reason "abort", and the process exits 0; Ctrl+C does the same without
the wait and exits 130.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import signal
import socket
import sys
import time
from pathlib import Path

import click

from model.terminal import CommandError, CommandUsageError, InterruptibleCommand, ranks_option, visible

STACK = ("fastapi", "uvicorn", "sse_starlette")  # the serve extra, as modules


def log(line: str) -> None:
    click.echo(f"{time.strftime('%H:%M:%S')} {visible(line)}", err=True)


@click.command(cls=InterruptibleCommand, context_settings={"help_option_names": ["-h", "--help"],
                                                           "show_default": True})
@click.version_option(package_name="gpt-from-scratch", prog_name="gpt-serve")
@click.option("--ckpt", default="shakespeare.pt",
              help="Checkpoint: a path, or the name of a shipped one in checkpoints/.")
@click.option("--onnx", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve this .onnx with ONNX Runtime instead [default: the checkpoint with PyTorch].")
@click.option("--backend", "backend_name", type=click.Choice(["torch", "onnx"]),
              help="PyTorch or ONNX Runtime [default: onnx with --onnx, else torch]; onnx without "
                   "--onnx exports the checkpoint on first use, as gpt-tui does.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]),
              help="Device for the PyTorch backend.")
@click.option("--provider", default="auto", type=click.Choice(["auto", "cpu", "cuda"]),
              help="ONNX Runtime provider.")
@click.option("--precision", default="fp32", type=click.Choice(["auto", "fp32", "bf16"]),
              help="Weights' type for PyTorch decoding. fp32 keeps every seed's text equal to "
                   "`gpt-tui -p --precision fp32`; bf16 rounds a batched row otherwise than alone.")
@click.option("--threads", type=click.IntRange(min=1),
              help="CPU threads for the model [default: the runtime's own choice].")
@click.option("--host", default="127.0.0.1",
              help="Address to listen on; anything but loopback is reachable from other machines.")
@click.option("--port", default=8000, type=click.IntRange(0, 65535), help="Port (0 = any free one).")
@click.option("--parallel", default=16, type=click.IntRange(1, 1024),
              help="Requests decoded together (rows of the batch).")
@click.option("--queue", default=64, type=click.IntRange(min=0),
              help="Requests that may wait for a row; one more gets 429.")
@click.option("--api-key", envvar="GPT_SERVE_API_KEY",
              help="Require `Authorization: Bearer KEY` on /v1 [env var: GPT_SERVE_API_KEY].")
@click.option("--model-name", help="The model id clients send [default: the model file's name without "
                                   "its suffix].")
@click.option("--drain", default=5.0, type=click.FloatRange(min=0),
              help="On SIGTERM, seconds running requests may go on before they are ended.")
@ranks_option
def main(ckpt: str, onnx: Path | None, backend_name: str | None, device: str, provider: str, precision: str,
         threads: int | None, host: str, port: int, parallel: int, queue: int, api_key: str | None,
         model_name: str | None, drain: float) -> None:
    """Serve a GPT checkpoint over OpenAI's HTTP API (/v1/completions, /v1/chat/completions).

    \b
    gpt-serve                                # checkpoints/shakespeare.pt on 127.0.0.1:8000
    gpt-serve --ckpt out/ckpt.pt --port 8080 --parallel 8
    gpt-serve --onnx out/model.onnx

    Exit codes: 0 stopped by SIGTERM, 1 the model or the port could not be opened, 2 usage error,
    130 Ctrl+C. docs/serve.md has the endpoints, the chat template and the limits.
    """
    missing = [m for m in STACK if importlib.util.find_spec(m) is None]
    if missing:
        raise CommandError(f"gpt-serve needs the serve extra ({', '.join(missing)} missing): pip install "
                           "'gpt-from-scratch[serve]', or pip install -e '.[serve]' in a clone")
    if api_key is not None and not api_key.strip():
        raise CommandUsageError("--api-key is empty; pass a key, or leave it out on loopback")
    if model_name is not None and not model_name.strip():
        raise CommandUsageError("--model-name is empty")
    sock, address = listen(host, port)
    try:
        serve(sock, address, ckpt, onnx, backend_name or ("onnx" if onnx else "torch"), device, provider,
              precision, threads, parallel, queue, api_key, model_name, drain)
    finally:
        sock.close()


def listen(host: str, port: int) -> tuple[socket.socket, str]:
    """A socket listening on host:port and how to reach it, or one line saying why not."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise CommandUsageError(f"--host {host}: not an address this machine has ({e})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart needs no wait for TIME_WAIT
    try:
        sock.bind(where)
        sock.listen(2048)  # from now on connections wait in the backlog until uvicorn takes them
    except OSError as e:
        sock.close()
        raise CommandError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port, or "
                           "stop what holds it") from None
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if family == socket.AF_INET6 else bound_host
    return sock, f"http://{shown}:{bound_port}"


def exposure_warning(host: str, address: str, api_key: str | None) -> str | None:
    """What to say when the server listens beyond this machine (None on loopback)."""
    if ipaddress.ip_address(host.split("%")[0]).is_loopback:  # an IPv6 scope (%eth0) is not an address
        return None
    return (f"warning: listening on {address}, which other machines can reach: anyone who can connect may "
            "use the model" + ("" if api_key else "; pass --api-key to require a key"))


def serve(sock: socket.socket, address: str, ckpt: str, onnx: Path | None, backend_name: str, device: str,
          provider: str, precision: str, threads: int | None, parallel: int, queue: int,
          api_key: str | None, model_name: str | None, drain: float) -> None:
    import uvicorn

    from model import checkpoint
    from serve.app import Service, create_app
    from serve.server import DrainingServer
    from tui.backends import BackendError, OnnxFactory, TorchFactory

    try:
        ckpt_path: Path | None = checkpoint.resolve_ckpt(Path(ckpt).expanduser())
    except checkpoint.CheckpointError as e:
        if backend_name == "torch" or onnx is None:
            raise CommandUsageError(str(e)) from None
        ckpt_path = None  # an .onnx alone is enough
    if backend_name == "torch":
        factory = TorchFactory(ckpt_path, device, threads, precision)  # type: ignore[arg-type]
    else:
        factory = OnnxFactory(ckpt_path, onnx, provider, threads)
    try:
        backend = factory(log)
    except (checkpoint.CheckpointError, BackendError, ValueError) as e:
        raise CommandError(str(e)) from None
    info = backend.info()
    name = model_name or Path(info.path).stem
    try:
        service = Service(backend, name, parallel, queue, api_key, log, int(Path(info.path).stat().st_mtime))
    except ValueError as e:
        raise CommandError(str(e)) from None

    warning = exposure_warning(sock.getsockname()[0], address, api_key)
    if warning:
        log(warning)
    log(f"serving {name} ({info.backend}, {info.precision or info.device}) on {address}/v1 with "
        f"{parallel} rows and a queue of {queue}; Ctrl+C or SIGTERM to stop")
    config = uvicorn.Config(create_app(service), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=2, lifespan="on")
    server = DrainingServer(config, service, drain, log)
    server.run(sockets=[sock])
    if server.signal == signal.SIGINT:
        sys.exit(130)
