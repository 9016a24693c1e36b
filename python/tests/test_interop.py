"""Every message kind, both directions, on every transport: Python and Python, a Python client
and a Rust server, a Rust client and a Python server."""

import asyncio
import os

import peerwire
from services import exercise, serve_listener


async def test_python_client_python_server(url):
	listener = await peerwire.listen(url)
	server = asyncio.create_task(serve_listener(listener))
	try:
		peer = await peerwire.connect(listener.url)
		await asyncio.wait_for(exercise(peer), 30)
		peer.close()
		await asyncio.wait_for(peer.wait_closed(), 10)
		assert peer.is_closed
	finally:
		listener.close()
		await asyncio.wait_for(server, 10)


async def test_python_client_rust_server(rust_server):
	peer = await peerwire.connect(rust_server.url)
	await asyncio.wait_for(exercise(peer), 30)
	peer.close()


async def test_rust_client_python_server(url, rust_peer):
	listener = await peerwire.listen(url)
	server = asyncio.create_task(serve_listener(listener))
	try:
		process = await asyncio.create_subprocess_exec(
			rust_peer, "client", listener.url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
		)
		stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
		assert process.returncode == 0, stderr.decode()
		assert stdout.strip().endswith(b"ok")
	finally:
		listener.close()
		await asyncio.wait_for(server, 10)


async def test_info(url, transport):
	listener = await peerwire.listen(url)
	accepted = asyncio.ensure_future(listener.accept())
	peer = await peerwire.connect(listener.url)
	server_side = await accepted
	if transport == "tcp":
		assert peer.info.address == listener.url
		assert server_side.info.address.startswith("tcp://127.0.0.1:")
		assert peer.info.uid is None
	else:
		# The server sees the client process: this one.
		assert (server_side.info.uid, server_side.info.gid, server_side.info.pid) == (os.getuid(), os.getgid(), os.getpid())
	assert peer.carries_fds == (transport == "seqpacket")
	async with peer:
		pass
	assert peer.is_closed
	# The server side sees the end.
	assert await asyncio.wait_for(anext_or_none(server_side), 10) is None
	listener.close()


async def anext_or_none(peer):
	async for message in peer:
		return message
	return None


async def test_listener_close_ends_iteration_and_removes_socket(sockdir):
	listener = await peerwire.listen(f"unix://{sockdir}/l.sock")
	assert os.path.exists(f"{sockdir}/l.sock")
	loop = asyncio.create_task(serve_listener(listener))
	await asyncio.sleep(0.05)
	listener.close()
	await asyncio.wait_for(loop, 10)
	assert not os.path.exists(f"{sockdir}/l.sock")
	try:
		await listener.accept()
		raise AssertionError("accept after close")
	except peerwire.ConnectionClosed:
		pass
