"""Envoy's ext_authz v3 over gRPC against a `tollgate dev --tls` cluster,
asked through Envoy's own generated stubs (PyPI `xds-protos`, `grpcio`):
allow and every deny class with its HTTP status, a caller without the
check token, and bad input, on the cluster `devcluster` starts. `.ci/run`
runs it:

    python tests/python/ext_authz_test.py target/debug/tollgate

Prints one closing line `N passed, N failed` and exits non-zero on any
failure. Stops the cluster it started (SIGTERM) however it ends.
"""

import json
import sys
import tempfile

import grpc
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from devcluster import Cases, Cluster


def configure(cluster):
    """The API, plan, key and check token the checks use; returns (key secret, check token)."""
    cluster.wait_leader()
    down = {"id": "down", "name": "down", "kind": {"http": {"url": "http://127.0.0.1:1/authorize",
            "identity_sources": ["header:authorization"], "timeout_ms": 500}}}
    api = {"id": "pets", "name": "Pets", "stages": [{"name": "prod"}],
           "routes": [{"method": "GET", "path": "/pets/*", "api_key_required": True},
                      {"method": "GET", "path": "/ipzone/*"}, {"method": "GET", "path": "/open/*"},
                      {"method": "GET", "path": "/authz/*", "authorizer_id": "down"}],
           "cors": {"allow_origins": ["https://app.example.com"], "allow_methods": ["GET"]}}
    plan = {"id": "gold", "name": "Gold", "throttle": {"rate_per_sec": 0.2, "burst": 2},
            "api_stages": [{"api_id": "pets", "stage": "prod"}]}
    policy = {"name": "ipzone", "api_id": "pets", "statements": [
        {"effect": "Allow", "principals": ["*"], "actions": ["invoke"], "resources": ["pets/*"]},
        {"effect": "Deny", "principals": ["*"], "actions": ["invoke"], "resources": ["pets/*/GET/ipzone/*"],
         "conditions": [{"operator": "NotIpAddress", "key": "source_ip", "values": ["203.0.113.0/24"]}]}]}
    for path, body in [("/v1/admin/authorizers", down), ("/v1/admin/apis", api), ("/v1/admin/plans", plan),
                       ("/v1/admin/policies", policy)]:
        status, answer = cluster.admin("POST", path, body)
        assert status == 201, (path, status, answer)
    status, key = cluster.admin("POST", "/v1/admin/keys", {"name": "alice", "plan_ids": ["gold"]})
    assert status == 201, key
    status, token = cluster.admin("POST", "/v1/admin/tokens", {"name": "envoy", "scopes": ["check"]})
    assert status == 201, token
    cluster.wait_every_node("the model", lambda node: cluster.count("tokens", node) == 1
                            and cluster.count("keys", node) == 1)
    return key["secret"], token["secret"]


def check_request(path, source="203.0.113.9", headers=None, method="GET", api="pets", stage="prod"):
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method=method, path=path, host="api.example", scheme="https", protocol="HTTP/1.1", size=-1,
        headers=headers or {})
    extensions = {"tollgate_api": api}
    if stage is not None:
        extensions["tollgate_stage"] = stage
    return external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(
        source=attribute_context_pb2.AttributeContext.Peer(
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=source))),
        request=attribute_context_pb2.AttributeContext.Request(http=http),
        context_extensions=extensions))


def outcome(response):
    """(HTTP status, headers as a dict) of a CheckResponse."""
    kind = response.WhichOneof("http_response")
    if kind == "ok_response":
        assert response.status.code == 0, response
        return 200, {h.header.key: h.header.value for h in response.ok_response.headers}
    assert kind == "denied_response" and response.status.code != 0, response
    denied = response.denied_response
    json.loads(denied.body)  # the body is JSON
    return denied.status.code, {h.header.key: h.header.value for h in denied.headers}


