"""A grpcio (C-core) client of an xds:/// target, to check the test control plane.

Usage: xds_client.py TARGET CALLS   (the bootstrap in GRPC_XDS_BOOTSTRAP_CONFIG)

Makes CALLS UnaryCalls over one channel to TARGET (for example xds:///orders), each
asking the server for its id (SimpleRequest.fill_server_id, field 9), and prints one
server id a line. Messages are raw bytes: no generated stubs are needed. Exits non-zero
with the status if a call fails. With CALLS 0 it only asks the channel to connect (which
starts its xDS subscriptions) and waits until it is killed.
"""

import sys

import grpc

# SimpleRequest{fill_server_id (field 9, varint): true}
FILL_SERVER_ID = b"\x48\x01"


def varint(data, i):
    value, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def server_id(response):
    """SimpleResponse.server_id (field 4, length-delimited)."""
    i = 0
    while i < len(response):
        key, i = varint(response, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(response, i)
        elif wire == 2:
            length, i = varint(response, i)
            if field == 4:
                return response[i : i + length].decode()
            i += length
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            sys.exit(f"unexpected wire type {wire}")
    return ""


def main():
    target, calls = sys.argv[1], int(sys.argv[2])
    identity = lambda b: b  # noqa: E731
    with grpc.insecure_channel(target) as channel:
        if calls == 0:
            grpc.channel_ready_future(channel).result()
            return
        unary = channel.unary_unary(
            "/grpc.testing.TestService/UnaryCall",
            request_serializer=identity,
            response_deserializer=identity,
        )
        for _ in range(calls):
            try:
                response = unary(FILL_SERVER_ID, timeout=30, wait_for_ready=True)
            except grpc.RpcError as error:
                sys.exit(f"UnaryCall failed: {error.code()} {error.details()}")
            print(server_id(response), flush=True)


if __name__ == "__main__":
    main()
