#!/usr/bin/env python3
"""A client of ykhsmd written from docs/protocol.md alone (issue 14).

Nothing here comes from the Rust code: every rule below is one the
document states, so that when the document stops being enough to write a
client, ykhsmd/tests/protocol.rs (which runs this against the real daemon)
fails. Python 3 and its standard library only.

    protocol_client.py SOCKET has-user USER
    protocol_client.py SOCKET verify USER      (the OTP on standard input)
    protocol_client.py SOCKET status
    protocol_client.py SOCKET raw HEX          (these bytes as the request)

Prints the answer (`Verdict OK`, `Failed DENIED: why`, `ProtocolError: why`,
or `StatusInfo` and one `field=value` line per field of the report). Exit
status: 0 answered, 1 an answer this client cannot read (or the
connection was not closed after it), 2 usage, 3 no answer.
"""

import socket
import struct
import sys

VERSION = 1
HEADER = 5
MAX_BODY = 16 * 1024 * 1024
TIMEOUT_SECONDS = 10

# "Status words": the word of each code, in code order.
WORDS = [
    "OK",
    "BAD_OTP",
    "REPLAYED_OTP",
    "NO_SUCH_KEY",
    "NOT_AUTHORIZED",
    "NO_KEYS_FOR_USER",
    "BACKEND_ERROR",
    "DENIED",
    "UNKNOWN_USER",
]

# "Requests" and "Responses": the kinds this client uses.
VERIFY, HAS_USER, STATUS = 0x01, 0x02, 0x10
VERDICT, FAILED, PROTOCOL_ERROR, STATUS_INFO = 0x01, 0x02, 0x03, 0x10

PARTS = ["device", "key_handle", "aead_dir", "authfile", "database", "daemon", "fleet"]
HEALTHS = ["ok", "warning", "error"]
BACKENDS = ["soft", "yubihsm"]


class Unreadable(Exception):
    """An answer that breaks a rule of the document."""


class NoAnswer(Exception):
    """The daemon closed the connection (or was not reached) without one."""


