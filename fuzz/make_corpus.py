#!/usr/bin/env python3
"""Write the seed corpus of every target (for the decoders, one valid frame per message type in both byte orders).

Run from anywhere: `python3 fuzz/make_corpus.py`. Files are named `seed-*` (the only corpus files
kept in git; what libFuzzer adds while running is ignored). The layouts are described at the top
of each target in fuzz_targets/.
"""

import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"
TYPES = {"request": 0, "response": 1, "requester_update": 2, "responder_update": 3, "stream": 4}
ORDERS = {"le": ("<", 0), "be": (">", 1)}
LIMIT_64 = 5 << 2  # bits 2-4 of the flags byte: index of the 64-byte read limit


def header(order, message_type, request_id, service_id):
    return struct.pack(order + "IIi", message_type, request_id, service_id)


def frame(order, message_type, request_id, service_id, body):
    return struct.pack(order + "I", 12 + len(body)) + header(order, message_type, request_id, service_id) + body


def write(target, name, data):
    directory = ROOT / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"seed-{name}").write_bytes(data)


def decoders():
    for type_name, message_type in TYPES.items():
        service_id = -1 if type_name == "response" else 7
        for order_name, (order, endian_flag) in ORDERS.items():
            flags = bytes([endian_flag | LIMIT_64])
            body = b"Hello World"
            # stream_decoder: [flags, split count, splits..., wire]; no splits, then in 1- and 5-byte steps.
            wire = frame(order, message_type, 21, service_id, body)
            write("stream_decoder", f"{type_name}-{order_name}", flags + b"\x00" + wire)
            write("stream_decoder", f"{type_name}-{order_name}-split", flags + b"\x02\x01\x05" + wire + wire)
            # datagram_decoder: [flags, datagram]
            write("datagram_decoder", f"{type_name}-{order_name}", flags + header(order, message_type, 21, service_id) + body)
    # The worked example of PROTOCOL.md, and an empty body.
    write("stream_decoder", "worked-example", bytes([LIMIT_64, 0]) + frame("<", 0, 21, 0, b"Hello World"))
    write("stream_decoder", "empty-body", bytes([LIMIT_64, 0]) + frame("<", 4, 0, 0, b""))


# peer_tracking: two config bytes, then actions (opcode byte and fields). See the target.
SMALL, SEEN_LOCAL, OPENED = 0, 1, 2
OP = dict(
    remote_request=0, remote_response=1, remote_requester_update=2, remote_responder_update=3, remote_stream=4,
    send_request=5, send_stream=6, sent_update=7, sent_recv=8, sent_clone_writer=9, sent_drop=10,
    sent_drop_writer=11, recv_message=12, received_update=13, received_respond=14, received_recv=15,
    received_clone_writer=16, received_drop=17, received_drop_writer=18, drop_peer_read=19, drop_peer_write=20,
    remote_closes=21, remote_closes_mid_frame=22, local_closes=23,
)


def script(*actions, config=(0xFE, 0x03)):
    out = bytearray(config)
    for action in actions:
        name, *fields = action
        out.append(OP[name])
        for field in fields:
            out.extend(field if isinstance(field, (bytes, bytearray)) else bytes([field]))
    return bytes(out)


def ident(kind, n):
    return bytes([kind, n])


