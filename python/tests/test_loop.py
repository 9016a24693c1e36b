"""TCP and Unix stream connections driven by the asyncio loop's own thread: their lifetime with
the loop, use from another loop, many requests and many connections, and what they leave
behind (descriptors, the loop's reader and writer registrations)."""

import asyncio
import gc
import os
import subprocess
import threading
import time

import peerwire
import pytest
from services import serve_listener

STREAM = ["tcp", "unix"]


def open_fds():
	return len(os.listdir("/proc/self/fd"))


def registrations(event_loop):
	"""The descriptors the loop's selector watches."""
	return set(event_loop._selector.get_map().keys())


@pytest.fixture(params=STREAM)
def stream_url(request, sockdir):
	if request.param == "tcp":
		return "tcp://127.0.0.1:0"
	return f"unix://{sockdir}/s.sock"


def start_rust_server(rust_peer, url):
	process = subprocess.Popen([rust_peer, "serve", url], stdout=subprocess.PIPE)
	line = process.stdout.readline()
	assert line.startswith(b"listening "), line
	return process, line.split()[1].decode()


@pytest.mark.parametrize("transport", STREAM)
def test_loop_closing_with_requests_open(rust_peer, sockdir, transport):
	"""A loop closed while requests are open (a response on its way, one never answered, one
	waiting for updates): the connection moves to the next loop that uses it, where the response
	arrives and closing fails the rest at once. A connection nobody uses again is closed when its
	last object goes: no descriptor is left behind."""
	url = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{sockdir}/s.sock"
	server, url = start_rust_server(rust_peer, url)
	try:

		async def warm_up():
			# The runtime's descriptors, and the socket pair of the last loop's bridge (kept,
			# with that loop, for the next call on this thread).
			peer = await peerwire.connect(url)
			await (await peer.send_request(1, b"")).recv_response(timeout=10)
			peer.close()
			await peer.wait_closed()

		asyncio.run(warm_up())
		gc.collect()
		before = open_fds()

		async def first_loop():
			peer = await peerwire.connect(url)
			answered = await peer.send_request(1, b"late")  # its response arrives after the close
			never = await peer.send_request(6, b"")  # never answered
			updates = await peer.send_request(2, b"")  # waits for requester updates
			# Pending when the loop closes: a future, not a task, so asyncio.run does not cancel it.
			waiting = asyncio.ensure_future(never.recv_response())
			await asyncio.sleep(0)
			return peer, answered, never, updates, waiting

		peer, answered, never, updates, waiting = asyncio.run(first_loop())
		assert not waiting.done()
		assert not peer.is_closed

		async def next_loop():
			response = await asyncio.wait_for(answered.recv_response(), 10)
			assert response.body == b"late"
			# The receive left pending in the closed loop let go of the request.
			with pytest.raises(peerwire.Timeout):
				await never.recv_response(timeout=0.1)
			peer.close()
			started = time.monotonic()
			with pytest.raises(peerwire.ConnectionClosed):
				await asyncio.wait_for(never.recv_response(), 5)
			with pytest.raises(peerwire.ConnectionClosed):
				await asyncio.wait_for(updates.recv_update(), 5)
			assert time.monotonic() - started < 2
			await asyncio.wait_for(peer.wait_closed(), 5)

		asyncio.run(next_loop())
		del peer, answered, never, updates, waiting
		gc.collect()
		assert open_fds() == before

		# Left alone after its loop closed: closed with its last object.
		async def left_alone():
			peer = await peerwire.connect(url)
			return await peer.send_request(6, b"")

		request = asyncio.run(left_alone())
		gc.collect()
		with_request = open_fds()
		del request
		gc.collect()
		assert open_fds() == with_request - 1
	finally:
		server.kill()
		server.wait()


def test_use_from_another_running_loop_raises(rust_peer, sockdir):
	"""A connection belongs to its loop while that loop is open: another loop's thread gets a
	clear error, not a hang, and the connection carries on."""
	server, url = start_rust_server(rust_peer, f"unix://{sockdir}/s.sock")
	try:

		async def main():
			peer = await peerwire.connect(url)
			request = await peer.send_request(6, b"")
			errors = []

			def other_thread():
				async def use():
					for attempt in (
						lambda: peer.send_request(1, b"x"),
						lambda: peer.recv_message(),
						lambda: request.recv_response(),
					):
						with pytest.raises(RuntimeError, match="another event loop"):
							await attempt()
					errors.append(None)

				try:
					asyncio.run(use())
				except BaseException as error:  # reported to the test below
					errors.append(error)

			thread = threading.Thread(target=other_thread)
			thread.start()
			await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
			assert errors == [None]
			response = await (await peer.send_request(1, b"still")).recv_response(timeout=10)
			assert response.body == b"still"
			peer.close()

		asyncio.run(main())
	finally:
		server.kill()
		server.wait()


