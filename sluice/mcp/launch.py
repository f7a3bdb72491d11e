"""The launcher of a stdio MCP server: sandbox this process, then exec the server in its place.

sluice runs it as ``python -I launch.py [options] -- ARGV...`` (standard library only, nothing of sluice's
imported, so it needs no PYTHONPATH). In order: die with the parent (PR_SET_PDEATHSIG), no new privileges
(PR_SET_NO_NEW_PRIVS), a new network namespace when asked (a user namespace too where the kernel allows
unprivileged ones; a bare network namespace where this process may make one), resource limits, its own
session, the environment reduced to the names sluice lists, then ``execve`` of the allow-listed command.
The first line it writes on stderr says how it is sandboxed; sluice logs it.

``--probe`` only tries the network namespace and reports whether it worked (exit 0) or not (exit 1).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
LIMITS = {"AS": resource.RLIMIT_AS, "NOFILE": resource.RLIMIT_NOFILE, "NPROC": resource.RLIMIT_NPROC,
          "CPU": resource.RLIMIT_CPU, "FSIZE": resource.RLIMIT_FSIZE}


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unshare(libc: ctypes.CDLL, flags: int) -> int:
    """0, or the errno of a refused unshare(2) (Python 3.11 has no os.unshare)."""
    return 0 if libc.unshare(flags) == 0 else ctypes.get_errno()


def isolate_network() -> str:
    """Move this process into a network namespace of its own (only a loopback, down); say how, or raise OSError."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    err = _unshare(libc, CLONE_NEWUSER | CLONE_NEWNET)
    if err == 0:
        # the same ids inside as outside: files it may touch are exactly those it could before
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        how = "user+network namespace"
    else:
        err2 = _unshare(libc, CLONE_NEWNET)  # root (CAP_SYS_ADMIN) where user namespaces are off
        if err2:
            raise OSError(err, f"unshare(CLONE_NEWUSER|CLONE_NEWNET): {os.strerror(err)}; "
                               f"unshare(CLONE_NEWNET): {os.strerror(err2)}")
        how = "network namespace"
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        raise OSError(0, f"the new network namespace has interfaces {interfaces}")
    return how


def main(argv: list[str]) -> None:
    if argv == ["--probe"]:
        try:
            print(isolate_network())
        except OSError as exc:
            print(exc.strerror or str(exc))
            sys.exit(1)
        return
    opts: dict[str, str] = {}
    while argv and argv[0] != "--":
        key, _, value = argv.pop(0).partition("=")
        opts[key.lstrip("-")] = value
    command = argv[1:]
    if not command:
        sys.exit("sluice-launch: no command")
    libc = _libc()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # sluice killed outright takes its servers with it
    if os.getppid() == 1:
        sys.exit("sluice-launch: parent gone")
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    how = "network allowed"
    if opts.get("network") == "deny":
        try:
            how = "network isolated (" + isolate_network() + ")"
        except OSError as exc:  # sluice asked for isolation: never run without it
            sys.exit(f"sluice-launch: cannot isolate the network: {exc.strerror or exc}")
    for item in filter(None, opts.get("limits", "").split(",")):
        name, _, value = item.partition(":")
        n = int(value)
        resource.setrlimit(LIMITS[name], (n, n))
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader (sluice started it in a session of its own)
    if os.path.realpath(command[0]) != opts.get("expect"):  # the allow-list, checked again just before exec
        sys.exit(f"sluice-launch: {command[0]} is not the allow-listed executable")
    keep = set(filter(None, opts.get("keep", "").split(",")))
    env = {k: v for k, v in os.environ.items() if k in keep}
    sys.stderr.write(f"sluice-launch: pid {os.getpid()}, {how}\n")
    sys.stderr.flush()
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])
