"""Decoder ONNX files for the demo page: exported on first request, then kept in memory.

``DecoderFiles.get`` answers a model's file when it has been built and starts the build
otherwise. A build runs ``tessera.model.onnx_export.export_checkpoint`` (~15 s for ``dcae-s48`` on a
2-core CPU) in a child process, waited on by a daemon thread, one build at a time: the event loop
never waits for it, and the exporter's GIL time and its memory (returned to the system when the
child exits, not kept by the server's malloc settings) stay out of the serving process. The child
watches its stdin, a pipe from the server, and exits when the server does.

    python -m tessera.service.http.demo_onnx CHECKPOINT OUT.onnx WEIGHTS_SHA256 [--threads N]   # the child
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

EXPORT_TIMEOUT_S = 600.0
RETRY_FAILED_AFTER_S = 60.0  # a failed build is reported, not retried, for this long
EXTRA_MODULES = ("onnx", "onnxscript")  # what the `export` extra brings for torch's exporter


class ExportFailed(RuntimeError):
    """The model's decoder could not be exported; the message says why."""


def export_unavailable() -> str | None:
    """Why this installation cannot export ONNX files (the ``export`` extra is missing), or None."""
    missing = [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"this server cannot export ONNX files: {' and '.join(missing)} not installed "
            f"(pip install 'tessera[export]'); the demo page decodes on the server instead")


class DecoderFiles:
    """The decoder ONNX of each served model, built once per weights (``weights_sha256``)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads  # torch threads of the export (TESSERA_TORCH_THREADS)
        self._lock = threading.Lock()  # guards the three dicts below
        self._built: dict[str, bytes] = {}
        self._failed: dict[str, tuple[str, float]] = {}
        self._building: set[str] = set()
        self._one_at_a_time = threading.Lock()

    def get(self, checkpoint: Path, weights_sha256: str) -> bytes | None:
        """The file, or None while it is being built (the first call starts the build).

        Raises ``ExportFailed`` when the last build failed less than ``RETRY_FAILED_AFTER_S`` ago.
        """
        with self._lock:
            data = self._built.get(weights_sha256)
            if data is not None:
                return data
            failed = self._failed.get(weights_sha256)
            if failed is not None and time.monotonic() - failed[1] < RETRY_FAILED_AFTER_S:
                raise ExportFailed(failed[0])
            if weights_sha256 not in self._building:
                self._building.add(weights_sha256)
                threading.Thread(target=self._build, args=(checkpoint, weights_sha256), daemon=True,
                                 name=f"onnx-export-{weights_sha256[:8]}").start()
        return None

    def _build(self, checkpoint: Path, weights_sha256: str) -> None:
        start = time.monotonic()
        try:
            with self._one_at_a_time:
                data = run_export(checkpoint, weights_sha256, self.threads)
        except Exception as exc:  # reported to the page; the server keeps serving
            message = str(exc) if isinstance(exc, ExportFailed) else f"{type(exc).__name__}: {exc}"
            logger.warning("decoder ONNX of %s: %s", checkpoint.name, message)
            with self._lock:
                self._failed[weights_sha256] = (message, time.monotonic())
        else:
            logger.info("decoder ONNX of %s built in %.1f s (%.1f MB)", checkpoint.name, time.monotonic() - start,
                        len(data) / 1e6)
            with self._lock:
                self._built[weights_sha256] = data
                self._failed.pop(weights_sha256, None)
        finally:
            with self._lock:
                self._building.discard(weights_sha256)


def run_export(checkpoint: Path, weights_sha256: str, threads: int | None = None) -> bytes:
    """The decoder ONNX of ``checkpoint``, exported by a child process (this module's ``main``)."""
    with tempfile.TemporaryDirectory(prefix="tessera-onnx-") as tmp:
        out, log = Path(tmp) / "decoder.onnx", Path(tmp) / "export.log"
        cmd = [sys.executable, "-m", "tessera.service.http.demo_onnx", str(checkpoint), str(out), weights_sha256]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        with open(log, "wb") as log_file:
            # stdin stays open while the child runs: its end tells the child the server is gone
            child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT)
            try:
                code = child.wait(timeout=EXPORT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                raise ExportFailed(f"the export of {checkpoint.name} took longer than {EXPORT_TIMEOUT_S:g} s") from None
            finally:
                child.stdin.close()
        if code != 0:
            lines = log.read_text(errors="replace").strip().splitlines()
            raise ExportFailed(f"the export of {checkpoint.name} failed: {lines[-1] if lines else f'exit status {code}'}")
        return out.read_bytes()


def _exit_with_parent() -> None:
    while os.read(0, 4096):  # the raw descriptor: b"" once the server closes the pipe or exits
        pass
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.service.http.demo_onnx", description="export a decoder for /demo")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("weights_sha256", help="the weights the server serves; another file is refused")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_with_parent, daemon=True).start()

    import onnx
    import torch

    from tessera.model.onnx_export import export_checkpoint

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    prefix = args.out.with_name(args.out.name.removesuffix(".decoder.onnx").removesuffix(".onnx"))
    (written,) = export_checkpoint(args.checkpoint, ("decoder",), prefix)
    meta = {entry.key: entry.value for entry in onnx.load(str(written), load_external_data=False).metadata_props}
    if meta.get("weights_sha256") != args.weights_sha256:
        print(f"{args.checkpoint.name} now holds weights {meta.get('weights_sha256')}, not the served "
              f"{args.weights_sha256}: the file changed since the server loaded it; restart the server", file=sys.stderr)
        return 1
    if written != args.out:
        written.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
