"""Many requests at once, and the blocking API with the GIL released."""

import asyncio
import threading

import peerwire
import pytest
from services import serve_listener


async def thousand(peer):
	async def one(i):
		request = await peer.send_request(1, b"%d" % i)
		response = await request.recv_response(timeout=30)
		assert response.body == b"%d" % i
		return request.request_id

	ids = await asyncio.gather(*(one(i) for i in range(1000)))
	assert len(ids) == 1000


async def test_1000_concurrent_requests_python_server(url):
	listener = await peerwire.listen(url)
	server = asyncio.create_task(serve_listener(listener))
	peer = await peerwire.connect(listener.url)
	await thousand(peer)
	peer.close()
	listener.close()
	await server


async def test_1000_concurrent_requests_rust_server(rust_server):
	peer = await peerwire.connect(rust_server.url)
	await thousand(peer)
	peer.close()


def test_blocking_call_releases_the_gil(url):
	"""The server runs on an asyncio loop in another thread of this process: a blocking call that
	held the GIL while waiting would starve it and time out."""
	ready = threading.Event()
	state = {}

	def server_thread():
		async def main():
			listener = await peerwire.listen(url)
			state["listener"] = listener
			state["loop"] = asyncio.get_running_loop()
			ready.set()
			await serve_listener(listener)

		asyncio.run(main())

	thread = threading.Thread(target=server_thread)
	thread.start()
	assert ready.wait(10)
	listener = state["listener"]
	try:
		response = peerwire.call(listener.url, 1, b"blocking", timeout=10)
		assert (response.kind, response.body) == ("response", b"blocking")
		with pytest.raises(peerwire.RemoteError, match="refused: no") as error:
			peerwire.call(listener.url, 3, "no", timeout=10)
		assert error.value.text == "refused: no"
		with pytest.raises(peerwire.Timeout):
			peerwire.call(listener.url, 6, b"", timeout=0.2)
		with pytest.raises(ValueError, match="needs a port"):
			peerwire.call("tcp://localhost", 1)
	finally:
		state["loop"].call_soon_threadsafe(listener.close)
		thread.join(10)
	assert not thread.is_alive()
