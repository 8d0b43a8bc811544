"""Network endpoints that work across nodes: this process's node address, free ports, gloo devices.

Rendezvous addresses (DeepSpeed's master, the weight-sync group's TCPStore host) are the node IP
that Ray knows the node by, never `gethostbyname(gethostname())`: on many hosts the hostname
resolves to 127.0.1.1 or a bridge address that other nodes cannot reach. Ports are probed on all
interfaces, as torch's TCPStore binds them (`*:port`). Gloo sockets are bound to the node IP too:
gloo's default device also goes through the hostname.

The driver's worker-setup hook (cluster/infra/lifeline.py) exports the node IP as REASONRL_NODE_IP in
every Ray worker of a run, so child processes that are not Ray workers (vLLM's engine core and
workers in multiprocess mode) use the same address.
"""
from __future__ import annotations

import os
import socket

NODE_IP_ENV = "REASONRL_NODE_IP"


def node_ip() -> str:
    """This node's address as Ray knows it (REASONRL_NODE_IP, else Ray's view in a Ray worker or
    driver); 127.0.0.1 in a process that is neither (a single-machine tool such as the GPU smoke test)."""
    if os.environ.get(NODE_IP_ENV):
        return os.environ[NODE_IP_ENV]
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:  # the smoke test's reduced mode runs without Ray
        pass
    return "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on every interface (the TCPStore master binds all of them)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def interface_of(ip: str) -> str | None:
    """The network interface that carries `ip` (e.g. 'eth0'), or None when no local interface does."""
    try:
        import psutil
    except ImportError:
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addresses):
            return name
    return None


def pin_gloo_interface() -> None:
    """Make torch's default gloo group (DeepSpeed's, on CPU) use the node IP's interface unless the
    user chose one (GLOO_SOCKET_IFNAME): the default goes through the hostname."""
    if not os.environ.get("GLOO_SOCKET_IFNAME"):
        name = interface_of(node_ip())
        if name:
            os.environ["GLOO_SOCKET_IFNAME"] = name


def gloo_device():
    """A gloo device bound to this node's IP, for private groups built by hand (ProcessGroupGloo)."""
    import torch.distributed as dist

    return dist.ProcessGroupGloo.create_device(hostname=node_ip())
