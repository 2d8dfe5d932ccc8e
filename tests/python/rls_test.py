"""Envoy's rate limit service v3 (`envoy.service.ratelimit.v3.RateLimitService/
ShouldRateLimit`) over gRPC against a `tollgate dev --tls` cluster, asked
through Envoy's own generated stubs (PyPI `xds-protos`, `grpcio`): an hourly
limit spread over the three nodes admits exactly its limit, nested
descriptors, shadow mode, unlimited rules, an unknown domain, hits_addend,
the descriptor statuses, bad input (each INVALID_ARGUMENT, the node still
answering after it), callers without the check token, and ext_authz beside
the rate limit service on one channel. `.ci/run rls` runs it:

    python tests/python/rls_test.py target/debug/tollgate

Prints one closing line `rls: N passed, N failed` and exits non-zero on any
failure. Stops the cluster it started (SIGTERM) however it ends.
"""

import os
import sys
import tempfile
import threading
import time

import grpc
from envoy.config.core.v3 import address_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import wrappers_pb2

from devcluster import Cases, Cluster

OK = rls_pb2.RateLimitResponse.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
Unit = rls_pb2.RateLimitResponse.RateLimit
# A fresh value for each run's counts, so that no count is shared with
# another run of the test against the same data (there is none: the
# cluster is new), and each case's counts are its own.
RUN = os.urandom(4).hex()

SPREAD_LIMIT = 30

# envoyproxy/ratelimit's config model, as `/v1/admin/ratelimits` takes it.
DOMAIN = {"domain": "py", "descriptors": [
    {"key": "user", "rate_limit": {"unit": "hour", "requests_per_unit": SPREAD_LIMIT}},
    {"key": "tenant", "rate_limit": {"unit": "hour", "requests_per_unit": 1000, "name": "tenant"},
     "descriptors": [
         {"key": "path", "value": "/login", "rate_limit": {"unit": "hour", "requests_per_unit": 3, "name": "login"}},
         {"key": "path", "rate_limit": {"unit": "minute", "requests_per_unit": 500}}]},
    {"key": "shadow", "shadow_mode": True, "rate_limit": {"unit": "hour", "requests_per_unit": 2}},
    {"key": "free", "rate_limit": {"unlimited": True}},
    {"key": "bulk", "rate_limit": {"unit": "hour", "requests_per_unit": 10}},
    {"key": "daily", "rate_limit": {"unit": "day", "requests_per_unit": 100, "name": "daily"}},
    {"key": "minute", "rate_limit": {"unit": "minute", "requests_per_unit": 20}},
]}


def configure(cluster):
    """The domain, an API for the ext_authz calls and a check token, on every node; the token."""
    cluster.wait_leader()
    api = {"id": "pets", "name": "Pets", "stages": [{"name": "prod"}],
           "routes": [{"method": "GET", "path": "/open/*"}]}
    for path, body in [("/v1/admin/ratelimits", DOMAIN), ("/v1/admin/apis", api)]:
        status, answer = cluster.admin("POST", path, body)
        assert status == 201, (path, status, answer)
    status, token = cluster.admin("POST", "/v1/admin/tokens", {"name": "envoy", "scopes": ["check"]})
    assert status == 201, token
    cluster.wait_every_node("the domain and the token", lambda node: cluster.count("ratelimits", node) == 1
                            and cluster.count("tokens", node) == 1 and cluster.count("apis", node) == 1)
    return token["secret"]


def descriptor(*entries, hits=None, limit=None):
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])
    if hits is not None:
        d.hits_addend.CopyFrom(wrappers_pb2.UInt64Value(value=hits))
    if limit is not None:
        d.limit.CopyFrom(limit)
    return d


def request(*descriptors, domain="py", hits=0):
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=list(descriptors), hits_addend=hits)


def wait_for_window(window_secs, left_secs):
    """Sleeps into the next `window_secs` window (wall clock, as the limits'
    windows are) when fewer than `left_secs` of this one are left, so that a
    case's requests fall in one window."""
    left = window_secs - time.time() % window_secs
    if left < left_secs:
        print(f"     (waiting {left:.0f} s for the next window)", flush=True)
        time.sleep(left + 0.5)