async def test_1000_concurrent_requests_with_large_bodies(stream_url):
	"""1,000 requests at once with 16 KiB bodies (16 MB each way, far more than the socket
	buffers): writes that would block wait for the loop's writer callback, and back-pressure on
	the reading side pauses and resumes reading."""
	event_loop = asyncio.get_running_loop()
	watched_for_writing = []
	add_writer = event_loop.add_writer

	def counting_add_writer(fd, callback, *args):
		watched_for_writing.append(fd)
		return add_writer(fd, callback, *args)

	event_loop.add_writer = counting_add_writer
	listener = await peerwire.listen(stream_url)
	server = asyncio.create_task(serve_listener(listener))
	peer = await peerwire.connect(listener.url)

	async def one(i):
		body = bytes([i % 256]) * 16384
		request = await peer.send_request(1, body)
		response = await request.recv_response(timeout=60)
		assert response.body == body

	await asyncio.gather(*(one(i) for i in range(1000)))
	assert watched_for_writing, "no write ever had to wait: the test no longer covers that path"
	# A writer registration nobody waits on goes at its next callback (the socket is writable,
	# so the loop's next iteration); readers stay while their peers read.
	await asyncio.sleep(0.01)
	assert all(key.data[1] is None for key in event_loop._selector.get_map().values())
	peer.close()
	await peer.wait_closed()
	listener.close()
	await server


@pytest.mark.parametrize("transport", STREAM)  # overrides the fixture: loop-driven ones only
async def test_remote_crash_with_requests_in_flight(rust_server):
	"""The remote dies while hundreds of requests are in flight and more are unanswered: every one
	fails with ConnectionClosed promptly, and the socket's registrations are gone."""
	event_loop = asyncio.get_running_loop()
	peer = await peerwire.connect(rust_server.url)
	await (await peer.send_request(1, b"warm")).recv_response(timeout=10)
	unanswered = [await peer.send_request(6, b"") for _ in range(100)]

	async def echo(i):
		request = await peer.send_request(1, b"%d" % i)
		await request.recv_response()

	in_flight = [asyncio.create_task(echo(i)) for i in range(500)]
	await asyncio.sleep(0)
	await peer.send_request(5, b"")  # the server exits at once
	started = time.monotonic()
	results = await asyncio.wait_for(
		asyncio.gather(*in_flight, *(r.recv_response() for r in unanswered), return_exceptions=True), 5
	)
	assert time.monotonic() - started < 5
	failed = [r for r in results if isinstance(r, BaseException)]
	assert all(isinstance(r, peerwire.ConnectionClosed) for r in failed), failed
	assert len(failed) >= 100  # every unanswered one, and the echoes not answered before the exit
	await asyncio.wait_for(peer.wait_closed(), 5)
	assert peer.is_closed
	fds = registrations(event_loop)
	del peer, unanswered, in_flight, results, failed
	gc.collect()
	assert registrations(event_loop) <= fds


async def test_many_connections_leave_nothing_behind(stream_url):
	"""500 connections opened, used and closed (by either side, or dropped): the process's
	descriptors and the loop's registrations are as before."""
	event_loop = asyncio.get_running_loop()
	listener = await peerwire.listen(stream_url)
	server = asyncio.create_task(serve_listener(listener))
	# Warm up: the loop's bridge, the runtime's threads and epoll instance.
	peer = await peerwire.connect(listener.url)
	await (await peer.send_request(1, b"warm")).recv_response(timeout=10)
	peer.close()
	await peer.wait_closed()
	del peer
	await asyncio.sleep(0.1)
	gc.collect()
	fds_before, registered_before = open_fds(), registrations(event_loop)

	async def one(i):
		peer = await peerwire.connect(listener.url)
		request = await peer.send_request(1, b"%d" % i)
		assert (await request.recv_response(timeout=10)).body == b"%d" % i
		if i % 3 == 0:
			peer.close()
			await peer.wait_closed()
		elif i % 3 == 1:
			await peer.send_request(5, b"")  # unknown to the Python server: an error response
			async with peer:
				pass
		# else: dropped, which closes it too

	for batch in range(0, 500, 50):
		await asyncio.gather(*(one(i) for i in range(batch, batch + 50)))
	# The server's side ends when it reads the end of stream; let it.
	for _ in range(50):
		gc.collect()
		await asyncio.sleep(0.05)
		if open_fds() == fds_before and registrations(event_loop) == registered_before:
			break
	assert open_fds() == fds_before, f"{open_fds() - fds_before} descriptors left"
	assert registrations(event_loop) == registered_before
	listener.close()
	await server
