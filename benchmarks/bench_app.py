"""The explorer under load: `/search` round trips through gradio_client against `python app.py`, launched here.

    .venv/bin/python benchmarks/bench_app.py                       # bundled model + demo gallery
    .venv/bin/python benchmarks/bench_app.py --searches 30 --visitors 8 --quick

Every search is a real HTTP round trip of a real visitor (`gradio_client.Client`, one session each):
- ``single_new``: one visitor, a new text query each time (encoded once per kind, then scored);
- ``single_budget``: one visitor, the same query at alternating trained budgets (cached vectors, no encode);
- ``concurrent_N``: N visitors at once (threads), each a new text query every time: p95 and searches/s.
Each scenario runs twice: as an API caller that skips the thumbnails (``thumbnails=False``), and as one that
asks for them and downloads each thumbnail the way a browser fetches them. The baseline, measured in the
same run from the same responses, is the server's own work per search (``figures.total_ms``: encode + score),
so the gap is what Gradio, the queue and the transfer add; ``client_floor`` is the round trip of an endpoint that
does no work (``/gallery_status``): gradio_client itself polls its message queue every 50 ms, so no
round trip through it is shorter. The last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ["penguin", "table", "red car", "pie chart", "tree", "dog", "boat", "font", "house", "flower", "clock",
         "bird", "train", "apple", "map", "guitar", "chair", "star", "fish", "bicycle"]
BUDGETS = [(8, 16), (1, 1), (16, 64), (4, 8), (2, 4)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(workdir: Path) -> tuple[subprocess.Popen, str]:
    """``python app.py`` with its defaults (bundled model and gallery) on a free port; returns once it answers."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "METAEMBED_LOG": "WARNING",
           "METAEMBED_SESSION_ROOT": str(workdir / "sessions"), "GRADIO_TEMP_DIR": str(workdir / "gradio-tmp")}
    log = (workdir / "app.log").open("w")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app exited: {(workdir / 'app.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("app did not answer within 180 s")


class Visitor:
    """One gradio_client session; ``search`` returns (round-trip ms, server ms) and raises on any error."""

    def __init__(self, url: str, thumbnails: bool) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False, download_files=False)
        self.url, self.thumbnails = url.rstrip("/"), thumbnails

    def search(self, text: str, r_q: int, r_c: int) -> tuple[float, float]:
        start = time.perf_counter()
        gallery, _, _, results, figures = self.client.predict(
            text, None, "", r_q, r_c, 10, "exhaustive", 100, "both", self.thumbnails, api_name="/search")
        if self.thumbnails:  # fetch every card's image, as the browser does
            for entry in gallery:
                image = entry["image"]
                with urllib.request.urlopen(image["url"], timeout=30) as response:
                    response.read()
        elif gallery:
            raise AssertionError("thumbnails=False still returned a gallery")
        ms = (time.perf_counter() - start) * 1000
        if len(results) != 10:
            raise AssertionError(f"{len(results)} results")
        return ms, float(figures["total_ms"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summary(trips: list[tuple[float, float]], errors: int, wall_s: float | None = None) -> dict:
    ms = [t for t, _ in trips]
    server = [s for _, s in trips]
    out = {"searches": len(trips), "errors": errors, "p50_ms": round(statistics.median(ms), 1),
           "p95_ms": round(percentile(ms, 95), 1), "server_p50_ms": round(statistics.median(server), 1)}
    if wall_s is not None:
        out["searches_per_s"] = round(len(trips) / wall_s, 2)
    return out


def client_floor(url: str, n: int) -> dict:
    """Round trip of ``/gallery_status`` (a dict lookup on the server): what gradio_client and the queue cost."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)
    ms = []
    for _ in range(n):
        start = time.perf_counter()
        client.predict(api_name="/gallery_status")
        ms.append((time.perf_counter() - start) * 1000)
    return {"calls": n, "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(percentile(ms, 95), 1)}


def single(url: str, n: int, thumbnails: bool, new_queries: bool, tag: str) -> dict:
    visitor = Visitor(url, thumbnails)
    visitor.search(f"warm-up {tag}", 8, 16)
    trips = []
    for i in range(n):
        if new_queries:
            trips.append(visitor.search(f"{WORDS[i % len(WORDS)]} {tag} {i}", 8, 16))
        else:
            r_q, r_c = BUDGETS[(i + 1) % len(BUDGETS)]
            trips.append(visitor.search(f"warm-up {tag}", r_q, r_c))
    return summary(trips, 0)


def concurrent(url: str, visitors: int, n: int, thumbnails: bool, tag: str) -> dict:
    clients = [Visitor(url, thumbnails) for _ in range(visitors)]
    for i, c in enumerate(clients):
        c.search(f"warm-up {tag} {i}", 8, 16)
    trips, errors, lock = [], [0], threading.Lock()
    barrier = threading.Barrier(visitors)

    def run(v: int) -> None:
        barrier.wait()
        for i in range(n):
            try:
                trip = clients[v].search(f"{WORDS[(v + i) % len(WORDS)]} {tag} v{v} {i}", 8, 16)
            except Exception:  # noqa: BLE001 (an error is counted, not raised: the figure is how many)
                with lock:
                    errors[0] += 1
                continue
            with lock:
                trips.append(trip)

    start = time.perf_counter()
    with ThreadPoolExecutor(visitors) as pool:
        list(pool.map(run, range(visitors)))
    return summary(trips, errors[0], time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=20, help="searches per visitor per scenario")
    parser.add_argument("--visitors", type=int, nargs="+", default=[4, 8], help="concurrent visitor counts")
    parser.add_argument("--url", help="measure a running app instead of launching one")
    parser.add_argument("--modes", nargs="+", choices=["api", "thumbnails"], default=["api", "thumbnails"],
                        help="api: thumbnails=False; thumbnails: ask for them and download each")
    parser.add_argument("--single", action=argparse.BooleanOptionalAction, default=True,
                        help="run the one-visitor scenarios")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = (None, args.url) if args.url else launch(Path(tmp))
        try:
            Visitor(url, False).search("first search loads the model", 8, 16)
            from gradio_client import Client

            # What ran (model, fingerprint, device, precision: the app's own Model-tab line) and how busy
            # the machine was, so a figure can be traced to the conditions it was measured in.
            status = Client(url, verbose=False, download_files=False).predict(api_name="/model_status")
            result: dict = {"date": time.strftime("%Y-%m-%d"), "model_status": status, "cpus": os.cpu_count(),
                            "load_average_start": list(os.getloadavg()), "searches_per_visitor": args.searches,
                            "client_floor": client_floor(url, args.searches)}
            print(f"client floor {result['client_floor']}", file=sys.stderr)
            for thumbnails in [m == "thumbnails" for m in args.modes]:
                mode = "with_thumbnails" if thumbnails else "api_no_thumbnails"
                result[mode] = {}
                if args.single:
                    result[mode]["single_new"] = single(url, args.searches, thumbnails, True, f"{mode}-new")
                    result[mode]["single_budget"] = single(url, args.searches, thumbnails, False, f"{mode}-budget")
                for v in args.visitors:
                    result[mode][f"concurrent_{v}"] = concurrent(url, v, args.searches, thumbnails, f"{mode}-c{v}")
                for name, row in result[mode].items():
                    print(f"{mode:18s} {name:14s} {row}", file=sys.stderr)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    result["load_average_end"] = list(os.getloadavg())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
