"""A grpcio client instrumented with grpcio's OpenTelemetry plugin (grpcio-observability).

Usage: otel_client.py HOST:PORT

Makes, over one insecure channel to HOST:PORT, the calls the comparison test makes
with tonic-balancer:
  1. /grpc.testing.TestService/EmptyCall with an empty request: expected OK;
  2. /grpc.testing.TestService/UnaryCall with a SimpleRequest whose response_status
     asks for code 14: expected UNAVAILABLE.
Messages are sent as raw bytes (no generated stubs needed). Then prints, as JSON on
stdout, every metric the plugin exported through an in-memory reader:
  [{"name", "unit", "type": counter|up_down_counter|histogram|gauge,
    "points": [{"attributes": {...}, "value" | "count", "sum", "bounds"}]}]
"""

import json
import sys

import grpc
import grpc_observability
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    InMemoryMetricReader,
    Sum,
)

# SimpleRequest{response_status (field 7): EchoStatus{code (field 1): 14}}
ASK_UNAVAILABLE = b"\x3a\x02\x08\x0e"


def main():
    target = sys.argv[1]
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    identity = lambda b: b  # noqa: E731
    with grpc_observability.OpenTelemetryPlugin(meter_provider=provider):
        with grpc.insecure_channel(target) as channel:
            empty = channel.unary_unary(
                "/grpc.testing.TestService/EmptyCall",
                request_serializer=identity,
                response_deserializer=identity,
            )
            unary = channel.unary_unary(
                "/grpc.testing.TestService/UnaryCall",
                request_serializer=identity,
                response_deserializer=identity,
            )
            empty(b"", timeout=30)
            try:
                unary(ASK_UNAVAILABLE, timeout=30)
                sys.exit("UnaryCall succeeded; expected UNAVAILABLE")
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    sys.exit(f"UnaryCall failed with {error.code()}; expected UNAVAILABLE")
    out = []
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                data = metric.data
                if isinstance(data, Sum):
                    kind = "counter" if data.is_monotonic else "up_down_counter"
                elif isinstance(data, Histogram):
                    kind = "histogram"
                elif isinstance(data, Gauge):
                    kind = "gauge"
                else:
                    kind = type(data).__name__
                points = []
                for point in data.data_points:
                    entry = {"attributes": {k: str(v) for k, v in point.attributes.items()}}
                    if kind == "histogram":
                        entry["count"] = point.count
                        entry["sum"] = point.sum
                        entry["bounds"] = list(point.explicit_bounds)
                    else:
                        entry["value"] = point.value
                    points.append(entry)
                out.append(
                    {"name": metric.name, "unit": metric.unit, "type": kind, "points": points}
                )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
