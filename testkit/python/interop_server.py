#!/usr/bin/env python3
"""A real non-Rust gRPC peer for tonic-balancer's integration tests.

Serves grpc.testing.TestService (proto/grpc/testing/test.proto) and grpc.health.v1.Health
on grpcio's C-core server, bound to 127.0.0.1 only. Prints exactly one line, `PORT <n>`, to
stdout once serving; stops when stdin reaches EOF or on SIGTERM/SIGINT. Logs go to stderr.

Every call is scripted by its request metadata (all optional), applied in this order:
  x-set-health: NAME     set services "" and grpc.testing.TestService to NAME (SERVING, ...)
  x-key: K               groups the attempts of one logical call; the server counts calls per
                         key (no key: every call is its own group, so its count is always 1)
  x-delay-ms: D          sleep D ms first (cut short if the call is cancelled)
  x-headers-then-fail    send initial metadata x-sent: 1, then fail UNAVAILABLE
  x-fail-times: N        the first N calls with this key fail ...
  x-fail-code: C         ... with code C (name or number; default UNAVAILABLE) ...
  x-pushback-ms: V       ... carrying trailer grpc-retry-pushback-ms: V (C-core re-encodes a
                         V that is not an integer as -9223372036854775808)
Every response, success or failure, carries trailers
  x-attempts-seen: <calls with this key so far>
  x-previous-rpc-attempts: <request's grpc-previous-rpc-attempts, or "none">
Then interop semantics: a non-zero request.response_status ends the call with that status;
UnaryCall answers server_id (if fill_server_id), username = grpc-previous-rpc-attempts or "",
and a payload of response_size zero bytes. Malformed script values fail INVALID_ARGUMENT.

Usage: python3 interop_server.py [--port N] [--server-id ID] [--verbose]
"""

import argparse
import importlib
import logging
import os
import signal
import sys
import tempfile
import threading
from concurrent import futures
from pathlib import Path

try:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_tools import protoc
except ImportError as err:
    print(f"interop_server.py: {err}; run `pip install -r tests/python/requirements.txt`",
          file=sys.stderr)
    sys.exit(3)  # testkit/src/python.rs recognises this exit code

log = logging.getLogger("interop_server")

PROTO_DIR = Path(__file__).resolve().parents[1] / "proto" / "grpc" / "testing"
TEST_SERVICE = "grpc.testing.TestService"


def load_stubs(proto_dir):
    """Generates test_pb2 / test_pb2_grpc into a temporary directory and imports them.

    The proto is compiled from its own directory (not as grpc/testing/test.proto) so the
    generated modules do not land inside the installed `grpc` package's namespace.
    """
    with tempfile.TemporaryDirectory(prefix="interop-stubs-") as out:
        argv = ["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out}",
                f"--grpc_python_out={out}", "test.proto"]
        if protoc.main(argv) != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {proto_dir}/test.proto")
        sys.path.insert(0, out)
        try:
            return importlib.import_module("test_pb2"), importlib.import_module("test_pb2_grpc")
        finally:
            sys.path.remove(out)  # the modules are loaded; the directory can go


def status_code(value):
    """A non-OK grpc.StatusCode from a name ("UNAVAILABLE") or a number ("14")."""
    text = str(value).strip()
    for code in grpc.StatusCode:
        if code is not grpc.StatusCode.OK and text.upper() in (code.name, str(code.value[0])):
            return code
    raise ValueError(f"not a non-OK status code: {value!r}")


class Script:
    """The metadata script of one call, parsed up front so bad values fail before any effect."""

    def __init__(self, metadata):
        md = {}
        for key, value in metadata:
            md.setdefault(key, value)  # the first value of a repeated key wins
        self.key = md.get("x-key")
        self.previous = md.get("grpc-previous-rpc-attempts", "none")
        self.delay_ms = max(0, int(md.get("x-delay-ms", "0")))
        self.headers_then_fail = "x-headers-then-fail" in md
        self.fail_times = int(md.get("x-fail-times", "0"))
        self.fail_code = status_code(md.get("x-fail-code", "UNAVAILABLE"))
        self.pushback = md.get("x-pushback-ms")
        health_name = md.get("x-set-health")
        self.health = (None if health_name is None else
                       health_pb2.HealthCheckResponse.ServingStatus.Value(health_name.strip()))