def peer_tracking():
    # Default-ish config: 65,536 open requests, queues 32/128/128, little endian.
    write("peer_tracking", "remote-request-answered", script(
        ("remote_request", ident(SMALL, 1), 1), ("recv_message",), ("remote_requester_update", ident(OPENED, 0)),
        ("received_recv", 0), ("received_update", 0, 0), ("received_respond", 0, 0), ("remote_closes",)))
    write("peer_tracking", "remote-request-dropped", script(
        ("remote_request", ident(SMALL, 2), 1), ("recv_message",), ("received_drop", 0)))
    write("peer_tracking", "local-request-answered", script(
        ("send_request", 1), ("remote_responder_update", ident(SEEN_LOCAL, 0)), ("sent_update", 0, 0),
        ("remote_response", ident(SEEN_LOCAL, 0), 0), ("sent_recv", 0), ("sent_recv", 0)))
    write("peer_tracking", "stream-both-ways", script(
        ("remote_stream", ident(SMALL, 0)), ("send_stream",), ("recv_message",), ("remote_closes",), config=(0xFF, 0x03)))
    write("peer_tracking", "duplicate-and-stray", script(
        ("remote_request", ident(SMALL, 3), 1), ("remote_request", ident(SMALL, 3), 1),
        ("remote_response", ident(SMALL, 5), 0), ("remote_responder_update", ident(SMALL, 6)),
        ("send_request", 2), ("recv_message",), ("received_clone_writer", 0), ("received_drop", 0),
        ("received_respond", 0, 1), ("remote_closes_mid_frame", 9)))
    write("peer_tracking", "local-close", script(
        ("send_request", 1), ("remote_request", ident(SMALL, 4), 1), ("remote_stream", ident(SMALL, 0)),
        ("send_stream",), ("drop_peer_read",), ("sent_clone_writer", 0), ("local_closes",)))
    # Finding 1 of FUZZING.md: an update waiting for room in the queue of a request that is then
    # answered, its handle still held (request queue of 1); the remote closes.
    write("peer_tracking", "finding-1-answered-request-held", script(
        ("remote_request", ident(SMALL, 0), 1), ("remote_requester_update", ident(SMALL, 0)),
        ("remote_requester_update", ident(SMALL, 0)), ("recv_message",), ("received_respond", 0, 0),
        ("remote_closes",), config=(0x02, 0x00)))
    # Finding 1 through the byte budget (100 bytes): an update queued for a request that is then
    # answered, its handle held, keeps its charge and the next message does not fit.
    write("peer_tracking", "finding-1-budget-held", script(
        ("remote_request", ident(SMALL, 0), 1), ("recv_message",), ("remote_requester_update", ident(SMALL, 0)),
        ("received_respond", 0, 0), ("remote_stream", ident(SMALL, 0)), ("recv_message",),
        ("remote_closes",), config=(0xFE, 0x0B)))
    # Finding 2 of FUZZING.md: the read handle of a received request dropped while a write handle
    # keeps it open; two updates for it (request queue of 1), a stream behind them.
    write("peer_tracking", "finding-2-read-half-dropped", script(
        ("remote_request", ident(SMALL, 0), 1), ("recv_message",), ("received_clone_writer", 0),
        ("received_drop", 0), ("remote_requester_update", ident(SMALL, 0)),
        ("remote_requester_update", ident(SMALL, 0)), ("remote_stream", ident(SMALL, 1)), ("recv_message",),
        ("remote_closes",), config=(0x02, 0x00)))
    # Tight queues and a limit of one open request each way: backpressure and refusals.
    write("peer_tracking", "tight-queues", script(
        ("remote_request", ident(SMALL, 1), 1), ("remote_request", ident(SMALL, 2), 1),
        ("remote_stream", ident(SMALL, 0)), ("send_request", 1), ("send_request", 1),
        ("sent_clone_writer", 0), ("sent_drop", 0), ("drop_peer_read",), ("remote_closes",), config=(0x00, 0x00)))


# stream_reader: flags, reads, keep mask, release mask (u64 LE each), chunk count and u16 chunk
# sizes, then opcodes building the wire. See the target.
def stream_reader():
    def head(flags, reads=0, keep=0, release=0, chunks=()):
        data = bytes([flags, reads]) + struct.pack("<QQ", keep, release) + bytes([len(chunks)])
        return data + b"".join(struct.pack("<H", c) for c in chunks)

    def small(length, fill=0x61, message_type=0):
        return bytes([0, message_type, 7, 3, length, fill])

    def large(length, fill=0x62):
        # A size class s (the body is u32 % 2^s bytes), then the u32.
        return bytes([2, 0, 9, 1, length.bit_length()]) + struct.pack("<I", length) + bytes([fill])

    def prefix(value):
        return bytes([4]) + struct.pack("<I", value)

    limit_16m, limit_1m, limit_4k = 7 << 2, 5 << 2, 2 << 2
    ones = (1 << 64) - 1
    kib256 = (2048 << 1) | 1  # odd: (2048 << 7) bytes per read; even n: n / 2 bytes
    write("stream_reader", "two-large-released", head(limit_16m, release=ones)
          + large(300_000, 0xAA) + large(2 << 20, 0x55) + small(11))
    write("stream_reader", "large-kept-chunked", head(limit_16m, keep=ones, chunks=(8000, kib256))
          + large(1 << 20) + large(500_000) + small(5))
    write("stream_reader", "lying-prefix", head(limit_16m) + small(3) + prefix((16 << 20) - 1))
    write("stream_reader", "over-limit", head(limit_4k) + small(3) + large(100_000))
    write("stream_reader", "pending-big-endian", head(1 | limit_1m, reads=1, chunks=(2, 3))
          + small(1) + small(200) + large(200_000) + small(0, message_type=0xE9))


decoders()
peer_tracking()
stream_reader()
