"""headstart serve RUN_OR_MODEL [--host 127.0.0.1] [--port 8000]"""

from __future__ import annotations

import argparse
import sys

from headstart.cli.options import add_device, add_max_pixels

EXAMPLE = """examples:
  headstart serve runs/photos                      # then open http://127.0.0.1:8000/
  headstart serve model.onnx --port 9000 --max-upload-mb 50
  curl -F files=@cat.jpg -F files=@dog.png 'http://127.0.0.1:8000/predict?topk=3'"""


def add_parser(sub):
    p = sub.add_parser("serve", help="serve a trained model over HTTP, with a page to drop images on",
                       description="Serve a run (or an exported .onnx model): POST /predict takes image files "
                                   "(multipart field 'files') and answers JSON; GET /info describes the model; "
                                   "GET /healthz answers ok; GET / is a page that works offline. "
                                   "Needs the serve extra: pip install 'headstart[serve]'.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="RUN_OR_MODEL", help="run directory made by `headstart train`, or an exported "
                                                         ".onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                                                        "0.0.0.0 opens it to the network, with no authentication)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=20,
                   help="largest request, all its files together, in MB (default 20); larger ones get 413")
    add_max_pixels(p, "images with more pixels, or whose resize for the model would have more (a 20000x1 strip), are "
                      "refused from their header, before decoding (default 50 million). This is the one limit: "
                      "Pillow's own (89 million) does not apply. Images over 16.7 million pixels are decoded at a "
                      "reduced scale", default=50_000_000)
    p.add_argument("--topk", type=int, default=3, help="classes returned per image unless a request asks with "
                                                       "?topk=K (default 3)")
    p.add_argument("--max-batch", type=int, default=16,
                   help="most images in one forward pass when requests arrive together (default 16; 1: one "
                        "request per pass)")
    add_device(p)
    return p


def run(args) -> int:
    from headstart.core.errors import UsageError  # in the command, not at import: --help stays fast

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}.")
    try:
        import uvicorn  # in the command, not at import: --help stays fast

        from headstart.serve import create_app, load_model  # in the command, not at import: --help stays fast
        from headstart.serve.app import check_limits  # in the command, not at import: --help stays fast
    except ModuleNotFoundError as exc:
        if exc.name not in ("uvicorn", "fastapi", "starlette", "python_multipart"):
            raise
        raise UsageError(f"serve needs {exc.name}, which is not installed: pip install 'headstart[serve]'.") from None

    # Every limit is checked before the port is taken or the model loads: one sentence, not a traceback later.
    check_limits(lambda name: "--" + name.replace("_", "-"), max_upload_mb=args.max_upload_mb,
                 max_pixels=args.max_pixels, topk=args.topk, max_batch=args.max_batch)
    sock = _listen(args.host, args.port)  # first: a port in use fails before the model loads
    try:
        app = create_app(load_model(args.model, device=args.device), max_upload_mb=args.max_upload_mb,
                         max_pixels=args.max_pixels, topk=args.topk, max_batch=args.max_batch)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {args.model} on http://{shown}:{port}/ (Ctrl-C to stop)", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: {args.host} is reachable from other machines, and the service has no authentication.",
              file=sys.stderr)
    config = uvicorn.Config(app, log_level="info", access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _listen(host: str, port: int):
    """The listening socket, bound here so that a port in use is one clear sentence, not a uvicorn traceback."""
    import socket  # in the command, not at import: --help stays fast

    from headstart.core.errors import UsageError  # in the command, not at import: --help stays fast

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host}: {exc.strerror}; pass --host 127.0.0.1 or an address of this "
                         "machine.") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port, or 0 for a free "
                         "one.") from None
    sock.set_inheritable(True)
    return sock