def build_servicer(pb2, pb2_grpc, server_id, health_servicer):
    class TestService(pb2_grpc.TestServiceServicer):
        def __init__(self):
            self._lock = threading.Lock()  # handlers run on the server's thread pool
            self._seen = {}  # x-key -> calls so far

        def _prologue(self, context):
            """Applies the metadata script; aborts the call if it says to fail.

            Returns (script, ended), `ended` being an Event set when the call terminates.
            """
            try:
                script = Script(context.invocation_metadata())
            except ValueError as err:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad script metadata: {err}")
            if script.health is not None:
                for service in ("", TEST_SERVICE):
                    health_servicer.set(service, script.health)
            with self._lock:
                seen = 1
                if script.key is not None:
                    seen = self._seen[script.key] = self._seen.get(script.key, 0) + 1
            log.debug("call key=%s seen=%d metadata=%s", script.key, seen,
                      context.invocation_metadata())
            trailers = [("x-attempts-seen", str(seen)),
                        ("x-previous-rpc-attempts", script.previous)]
            context.set_trailing_metadata(trailers)

            ended = threading.Event()
            if not context.add_callback(ended.set):
                ended.set()  # already over
            if script.delay_ms and ended.wait(script.delay_ms / 1000):
                context.abort(grpc.StatusCode.CANCELLED, "call ended during x-delay-ms")

            if script.headers_then_fail:
                # Headers first: the failure is no longer Trailers-Only, so not retryable.
                context.send_initial_metadata([("x-sent", "1")])
                context.abort(grpc.StatusCode.UNAVAILABLE, "x-headers-then-fail")
            if seen <= script.fail_times:
                if script.pushback is not None:
                    context.set_trailing_metadata(
                        trailers + [("grpc-retry-pushback-ms", script.pushback)])
                context.abort(script.fail_code,
                              f"x-fail-times: call {seen} of {script.fail_times} fails")
            return script, ended

        @staticmethod
        def _echo_status(status, context):
            """Interop semantics: a non-zero response_status ends the call with it."""
            if status.code != 0:
                try:
                    code = status_code(status.code)
                except ValueError:
                    code = grpc.StatusCode.UNKNOWN
                context.abort(code, status.message)

        def EmptyCall(self, request, context):
            self._prologue(context)
            return pb2.Empty()

        def UnaryCall(self, request, context):
            script, _ = self._prologue(context)
            self._echo_status(request.response_status, context)
            return pb2.SimpleResponse(
                payload=pb2.Payload(body=bytes(max(0, request.response_size))),
                server_id=server_id if request.fill_server_id else "",
                username="" if script.previous == "none" else script.previous,
            )

        def StreamingOutputCall(self, request, context):
            _, ended = self._prologue(context)
            for params in request.response_parameters:
                if params.interval_us > 0 and ended.wait(params.interval_us / 1e6):
                    return  # cancelled
                yield pb2.StreamingOutputCallResponse(
                    payload=pb2.Payload(body=bytes(max(0, params.size))))
            self._echo_status(request.response_status, context)

    return TestService()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--server-id", default="python", help="SimpleResponse.server_id")
    parser.add_argument("--proto-dir", default=str(PROTO_DIR), help="directory of test.proto")
    parser.add_argument("--workers", type=int, default=32, help="handler threads")
    parser.add_argument("--verbose", action="store_true", help="log every call to stderr")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="interop_server[%(process)d] %(levelname)s %(message)s")

    pb2, pb2_grpc = load_stubs(args.proto_dir)
    health_servicer = health.HealthServicer()
    health_servicer.set(TEST_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    # grpcio enables SO_REUSEPORT by default: turn it off so --port cannot be shared silently.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers),
                         options=[("grpc.so_reuseport", 0)])
    pb2_grpc.add_TestServiceServicer_to_server(
        build_servicer(pb2, pb2_grpc, args.server_id, health_servicer), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")  # raises if it cannot bind
    server.start()
    print(f"PORT {port}", flush=True)
    log.info("serving %s and %s on 127.0.0.1:%d", TEST_SERVICE, health.SERVICE_NAME, port)

    stop = threading.Event()

    def watch_stdin():
        # The parent holds our stdin: EOF means it exited or dropped us.
        while os.read(0, 4096):
            pass
        stop.set()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SIGINT: KeyboardInterrupt
    try:
        stop.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.stop(grace=None).wait(5)
        log.info("stopped")


if __name__ == "__main__":
    main()
