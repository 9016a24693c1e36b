"""Round trip and 64 requests in flight from Python: the peerwire binding against a pure-Python
asyncio client and echo server that frame the same messages by hand over a raw socket.

    python bench/bench.py                 # a full run (about a minute), a Markdown table
    python bench/bench.py --quick         # a smoke run (what .ci/run does; timings are no gate)

Each server runs in a process of its own, so that the client's interpreter is measured alone.
The echo answers each request (type 0) with a response (type 1) carrying the same id and body.
"""

import argparse
import asyncio
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HEADER = struct.Struct("<IIIi")  # frame length, message type, request id, service id (little endian)
BODY = b"x" * 64


# --- the pure-Python side: hand-written framing on asyncio streams -------------------------------


async def asyncio_echo_server(url):
	async def handle(reader, writer):
		try:
			while True:
				length, kind, request_id, service_id = HEADER.unpack(await reader.readexactly(16))
				body = await reader.readexactly(length - 12)
				if kind == 0:
					writer.write(HEADER.pack(12 + len(body), 1, request_id, 0) + body)
		except (asyncio.IncompleteReadError, ConnectionError):
			pass
		finally:
			writer.close()

	server = await start_server(handle, url)
	print("listening", url, flush=True)
	async with server:
		await server.serve_forever()


async def start_server(handle, url):
	scheme, rest = url.split("://", 1)
	if scheme == "tcp":
		host, port = rest.rsplit(":", 1)
		return await asyncio.start_server(handle, host, int(port))
	return await asyncio.start_unix_server(handle, rest)


async def open_connection(url):
	scheme, rest = url.split("://", 1)
	if scheme == "tcp":
		host, port = rest.rsplit(":", 1)
		return await asyncio.open_connection(host, int(port))
	return await asyncio.open_unix_connection(rest)


class AsyncioClient:
	"""A client as one would write it by hand: a reader task matching responses to futures."""

	def __init__(self, reader, writer):
		self.reader, self.writer = reader, writer
		self.waiting = {}
		self.next_id = 0
		self.task = asyncio.create_task(self.read())

	async def read(self):
		try:
			while True:
				length, kind, request_id, service_id = HEADER.unpack(await self.reader.readexactly(16))
				body = await self.reader.readexactly(length - 12)
				future = self.waiting.pop(request_id, None)
				if future is not None and not future.done():
					future.set_result(body)
		except (asyncio.IncompleteReadError, ConnectionError):
			pass

	async def request(self, service_id, body):
		request_id = self.next_id
		self.next_id = (self.next_id + 1) & 0xFFFFFFFF
		future = asyncio.get_running_loop().create_future()
		self.waiting[request_id] = future
		self.writer.write(HEADER.pack(12 + len(body), 0, request_id, service_id) + body)
		return await future

	def close(self):
		self.task.cancel()
		self.writer.close()


# --- the peerwire side ---------------------------------------------------------------------------


async def peerwire_echo_server(url):
	import peerwire

	async def serve(peer):
		async for message in peer:
			if message.kind == "request":
				await message.send_response(0, message.body)

	listener = await peerwire.listen(url)
	print("listening", url, flush=True)
	tasks = set()
	async for peer in listener:
		task = asyncio.create_task(serve(peer))
		tasks.add(task)
		task.add_done_callback(tasks.discard)


class PeerwireClient:
	def __init__(self, peer):
		self.peer = peer

	async def request(self, service_id, body):
		request = await self.peer.send_request(service_id, body)
		return (await request.recv_response()).body

	def close(self):
		self.peer.close()


async def connect(client, url):
	if client == "peerwire":
		import peerwire

		return PeerwireClient(await peerwire.connect(url))
	return AsyncioClient(*await open_connection(url))


# --- measuring -----------------------------------------------------------------------------------


async def round_trip(client, count):
	times = []
	for _ in range(count):
		started = time.perf_counter()
		body = await client.request(1, BODY)
		times.append(time.perf_counter() - started)
		assert body == BODY
	return statistics.median(times)


async def in_flight(client, total, window=64):
	"""`total` requests, `window` at a time; returns requests per second."""
	remaining = total

	async def worker():
		nonlocal remaining
		while remaining > 0:
			remaining -= 1
			assert await client.request(1, BODY) == BODY

	started = time.perf_counter()
	await asyncio.gather(*(worker() for _ in range(window)))
	return total / (time.perf_counter() - started)


async def measure(client_kind, url, rounds, count, total):
	client = await connect(client_kind, url)
	await round_trip(client, 200)  # warm up
	rtt = statistics.median([await round_trip(client, count) for _ in range(rounds)])
	rate = statistics.median([await in_flight(client, total) for _ in range(rounds)])
	client.close()
	return rtt, rate


def start(server_kind, url):
	process = subprocess.Popen(
		[sys.executable, __file__, "--serve", server_kind, url], stdout=subprocess.PIPE, text=True
	)
	line = process.stdout.readline()
	assert line.startswith("listening"), line
	return process


def main():
	parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
	parser.add_argument("--quick", action="store_true", help="a smoke run")
	parser.add_argument("--serve", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
	args = parser.parse_args()
	if args.serve:
		kind, url = args.serve
		asyncio.run(peerwire_echo_server(url) if kind == "peerwire" else asyncio_echo_server(url))
		return

	rounds, count, total = (1, 200, 2_000) if args.quick else (5, 2_000, 20_000)
	directory = tempfile.mkdtemp(prefix="pwbench")
	pairs = [("asyncio", "asyncio"), ("peerwire", "peerwire"), ("peerwire", "asyncio")]
	results = {}
	port = 29400
	for transport in ["tcp", "unix"]:
		for client_kind, server_kind in pairs:
			port += 1
			url = f"tcp://127.0.0.1:{port}" if transport == "tcp" else f"unix://{directory}/{port}.sock"
			server = start(server_kind, url)
			try:
				results[transport, client_kind, server_kind] = asyncio.run(
					measure(client_kind, url, rounds, count, total)
				)
			finally:
				server.kill()
				server.wait()
	shutil.rmtree(directory, ignore_errors=True)
	print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; body {len(BODY)} bytes; "
		f"medians of {rounds} runs ({count} round trips, {total} requests 64 in flight)\n")
	print("| transport | client | server | round trip (µs) | 64 in flight (requests/s) | round trip vs asyncio | 64 in flight vs asyncio |")
	print("|---|---|---|---:|---:|---:|---:|")
	for (transport, client_kind, server_kind), (rtt, rate) in results.items():
		base_rtt, base_rate = results[transport, "asyncio", "asyncio"]
		# Time ratio (below 1: faster than asyncio) and throughput ratio (above 1: more).
		print(
			f"| {transport} | {client_kind} | {server_kind} | {rtt * 1e6:.1f} | {rate:,.0f} | "
			f"{rtt / base_rtt:.2f}× the time | {rate / base_rate:.2f}× |"
		)


if __name__ == "__main__":
	main()
