"""deploy/envoy/envoy.yaml read as Envoy reads it, against Envoy's own protos
(PyPI `xds-protos`): no Envoy binary is needed. The YAML becomes JSON and
is parsed into an `envoy.config.bootstrap.v3.Bootstrap` with
`ignore_unknown_fields=False`, every `typed_config` `@type` resolved (the
modules of its package imported, so the `Any` is parsed too), so a misspelt
field, a wrong type or an unknown enum value fails. Also checked: the rules
Envoy applies when it loads a config that the protos do not state (the
router is the last HTTP filter, every cluster named exists), and the
commented-out TLS block of the `tollgate` cluster, uncommented (it must stay
YAML once its `# ` are taken away). `.ci/run envoy_config` runs it:

    python tests/python/envoy_config_test.py deploy/envoy/envoy.yaml

Prints one closing line `envoy_config: N passed, N failed`; exits non-zero on
any failure. What it cannot see: Envoy's validation rules
(protoc-gen-validate, e.g. a required field left out) and its checks at
run time.
"""

import copy
import importlib
import pkgutil
import re
import sys

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import descriptor_pool, json_format

from devcluster import Cases

TYPE_URL = "type.googleapis.com/"


def type_urls(node):
    """Every `@type` in the document, in order."""
    if isinstance(node, dict):
        if "@type" in node:
            yield node["@type"]
        for value in node.values():
            yield from type_urls(value)
    elif isinstance(node, list):
        for value in node:
            yield from type_urls(value)


def resolve(url):
    """Imports the generated modules of `url`'s package, so that the
    message is in the default descriptor pool; fails naming the URL if it
    is not there."""
    if not url.startswith(TYPE_URL):
        raise AssertionError(f"@type {url!r}: not a {TYPE_URL}... URL")
    name = url[len(TYPE_URL):]
    pool = descriptor_pool.Default()
    try:
        return pool.FindMessageTypeByName(name)
    except KeyError:
        pass
    package = name.rsplit(".", 1)[0]
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise AssertionError(f"@type {url!r}: no package {package} in xds-protos ({e})") from None
    for info in pkgutil.iter_modules(module.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    try:
        return pool.FindMessageTypeByName(name)
    except KeyError:
        raise AssertionError(f"@type {url!r}: {package} has no message {name.rsplit('.', 1)[1]}") from None


def parse(config):
    """The Bootstrap; a misspelt field, a wrong type or an unknown enum value raises."""
    for url in type_urls(config):
        resolve(url)
    return json_format.ParseDict(config, bootstrap_pb2.Bootstrap(), ignore_unknown_fields=False)


def uncommented_tls(text):
    """The `transport_socket:` block the file leaves commented out (every
    level of `# ` taken away), as a dict; None if there is none."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"^\s*# transport_socket:", line)), None)
    if start is None:
        return None
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = []
    for line in lines[start:]:
        if not line.startswith(" " * indent + "#"):
            break
        while True:
            stripped = re.sub(r"^(\s*)# ?", r"\1", line, count=1)
            if stripped == line:
                break
            line = stripped
        block.append(line[indent:])
    return yaml.safe_load("\n".join(block))


def main(path):
    cases = Cases("envoy_config")
    text = open(path).read()
    config = yaml.safe_load(text)

    def every_type_resolves():
        urls = list(type_urls(config))
        assert urls, "no @type at all"
        for url in urls:
            resolve(url)
        print(f"     ({len(urls)} @type: {', '.join(sorted({u.rsplit('.', 1)[1] for u in urls}))})")

    def parses_as_a_bootstrap():
        bootstrap = parse(copy.deepcopy(config))
        assert bootstrap.static_resources.listeners, "no listeners"

    def the_rules_envoy_adds():
        bootstrap = parse(copy.deepcopy(config))
        clusters = {c.name for c in bootstrap.static_resources.clusters}
        named = set()
        for listener in bootstrap.static_resources.listeners:
            for chain in listener.filter_chains:
                for network in chain.filters:
                    if not network.typed_config.type_url.endswith(".HttpConnectionManager"):
                        continue
                    from envoy.extensions.filters.network.http_connection_manager.v3 import (
                        http_connection_manager_pb2 as hcm_pb2)
                    hcm = hcm_pb2.HttpConnectionManager()
                    assert network.typed_config.Unpack(hcm), network
                    filters = [f.name for f in hcm.http_filters]
                    assert filters and filters[-1] == "envoy.filters.http.router", \
                        f"the router must be the last HTTP filter: {filters}"
                    for vhost in hcm.route_config.virtual_hosts:
                        for route in vhost.routes:
                            if route.route.cluster:
                                named.add(route.route.cluster)
                            for name in route.typed_per_filter_config:
                                assert name in filters, f"typed_per_filter_config for {name}, not a filter: {filters}"
                    for f in hcm.http_filters:
                        named.update(re.findall(r'"clusterName": "([^"]+)"',
                                                json_format.MessageToJson(f.typed_config, indent=0)))
        assert {"tollgate", "upstream"} <= named, f"the clusters named: {sorted(named)}"
        assert named <= clusters, f"clusters named but not defined: {sorted(named - clusters)}"

    def the_commented_tls_block():
        tls = uncommented_tls(text)
        assert tls is not None, "no commented transport_socket block"
        with_tls = copy.deepcopy(config)
        tollgate = next(c for c in with_tls["static_resources"]["clusters"] if c["name"] == "tollgate")
        tollgate.update(tls)
        cluster = next(c for c in parse(with_tls).static_resources.clusters if c.name == "tollgate")
        assert cluster.transport_socket.name == "envoy.transport_sockets.tls", cluster.transport_socket

    def a_misspelt_field_fails():
        # The test itself: a field, an enum value and a filter type that
        # do not exist are each refused.
        for change, what in [
            (lambda c: c["static_resources"]["clusters"][0].update(connect_timout="1s"), "connect_timout"),
            (lambda c: c["static_resources"]["clusters"][0].update(lb_policy="ROUND_ROBBIN"), "ROUND_ROBBIN"),
            (lambda c: c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
             .update({"@type": TYPE_URL + "envoy.extensions.filters.network.nope.v3.Nope"}), "nope"),
            # Inside a filter's typed_config (an Any two levels down).
            (lambda c: next(f for f in c["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                            ["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.ratelimit")
             ["typed_config"].update(failure_mode_denny=True), "failure_mode_denny"),
        ]:
            broken = copy.deepcopy(config)
            change(broken)
            try:
                parse(broken)
            except (json_format.ParseError, AssertionError) as e:
                assert what in str(e), (what, str(e))
                continue
            raise AssertionError(f"{what} was accepted")

    cases.case(f"every @type in {path} is one of Envoy's messages", every_type_resolves)
    cases.case(f"{path} parses as an envoy.config.bootstrap.v3.Bootstrap", parses_as_a_bootstrap)
    cases.case("the router is last, every cluster named exists", the_rules_envoy_adds)
    cases.case("the commented TLS block parses once uncommented", the_commented_tls_block)
    cases.case("a misspelt field, enum value or @type is refused", a_misspelt_field_fails)
    return cases.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "deploy/envoy/envoy.yaml"))
