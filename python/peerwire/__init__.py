"""peerwire: asyncio peers for the Fizyr RPC protocol, wrapping the Rust library.

One connection carries many open requests at once, in both directions; while a request is open
either side can send updates, and it ends with a response. One-way stream messages travel beside
the requests. Addresses are ``tcp://HOST:PORT``, ``unix:///PATH`` and ``seqpacket:///PATH``
(the last one carries file descriptors with each message).

A client::

    peer = await peerwire.connect("tcp://127.0.0.1:29285")
    request = await peer.send_request(2, b"3")
    async for update in request:
        print("update", update.body)
    response = await request.recv_response_ok(timeout=5)

A server::

    async with await peerwire.listen("tcp://127.0.0.1:29285") as listener:
        async for peer in listener:
            asyncio.create_task(serve(peer))

    async def serve(peer):
        async for message in peer:
            if message.kind == "request":
                await message.send_update(0, b"working")
                await message.send_response(0, message.body)

Errors are subclasses of ``PeerwireError``, one per kind of the Rust ``ErrorKind``.
"""

from ._peerwire import (
	BodyTooLarge,
	Config,
	ConnectionClosed,
	Fd,
	Info,
	IoError,
	Listener,
	Message,
	Peer,
	PeerwireError,
	ProtocolError,
	ReceivedRequest,
	RemoteError,
	RequestClosed,
	SentRequest,
	Timeout,
	TooManyFds,
	TooManyRequests,
	Unsupported,
	call,
	connect,
	listen,
)

__all__ = [
	"BodyTooLarge",
	"Config",
	"ConnectionClosed",
	"Fd",
	"Info",
	"IoError",
	"Listener",
	"Message",
	"Peer",
	"PeerwireError",
	"ProtocolError",
	"ReceivedRequest",
	"RemoteError",
	"RequestClosed",
	"SentRequest",
	"Timeout",
	"TooManyFds",
	"TooManyRequests",
	"Unsupported",
	"call",
	"connect",
	"listen",
]