class Body:
    """Reads the fields of a body ("Body encoding")."""

    def __init__(self, data):
        self.data = data
        self.at = 0

    def take(self, n, field):
        if len(self.data) - self.at < n:
            raise Unreadable(f"{field}: the body ends early")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def int(self, size, field):
        return int.from_bytes(self.take(size, field), "big")

    def u8(self, field):
        return self.int(1, field)

    def u16(self, field):
        return self.int(2, field)

    def u32(self, field):
        return self.int(4, field)

    def u64(self, field):
        return self.int(8, field)

    def str(self, field):
        raw = self.take(self.u16(field), field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Unreadable(f"{field}: not UTF-8") from None

    def opt_u64(self, field):
        flag = self.u8(field)
        if flag == 0:
            return None
        if flag == 1:
            return self.u64(field)
        raise Unreadable(f"{field}: opt_u64 flag {flag}")

    def status(self, field="status"):
        code = self.u8(field)
        if code >= len(WORDS):
            raise Unreadable(f"{field}: unknown status code {code}")
        return WORDS[code]

    def code(self, names, field):
        code = self.u8(field)
        if code >= len(names):
            raise Unreadable(f"{field}: unknown code {code}")
        return names[code]

    def list(self, field, min_item, read_item):
        count = self.u32(field)
        if count * min_item > len(self.data) - self.at:
            raise Unreadable(f"{field}: {count} elements cannot fit")
        return [read_item() for _ in range(count)]

    def end(self):
        if self.at != len(self.data):
            raise Unreadable(f"{len(self.data) - self.at} bytes after the last field")


def str_field(text):
    """A `str`: u16 length, then the UTF-8 bytes."""
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("a str holds at most 65535 bytes")
    return struct.pack(">H", len(raw)) + raw


def connect(path):
    """Connects, and goes on only if the server runs as root ("Who answers")."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT_SECONDS)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise NoAnswer(f"cannot connect to {path}: {e}") from None
    ucred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", ucred)
    if uid != 0:
        s.close()
        raise NoAnswer(f"{path} is served by uid {uid}, not root: nothing sent")
    return s


def recv_exact(s, n, what):
    out = b""
    while len(out) < n:
        try:
            chunk = s.recv(n - len(out))
        except OSError as e:
            raise NoAnswer(f"{what}: {e}") from None
        if not chunk:
            raise NoAnswer(f"{what}: the connection closed ({len(out)} of {n} bytes)")
        out += chunk
    return out


def exchange(path, request):
    """One connection: the whole request, one answer frame, then end of file."""
    s = connect(path)
    with s:
        try:
            s.sendall(request)
        except OSError as e:
            raise NoAnswer(f"writing the request: {e}") from None
        header = recv_exact(s, HEADER, "the answer's header")
        if header[0] != VERSION:
            raise Unreadable(f"answer of protocol version {header[0]}")
        length = int.from_bytes(header[1:], "big")
        if length > MAX_BODY:
            raise Unreadable(f"answer body of {length} bytes")
        body = recv_exact(s, length, "the answer's body")
        try:
            after = s.recv(1)
        except OSError as e:
            raise Unreadable(f"after the answer: {e} instead of end of file") from None
        if after:
            raise Unreadable("bytes after the answer instead of end of file")
        return body


def frame(body):
    return bytes([VERSION]) + struct.pack(">I", len(body)) + body


def read_report(b):
    """`StatusReport`, field by field, as "Responses" lists them."""
    f = {}
    f["version"] = b.str("version")
    f["uptime_seconds"] = b.u64("uptime_seconds")
    f["config"] = b.str("config")
    f["socket"] = b.str("socket")
    f["backend"] = b.code(BACKENDS, "backend")
    f["backend_path"] = b.str("backend_path")

    def check():
        part = b.code(PARTS, "part")
        if part == "key_handle":
            part += ":" + b.str("key handle name")
        health = b.code(HEALTHS, "health")
        return f"{part} {health} {b.str('detail')}"

    checks = b.list("checks", 4, check)
    f["authfile_users"] = b.u64("authfile_users")
    f["authfile_lines_failing_closed"] = b.u64("authfile_lines_failing_closed")
    f["database_path"] = b.str("database_path")
    f["database_keys"] = b.opt_u64("database_keys")
    f["database_file_bytes"] = b.u64("database_file_bytes")
    f["database_wal_bytes"] = b.u64("database_wal_bytes")
    f["database_last_commit"] = b.opt_u64("database_last_commit")
    for name in [
        "log_queued_lines",
        "log_queued_bytes",
        "log_capacity_bytes",
        "log_dropped_daemon_lines",
        "log_dropped_unprivileged_lines",
        "log_counted_peer_uids",
    ]:
        f[name] = b.u64(name)
    has_syslog = b.u8("syslog")
    if has_syslog == 1:
        path = b.str("syslog path")
        away = b.opt_u64("syslog away_seconds")
        missed = b.u64("syslog missed_lines")
        f["syslog"] = f"{path} away={'-' if away is None else away} missed={missed}"
    elif has_syslog == 0:
        f["syslog"] = "-"
    else:
        raise Unreadable(f"syslog: flag {has_syslog}")
    answers = b.list("answers", 9, lambda: (b.status("answers"), b.u64("answers count")))
    words = [w for w, _ in answers]
    if len(set(words)) != len(words):
        raise Unreadable("answers: a word twice")
    has_fleet = b.u8("fleet")
    if has_fleet == 1:
        connected = b.u8("fleet connected")
        if connected not in (0, 1):
            raise Unreadable(f"fleet connected: {connected}")
        contact = b.opt_u64("fleet last_contact")
        offline = b.str("fleet offline")
        unsynced = b.u64("fleet unsynced_rows")
        oldest = b.opt_u64("fleet oldest_unsynced")
        accepts = b.u64("fleet offline_accepts")
        last = b.opt_u64("fleet last_offline_accept")
        trips = b.u64("fleet round_trips")
        sent = b.u64("fleet logins_sent")
        f["fleet"] = (
            f"connected={connected} last_contact={'-' if contact is None else contact} "
            f"offline={offline} unsynced={unsynced} oldest={'-' if oldest is None else oldest} "
            f"offline_accepts={accepts} last={'-' if last is None else last} "
            f"round_trips={trips} logins_sent={sent}"
        )
    elif has_fleet == 0:
        f["fleet"] = "-"
    else:
        raise Unreadable(f"fleet: flag {has_fleet}")
    lines = []
    for name, value in f.items():
        lines.append(f"{name}={'-' if value is None else value}")
    lines += [f"check={c}" for c in checks]
    lines += [f"answer={w} {n}" for w, n in answers]
    return lines


def describe(body):
    """The answer in words (the response kinds a login client can get)."""
    b = Body(body)
    kind = b.u8("kind")
    if kind == VERDICT:
        lines = [f"Verdict {b.status()}"]
    elif kind == FAILED:
        word = b.status()
        if word == "OK":
            raise Unreadable("a Failed answer with status OK")
        lines = [f"Failed {word}: {b.str('message')}"]
    elif kind == PROTOCOL_ERROR:
        lines = [f"ProtocolError: {b.str('message')}"]
    elif kind == STATUS_INFO:
        lines = ["StatusInfo"] + read_report(b)
    else:
        raise Unreadable(f"response kind {kind:#04x}")
    b.end()
    return lines


def request(args):
    if len(args) == 2 and args[0] == "has-user":
        return frame(bytes([HAS_USER]) + str_field(args[1]))
    if len(args) == 2 and args[0] == "verify":
        otp = sys.stdin.readline().strip()
        return frame(bytes([VERIFY]) + str_field(args[1]) + str_field(otp))
    if args == ["status"]:
        return frame(bytes([STATUS]))
    if len(args) == 2 and args[0] == "raw":
        return bytes.fromhex(args[1])
    return None


def main(argv):
    req = request(argv[2:]) if len(argv) >= 3 else None
    if req is None:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        lines = describe(exchange(argv[1], req))
    except NoAnswer as e:
        print(f"NO_ANSWER {e}")
        return 3
    except Unreadable as e:
        print(f"UNREADABLE {e}")
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
