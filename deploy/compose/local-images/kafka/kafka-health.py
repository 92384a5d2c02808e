"""Health check: the broker answers an ApiVersions request on PORT (default 9092) in time.

A few bytes over a socket instead of kafka-broker-api-versions.sh: no JVM start per check.
"""

import socket
import struct
import sys

API_VERSIONS = 18


def answers(port: int) -> bool:
    # Request header v1: api key, version 0, correlation id, null client id; empty body.
    request = struct.pack(">hhih", API_VERSIONS, 0, 7, -1)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(struct.pack(">i", len(request)) + request)
        head = b""
        while len(head) < 10:
            chunk = connection.recv(10 - len(head))
            if not chunk:
                return False
            head += chunk
    _size, correlation, error = struct.unpack(">iih", head)
    return correlation == 7 and error == 0


if __name__ == "__main__":
    sys.exit(0 if answers(int(sys.argv[1]) if len(sys.argv) > 1 else 9092) else 1)
