#!/usr/bin/env python3
"""A minimal CQL client (native protocol v4, Python standard library only).

Used by tests/services/cassandra.sh to tell that a node really answers CQL
(not just that its port accepts TCP), and handy for test set-up.

  cql.py [--host H] [--port P] [--timeout S]              ping: prints release_version
  cql.py [--host H] [--port P] [--timeout S] STATEMENT...  runs each statement, prints rows
                                                          (one per line, name=value, tab-separated)

Exit status: 0 on success, 1 on a CQL error (message on stderr), 2 when the
node cannot be reached or does not speak CQL. Password authentication
(PasswordAuthenticator, SASL PLAIN) with --user/--password, default from
$CQL_USER/$CQL_PASSWORD. No TLS, no compression, no paging beyond the first
page (5000 rows).
"""

import argparse
import datetime
import ipaddress
import os
import socket
import struct
import sys
import uuid

VERSION = 0x04
OP_ERROR, OP_STARTUP, OP_READY, OP_AUTHENTICATE = 0x00, 0x01, 0x02, 0x03
OP_OPTIONS, OP_SUPPORTED, OP_QUERY, OP_RESULT = 0x05, 0x06, 0x07, 0x08
OP_AUTH_RESPONSE, OP_AUTH_SUCCESS = 0x0F, 0x10
CONSISTENCY = {"ANY": 0, "ONE": 1, "TWO": 2, "THREE": 3, "QUORUM": 4, "ALL": 5,
               "LOCAL_QUORUM": 6, "EACH_QUORUM": 7, "LOCAL_ONE": 10}


class Unreachable(Exception):
    pass


class CqlError(Exception):
    pass


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise Unreachable("truncated frame")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def byte(self):
        return self.take(1)[0]

    def short(self):
        return struct.unpack(">H", self.take(2))[0]

    def int(self):
        return struct.unpack(">i", self.take(4))[0]

    def string(self):
        return self.take(self.short()).decode("utf-8")

    def bytes(self):
        n = self.int()
        return None if n < 0 else self.take(n)

    def string_list(self):
        return [self.string() for _ in range(self.short())]

    def option(self):
        tid = self.short()
        if tid == 0x0000:
            return ("custom", self.string())
        if tid in (0x0020, 0x0022):
            return ("list" if tid == 0x20 else "set", self.option())
        if tid == 0x0021:
            return ("map", self.option(), self.option())
        if tid == 0x0030:
            ks, name = self.string(), self.string()
            fields = [(self.string(), self.option()) for _ in range(self.short())]
            return ("udt", ks, name, fields)
        if tid == 0x0031:
            return ("tuple", [self.option() for _ in range(self.short())])
        return (tid,)


def decode(opt, b):
    if b is None:
        return "null"
    tid = opt[0]
    try:
        if tid in (0x01, 0x0D):
            return b.decode("utf-8")
        if tid in (0x02, 0x05, 0x09, 0x13, 0x14, 0x0E):
            return str(int.from_bytes(b, "big", signed=True))
        if tid == 0x04:
            return "true" if b[0] else "false"
        if tid == 0x07:
            return repr(struct.unpack(">d", b)[0])
        if tid == 0x08:
            return repr(struct.unpack(">f", b)[0])
        if tid == 0x0B:
            ms = int.from_bytes(b, "big", signed=True)
            return (datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
                    + datetime.timedelta(milliseconds=ms)).isoformat()
        if tid in (0x0C, 0x0F):
            return str(uuid.UUID(bytes=b))
        if tid == 0x10:
            return str(ipaddress.ip_address(b))
        if tid == 0x11:
            days = int.from_bytes(b, "big") - (1 << 31)
            return (datetime.date(1970, 1, 1) + datetime.timedelta(days=days)).isoformat()
    except (ValueError, OverflowError, struct.error):
        pass
    return "0x" + b.hex()


