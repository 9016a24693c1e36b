"""Fixtures: addresses on every transport, and the Rust test peer (python/examples/rust_peer.rs)."""

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
TRANSPORTS = ["tcp", "unix", "seqpacket"]


@pytest.fixture
def sockdir():
	"""A short directory for socket files (Unix socket paths are limited to 108 bytes)."""
	path = tempfile.mkdtemp(prefix="pw", dir="/tmp")
	yield path
	shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=TRANSPORTS)
def transport(request):
	return request.param


@pytest.fixture
def url(transport, sockdir):
	"""An address to listen on for the transport under test."""
	if transport == "tcp":
		return "tcp://127.0.0.1:0"
	return f"{transport}://{sockdir}/s.sock"


@pytest.fixture(scope="session")
def rust_peer():
	"""The path of the Rust test peer, built (release) unless PEERWIRE_RUST_PEER names it."""
	given = os.environ.get("PEERWIRE_RUST_PEER")
	if given:
		return given
	subprocess.run(
		["cargo", "build", "--release", "--quiet", "--example", "rust_peer"],
		cwd=PYTHON_DIR,
		check=True,
	)
	return str(PYTHON_DIR / "target" / "release" / "examples" / "rust_peer")


class RustServer:
	"""`rust_peer serve URL` in a child process; `url` is where it listens."""

	def __init__(self, process, url):
		self.process = process
		self.url = url

	async def stop(self):
		if self.process.returncode is None:
			self.process.kill()
		await self.process.wait()


@pytest.fixture
async def rust_server(rust_peer, url):
	process = await asyncio.create_subprocess_exec(rust_peer, "serve", url, stdout=asyncio.subprocess.PIPE)
	line = await asyncio.wait_for(process.stdout.readline(), 30)
	assert line.startswith(b"listening "), line
	server = RustServer(process, line.split()[1].decode())
	yield server
	await server.stop()
