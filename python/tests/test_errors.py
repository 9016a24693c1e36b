"""Cancellation, timeouts, a remote crash, and bad arguments."""

import asyncio
import subprocess
import time

import peerwire
import pytest
from services import serve_listener

DROPPED = "request dropped without a response"


async def python_server(url):
	listener = await peerwire.listen(url)
	return listener, asyncio.create_task(serve_listener(listener))


async def test_timeout(url):
	listener, server = await python_server(url)
	peer = await peerwire.connect(listener.url)
	request = await peer.send_request(6, b"")  # never answered
	started = time.monotonic()
	with pytest.raises(peerwire.Timeout):
		await request.recv_response(timeout=0.2)
	assert 0.15 < time.monotonic() - started < 5
	# Only the wait ended: the connection and other requests carry on.
	response = await (await peer.send_request(1, b"after")).recv_response(timeout=10)
	assert response.body == b"after"
	peer.close()
	listener.close()
	await server


async def test_cancelling_a_waiting_client_task(url):
	listener, server = await python_server(url)
	peer = await peerwire.connect(listener.url)

	async def wait_forever():
		request = await peer.send_request(6, b"")
		await request.recv_response()

	task = asyncio.create_task(wait_forever())
	await asyncio.sleep(0.1)
	task.cancel()
	with pytest.raises(asyncio.CancelledError):
		await task
	# The request is forgotten; the connection is fine.
	response = await (await peer.send_request(1, b"still")).recv_response(timeout=10)
	assert response.body == b"still"
	peer.close()
	listener.close()
	await server


@pytest.mark.parametrize("waiting_on", ["python", "rust"])
async def test_cancelling_a_server_task_sends_the_automatic_error(url, waiting_on):
	"""A handler task cancelled while it holds a received request drops it, and the remote gets
	the automatic error response, as when a Rust handler is dropped."""
	listener = await peerwire.listen(url)
	started = asyncio.Event()
	handlers = []

	async def handle(request):
		started.set()
		if waiting_on == "python":
			await asyncio.sleep(3600)
		else:
			await request.recv_update()  # a Rust future, dropped on cancellation

	async def serve(peer):
		async for message in peer:
			handlers.append(asyncio.create_task(handle(message)))
			del message

	accepted = asyncio.ensure_future(listener.accept())
	client = await peerwire.connect(listener.url)
	server_peer = await accepted
	serving = asyncio.create_task(serve(server_peer))
	request = await client.send_request(1, b"")
	await asyncio.wait_for(started.wait(), 10)
	handlers[0].cancel()
	with pytest.raises(asyncio.CancelledError):
		await handlers[0]
	handlers.clear()
	response = await request.recv_response(timeout=10)
	assert response.is_error and response.error_text == DROPPED
	with pytest.raises(peerwire.RemoteError, match=DROPPED):
		response.ok()
	client.close()
	await asyncio.wait_for(serving, 10)
	listener.close()


async def test_remote_crash_fails_every_open_request_promptly(rust_server):
	peer = await peerwire.connect(rust_server.url)
	requests = [await peer.send_request(6, b"") for _ in range(50)]
	updates = [await peer.send_request(2, b"") for _ in range(5)]  # waiting for updates
	await peer.send_request(5, b"")  # the server exits at once
	started = time.monotonic()

	async def fails(request):
		with pytest.raises(peerwire.ConnectionClosed):
			await request.recv_response()

	async def update_fails(request):
		with pytest.raises(peerwire.ConnectionClosed):
			await request.recv_update()

	await asyncio.wait_for(asyncio.gather(*map(fails, requests), *map(update_fails, updates)), 5)
	assert time.monotonic() - started < 5
	with pytest.raises(peerwire.ConnectionClosed):
		await peer.send_request(1, b"")
	assert rust_server.process.returncode is not None or await rust_server.process.wait() == 3


async def test_connect_errors(sockdir):
	with pytest.raises(peerwire.IoError) as error:
		await peerwire.connect(f"unix://{sockdir}/nobody.sock")
	assert error.value.errno == 2  # ENOENT
	assert isinstance(error.value, peerwire.PeerwireError)


async def test_bad_arguments(sockdir):
	for url, text in [
		("http://x", "expected tcp://HOST:PORT"),
		("tcp://localhost", "needs a port"),
		("127.0.0.1:80", "expected tcp://HOST:PORT"),
		("unix://", "expected"),
	]:
		with pytest.raises(ValueError, match=text):
			await peerwire.connect(url)
	with pytest.raises(TypeError):
		await peerwire.connect(42)
	with pytest.raises(TypeError, match="config must be a peerwire.Config"):
		await peerwire.connect("tcp://127.0.0.1:1", config={"a": 1})
	with pytest.raises(ValueError, match="endian"):
		peerwire.Config(endian="middle")
	with pytest.raises(ValueError, match="timeout"):
		peerwire.Config(idle_timeout=-1)

	listener, server = await python_server(f"seqpacket://{sockdir}/s.sock")
	peer = await peerwire.connect(listener.url)
	with pytest.raises(TypeError):
		await peer.send_request("1", b"")
	with pytest.raises(ValueError, match="signed 32-bit"):
		await peer.send_request(1 << 31, b"")
	with pytest.raises(TypeError, match="body must be bytes, bytearray, memoryview or str, not int"):
		await peer.send_request(1, 123)
	with pytest.raises(TypeError, match="fds must be a list"):
		await peer.send_request(1, b"", fds="3")
	with pytest.raises(TypeError, match="fds must be a list"):
		await peer.send_request(1, b"", fds=3)
	with pytest.raises(ValueError, match=r"fds\[0\] is -1"):
		await peer.send_request(1, b"", fds=[-1])
	with pytest.raises(ValueError, match=r"fds\[0\]: cannot duplicate descriptor"):
		await peer.send_request(1, b"", fds=[99999])
	with pytest.raises(TypeError, match=r"fds\[0\] must be an int or have fileno\(\), not float"):
		await peer.send_request(1, b"", fds=[1.5])
	request = await peer.send_request(1, bytearray(b"ba"))
	with pytest.raises(ValueError, match="non-negative"):
		await request.recv_response(timeout=-1)
	with pytest.raises(ValueError, match="non-negative"):
		await request.recv_response(timeout=float("nan"))
	with pytest.raises(TypeError):
		await request.recv_response(timeout="1")
	assert (await request.recv_response()).body == b"ba"
	assert (await (await peer.send_request(1, memoryview(b"mv"))).recv_response()).body == b"mv"
	peer.close()
	listener.close()
	await server


def test_without_a_running_loop_nothing_is_sent(rust_peer, sockdir):
	"""A call outside a running event loop raises RuntimeError before doing anything; a peer made
	in one loop works in the next."""
	url = f"unix://{sockdir}/s.sock"
	server = subprocess.Popen([rust_peer, "serve", url], stdout=subprocess.PIPE)
	try:
		assert server.stdout.readline().startswith(b"listening")

		async def first_loop():
			return await peerwire.connect(url)

		peer = asyncio.run(first_loop())
		with pytest.raises(RuntimeError, match="no running event loop"):
			peer.send_stream(20, b"lost")

		async def next_loop():
			await peer.send_stream(20, b"kept")
			echoed = await asyncio.wait_for(peer.recv_message(), 10)
			assert echoed.body == b"kept"  # the stream message before was never sent
			peer.close()

		asyncio.run(next_loop())
	finally:
		server.kill()
		server.wait()