def main(binary):
    cases = Cases("ext_authz")
    case = cases.case

    with tempfile.TemporaryDirectory() as workdir:
        cluster = Cluster(binary, workdir, "ext-authz")
        try:
            secret, token = configure(cluster)
            stub = external_auth_pb2_grpc.AuthorizationStub(cluster.grpc_channel(1))
            auth = [("authorization", f"Bearer {token}")]

            def ask(request, metadata=auth):
                return outcome(stub.Check(request, metadata=metadata, timeout=10))

            def expect(request, status, reason, header=None):
                got, headers = ask(request)
                assert got == status, (got, headers)
                assert headers.get("x-tollgate-reason") == reason, headers
                if header:
                    assert headers.get(header), (header, headers)

            def throttled():
                for _ in range(6):
                    got, headers = ask(check_request("/pets/2", headers={"x-api-key": secret}))
                    if got == 429:
                        assert headers.get("x-tollgate-reason") == "throttled", headers
                        assert int(headers["retry-after"]) >= 0, headers
                        return
                    assert got == 200, (got, headers)
                raise AssertionError("no 429 past a burst of 2")

            def unauthenticated(metadata):
                try:
                    stub.Check(check_request("/open/1"), metadata=metadata, timeout=10)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
                    return
                raise AssertionError("answered without the check token")

            def invalid(request, field):
                try:
                    stub.Check(request, metadata=auth, timeout=10)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                    assert field in e.details(), e.details()
                    return
                raise AssertionError("bad input was decided")

            case("allow: 200 with the key id for the upstream",
                 lambda: expect(check_request("/pets/1", headers={"x-api-key": secret}), 200, "allowed",
                                "x-tollgate-key-id"))
            case("unknown key: 403", lambda: expect(check_request("/pets/1", headers={"x-api-key": "tgk_no"}),
                                                     403, "unknown_key"))
            case("missing key: 403", lambda: expect(check_request("/pets/1"), 403, "missing_key"))
            case("resource policy: 403",
                 lambda: expect(check_request("/ipzone/1", source="198.51.100.7"), 403, "resource_policy_denied"))
            case("unknown route: 404", lambda: expect(check_request("/nowhere"), 404, "no_route"))
            case("unknown API: 404", lambda: expect(check_request("/pets/1", api="nope"), 404, "unknown_api"))
            case("authorizer down: 503",
                 lambda: expect(check_request("/authz/1", headers={"authorization": "Bearer x"}), 503,
                                "authorizer_error"))
            case("preflight: 204 with CORS headers",
                 lambda: expect(check_request("/open/1", method="OPTIONS", headers={
                     "origin": "https://app.example.com", "access-control-request-method": "GET"}),
                     204, "cors_preflight", "access-control-allow-origin"))
            case("throttled: 429 with Retry-After", throttled)
            case("no token: UNAUTHENTICATED", lambda: unauthenticated([]))
            case("wrong token: UNAUTHENTICATED",
                 lambda: unauthenticated([("authorization", "Bearer tga_wrong-0123456789abcdef0123456789")]))
            case("no stage: INVALID_ARGUMENT naming it",
                 lambda: invalid(check_request("/open/1", stage=None), "tollgate_stage"))
            case("bad source: INVALID_ARGUMENT naming it",
                 lambda: invalid(check_request("/open/1", source="nope"), "attributes.source.address"))
            def not_utf8():
                # A CheckRequest whose context_extensions key is the bytes ff fe:
                # protobuf strings must be UTF-8, so no stub would build it.
                entry = b"\x0a\x02\xff\xfe" + b"\x12\x01a"
                attributes = b"\x52" + bytes([len(entry)]) + entry
                raw = b"\x0a" + bytes([len(attributes)]) + attributes
                check = cluster.grpc_channel(1).unary_unary(
                    "/envoy.service.auth.v3.Authorization/Check",
                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
                try:
                    check(raw, metadata=auth, timeout=10)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
                    assert "UTF-8" in e.details(), e.details()
                    return
                raise AssertionError("a non-UTF-8 string was decided")

            case("non-UTF-8 string: INVALID_ARGUMENT", not_utf8)
        finally:
            cluster.stop()
    return cases.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "target/debug/tollgate"))
