"""Throughput of `etr-hub serve` with 1, 4 and 16 concurrent clients, and the server's overhead
against the in-process Python API for the same request, side by side in one run.

    python benchmarks/bench_serve.py [--new-tokens 32] [--requests 16] [--reps 5] [--router]

With --router, the same levels also for (b) a router holding no weights (`etr-hub serve --meta-url`)
in front of `transformers serve --continuous-batching` serving `etr-hub export meta`'s checkpoint,
and the router's overhead: router + engine / the engine alone, one request, same prompt (median
of --reps paired runs). The copied home gets the shipped plugins/ experts (the export needs at
least one); the prompt is an everyday one the meta model answers itself. Greedy without a
repetition penalty (the export's generation config is set so), eos allowed: every path writes the
same answer.

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
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUESTION = [{"role": "user", "content": "Explain briefly how the planets of the solar system formed."}]
EVERYDAY = [{"role": "user", "content": "Write a short poem about the sea."}]  # answered by the meta model alone,
# greedy, with no expert token in its first 32 tokens (an engine without logit_bias would cut the answer there)
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], health: str, log: Path, env: dict) -> subprocess.Popen:
    """A server process, answering `health` when this returns (its output in `log`)."""
    import httpx

    with open(log, "w") as out:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"{cmd[0]} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)


def levels(url: str, request: dict, concurrency: list[int], total: int) -> list[tuple[int, float, float]]:
    """(clients, requests/s, completion tokens/s) per concurrency: `total` streamed requests over that many clients."""
    import openai

    rows = []
    for c in concurrency:

        def run(k: int) -> int:
            cl = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)
            tokens = 0
            for _ in range(k):
                for chunk in cl.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}):
                    if chunk.usage:
                        tokens += chunk.usage.completion_tokens
            return tokens

        shares = [total // c + (1 if i < total % c else 0) for i in range(c)]
        begin = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            tokens = sum(pool.map(run, shares))
        took = time.perf_counter() - begin
        rows.append((c, total / took, tokens / took))
    return rows


def paired(calls: dict, reps: int, numerator: str, denominator: str, per_token: bool = False) -> float:
    """median over `reps` runs, in alternating order, of time(numerator) / time(denominator); `per_token`:
    each call returns its completion tokens and the times are per token (the two may answer at
    different lengths: an engine's own stopping rules are not the hub's)."""
    ratios = []
    for rep in range(reps):
        times = {}
        for which in list(calls) if rep % 2 == 0 else list(calls)[::-1]:
            begin = time.perf_counter()
            tokens = calls[which]()
            times[which] = (time.perf_counter() - begin) / (max(1, tokens) if per_token else 1)
        ratios.append(times[numerator] / times[denominator])
    return statistics.median(ratios)


def streamed(client, request: dict) -> int:
    """One streamed chat answer, read to the end; its completion tokens."""
    tokens = 0
    for chunk in client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}):
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return tokens


def export_for_router(home: Path, env: dict) -> Path:
    """The shipped experts registered in the copy, the export, its generation config greedy without a penalty."""
    exe = shutil.which("etr-hub", path=str(Path(sys.executable).parent)) or "etr-hub"
    plugins = sorted(str(p) for p in (ROOT / "plugins").iterdir() if (p / "expert.json").is_file())
    subprocess.run([exe, "expert", "add", *plugins], env={**env, "ETR_HUB_ADMISSION_REPORT": "0"}, check=True)
    out = home.parent / "exported"
    subprocess.run([exe, "export", "meta", str(out)], env=env, check=True)
    config = json.loads((out / "generation_config.json").read_text())
    for key in ("do_sample", "temperature", "top_p", "repetition_penalty"):
        config.pop(key, None)
    (out / "generation_config.json").write_text(json.dumps(config, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--reps", type=int, default=5, help="paired runs for the overhead ratio")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in this process and the server")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--router", action="store_true", help="also (b): a router in front of transformers serve")
    args = parser.parse_args()

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
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    bindir = Path(sys.executable).parent
    exe = shutil.which("etr-hub", path=str(bindir)) or "etr-hub"
    n, concurrency = args.new_tokens, [int(x) for x in args.concurrency.split(",")]
    procs: list[subprocess.Popen] = []
    try:
        question = QUESTION
        if args.router:
            exported, question = export_for_router(home, env), EVERYDAY
        request = {"model": "etr-hub", "messages": question, "max_tokens": n, "temperature": 0}
        port = free_port()
        serve = [exe, "serve", "--port", str(port), "--max-queue", "64", "--log-level", "warning"]
        procs.append(start(serve, f"http://127.0.0.1:{port}/health", home.parent / "serve.log", env))
        url = f"http://127.0.0.1:{port}/v1"
        from etr_hub.runtime import Hub

        hub = Hub.open()
        local = {"max_new_tokens": n, "temperature": 0}
        if args.router:
            request["extra_body"] = {"repetition_penalty": 1.0}
            local["repetition_penalty"] = 1.0
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)
        client.chat.completions.create(**request)  # warm both paths
        answer = hub.chat(question, **local)
        print(
            f"meta model {hub.meta_name}, {len(hub.experts)} expert(s), at most {n} new tokens per request "
            f"(this prompt: {answer.completion_tokens}, routed to {answer.expert}), {args.threads} thread(s)"
        )
        table = {"(a) in-process worker": levels(url, request, concurrency, args.requests)}
        http_ratio = paired(
            {"http": lambda: client.chat.completions.create(**request), "local": lambda: hub.chat(question, **local)},
            args.reps,
            "http",
            "local",
        )
        procs[0].terminate()
        procs[0].wait(timeout=30)
        if args.router:
            table.update(router(args, exe, exported, home, env, request, concurrency, procs))
        print(f"{'server':>28} {'clients':>8} {'requests':>9} {'req/s':>8} {'tokens/s':>9}")
        for name, rows in table.items():
            for c, rps, tps in rows:
                print(f"{name:>28} {c:>8} {args.requests:>9} {rps:>8.3f} {tps:>9.1f}")
        print(f"overhead ratio http / in-process (one request, median of {args.reps}): {http_ratio:.3f}")
        if args.router:
            a16, b16 = table["(a) in-process worker"][-1][1], table["(b) router + engine (CB)"][-1][1]
            print(f"(b) / (a) requests/s at {concurrency[-1]} clients: {b16 / a16:.2f}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        shutil.rmtree(home.parent, ignore_errors=True)


def router(args, exe, exported, home, env, request, concurrency, procs) -> dict:
    """(b): transformers serve --continuous-batching with the export, and a router in front of it."""
    import openai

    engine_port, router_port = free_port(), free_port()
    tfs = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    engine = [tfs, "serve", str(exported), "--host", "127.0.0.1", "--port", str(engine_port), "--device", "cpu"]
    # a bounded paged KV cache (4,096 tokens): sized from free memory by default, it was OOM-killed on a shared CPU box
    engine += ["--continuous-batching", "--cb-num-blocks", "128", "--cb-block-size", "32"]
    engine += ["--cb-max-batch-tokens", "512"]
    procs.append(start(engine, f"http://127.0.0.1:{engine_port}/health", home.parent / "engine.log", env))
    engine_url = f"http://127.0.0.1:{engine_port}/v1"
    meta = ["--meta-url", engine_url, "--meta-export", str(exported)]
    serve = [exe, "serve", "--port", str(router_port), "--max-queue", "64", "--log-level", "warning", *meta]
    procs.append(start(serve, f"http://127.0.0.1:{router_port}/health", home.parent / "router.log", env))
    url = f"http://127.0.0.1:{router_port}/v1"
    direct = openai.OpenAI(base_url=engine_url, api_key="none", max_retries=0, timeout=900)
    via = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)
    plain = {k: v for k, v in request.items() if k != "extra_body"}
    engine_request = {**plain, "model": str(exported)}
    direct.chat.completions.create(**engine_request)  # the first request fixes CB's generation config: greedy
    via.chat.completions.create(**request)
    rows = levels(url, request, concurrency, args.requests)
    ratio = paired(
        # the same body both ways (no repetition_penalty of the request's own): the same answer, the same length
        {"router": lambda: streamed(via, plain), "engine": lambda: streamed(direct, engine_request)},
        args.reps,
        "router",
        "engine",
        per_token=True,
    )
    lengths = f"{streamed(via, plain)} vs {streamed(direct, engine_request)} completion tokens"
    print(
        f"router overhead: router + engine / engine alone, both streamed, time per completion token "
        f"(one request, median of {args.reps}; {lengths}): {ratio:.3f}"
    )
    return {"(b) router + engine (CB)": rows}


if __name__ == "__main__":
    main()
