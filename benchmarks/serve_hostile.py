"""Hostile traffic against ``headstart serve`` (issue 22): the server's memory, and the latency of normal requests
while the attack lasts.

A real server (``python -m headstart serve RUN``, one uvicorn process, default limits) first answers normal clients
alone (each thread sends one 640x480 JPEG per request and waits for the answer): its idle RSS and p95 latency. Then
attacker threads join them for as long, cycling through the hostile uploads of the issue: long thin PNGs (20000x1
and 40000x1, 140 bytes, whose resize to the model's size was the bomb), bombs declared in a PNG header (100000 x
100000), 16 black 7000 x 7000 PNGs in one request (764 KB), and broken files (truncated, empty, text named .jpg).
Reported: the server's peak RSS (sampled every 20 ms from /proc, and its VmHWM reset before the attack) against
idle, goal within 1 GB; the p95 of the normal requests during the attack against idle, goal under 2x; that every
answer is a 2xx or a 4xx with a JSON ``detail``; the RSS 10 s after the attack. Last, requests per second under
``--threads`` clients for the run through torch and for its ONNX export (``headstart export RUN``).

The run is EfficientNet-Lite0 with a linear-probe head at ``--image-size`` (default 64 px), trained here on 8
Fashion-MNIST images a class (``benchmarks/serve_load.py``'s), or passed with ``--run``. Clients and the server
share the machine's cores.

Example (about 4 minutes on 2 CPU cores):

    python benchmarks/serve_hostile.py --seconds 30 --out docs/measurements/serve_hostile.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import REPO, Server, tiny_run  # noqa: E402  (a sibling script: its run and its server)

GB = 1024


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def normal_images(n: int) -> list[bytes]:
    """640x480 JPEGs: Fashion-MNIST pictures enlarged, with a little noise, as a camera would send them."""
    from headstart.data import fashion_mnist

    x, _ = fashion_mnist.load("test")
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        im = np.asarray(Image.fromarray(x[i]).convert("RGB").resize((640, 480), Image.BICUBIC), dtype=np.float64)
        out.append(encode(Image.fromarray((im + rng.normal(0, 6, im.shape)).clip(0, 255).astype(np.uint8)), "JPEG"))
    return out


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels and holds almost none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def hostile_requests(normal: bytes) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """(name, files) of each hostile request, as the issue sent them."""
    black = encode(Image.new("RGB", (7000, 7000)))
    good = normal
    # Quick ones first: each attacker starts at its own place in the cycle, and the 16-PNG request is long.
    return [
        ("broken files", [("cut.png", black[:5000]), ("empty.jpg", b""), ("text.jpg", b"not an image at all")]),
        ("thin 20000x1", [("thin.png", encode(Image.new("L", (20000, 1))))]),
        ("header bomb 100000x100000", [("bomb.png", png_header(100_000, 100_000))]),
        ("thin 1x40000 beside a good file", [("thin.png", encode(Image.new("L", (1, 40000)))), ("good.jpg", good)]),
        ("16 black 7000x7000 PNGs", [(f"black{i}.png", black) for i in range(16)]),
    ]


class Memory:
    """Samples a process's VmRSS every ``every`` seconds; ``peak`` is the largest seen since ``reset``."""

    def __init__(self, pid: int, every: float = 0.02):
        self.pid, self.every, self.peak, self._stop = pid, every, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def read(self, key: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reset(self) -> None:
        self.peak = self.read()
        try:  # the kernel's own peak, so that a spike between two samples is not missed
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass

    def hwm(self) -> float:
        return max(self.peak, self.read("VmHWM"))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.peak = max(self.peak, self.read())
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()


def clients(url: str, normal: list[bytes], threads: int, seconds: float, hostile=None, attackers: int = 0,
            warmup: float = 1.0) -> dict:
    """``threads`` normal clients (and ``attackers`` hostile ones, cycling through ``hostile``) for ``warmup +
    seconds``; latencies of normal requests sent after the warm-up count. Every answer is checked: 2xx, or 4xx
    with a JSON ``detail`` string."""
    import httpx

    start = time.perf_counter()
    counting, stop = start + warmup, start + warmup + seconds
    latencies, statuses, wrong, lock = [], {}, [], threading.Lock()
    last = [counting]  # when the last normal answer came: attackers' long requests may finish later

    def check(name: str, res) -> None:
        ok = res.status_code < 300 or (400 <= res.status_code < 500
                                       and res.headers.get("content-type", "").startswith("application/json")
                                       and isinstance(res.json().get("detail"), str))
        with lock:
            statuses[f"{name}: {res.status_code}"] = statuses.get(f"{name}: {res.status_code}", 0) + 1
            if not ok:
                wrong.append(f"{name}: {res.status_code} {res.text[:200]}")

    def normal_client(k: int) -> None:
        i = k
        with httpx.Client(base_url=url, timeout=300) as c:
            while (t0 := time.perf_counter()) < stop:
                res = c.post("/predict", files=[("files", (f"{i}.jpg", normal[i % len(normal)]))])
                t1 = time.perf_counter()
                i += threads
                check("normal", res)
                if res.status_code == 200 and t0 >= counting:
                    with lock:
                        latencies.append(t1 - t0)
                        last[0] = max(last[0], t1)

    def hostile_client(k: int) -> None:
        i = k
        with httpx.Client(base_url=url, timeout=300) as c:
            while time.perf_counter() < stop:
                name, files = hostile[i % len(hostile)]
                i += 1
                try:
                    res = c.post("/predict", files=[("files", f) for f in files])
                except httpx.HTTPError as exc:  # a 413 before the body is read closes the connection
                    with lock:
                        wrong.append(f"{name}: {type(exc).__name__}")
                    continue
                check(name, res)

    pool = [threading.Thread(target=normal_client, args=(k,)) for k in range(threads)]
    pool += [threading.Thread(target=hostile_client, args=(k,)) for k in range(attackers)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    window = last[0] - counting
    lat = sorted(latencies)
    return {"threads": threads, "attackers": attackers, "requests": len(lat), "rps": len(lat) / window,
            "p50_ms": 1000 * statistics.median(lat) if lat else None,
            "p95_ms": 1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
            "answers": dict(sorted(statuses.items())), "not_2xx_or_4xx_json": wrong}


def export_onnx(run: Path) -> Path:
    out = run / "model.onnx"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "headstart", "export", str(run), "--out", str(out)], cwd=REPO,
                       check=True, stdout=subprocess.DEVNULL)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="run directory to serve (default: train a small Lite0 run first)")
    p.add_argument("--image-size", type=int, default=64, help="image size of the run trained here (default 64)")
    p.add_argument("--seconds", type=float, default=30, help="measured seconds, idle and under attack (default 30)")
    p.add_argument("--normal-clients", type=int, default=2, help="normal clients, idle and during the attack")
    p.add_argument("--attackers", type=int, default=2, help="hostile clients during the attack (default 2)")
    p.add_argument("--threads", type=int, default=200, help="clients of the req/s runs (default 200)")
    p.add_argument("--rps-seconds", type=float, default=15, help="measured seconds of each req/s run (default 15)")
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = Path(args.run) if args.run else tiny_run(tmp, args.image_size)
        normal = normal_images(32)
        hostile = hostile_requests(normal[0])
        result = {"command": "python " + " ".join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
                  "machine": "measured on a 2-core CPU shared with other jobs: figures are indicative, compare them "
                             "only with runs of the same script on the same machine",
                  "args": vars(args)}
        server = Server(run, 16, tmp / "torch.log")
        try:
            url = server.wait()
            memory = Memory(server.proc.pid)
            clients(url, normal, args.normal_clients, 3)  # warm: the model's first passes, the allocator
            memory.reset()
            idle = clients(url, normal, args.normal_clients, args.seconds)
            idle_rss, idle_peak = memory.read(), memory.hwm()
            memory.reset()
            attack = clients(url, normal, args.normal_clients, args.seconds, hostile, args.attackers)
            attack_peak = memory.hwm()
            time.sleep(10)
            after_rss = memory.read()
            memory.stop()
            result.update({
                "idle": idle, "attack": attack,
                "rss_mb": {"idle": idle_rss, "idle_peak": idle_peak, "attack_peak": attack_peak,
                           "10_s_after_attack": after_rss, "attack_peak_over_idle": attack_peak - idle_rss},
                "p95_attack_over_idle": attack["p95_ms"] / idle["p95_ms"],
                "goals": {"peak_within_1_GB_of_idle": attack_peak - idle_rss <= GB,
                          "p95_under_2x_idle": attack["p95_ms"] < 2 * idle["p95_ms"],
                          "every_answer_2xx_or_4xx_json": not idle["not_2xx_or_4xx_json"]
                          and not attack["not_2xx_or_4xx_json"]}})
            print(json.dumps({k: result[k] for k in ("rss_mb", "p95_attack_over_idle", "goals")}), file=sys.stderr,
                  flush=True)
            torch_rps = clients(url, normal, args.threads, args.rps_seconds, warmup=3)
        finally:
            server.stop()
        onnx = Server(export_onnx(run), 16, tmp / "onnx.log")
        try:
            onnx_rps = clients(onnx.wait(), normal, args.threads, args.rps_seconds, warmup=3)
        finally:
            onnx.stop()
        result["rps"] = {"torch": torch_rps, "onnx": onnx_rps}

    r, rss, rps = result, result["rss_mb"], result["rps"]
    wrong = len(r["idle"]["not_2xx_or_4xx_json"]) + len(r["attack"]["not_2xx_or_4xx_json"])
    lines = [f"serve under hostile traffic ({r['machine']})", "",
             f"server RSS: idle {rss['idle']:.0f} MB, attack peak {rss['attack_peak']:.0f} MB "
             f"(+{rss['attack_peak_over_idle']:.0f} MB; goal within 1 GB), "
             f"10 s after {rss['10_s_after_attack']:.0f} MB",
             f"normal requests p95: idle {r['idle']['p95_ms']:.0f} ms, attack {r['attack']['p95_ms']:.0f} ms "
             f"({r['p95_attack_over_idle']:.2f}x; goal under 2x)",
             f"answers not 2xx or 4xx JSON: {wrong}",
             f"req/s with {args.threads} threads: torch {rps['torch']['rps']:.1f}, ONNX {rps['onnx']['rps']:.1f}"]
    result["summary"] = "\n".join(lines)
    print(result["summary"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
