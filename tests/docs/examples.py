"""The example runner: every shell and Python block of README.md and docs/*.md, pasted in order
into one terminal and one Python session per page, in a scratch copy of the clone, against a real
server, with the printed output checked.

A page's blocks are read as a user reads them:

- A ``sh`` (or ``bash``) block is typed into a terminal: the lines run in order in bash, in the
  scratch folder, and the variables it sets stay set for the next block (one terminal for the
  whole run, so ``source .venv/bin/activate`` in the README holds for every page after it).
- A ``python`` block is pasted into one Python session per page: names defined by one block are
  there for the next.
- A ``text`` block right after a shell or Python block (only blank lines between) is that block's
  printed output, stdout and stderr together. The run must print it (``compare``): words exactly,
  integers exactly, decimals within ``REL_TOLERANCE``, a number printed ``~N`` (it varies with the
  machine) as any number; a line ``...`` stands for any lines; of a line that a progress bar
  rewrote, what a terminal shows last. A
  block without printed output must succeed: every command exits 0 (bash ``-e -o pipefail``),
  Python raises nothing.
- A block whose first line is a comment ``# illustrative: <why>`` is shown, not run (a server
  that runs until stopped, Docker, Kubernetes, hours of training). The reason is required.

Two lines of the README's quick start are the harness's own: ``make test`` is the suite that CI
runs anyway (it is not run again from inside a test), and ``make serve`` is started once, in the
background, before the first block (``Session.serve``). The server listens on port 8000 as printed; when
that port is taken, on a free one, with ``127.0.0.1:8000`` in blocks and outputs rewritten to it
and ``TESSERA_URL`` (the command line's and the examples' default address) set in the terminal.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tessera.testing.ports import free_port
from tessera.testing.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "docs/*.md")  # in this order: the README's set-up first, then the docs pages by name
RUN = {"sh", "bash", "python"}
SHELL = {"sh", "bash"}
ILLUSTRATIVE = re.compile(r"#\s*illustrative:\s*(?P<why>\S.*)")
HARNESS = {"make test": "the suite itself (CI runs it)", "make serve": "started by the runner before the first block"}
PRINTED_PORT = 8000
PRINTED_URL = f"127.0.0.1:{PRINTED_PORT}"
REL_TOLERANCE = 0.02  # decimals in printed output: within 2% (float sums differ between batchings and machines)
BLOCK_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 180.0
NUMBER = re.compile(r"~?-?\d+(?:\.\d+)?")
SKIPPED_WHEN_COPYING = {".git", "data", "checkpoints", ".pytest_cache", "runs", ".scratch"}


@dataclass
class Block:
    """One fenced block: where it is, its language, its text and the printed output after it."""

    page: str
    line: int
    lang: str
    code: str
    output: str | None = None
    output_line: int | None = None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUN and self.illustrative is None

    @property
    def illustrative(self) -> str | None:
        """Why it is shown, not run (its first line's ``# illustrative: <why>``); None: it runs."""
        first = self.code.lstrip("\n").split("\n", 1)[0]
        match = ILLUSTRATIVE.match(first.strip())
        return match["why"] if match else None


def blocks(text: str, page: str = "<page>") -> list[Block]:
    """The fenced blocks of a markdown page, each ``text`` block that follows a runnable one
    attached to it as its output."""
    lines = text.split("\n")
    found: list[Block] = []
    i = 0
    last_end = -2  # line index of the previous block's closing fence
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        indent, marker, lang = len(fence[1]), fence[2], fence[3].lower()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(marker):
            end += 1
        code = "\n".join(line[indent:] for line in lines[i + 1:end])
        between = lines[last_end + 1:i]
        previous = found[-1] if found else None
        if (lang == "text" and previous is not None and previous.runs and previous.output is None
                and all(not line.strip() for line in between)):
            previous.output, previous.output_line = code, i + 1
        else:
            found.append(Block(page, i + 1, lang, code))
        last_end = end
        i = end + 1
    return found


def pages(root: Path = ROOT) -> list[Path]:
    out: list[Path] = []
    for pattern in PAGES:
        out.extend(sorted(root.glob(pattern)))
    return out


def harness_lines(code: str) -> list[str]:
    """The block's commands (comments dropped) that the harness does itself."""
    return [line for line in commands(code) if line in HARNESS]


def commands(code: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in code.split("\n") if line.split("#", 1)[0].strip()]


# ---- comparing printed output -----------------------------------------------------------------

def _line_pattern(expected: str) -> tuple[re.Pattern, list[str]]:
    parts, numbers, pos = [], [], 0
    for match in NUMBER.finditer(expected):
        parts.append(re.escape(expected[pos:match.start()]))
        parts.append(r"(-?\d+(?:\.\d+)?)")
        numbers.append(match[0])
        pos = match.end()
    parts.append(re.escape(expected[pos:]))
    pattern = "".join(parts)
    pattern = re.sub(r"(\\ )+", r"\\s+", pattern)  # runs of spaces: any run of whitespace
    return re.compile(pattern), numbers


def line_matches(expected: str, actual: str, rel: float = REL_TOLERANCE) -> bool:
    """Words exactly (runs of spaces as any whitespace), integers exactly, decimals within ``rel``;
    a number printed as ``~N`` varies with the machine and matches any number."""
    pattern, numbers = _line_pattern(expected.strip())
    match = pattern.fullmatch(actual.strip())
    if match is None:
        return False
    for want, got in zip(numbers, match.groups()):
        if want.startswith("~"):
            continue
        if "." not in want:
            if want != got:
                return False
        elif abs(float(got) - float(want)) > rel * abs(float(want)) + 0.5 * 10 ** -len(want.split(".")[1]):
            return False
    return True


def shorten(line: str, most: int = 400) -> str:
    return line if len(line) <= most else line[:most] + f"... ({len(line) - most} more characters)"


def terminal(line: str) -> str:
    """What a terminal shows of a line that progress bars rewrote with carriage returns."""
    shown = [part for part in line.split("\r") if part.strip()]
    return shown[-1].rstrip() if shown else ""


def compare(expected: str, actual: str, rel: float = REL_TOLERANCE) -> str | None:
    """None when ``actual`` prints ``expected`` (a line ``...`` stands for any lines, none
    included); else what differs."""
    want = [line.rstrip() for line in expected.strip("\n").split("\n")]
    got = [terminal(line) for line in actual.strip("\n").split("\n")] if actual.strip() else []

    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(got)
        if want[i].strip() == "...":
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and line_matches(want[i], got[j], rel) and match(i + 1, j + 1)

    if match(0, 0):
        return None
    return ("printed output differs (decimals within {:.0%}, '...' for any lines)\n--- expected\n{}\n--- got\n{}"
            .format(rel, "\n".join(want), "\n".join(shorten(line) for line in got) or "<nothing>"))


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---- running ----------------------------------------------------------------------------------

@dataclass
class Result:
    ok: bool
    output: str
    why: str = ""


_PYTHON_DRIVER = r"""
import json, sys, traceback
namespace = {"__name__": "__main__"}
for line in sys.stdin:
    code = json.loads(line)
    ok = True
    try:
        exec(compile(code, "<block>", "exec"), namespace)
    except SystemExit as exc:
        ok = exc.code in (None, 0)
    except BaseException:
        traceback.print_exc()
        ok = False
    sys.stdout.flush(); sys.stderr.flush()
    sys.stdout.write("\n%s %d\n" % (SENTINEL, ok)); sys.stdout.flush()
"""
_SENTINEL = "\x1edocs-example-done"


@dataclass
class Session:
    """A scratch copy of the clone (sources linked, ``checkpoints/`` copied, ``data/`` empty), one
    terminal's environment, a Python session per page and the server ``make serve`` starts."""

    folder: Path
    root: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    server: subprocess.Popen | None = None
    server_log: Path | None = None
    _python: subprocess.Popen | None = None
    _python_page: str | None = None

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for entry in self.root.iterdir():
            if entry.name in SKIPPED_WHEN_COPYING:
                continue
            target = self.folder / entry.name
            if not target.exists():
                target.symlink_to(entry)
        if (self.root / "checkpoints").is_dir() and not (self.folder / "checkpoints").exists():
            shutil.copytree(self.root / "checkpoints", self.folder / "checkpoints")  # examples write beside them
        # a terminal as a user opens one: no TESSERA_* settings of the shell that runs the tests
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "VIRTUAL_ENV", "PYTEST_"))}
        venv_bin = str(Path(sys.executable).parent)
        self.env["PATH"] = ":".join(p for p in self.env.get("PATH", "").split(":") if p != venv_bin)
        self.port = self.port or (PRINTED_PORT if port_is_free(PRINTED_PORT) else free_port())
        if self.port != PRINTED_PORT:  # the CLI's and examples' default address is the printed one
            self.env["TESSERA_URL"] = f"http://127.0.0.1:{self.port}"

    def rewrite(self, text: str) -> str:
        return text.replace(PRINTED_URL, f"127.0.0.1:{self.port}")

    # the server

    def serve(self) -> None:
        """``make serve`` (PORT set to the free port), in the background, until /readyz answers."""
        self.server_log = self.folder / "make-serve.log"
        with open(self.server_log, "wb") as log:
            self.server = subprocess.Popen(["make", "serve", f"PORT={self.port}"], cwd=self.folder, env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._ready, READY_TIMEOUT_S, what=f"make serve ready on port {self.port} (log: {self.server_log})")

    def _ready(self) -> bool:
        if self.server.poll() is not None:
            raise RuntimeError(f"make serve exited with {self.server.returncode}:\n{self.server_log.read_text()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        if self._python is not None:
            self._python.kill()
            self._python.wait()
            self._python = None
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()

    # the blocks

    def run(self, block: Block) -> Result:
        """Run one block as a user would paste it; ``ok`` when it succeeded and printed what the
        page says it prints."""
        code = self.rewrite(block.code)
        if block.lang in SHELL:
            if harness_lines(code):
                rest = [line for line in commands(code) if line not in HARNESS]
                if rest:
                    return Result(False, "", f"a block with {harness_lines(code)} must hold nothing else, not {rest}")
                return Result(True, "", "")
            ran = self._shell(code, strict=block.output is None)
        else:
            ran = self._python_block(block.page, code)
        if not ran.ok and block.output is None:
            return ran
        if block.output is not None:
            why = compare(self.rewrite(block.output), ran.output)
            if why:
                return Result(False, ran.output, why)
        return Result(True, ran.output)

    def _shell(self, code: str, strict: bool) -> Result:
        env_file = self.folder / ".docs-example-env"
        script = "\n".join([
            "set -a",  # assignments stay for the next block, as in one terminal
            "set -e -o pipefail" if strict else "",
            code,
            "__status=$?",
            f"env -0 > {shlex.quote(str(env_file))}",
            "exit $__status",
        ])
        try:
            done = subprocess.run(["bash", "-c", script], cwd=self.folder, env=self.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            return Result(False, (exc.stdout or b"").decode(errors="replace"), f"still running after {BLOCK_TIMEOUT_S:g} s")
        output = done.stdout.decode(errors="replace")
        if env_file.exists():
            pairs = [item.split("=", 1) for item in env_file.read_bytes().decode(errors="replace").split("\0") if "=" in item]
            self.env = {k: v for k, v in pairs if not k.startswith("BASH_FUNC_") and k not in ("__status", "SHLVL", "_")}
            env_file.unlink()
        if done.returncode != 0:
            return Result(False, output, f"exited with {done.returncode}")
        return Result(True, output)

    def _python_block(self, page: str, code: str) -> Result:
        if self._python_page != page and self._python is not None:
            self._python.kill()
            self._python.wait()
            self._python = None
        if self._python is None:
            python = shutil.which("python", path=self.env.get("PATH")) or sys.executable
            driver = _PYTHON_DRIVER.replace("SENTINEL", repr(_SENTINEL))
            self._python = subprocess.Popen([python, "-u", "-c", driver], cwd=self.folder, env=self.env, text=True,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self._python_page = page
        self._python.stdin.write(json.dumps(code) + "\n")
        self._python.stdin.flush()
        lines = []
        for line in self._python.stdout:
            if line.startswith(_SENTINEL):
                ok = line.split()[-1] == "1"
                output = "".join(lines)
                return Result(ok, output, "" if ok else "raised (traceback above)")
            lines.append(line)
        return Result(False, "".join(lines), f"python exited with {self._python.wait()}")
