"""Kernel-enforced confinement of a sandboxed program with Linux Landlock (kernel 5.13+, no privileges needed).

Run as a script, `python -I landlock.py WORKDIR PROGRAM` confines itself, then execs `python -I PROGRAM`
(the confinement is inherited by everything the program starts):
- files: only WORKDIR (and /dev/null) can be written, created, removed, renamed or truncated; the rest of the
  file system stays readable (the interpreter and its standard library live there);
- network (Landlock ABI 4+): no TCP connect or bind, whatever the network namespace;
- scopes (ABI 6+): no signals to processes outside the sandbox, no abstract UNIX sockets outside it.
If the kernel refuses, it exits with EXIT_UNCONFINED instead of running the program (fails closed).

Standard library only: the sandbox runs it by path under `python -I`, where goat itself is not importable.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

EXIT_UNCONFINED = 97
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the same on x86_64 and aarch64
_RULE_PATH_BENEATH = 1
_CREATE_RULESET_VERSION = 1
_PR_SET_NO_NEW_PRIVS = 38

_WRITE_FILE = 1 << 1
# remove dir/file, make char/dir/reg/sock/fifo/block/sym (ABI 1)
_CHANGES_V1 = _WRITE_FILE | sum(1 << bit for bit in range(4, 13))
_REFER = 1 << 13  # ABI 2: move or link a file between folders
_TRUNCATE = 1 << 14  # ABI 3
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

_libc = ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is missing or disabled."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def _check(result: int, what: str) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"landlock {what}: {os.strerror(errno)}")
    return result


def _allow(ruleset: int, path: str, access: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        attr = struct.pack("=Qi", access, fd)  # struct landlock_path_beneath_attr (packed)
        buffer = ctypes.create_string_buffer(attr, len(attr))
        _check(_libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, buffer, ctypes.c_uint32(0)), "add_rule")
    finally:
        os.close(fd)


def confine(workdir: str) -> int:
    """Confines this process (and what it execs) as the module docstring says; returns the ABI version used."""
    version = abi_version()
    if version < 1:
        raise OSError("Landlock is not available in this kernel")
    changes = _CHANGES_V1 | (_REFER if version >= 2 else 0) | (_TRUNCATE if version >= 3 else 0)
    fields = [changes]  # struct landlock_ruleset_attr, as long as this ABI knows it
    if version >= 4:
        fields.append(_NET_BIND_TCP | _NET_CONNECT_TCP)
    if version >= 6:
        fields.append(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    attr = struct.pack(f"={len(fields)}Q", *fields)
    buffer = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(_libc.syscall(_CREATE_RULESET, buffer, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)), "create")
    try:
        _allow(ruleset, workdir, changes)
        _allow(ruleset, os.devnull, _WRITE_FILE | (_TRUNCATE if version >= 3 else 0))
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        _check(_libc.syscall(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "restrict_self")
    finally:
        os.close(ruleset)
    return version


def python_command(script: str, *args: str) -> list[str]:
    """How a sandboxed script is started, here and in sandbox.py: this interpreter in isolated mode (-I: no user
    site, no PYTHON* variables, the script's folder not on sys.path)."""
    return [sys.executable, "-I", script, *args]


def main(argv: list[str]) -> None:
    workdir, program = argv
    try:
        confine(workdir)
    except OSError as error:
        print(f"sandbox: could not confine the program ({error}); not running it", file=sys.stderr)
        sys.exit(EXIT_UNCONFINED)
    command = python_command(program)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
