"""The test services and the test script in Python, the same as python/examples/rust_peer.rs, so
that every pairing (Python or Rust on either side) runs the same exchange."""

import asyncio
import os

import peerwire


async def serve(peer):
	"""Answer the test services on one connection until it ends."""
	held = []
	tasks = set()
	try:
		async for message in peer:
			if message.kind == "request":
				if message.service_id == 6:
					held.append(message)
				else:
					task = asyncio.create_task(answer(peer, message))
					tasks.add(task)
					task.add_done_callback(tasks.discard)
			else:
				await peer.send_stream(message.service_id, message.body, fds=message.fds)
			del message
	except peerwire.ConnectionClosed:
		pass


async def answer(peer, request):
	body = request.body
	service = request.service_id
	if service == 1:
		await request.send_update(1, body)
		await request.send_response(0, body, fds=request.fds)
	elif service == 2:
		joined = b""
		async for update in request:
			if update.service_id == 0:
				break
			joined += update.body
			await request.send_update(update.service_id, update.body)
		await request.send_response(0, joined)
	elif service == 3:
		await request.send_error("refused: " + body.decode())
	elif service == 4:
		reverse = await peer.send_request(10, body)
		await peer.send_stream(11, body)
		response = await reverse.recv_response_ok()
		await request.send_response(0, response.body)
	elif service == 7:
		if not request.fds:
			await request.send_error("service 7 needs a descriptor")
			return
		fd = request.fds[0]
		contents = os.pread(fd.fileno(), 1 << 20, 0)
		os.lseek(fd.fileno(), 0, os.SEEK_END)
		os.write(fd.fileno(), b" +py")
		await request.send_response(0, contents, fds=[fd])
	else:
		await request.send_error(f"unknown service {service}")


async def serve_listener(listener):
	"""Serve every connection of `listener` until it is closed."""
	tasks = set()
	async for peer in listener:
		task = asyncio.create_task(serve(peer))
		tasks.add(task)
		task.add_done_callback(tasks.discard)
		del peer


async def exercise(peer):
	"""The test script as a client: every message kind in both directions."""
	streams = asyncio.Queue()

	async def incoming():
		async for message in peer:
			if message.kind == "request":
				await message.send_response(0, b"pong:" + message.body)
			else:
				await streams.put((message.service_id, message.body))

	receiver = asyncio.create_task(incoming())
	try:
		# 1: a request, a responder update, a response.
		request = await peer.send_request(1, b"hello")
		update = await request.recv_update()
		assert (update.kind, update.service_id, update.body) == ("responder_update", 1, b"hello")
		assert await request.recv_update() is None
		response = await request.recv_response()
		assert (response.kind, response.service_id, response.body) == ("response", 0, b"hello")

		# 2: requester updates, each echoed as a responder update.
		request = await peer.send_request(2, b"")
		for service, text in [(5, b"a"), (6, b"b")]:
			await request.send_update(service, text)
			update = await request.recv_update()
			assert (update.service_id, update.body) == (service, text)
		await request.send_update(0, b"")
		assert (await request.recv_response()).body == b"ab"

		# 3: an error response, as a message and as RemoteError.
		request = await peer.send_request(3, b"x")
		response = await request.recv_response()
		assert response.is_error and response.error_text == "refused: x" and response.service_id == -1
		request = await peer.send_request(3, "y")
		try:
			await request.recv_response_ok()
			raise AssertionError("no RemoteError")
		except peerwire.RemoteError as error:
			assert error.text == "refused: y" and error.service_id == -1

		# 4: a request and a stream message from the server while ours is open.
		request = await peer.send_request(4, b"ping")
		assert (await request.recv_response()).body == b"pong:ping"
		assert await asyncio.wait_for(streams.get(), 10) == (11, b"ping")

		# Stream messages both ways.
		await peer.send_stream(20, b"tick")
		assert await asyncio.wait_for(streams.get(), 10) == (20, b"tick")

		if peer.carries_fds:
			# A descriptor to the server and back: the write end of a pipe.
			reader, writer = os.pipe()
			try:
				request = await peer.send_request(1, b"fd", fds=[writer])
				os.close(writer)
				writer = None
				response = await request.recv_response()
				assert len(response.fds) == 1
				with response.fds[0] as back:
					os.write(back.fileno(), b"through")
				assert back.closed
				assert os.read(reader, 100) == b"through"
			finally:
				os.close(reader)
				if writer is not None:
					os.close(writer)
	finally:
		receiver.cancel()
