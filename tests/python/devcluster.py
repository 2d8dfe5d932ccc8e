"""The one launcher of the Python tests: a `tollgate dev --tls` cluster
(three real node processes from the binary given) on free ports, its admin
API, gRPC channels to its nodes, and the runner that reports each case.

    with tempfile.TemporaryDirectory() as workdir:
        cluster = Cluster("target/debug/tollgate", workdir)
        try:
            cluster.wait_leader()
            ...
        finally:
            cluster.stop()
"""

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import grpc


def free_base_port():
    """A base port whose twelve `tollgate dev` ports (P+0..2, +1000.., +2000.., +3000..) are free now."""
    for base in range(14_100 + os.getpid() % 500, 16_900, 7):
        ports = [base + off + i for off in (0, 1000, 2000, 3000) for i in range(3)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports for tollgate dev")


class Cluster:
    """`tollgate dev --tls` in `workdir`: HTTPS on base+0..2, gRPC on
    base+3000..3002 (node 1 is index 0), one admin token of its own."""

    def __init__(self, binary, workdir, name="python"):
        self.admin_token = f"tga_{name}-test-" + os.urandom(12).hex()
        self.base = free_base_port()
        self.out = open(os.path.join(workdir, "dev.out"), "w+")
        env = dict(os.environ, TOLLGATE_ADMIN_TOKEN=self.admin_token, TOLLGATE_LOG="warn")
        env.pop("TOLLGATE_CLUSTER_TOKEN", None)
        self.process = subprocess.Popen(
            [binary, "dev", "--tls", "--base-port", str(self.base), "--data-dir", os.path.join(workdir, "dev")],
            stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
        deadline = time.time() + 60
        while "Ctrl-C stops" not in open(self.out.name).read():
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError("tollgate dev did not come up:\n" + open(self.out.name).read())
            time.sleep(0.2)
        ca_path = os.path.join(workdir, "dev", "certs", "ca.pem")
        self.ca = open(ca_path, "rb").read()
        self.https = ssl.create_default_context(cafile=ca_path)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def admin(self, method, path, body=None, node=0):
        """(HTTP status, JSON answer) of an admin API call to node `node` (0-based)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.base + node}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.admin_token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=self.https, timeout=20) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def wait_leader(self, timeout=30):
        deadline = time.time() + timeout
        while self.admin("GET", "/v1/admin/cluster")[0] != 200:
            if time.time() > deadline:
                raise RuntimeError("the cluster has no leader")
            time.sleep(0.2)

    def wait_every_node(self, what, holds, timeout=30):
        """Waits until `holds(node)` is true on every node (a stale read each time)."""
        for node in range(3):
            deadline = time.time() + timeout
            while not holds(node):
                if time.time() > deadline:
                    raise RuntimeError(f"node {node + 1} did not get {what}")
                time.sleep(0.2)

    def count(self, kind, node):
        """How many objects of `kind` (`tokens`, `keys`, `ratelimits`, ...) node `node` holds."""
        answer = self.admin("GET", f"/v1/admin/{kind}?stale=true", node=node)[1] or {}
        return len(answer.get("items", []))

    def grpc_channel(self, node):
        """A new TLS channel (its own connection) to node `node`'s gRPC port."""
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca)
        return grpc.secure_channel(f"127.0.0.1:{self.base + 3000 + node}", credentials,
                                   options=[("grpc.ssl_target_name_override", "localhost")])


class Cases:
    """Runs each case, prints `ok` or `FAIL` with the error, and closes with
    the line `NAME: N passed, N failed`."""

    def __init__(self, name):
        self.name = name
        self.results = []

    def case(self, name, fn):
        try:
            fn()
            self.results.append((name, None))
            print(f"ok   {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            self.results.append((name, e))
            print(f"FAIL {name}: {e!r}", flush=True)

    def fail(self, name, error):
        """A failure outside any case (the cluster did not start, say)."""
        self.results.append((name, error))
        print(f"FAIL {name}: {error!r}", flush=True)

    def close(self):
        """Prints the closing line; the process's exit status."""
        failed = sum(1 for _, e in self.results if e is not None)
        print(f"{self.name}: {len(self.results) - failed} passed, {failed} failed")
        return 1 if failed or not self.results else 0
