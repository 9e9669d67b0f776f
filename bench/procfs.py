"""What a server under test costs, read from /proc: CPU time and memory of a whole process tree.

A server may be one process (``expertcall serve`` today, Janus) or a tree of them (SFU worker
processes): every figure here sums the root and all its descendants alive at the time of reading.
CPU time includes ``cutime``/``cstime``, the time of children the tree has already reaped, so a
worker that exits during a window still counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    index 0 is field 3 (state), 1 is the ppid, 11/12 utime/stime, 13/14 cutime/cstime."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant, by parent links in /proc (root first)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def processes_cpu_seconds(root: int) -> dict[int, tuple[str, float]]:
    """Each live process of ``root``'s tree: what it is (``main``, ``sfu-worker-N``, or its
    command name) and its own CPU seconds, to see how a server's CPU spreads over its processes."""
    found: dict[int, tuple[str, float]] = {}
    for pid in process_tree(root):
        try:
            cpu = process_cpu_seconds(pid)
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if pid == root:
            role = "main"
        elif b"sfu.worker_process" in argv and argv.index(b"sfu.worker_process") + 1 < len(argv):
            role = f"sfu-worker-{argv[argv.index(b'sfu.worker_process') + 1].decode()}"
        elif b"--role" in argv and argv.index(b"--role") + 1 < len(argv):  # bench.split_nodes's nodes
            role = f"{argv[argv.index(b'--role') + 1].decode()}-node"
        else:
            role = os.path.basename(argv[0].decode(errors="replace")) or str(pid)
        found[pid] = (role, cpu)
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU time of ``root``'s tree: each live process's own and its reaped children's."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


@dataclass(frozen=True)
class Memory:
    """Of a process tree, in KiB. RSS counts every page mapped, a library page shared with other
    processes included; PSS splits each shared page between the processes mapping it (what the
    tree costs the machine, but it falls when another process maps the same libraries, as the
    bench's own clients do); USS counts the pages only this tree maps, a library page that no
    other process maps included (so it too falls when the clients map the same libraries: by
    ~1.5 MiB at once for the SFU, whose clients load the same venv's uvloop); anon counts the
    memory the tree allocated (heap, mmap'd arenas, stacks): what grows with calls, and nothing
    else."""

    rss_kb: int
    pss_kb: int
    uss_kb: int
    processes: int
    anon_kb: int


_ROLLUP = {"Rss": 0, "Pss": 1, "Private_Clean": 2, "Private_Dirty": 2, "Anonymous": 3}


def tree_memory(root: int) -> Memory:
    totals = [0, 0, 0, 0]
    count = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in _ROLLUP:
                        totals[_ROLLUP[key]] += int(rest.split()[0])
        except OSError:
            continue
        count += 1
    return Memory(totals[0], totals[1], totals[2], count, totals[3])