def main(binary):
    cases = Cases("rls")
    case = cases.case
    with tempfile.TemporaryDirectory() as workdir:
        try:
            cluster = Cluster(binary, workdir, "rls")
        except Exception as e:  # noqa: BLE001 - reported as a failure, with the cluster's output
            cases.fail("the cluster starts", e)
            return cases.close()
        try:
            token = configure(cluster)
            auth = [("authorization", f"Bearer {token}")]
            channels = [cluster.grpc_channel(node) for node in range(3)]
            stubs = [rls_pb2_grpc.RateLimitServiceStub(c) for c in channels]

            def ask(req, node=0, metadata=None):
                return stubs[node].ShouldRateLimit(req, metadata=metadata or auth, timeout=10)

            def admitted(req, node=0):
                answer = ask(req, node)
                assert answer.overall_code in (OK, OVER_LIMIT), answer
                return answer.overall_code == OK

            def spread(value, per_node):
                """`per_node` requests from each node at once, then round-robin
                until the limit is spent (or 30 s): exactly the limit admitted,
                never more at any point; then every node refuses."""
                user = descriptor(("user", value))
                total = 0
                lock = threading.Lock()
                errors = []

                def sender(node):
                    nonlocal total
                    try:
                        for _ in range(per_node):
                            if admitted(request(user), node):
                                with lock:
                                    total += 1
                    except Exception as e:  # noqa: BLE001 - re-raised below
                        errors.append(e)

                threads = [threading.Thread(target=sender, args=(node,)) for node in range(3)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert not errors, errors
                assert total <= SPREAD_LIMIT, f"{total} admitted of {SPREAD_LIMIT} at once"
                at_once = total
                # Units a node held when its sender stopped are handed back:
                # asked on round-robin, the cluster admits exactly the rest.
                deadline = time.time() + 30
                turn = 0
                while total < SPREAD_LIMIT and time.time() < deadline:
                    if admitted(request(user), turn % 3):
                        total += 1
                    else:
                        time.sleep(0.05)
                    assert total <= SPREAD_LIMIT, f"{total} admitted of {SPREAD_LIMIT}"
                    turn += 1
                assert total == SPREAD_LIMIT, f"only {total} of {SPREAD_LIMIT} admitted in 30 s ({at_once} at once)"
                for node in range(3):
                    answer = ask(request(user), node)
                    assert answer.overall_code == OVER_LIMIT, (node, answer)
                    assert answer.statuses[0].code == OVER_LIMIT, answer
                    assert answer.statuses[0].limit_remaining == 0, answer
                print(f"     ({3 * per_node} asked at once from three nodes, {at_once} admitted; "
                      f"{total} in all after {turn} more asked round-robin)", flush=True)

            def exactly_the_limit_over_three_nodes():
                wait_for_window(3600, 90)
                # More than the limit at once: never more than 30.
                spread(f"spread-{RUN}", 20)
                # Less than the limit at once: the nodes keep units they
                # were lent and did not use, which must come back.
                spread(f"quiet-{RUN}", 7)

            def nested_descriptors():
                wait_for_window(3600, 30)
                login = descriptor(("tenant", f"t-{RUN}"), ("path", "/login"))
                answers = [ask(request(login), node=1) for _ in range(4)]
                assert [a.overall_code for a in answers] == [OK, OK, OK, OVER_LIMIT], answers
                limit = answers[0].statuses[0].current_limit
                assert (limit.name, limit.requests_per_unit, limit.unit) == ("login", 3, Unit.HOUR), limit
                # The tenant's own count is another one (the first entry's rule).
                tenant = ask(request(descriptor(("tenant", f"t-{RUN}"))), node=1)
                assert tenant.overall_code == OK, tenant
                limit = tenant.statuses[0].current_limit
                assert (limit.name, limit.requests_per_unit, limit.unit) == ("tenant", 1000, Unit.HOUR), limit
                # Another path: the rule with the key alone.
                other = ask(request(descriptor(("tenant", f"t-{RUN}"), ("path", "/other"))), node=1)
                assert other.overall_code == OK, other
                limit = other.statuses[0].current_limit
                assert (limit.requests_per_unit, limit.unit) == (500, Unit.MINUTE), limit
                # An entry deeper than the tree, or a path without its tenant: no limit.
                for entries in [(("tenant", f"t-{RUN}"), ("path", "/login"), ("extra", "x")), (("path", "/login"),)]:
                    answer = ask(request(descriptor(*entries)), node=1)
                    assert answer.overall_code == OK, (entries, answer)
                    assert not answer.statuses[0].HasField("current_limit"), (entries, answer)

            def shadow_mode_never_denies():
                wait_for_window(3600, 30)
                shadow = descriptor(("shadow", f"s-{RUN}"))
                for n in range(6):
                    answer = ask(request(shadow), node=n % 3)
                    assert answer.overall_code == OK, (n, answer)
                    assert answer.statuses[0].code == OK, (n, answer)
                    assert answer.statuses[0].current_limit.requests_per_unit == 2, answer

            def unlimited():
                for n in range(20):
                    answer = ask(request(descriptor(("free", "anyone"))), node=n % 3)
                    assert answer.overall_code == OK, answer
                    status = answer.statuses[0]
                    assert status.code == OK and not status.HasField("current_limit"), answer
                    assert status.limit_remaining == 2**32 - 1, answer

            def unknown_domain():
                req = request(descriptor(("user", "x")), descriptor(("bulk", "y")), domain="no-such-domain")
                for n in range(20):
                    answer = ask(req, node=n % 3)
                    assert answer.overall_code == OK, answer
                    assert len(answer.statuses) == 2, answer
                    assert all(s.code == OK and not s.HasField("current_limit") for s in answer.statuses), answer

            def hits_addend():
                wait_for_window(3600, 30)
                bulk = descriptor(("bulk", f"b-{RUN}"))
                # 10 an hour, 4 at a time: 6 left, 2 left, then 4 do not fit
                # (and are charged nothing), 2 do, then nothing is left.
                steps = [(4, OK, 6), (4, OK, 2), (4, OVER_LIMIT, 0), (2, OK, 0), (1, OVER_LIMIT, 0)]
                for hits, code, remaining in steps:
                    answer = ask(request(bulk, hits=hits), node=2)
                    status = answer.statuses[0]
                    assert (answer.overall_code, status.code, status.limit_remaining) == (code, code, remaining), \
                        (hits, answer)
                # A descriptor's own hits_addend wins over the request's.
                answer = ask(request(descriptor(("bulk", f"c-{RUN}"), hits=7), hits=2), node=2)
                assert (answer.overall_code, answer.statuses[0].limit_remaining) == (OK, 3), answer

            def statuses():
                # One descriptor of each kind, in order: a daily limit, no
                # rule, an unlimited rule, a minute window.
                req = request(descriptor(("daily", f"d-{RUN}")), descriptor(("nokey", "x")),
                              descriptor(("free", "x")), descriptor(("minute", f"m-{RUN}")))
                before = time.time()
                answer = ask(req, node=1, metadata=auth + [("x-tollgate-ratelimit-headers", "true")])
                assert answer.overall_code == OK, answer
                daily, none, free, minute = answer.statuses
                assert (daily.code, daily.limit_remaining) == (OK, 99), daily
                limit = daily.current_limit
                assert (limit.name, limit.requests_per_unit, limit.unit) == ("daily", 100, Unit.DAY), limit
                to_midnight = 86400 - before % 86400
                assert abs(daily.duration_until_reset.seconds - to_midnight) <= 2, (daily, to_midnight)
                assert none.code == OK and not none.HasField("current_limit"), none
                assert not none.HasField("duration_until_reset"), none
                assert free.code == OK and free.limit_remaining == 2**32 - 1, free
                limit = minute.current_limit
                assert (limit.requests_per_unit, limit.unit) == (20, Unit.MINUTE), minute
                assert 0 < minute.limit_remaining <= 19, minute
                to_minute = 60 - before % 60
                assert abs(minute.duration_until_reset.seconds - to_minute) <= 2, (minute, to_minute)
                # The tightest limit's X-RateLimit-* headers (the minute's 20).
                headers = {h.key: h.value for h in answer.response_headers_to_add}
                assert headers.get("x-ratelimit-limit") == "20, 20;w=60", headers
                assert int(headers.get("x-ratelimit-remaining", "-1")) == minute.limit_remaining, headers
                # Without the metadata: no headers.
                again = ask(request(descriptor(("daily", f"d-{RUN}"))), node=1)
                assert not again.response_headers_to_add, again
                assert again.statuses[0].limit_remaining == 98, again

            def invalid(req, field, node=0):
                """`req` (a message, or raw bytes) fails with INVALID_ARGUMENT naming `field`; the node answers on."""
                call = stubs[node].ShouldRateLimit
                if isinstance(req, bytes):
                    call = channels[node].unary_unary(
                        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
                        request_serializer=lambda b: b, response_deserializer=rls_pb2.RateLimitResponse.FromString)
                try:
                    answer = call(req, metadata=auth, timeout=10)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
                    assert field in e.details(), e.details()
                else:
                    raise AssertionError(f"bad input was decided: {answer}")
                answer = ask(request(descriptor(("free", "after"))), node)
                assert answer.overall_code == OK, answer

            def unknown_unit():
                override = ratelimit_pb2.RateLimitDescriptor.RateLimitOverride(requests_per_unit=5, unit=Unit.UNKNOWN)
                invalid(request(descriptor(("user", "x"), limit=override)), "descriptors[0].limit.unit")

            def unauthenticated(metadata):
                try:
                    stubs[0].ShouldRateLimit(request(descriptor(("free", "x"))), metadata=metadata, timeout=10)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e
                    return
                raise AssertionError("answered without the check token")

            def ext_authz_beside_rls():
                # One channel (one HTTP/2 connection) to node 3, both services.
                channel = cluster.grpc_channel(2)
                authz = external_auth_pb2_grpc.AuthorizationStub(channel)
                rls = rls_pb2_grpc.RateLimitServiceStub(channel)
                check = external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(
                    source=attribute_context_pb2.AttributeContext.Peer(
                        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address="203.0.113.9"))),
                    request=attribute_context_pb2.AttributeContext.Request(
                        http=attribute_context_pb2.AttributeContext.HttpRequest(method="GET", path="/open/1")),
                    context_extensions={"tollgate_api": "pets", "tollgate_stage": "prod"}))
                limited = request(descriptor(("daily", f"both-{RUN}")))
                # Calls of both services in flight at once, interleaved.
                futures = []
                for _ in range(10):
                    futures.append(("authz", authz.Check.future(check, metadata=auth, timeout=10)))
                    futures.append(("rls", rls.ShouldRateLimit.future(limited, metadata=auth, timeout=10)))
                remaining = []
                for kind, future in futures:
                    answer = future.result()
                    if kind == "authz":
                        assert answer.status.code == 0 and answer.WhichOneof("http_response") == "ok_response", answer
                    else:
                        assert answer.overall_code == OK, answer
                        remaining.append(answer.statuses[0].limit_remaining)
                # Ten taken from the 100 of the day, no more, no fewer.
                assert all(90 <= r <= 99 for r in remaining), remaining
                after = rls.ShouldRateLimit(limited, metadata=auth, timeout=10)
                assert after.statuses[0].limit_remaining == 89, after
                channel.close()

            case(f"an hourly limit of {SPREAD_LIMIT} over three nodes admits exactly {SPREAD_LIMIT}",
                 exactly_the_limit_over_three_nodes)
            case("nested descriptors: the limit of the rule the last entry matches", nested_descriptors)
            case("shadow_mode never denies", shadow_mode_never_denies)
            case("unlimited: OK, no limit, remaining 2^32-1", unlimited)
            case("unknown domain: OK without a limit", unknown_domain)
            case("hits_addend: charged whole or not at all", hits_addend)
            case("statuses: current_limit, limit_remaining, duration_until_reset, headers", statuses)
            case("empty domain: INVALID_ARGUMENT", lambda: invalid(request(descriptor(("user", "x")), domain=""),
                                                                   "domain"))
            case("10,000 descriptors: INVALID_ARGUMENT",
                 lambda: invalid(request(*[descriptor(("user", "x"))] * 10_000), "65536 bytes"))
            case("65 descriptors: INVALID_ARGUMENT",
                 lambda: invalid(request(*[descriptor(("user", "x"))] * 65), "descriptors"))
            case("a 2,000-byte value: INVALID_ARGUMENT",
                 lambda: invalid(request(descriptor(("user", "v" * 2000))), "descriptors[0].entries[0].value"))
            case("an UNKNOWN unit override: INVALID_ARGUMENT", unknown_unit)
            # Messages no stub would build: each field of the wrong wire
            # type, bytes that are no protobuf message, a non-UTF-8 string.
            case("domain sent as a varint: INVALID_ARGUMENT",
                 lambda: invalid(b"\x08\x05", "RateLimitRequest.domain: invalid wire type"))
            case("descriptors sent as a fixed64: INVALID_ARGUMENT",
                 lambda: invalid(b"\x0a\x02py" + b"\x11" + bytes(8), "RateLimitRequest.descriptors: invalid wire type"))
            case("hits_addend sent as bytes: INVALID_ARGUMENT",
                 lambda: invalid(b"\x0a\x02py\x1a\x01x", "RateLimitRequest.hits_addend: invalid wire type"))
            case("bytes that are no RateLimitRequest: INVALID_ARGUMENT",
                 lambda: invalid(b"\xff\xff\xff\xff\xff", "invalid varint"))
            case("a truncated message: INVALID_ARGUMENT",
                 lambda: invalid(b"\x0a\x05py", "domain: buffer underflow"))
            case("a domain that is not UTF-8: INVALID_ARGUMENT",
                 lambda: invalid(b"\x0a\x02\xff\xfe", "domain: invalid string value"))
            case("no token: UNAUTHENTICATED", lambda: unauthenticated([]))
            case("wrong token: UNAUTHENTICATED",
                 lambda: unauthenticated([("authorization", "Bearer tga_wrong-0123456789abcdef0123456789")]))
            case("ext_authz and the rate limit service on one channel", ext_authz_beside_rls)
        except Exception as e:  # noqa: BLE001 - set-up failures are reported, then counted
            cases.fail("set-up", e)
        finally:
            cluster.stop()
    return cases.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "target/debug/tollgate"))
