"""Runs a test worker module as several local processes of one MultiWorkerMirroredStrategy
cluster (TF_CONFIG on 127.0.0.1 ports) and reads each process's JSON output."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_workers(args, tmp_path, count=2, timeout=300):
    """Starts ``python -m <args...> OUTPUT.json`` as ``count`` workers of one cluster; returns
    their outputs (worker order). A worker that fails fails the caller with its stderr."""
    workers = [f"127.0.0.1:{p}" for p in free_ports(count)]
    procs, outputs = [], []
    for index in range(count):
        env = os.environ.copy()
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                       "task": {"type": "worker", "index": index}})
        outputs.append(tmp_path / f"worker{index}.json")
        procs.append(subprocess.Popen([sys.executable, "-m", *args, str(outputs[-1])],
                                      cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err.decode()[-3000:]
    finally:
        for p in procs:
            p.kill()
    return [json.loads(out.read_text()) for out in outputs]
