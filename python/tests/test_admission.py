"""listen(allow_uids=, allow_gids=, allow_ips=): who a listener admits."""

import asyncio
import os

import pytest

import peerwire


async def refused(url):
	"""Connect to url and check that the server closes the connection unread."""
	peer = await peerwire.connect(url)
	with pytest.raises(peerwire.ConnectionClosed):
		request = await peer.send_request(1, b"let me in")
		await asyncio.wait_for(request.recv_response(), 10)


def own_identity(transport):
	"""Arguments that admit this process on the transport, and arguments that refuse it."""
	if transport == "tcp":
		return {"allow_ips": ["127.0.0.1", "::1"]}, {"allow_ips": ["192.0.2.1"]}
	return {"allow_uids": [os.getuid()]}, {"allow_uids": [os.getuid() + 1], "allow_gids": [os.getgid() + 1]}


async def test_a_client_on_a_list_is_admitted(url, transport):
	admit, _ = own_identity(transport)
	listener = await peerwire.listen(url, **admit)
	accepted = asyncio.ensure_future(listener.accept())
	peer = await peerwire.connect(listener.url)
	server_side = await asyncio.wait_for(accepted, 10)
	if transport != "tcp":
		assert server_side.info.uid == os.getuid()
	async with peer:
		pass
	listener.close()


async def test_a_client_on_no_list_is_closed_and_never_accepted(url, transport):
	_, refuse = own_identity(transport)
	listener = await peerwire.listen(url, **refuse)
	accepted = asyncio.ensure_future(listener.accept())
	await refused(listener.url)
	await asyncio.sleep(0.1)
	assert not accepted.done()
	listener.close()
	with pytest.raises(peerwire.ConnectionClosed):
		await asyncio.wait_for(accepted, 10)


async def test_any_list_admits(sockdir):
	# Not this user, but this group: admitted, as with the CLI's --allow-uid and --allow-gid.
	listener = await peerwire.listen(f"unix://{sockdir}/a.sock", allow_uids=[os.getuid() + 1], allow_gids=[os.getgid()])
	accepted = asyncio.ensure_future(listener.accept())
	peer = await peerwire.connect(listener.url)
	await asyncio.wait_for(accepted, 10)
	async with peer:
		pass
	listener.close()


async def test_an_address_that_does_not_parse_is_a_value_error():
	with pytest.raises(ValueError, match="not an IP address"):
		await peerwire.listen("tcp://127.0.0.1:0", allow_ips=["localhost"])
