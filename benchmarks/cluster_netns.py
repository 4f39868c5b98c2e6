"""Ray on loopback only: a network namespace with nothing but ``lo``, and a small two-node cluster in it.

Ray advertises the machine's interface address whatever address it is given (``--node-ip-address
127.0.0.1`` is ignored by design), so every test and benchmark that starts Ray re-runs itself inside
``unshare -n`` with ``lo`` up: there is no other address, and no Ray traffic can leave the machine.
Shared by tests/test_serve_cluster.py and benchmarks/cluster.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from typing import Any, Iterator, Optional

#: set (to "1") in the environment of a process re-run inside the loopback-only namespace
ENV = "GENREAL_LOOPBACK_NETNS"


def inside() -> bool:
    return os.environ.get(ENV) == "1"


def problem() -> Optional[str]:
    """Why this machine cannot make a loopback-only network namespace here, or None when it can."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare (util-linux) and ip (iproute2) are needed to run Ray on loopback only"
    r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"unshare -n is not permitted here ({r.stderr.strip() or r.returncode}): needs root or user namespaces"
    return None


def command(argv: list[str]) -> list[str]:
    """`argv` run inside a new network namespace holding only loopback (brought up first)."""
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def run(argv: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess:
    """Run `argv` in the namespace, with `ENV` set so the child knows where it is."""
    env = {**os.environ, ENV: "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(command(argv), env=env, timeout=timeout, **kw)


def _tree(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def pin(node: Any, cores: set[int]) -> None:
    """Pin a node's raylet and its worker processes (every thread) to `cores`; workers it starts later
    inherit them. So the nodes of one machine's `Cluster` stop sharing cores."""
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    for pid in _tree(raylet):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread or process that ended meanwhile
            continue


@contextmanager
def two_node_cluster(cpus_per_node: int = 1, object_store_mb: int = 80, nodes: int = 2,
                     cores: Optional[list[set[int]]] = None) -> Iterator[Any]:
    """A `ray.cluster_utils.Cluster` of `nodes` nodes (the head one of them); only inside the namespace.
    `cores`: one set of CPU cores per node to pin it to (`pin`)."""
    if not inside():
        raise RuntimeError("start Ray only inside the loopback-only namespace (benchmarks.cluster_netns.run)")
    from ray.cluster_utils import Cluster

    from realtime.serve.cluster import SYSTEM_CONFIG

    store = object_store_mb << 20
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus_per_node, "object_store_memory": store, "include_dashboard": False,
        "_system_config": SYSTEM_CONFIG})  # as --cluster auto sets it
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=cpus_per_node, object_store_memory=store)
        cluster.wait_for_nodes()
        for node, node_cores in zip(cluster.list_all_nodes(), cores or []):
            pin(node, node_cores)
        yield cluster
    finally:
        import ray

        ray.shutdown()  # the driver first: Ray refuses to remove the node a driver is connected to
        cluster.shutdown()