class Connection:
    def __init__(self, host, port, timeout):
        self.stream = 0
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise Unreachable(f"{host}:{port}: {e}") from e
        self.sock.settimeout(timeout)

    def recv_exact(self, n):
        out = bytearray()
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except OSError as e:
                raise Unreachable(str(e)) from e
            if not chunk:
                raise Unreachable("connection closed by the server")
            out += chunk
        return bytes(out)

    def request(self, opcode, body=b""):
        self.stream = (self.stream + 1) % 32768
        frame = struct.pack(">BBhBi", VERSION, 0, self.stream, opcode, len(body)) + body
        try:
            self.sock.sendall(frame)
        except OSError as e:
            raise Unreachable(str(e)) from e
        while True:
            version, flags, stream, op, length = struct.unpack(">BBhBi", self.recv_exact(9))
            if version & 0x7F != VERSION or not version & 0x80:
                raise Unreachable(f"not a CQL v4 response (version byte 0x{version:02x})")
            r = Reader(self.recv_exact(length))
            if stream != self.stream:   # events (stream -1) and strays
                continue
            if flags & 0x02:    # tracing id
                r.take(16)
            if flags & 0x08:    # warnings
                for w in r.string_list():
                    print(f"warning: {w}", file=sys.stderr)
            if flags & 0x04:    # custom payload
                for _ in range(r.short()):
                    r.string()
                    r.bytes()
            if op == OP_ERROR:
                code = r.int()
                raise CqlError(f"error 0x{code:04x}: {r.string()}")
            return op, r

    def startup(self, user=None, password=None):
        op, r = self.request(OP_OPTIONS)
        if op != OP_SUPPORTED:
            raise Unreachable(f"unexpected answer to OPTIONS (opcode {op})")
        body = struct.pack(">H", 1) + enc_string("CQL_VERSION") + enc_string("3.0.0")
        op, _ = self.request(OP_STARTUP, body)
        if op == OP_AUTHENTICATE:
            if not user or password is None:
                raise CqlError("the node requires authentication: give --user and --password")
            token = b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8")
            op, _ = self.request(OP_AUTH_RESPONSE, struct.pack(">i", len(token)) + token)
            if op != OP_AUTH_SUCCESS:
                raise Unreachable(f"unexpected answer to AUTH_RESPONSE (opcode {op})")
            return
        if op != OP_READY:
            raise Unreachable(f"unexpected answer to STARTUP (opcode {op})")

    def query(self, cql, consistency):
        q = cql.encode("utf-8")
        body = struct.pack(">i", len(q)) + q + struct.pack(">HB", consistency, 0)
        op, r = self.request(OP_QUERY, body)
        if op != OP_RESULT:
            raise Unreachable(f"unexpected answer to QUERY (opcode {op})")
        kind = r.int()
        if kind == 0x0002:
            return parse_rows(r)
        if kind == 0x0003:
            return ("keyspace", r.string())
        if kind == 0x0005:
            return ("schema", f"{r.string()} {r.string()} {r.string()}")
        return ("void", None)


def enc_string(s):
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


def parse_rows(r):
    flags, ncols = r.int(), r.int()
    if flags & 0x0002:
        r.bytes()                       # paging state
    cols = []
    if not flags & 0x0004:
        if flags & 0x0001:
            r.string()
            r.string()
        for _ in range(ncols):
            if not flags & 0x0001:
                r.string()
                r.string()
            cols.append((r.string(), r.option()))
    rows = []
    for _ in range(r.int()):
        rows.append([(name, decode(opt, r.bytes())) for name, opt in cols])
    return ("rows", rows)


def main():
    ap = argparse.ArgumentParser(description="minimal CQL v4 client")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9042)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--consistency", default="ONE", choices=sorted(CONSISTENCY))
    ap.add_argument("--user", default=os.environ.get("CQL_USER"))
    ap.add_argument("--password", default=os.environ.get("CQL_PASSWORD"))
    ap.add_argument("statements", nargs="*")
    a = ap.parse_args()
    try:
        c = Connection(a.host, a.port, a.timeout)
        c.startup(a.user, a.password)
        if not a.statements:
            _, rows = c.query("SELECT release_version FROM system.local", CONSISTENCY["ONE"])
            print(rows[0][0][1] if rows else "unknown")
            return 0
        for stmt in a.statements:
            kind, val = c.query(stmt, CONSISTENCY[a.consistency])
            if kind == "rows":
                for row in val:
                    print("\t".join(f"{n}={v}" for n, v in row))
    except Unreachable as e:
        print(f"cql.py: {e}", file=sys.stderr)
        return 2
    except CqlError as e:
        print(f"cql.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
