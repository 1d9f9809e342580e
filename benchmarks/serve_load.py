"""Load on ``headstart serve``: requests per second and p95 latency with 1, 4 and 16 concurrent clients.

Two real servers (``python -m headstart serve RUN``, uvicorn, one process each) serve the same run side by side:
``batched`` (the default ``--max-batch 16``: requests that arrive while the model is busy share its next forward
pass) and ``one-by-one`` (``--max-batch 1``). For each number of clients they are measured in turn, so that a busy
machine slows both alike. Each client is a thread with its own connection that sends one 640x480 JPEG per request
(random crops of scikit-image's photographs, or Fashion-MNIST PNGs without scikit-image) and waits for the answer.
Clients and servers share the machine's cores, as they would on one box.

The run is EfficientNet-Lite0 at its default 224 px with a linear-probe head (the head costs nothing next to the
backbone): pass one with ``--run``, or the script trains one on 8 Fashion-MNIST images a class first (~30 s).

Example (about 3 minutes on 2 CPU cores):

    python benchmarks/serve_load.py --seconds 10 --out docs/measurements/serve_load.json
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def tiny_run(folder: Path, image_size: int | None) -> Path:
    from headstart.cli import main
    from headstart.data.fashion_mnist import make_image_folder

    data = make_image_folder(folder / "data", train_per_class=8, val_per_class=2, test_images=0)
    run = folder / "run"
    size = ["--image-size", str(image_size)] if image_size else []
    assert main(["train", str(data), "--out", str(run), "--strategy", "linear-probe", "--workers", "0", *size]) == 0
    return run


def request_images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    try:
        from skimage import data

        photos = [data.coffee(), data.chelsea(), data.astronaut(), data.rocket()]
    except ImportError:
        from headstart.data import fashion_mnist

        x, _ = fashion_mnist.load("test")
        return [_encode(Image.fromarray(x[i]), "PNG") for i in range(n)]
    out = []
    for i in range(n):
        im = Image.fromarray(photos[i % len(photos)])
        w, h = im.size
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(w * s), int(h * s)
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        out.append(_encode(im.crop((x0, y0, x0 + cw, y0 + ch)).resize((640, 480), Image.BICUBIC), "JPEG"))
    return out


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, quality=90) if fmt == "JPEG" else im.save(buf, fmt)
    return buf.getvalue()


class Server:
    def __init__(self, run: Path, max_batch: int, log: Path):
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "headstart", "serve", str(run), "--port", "0",
                                          "--max-batch", str(max_batch), "--device", "cpu"], cwd=REPO, stdout=out,
                                         stderr=out)
        self.url = None

    def wait(self, timeout: float = 180) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.log.read_text()
            if (m := re.search(r"on (http://127\.0\.0\.1:\d+/)", text)) and "startup complete" in text:
                self.url = m.group(1)
                return self.url
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def load(url: str, images: list[bytes], clients: int, seconds: float, warmup: float = 2.0) -> dict:
    """``clients`` threads send requests back to back for ``warmup + seconds``; the last ``seconds`` count."""
    import httpx

    start = time.perf_counter()
    counting, stop = start + warmup, start + warmup + seconds
    latencies, errors = [], []
    lock = threading.Lock()

    def client(k: int) -> None:
        i = k
        with httpx.Client(base_url=url, timeout=120) as c:
            while (t0 := time.perf_counter()) < stop:
                res = c.post("/predict", files=[("files", (f"{i}.jpg", images[i % len(images)]))])
                t1 = time.perf_counter()
                i += clients
                with lock:
                    if res.status_code != 200:
                        errors.append(res.status_code)
                    elif t0 >= counting:
                        latencies.append(t1 - t0)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Requests still in flight when time ran out finish late; the window is the measured one plus that tail.
    window = time.perf_counter() - counting
    lat = sorted(latencies)
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "rps": len(lat) / window,
            "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run directory to serve (default: train a small Lite0 224 px run first)")
    p.add_argument("--image-size", type=int, help="image size of the run trained here (default: Lite0's, 224)")
    p.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated (default 1,4,16)")
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per setting (default 10)")
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        run = Path(args.run) if args.run else tiny_run(tmp, args.image_size)
        if not args.run:
            print(f"trained {run} in {time.time() - t0:.0f} s", file=sys.stderr)
        import yaml

        config = yaml.safe_load((run / "config.yaml").read_text())
        what = f"{config['model']} at {config['preprocessing']['image_size']} px"
        images = request_images(64)
        servers = {"batched": Server(run, 16, tmp / "batched.log"), "one-by-one": Server(run, 1, tmp / "single.log")}
        try:
            for s in servers.values():
                s.wait()
            rows = []
            for clients in map(int, args.clients.split(",")):
                for name, s in servers.items():
                    row = {"server": name, **load(s.url, images, clients, args.seconds)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            for s in servers.values():
                s.stop()

    lines = [f"{what}, one 640x480 JPEG per request, measured on a shared 2-core CPU ({args.seconds:g} s per setting)",
             "",
             "| clients | server | requests/s | p50 ms | p95 ms | errors |", "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['clients']} | {r['server']} | {r['rps']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
              f"{r['errors']} |" for r in rows]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "table": "\n".join(lines)}, indent=1))


if __name__ == "__main__":
    main()
