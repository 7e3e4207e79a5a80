"""Hugging Face Space entry point for the SemFlow demo (the UI itself lives in ``space/``).

    python app.py                                  # http://127.0.0.1:7860 with checkpoints/semflow-camvid
    python app.py --model PATH_OR_REPO_ID --port 7861 --host 0.0.0.0 --share

The model also comes from the environment variable SEMFLOW_MODEL. On a Space, GRADIO_SERVER_NAME and
GRADIO_SERVER_PORT (set by the Space runtime) are honoured.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = ROOT / "checkpoints" / "semflow-camvid"

# Keep the demo offline-friendly and quiet: no usage analytics calls from a closed network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if str(ROOT) not in sys.path:  # a Space runs app.py from the repo root without installing the package
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="SemFlow demo: segmentation and synthesis with one flow.")
    ap.add_argument("--model", default=os.environ.get("SEMFLOW_MODEL") or str(DEFAULT_MODEL),
                    help="pipeline folder or Hub repo id (default: $SEMFLOW_MODEL, else checkpoints/semflow-camvid)")
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                    help="interface to bind (0.0.0.0 to serve the network)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    ap.add_argument("--share", action="store_true", help="also open a public gradio.live share link")
    ap.add_argument("--concurrency", type=int, default=2, help="model runs at once (the queue holds the rest)")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    model = os.path.expanduser(args.model)
    if not os.path.isdir(model) and (model == str(DEFAULT_MODEL) or model.startswith((".", "/"))):
        sys.exit(f"Model folder not found: {model}. Pass --model PATH_OR_REPO_ID or set SEMFLOW_MODEL.")

    from space import build_demo, launch_kwargs

    try:
        demo = build_demo(model, concurrency_limit=args.concurrency)
    except (OSError, ValueError) as e:  # missing files, unknown repo id offline, not a SemFlow pipeline
        sys.exit(f"Could not load the model {model!r}: {e}")
    # launch_kwargs: the app's CSS and gradio's max_file_size (uploads above the limit are refused with 413).
    # quiet: gradio's own start message would advise `share=True` in `launch()`; this app's option is --share.
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True, prevent_thread_lock=True,
                **launch_kwargs(demo))
    print(f"* Running on local URL:  {demo.local_url}", flush=True)
    if demo.share_url:
        print(f"* Running on public URL: {demo.share_url} (temporary, up to a week)", flush=True)
    elif not os.environ.get("SPACE_ID"):
        print("* To create a public link, start the app with `python app.py --share`.", flush=True)
    # A stop signal (a Space or container shutting down) closes the server as Ctrl-C does, so gradio and the app
    # remove their files (uploads, outputs, pasted images) on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    demo.block_thread()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
