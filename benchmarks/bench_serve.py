"""Throughput of `etr-hub serve` with 1, 4 and 16 concurrent clients, and the server's overhead
against the in-process Python API for the same request, side by side in one run.

    python benchmarks/bench_serve.py [--new-tokens 32] [--requests 16] [--reps 5]

On the registry's meta model (the embedded default SmolLM2-135M-Instruct after `etr-hub init`),
in a throw-away copy of $ETR_HUB_HOME. Every request asks for exactly N new tokens (greedy,
`ignore_eos`), so all runs do the same work. One server process (its worker thread owns the
model, OMP threads = --threads) is started on 127.0.0.1; the clients are the official `openai`
client in threads of this process.

    in-process   Hub.chat(messages, max_new_tokens=N) in this process, same threads
    http         the same request through POST /v1/chat/completions, one client
    c=1, 4, 16   --requests requests spread over that many concurrent streaming clients

Printed: requests/s and completion tokens/s per concurrency, then the overhead ratio
http time / in-process time (median over --reps paired runs; 1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUESTION = [{"role": "user", "content": "Explain briefly how the planets of the solar system formed."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--reps", type=int, default=5, help="paired runs for the overhead ratio")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in this process and the server")
    parser.add_argument("--concurrency", default="1,4,16")
    args = parser.parse_args()

    import httpx
    import openai
    import torch

    torch.set_num_threads(args.threads)
    src = Path(os.environ.get("ETR_HUB_HOME") or "")
    if not (src / "registry.db").is_file():
        sys.exit("set ETR_HUB_HOME to an initialised home (etr-hub init) — it is copied, never changed")
    home = Path(tempfile.mkdtemp(prefix="etr-bench-serve-")) / "home"
    shutil.copytree(src, home, ignore=shutil.ignore_patterns("cache"))
    os.environ["ETR_HUB_HOME"] = str(home)
    os.environ.pop("ETR_HUB_DATABASE_URL", None)

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    exe = shutil.which("etr-hub", path=str(Path(sys.executable).parent)) or "etr-hub"
    # the server writes to its own copy of the log's file descriptor: this process's copy can close at once
    with open(home.parent / "serve.log", "w") as log:
        server = subprocess.Popen(
            [exe, "serve", "--port", str(port), "--max-queue", "64", "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        from etr_hub.runtime import Hub

        hub = Hub.open()
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start: {(home.parent / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        n = args.new_tokens
        request = {"model": "etr-hub", "messages": QUESTION, "max_tokens": n, "extra_body": {"ignore_eos": True}}
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
        client.chat.completions.create(**request)  # warm both paths
        hub.chat(QUESTION, max_new_tokens=n, ignore_eos=True)

        print(
            f"meta model {hub.meta_name}, {len(hub.experts)} expert(s), {n} new tokens per request, "
            f"{args.threads} thread(s)"
        )
        print(f"{'clients':>8} {'requests':>9} {'seconds':>9} {'req/s':>8} {'tokens/s':>9}")
        for c in [int(x) for x in args.concurrency.split(",")]:

            def run(k: int) -> int:
                cl = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
                tokens = 0
                for _ in range(k):
                    for chunk in cl.chat.completions.create(
                        **request, stream=True, stream_options={"include_usage": True}
                    ):
                        if chunk.usage:
                            tokens += chunk.usage.completion_tokens
                return tokens

            shares = [args.requests // c + (1 if i < args.requests % c else 0) for i in range(c)]
            start = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                tokens = sum(pool.map(run, shares))
            took = time.perf_counter() - start
            print(f"{c:>8} {args.requests:>9} {took:>9.2f} {args.requests / took:>8.2f} {tokens / took:>9.1f}")

        ratios = []
        for rep in range(args.reps):
            order = ["http", "local"] if rep % 2 == 0 else ["local", "http"]
            times = {}
            for which in order:
                start = time.perf_counter()
                if which == "http":
                    out = client.chat.completions.create(**request)
                    assert out.usage.completion_tokens == n
                else:
                    assert hub.chat(QUESTION, max_new_tokens=n, ignore_eos=True).completion_tokens == n
                times[which] = time.perf_counter() - start
            ratios.append(times["http"] / times["local"])
        print(
            f"overhead ratio http / in-process (one request, {n} tokens, median of {args.reps}): "
            f"{statistics.median(ratios):.3f}"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(home.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
