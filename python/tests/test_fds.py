"""Descriptors on seqpacket: a memfd through Rust and back, the Fd object, and no leak."""

import asyncio
import gc
import os

import peerwire
import pytest
from services import serve_listener


def open_fds():
	return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def url(sockdir):
	return f"seqpacket://{sockdir}/s.sock"


async def memfd_round_trip(peer, suffix):
	memfd = os.memfd_create("peerwire-test")
	try:
		os.write(memfd, b"payload")
		response = await (await peer.send_request(7, b"", fds=[memfd])).recv_response_ok()
	finally:
		# The binding sent a duplicate: the caller's own descriptor is still open and its own.
		os.close(memfd)
	# The remote read the bytes Python wrote...
	assert response.body == b"payload"
	# ...and the descriptor came back with the remote's bytes appended.
	[back] = response.fds
	with back:
		assert os.pread(back.fileno(), 100, 0) == b"payload" + suffix


async def test_memfd_python_to_rust_and_back(rust_server):
	peer = await peerwire.connect(rust_server.url)
	await memfd_round_trip(peer, b" +rust")
	peer.close()


async def test_memfd_python_to_python_and_back(url):
	listener = await peerwire.listen(url)
	server = asyncio.create_task(serve_listener(listener))
	peer = await peerwire.connect(listener.url)
	await memfd_round_trip(peer, b" +py")
	peer.close()
	listener.close()
	await server


async def test_fd_object(url):
	listener = await peerwire.listen(url)
	server = asyncio.create_task(serve_listener(listener))
	peer = await peerwire.connect(listener.url)
	reader, writer = os.pipe()
	try:
		# Objects with fileno() are accepted as well as ints.
		class HasFileno:
			def fileno(self):
				return writer

		response = await (await peer.send_request(1, b"", fds=[writer, HasFileno()])).recv_response()
		first, second = response.fds
		assert isinstance(first, peerwire.Fd) and first.fileno() not in (reader, writer)
		assert "peerwire.Fd" in repr(first)
		number = first.detach()
		assert first.closed
		with pytest.raises(ValueError, match="closed"):
			first.fileno()
		os.close(number)  # detached: ours to close
		second.close()
		second.close()  # closing twice is harmless
		assert second.closed
		# A received Fd can be sent on (it is duplicated too).
		response = await (await peer.send_request(1, b"", fds=[writer])).recv_response()
		again = await (await peer.send_request(1, b"", fds=response.fds)).recv_response()
		assert len(again.fds) == 1
	finally:
		os.close(reader)
		os.close(writer)
	peer.close()
	listener.close()
	await server


async def test_no_descriptor_leaks_after_10000_messages(url, rust_server):
	"""10,000 messages with descriptors against a Python server in this process and the Rust server:
	answered, echoed, dropped unread, refused by the remote and refused locally."""
	listener = await peerwire.listen(url.replace("s.sock", "p.sock"))
	server = asyncio.create_task(serve_listener(listener))
	python_peer = await peerwire.connect(listener.url)
	rust_peer = await peerwire.connect(rust_server.url)
	tcp_listener = await peerwire.listen("tcp://127.0.0.1:0")
	tcp_peer = await peerwire.connect(tcp_listener.url)

	reader, writer = os.pipe()

	async def drain(peer):
		# Stream messages echoed back are taken and dropped without a look: their descriptors
		# close when the garbage collector frees them. (Left unread, they would fill the incoming
		# queue and, by design, push back on the connection.)
		async for message in peer:
			del message

	drains = [asyncio.create_task(drain(peer)) for peer in (python_peer, rust_peer)]

	async def one(peer, i):
		kind = i % 5
		if kind == 0:  # answered: the descriptor comes back; closed explicitly
			response = await (await peer.send_request(1, b"", fds=[writer])).recv_response()
			for fd in response.fds:
				fd.close()
		elif kind == 1:  # answered: the descriptor comes back; left to the garbage collector
			response = await (await peer.send_request(1, b"", fds=[writer, reader])).recv_response()
			assert len(response.fds) == 2
		elif kind == 2:  # request dropped before its response: the late response is discarded
			await peer.send_request(1, b"", fds=[writer])
		elif kind == 3:  # refused by the remote: an unknown service gets an error response
			response = await (await peer.send_request(99, b"", fds=[writer])).recv_response()
			assert response.is_error
		else:  # a stream message, echoed with its descriptor, which nobody reads
			await peer.send_stream(5, b"", fds=[reader])

	async def refused_locally():
		with pytest.raises(TypeError):
			await python_peer.send_request(1, b"", fds=[writer, "not a descriptor"])
		with pytest.raises(ValueError):
			await python_peer.send_request(1, b"", fds=[writer, 1 << 30])
		with pytest.raises(peerwire.TooManyFds):
			await python_peer.send_request(1, b"", fds=[writer] * 17)
		with pytest.raises(ValueError):
			await tcp_peer.send_request(1, b"", fds=[writer])

	# Warm up (runtime threads, epoll instances), then count.
	for i in range(20):
		await one(python_peer, i)
		await one(rust_peer, i)
	await refused_locally()
	gc.collect()
	await asyncio.sleep(0.2)
	before = open_fds()

	for batch in range(0, 10_000, 200):
		await asyncio.gather(*(one(python_peer if i % 2 else rust_peer, i) for i in range(batch, batch + 200)))
		await refused_locally()
	# Let the last echoed stream messages arrive and be dropped.
	await asyncio.sleep(0.3)
	gc.collect()
	after = open_fds()
	assert after == before, f"{after - before} descriptors leaked"

	os.close(reader)
	os.close(writer)
	for peer in (python_peer, rust_peer, tcp_peer):
		peer.close()
	await asyncio.wait_for(asyncio.gather(*drains), 10)
	listener.close()
	tcp_listener.close()
	await server
