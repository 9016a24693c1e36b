//! The Rust side of the Python binding's tests: `rust_peer serve URL` answers the test services,
//! `rust_peer client URL` runs the test script against a server (a Python one) and prints `ok`.
//!
//! The services (the Python tests implement the same ones in Python, so that every pairing runs
//! the same script):
//! - 1 echo: a responder update (1, body), then the response (0, body) with the request's
//!   descriptors sent back;
//! - 2 collect: each requester update is echoed as a responder update until one with service id
//!   0; the response is the bodies joined;
//! - 3 fail: an error response `refused: BODY`;
//! - 4 reverse: a request (10, body) and a stream message (11, body) to the client; the response
//!   is the client's response body;
//! - 5 crash: the process exits at once (the Rust server only);
//! - 6 never: the request is held unanswered until the connection ends;
//! - 7 memfd: the response body is the first descriptor's contents, and the descriptor is sent
//!   back after ` +rust` is appended to it;
//! - a stream message is sent back as it came.

use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;

use bytes::Bytes;
use peerwire::{
	Config, PeerHandle, ReceivedMessage, ReceivedRequestHandle, TcpListener, TcpPeer, UnixBody, UnixSeqpacketListener,
	UnixSeqpacketPeer, UnixStreamListener, UnixStreamPeer,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A body of either transport, as the test services need it.
trait TestBody: peerwire::Body + From<Bytes> + Sync {
	fn data(&self) -> &[u8];
	fn take_fds(&mut self) -> Vec<OwnedFd>;
	fn with_fds(data: Bytes, fds: Vec<OwnedFd>) -> Self;
}

impl TestBody for Bytes {
	fn data(&self) -> &[u8] {
		self
	}
	fn take_fds(&mut self) -> Vec<OwnedFd> {
		Vec::new()
	}
	fn with_fds(data: Bytes, _fds: Vec<OwnedFd>) -> Self {
		data
	}
}

impl TestBody for UnixBody {
	fn data(&self) -> &[u8] {
		&self.data
	}
	fn take_fds(&mut self) -> Vec<OwnedFd> {
		std::mem::take(&mut self.fds)
	}
	fn with_fds(data: Bytes, fds: Vec<OwnedFd>) -> Self {
		UnixBody::new(data, fds)
	}
}

#[tokio::main]
async fn main() -> Result<()> {
	let args: Vec<String> = std::env::args().collect();
	let (Some(mode), Some(url)) = (args.get(1), args.get(2)) else {
		eprintln!("usage: rust_peer serve|client URL");
		std::process::exit(2);
	};
	let config = Config::default();
	let (scheme, rest) = url.split_once("://").ok_or("bad url")?;
	match (mode.as_str(), scheme) {
		("serve", "tcp") => {
			let mut listener = TcpListener::bind(rest, &config).await?;
			println!("listening tcp://{}", listener.local_addr()?);
			loop {
				let (peer, _) = listener.accept().await?;
				tokio::spawn(serve(peer));
			}
		},
		("serve", "unix") => {
			let mut listener = UnixStreamListener::bind(rest, &config).await?;
			println!("listening {url}");
			loop {
				let (peer, _) = listener.accept().await?;
				tokio::spawn(serve(peer));
			}
		},
		("serve", "seqpacket") => {
			let mut listener = UnixSeqpacketListener::bind(rest, &config).await?;
			println!("listening {url}");
			loop {
				let (peer, _) = listener.accept().await?;
				tokio::spawn(serve(peer));
			}
		},
		("client", "tcp") => client(TcpPeer::connect(rest, &config).await?.0, false).await?,
		("client", "unix") => client(UnixStreamPeer::connect(rest, &config).await?.0, false).await?,
		("client", "seqpacket") => client(UnixSeqpacketPeer::connect(rest, &config).await?.0, true).await?,
		_ => return Err(format!("unknown mode {mode} or scheme {scheme}").into()),
	}
	println!("ok");
	Ok(())
}

async fn serve<B: TestBody>(peer: PeerHandle<B>) -> Result<()> {
	let (mut read, write) = peer.split();
	let mut held = Vec::new();
	loop {
		match read.recv_message().await {
			Ok(ReceivedMessage::Request(request, body)) => {
				if request.service_id() == 6 {
					held.push(request);
					continue;
				}
				let write = write.clone();
				tokio::spawn(async move {
					if let Err(error) = answer(request, body, write).await {
						eprintln!("rust_peer: {error}");
					}
				});
			},
			Ok(ReceivedMessage::Stream(mut message)) => {
				let fds = message.body.take_fds();
				let body = B::with_fds(Bytes::copy_from_slice(message.body.data()), fds);
				write.send_stream(message.header.service_id, body).await?;
			},
			Err(_) => return Ok(()),
		}
	}
}

async fn answer<B: TestBody>(
	mut request: ReceivedRequestHandle<B>,
	mut body: B,
	peer: peerwire::PeerWriteHandle<B>,
) -> Result<()> {
	let data = Bytes::copy_from_slice(body.data());
	match request.service_id() {
		1 => {
			request.send_update(1, B::from(data.clone())).await?;
			request.send_response(0, B::with_fds(data, body.take_fds())).await?;
		},
		2 => {
			let mut joined = Vec::new();
			while let Some(update) = request.recv_update().await? {
				if update.header.service_id == 0 {
					break;
				}
				joined.extend_from_slice(update.body.data());
				request
					.send_update(update.header.service_id, B::from(Bytes::copy_from_slice(update.body.data())))
					.await?;
			}
			request.send_response(0, B::from(Bytes::from(joined))).await?;
		},
		3 => {
			request.send_error_response(&format!("refused: {}", String::from_utf8_lossy(&data))).await?;
		},
		4 => {
			let mut reverse = peer.send_request(10, B::from(data.clone())).await?;
			peer.send_stream(11, B::from(data)).await?;
			let response = reverse.recv_response_ok().await?;
			request.send_response(0, B::from(Bytes::copy_from_slice(response.body.data()))).await?;
		},
		5 => std::process::exit(3),
		7 => {
			let Some(fd) = body.take_fds().into_iter().next() else {
				request.send_error_response("service 7 needs a descriptor").await?;
				return Ok(());
			};
			let mut file = std::fs::File::from(fd);
			let mut contents = Vec::new();
			file.seek(std::io::SeekFrom::Start(0))?;
			file.read_to_end(&mut contents)?;
			file.write_all(b" +rust")?;
			request.send_response(0, B::with_fds(Bytes::from(contents), vec![OwnedFd::from(file)])).await?;
		},
		other => {
			request.send_error_response(&format!("unknown service {other}")).await?;
		},
	}
	Ok(())
}

fn check(condition: bool, what: &str) -> Result<()> {
	if condition { Ok(()) } else { Err(format!("check failed: {what}").into()) }
}

/// The test script, as a client: every message kind in both directions.
async fn client<B: TestBody>(peer: PeerHandle<B>, carries_fds: bool) -> Result<()> {
	let (mut read, write) = peer.split();
	// Requests and stream messages from the server, answered and recorded in a task of their own.
	let (streams_tx, mut streams) = tokio::sync::mpsc::unbounded_channel();
	let reverse_writer = write.clone();
	let incoming = tokio::spawn(async move {
		let _keep = reverse_writer;
		while let Ok(message) = read.recv_message().await {
			match message {
				ReceivedMessage::Request(request, body) => {
					let answer = format!("pong:{}", String::from_utf8_lossy(body.data()));
					request.send_response(0, B::from(Bytes::from(answer))).await.ok();
				},
				ReceivedMessage::Stream(message) => {
					let _ = streams_tx.send((message.header.service_id, Bytes::copy_from_slice(message.body.data())));
				},
			}
		}
	});

	// 1: a request, a responder update, a response.
	let mut request = write.send_request(1, B::from(Bytes::from_static(b"hello"))).await?;
	let update = request.recv_update().await?.ok_or("no update")?;
	check(update.header.service_id == 1 && update.body.data() == b"hello", "echo update")?;
	check(request.recv_update().await?.is_none(), "no second update")?;
	let response = request.recv_response().await?;
	check(response.header.service_id == 0 && response.body.data() == b"hello", "echo response")?;

	// 2: requester updates, each echoed as a responder update.
	let mut request = write.send_request(2, B::from(Bytes::new())).await?;
	for (service, text) in [(5, "a"), (6, "b")] {
		request.send_update(service, B::from(Bytes::from(text))).await?;
		let update = request.recv_update().await?.ok_or("no echoed update")?;
		check(update.header.service_id == service && update.body.data() == text.as_bytes(), "collect update")?;
	}
	request.send_update(0, B::from(Bytes::new())).await?;
	check(request.recv_response().await?.body.data() == b"ab", "collect response")?;

	// 3: an error response.
	let mut request = write.send_request(3, B::from(Bytes::from_static(b"x"))).await?;
	let error = request.recv_response_ok().await.err().ok_or("no error")?;
	check(error.remote_text() == Some("refused: x"), "error text")?;

	// 4: a request and a stream message from the server while ours is open.
	let mut request = write.send_request(4, B::from(Bytes::from_static(b"ping"))).await?;
	check(request.recv_response().await?.body.data() == b"pong:ping", "reverse response")?;
	check(streams.recv().await == Some((11, Bytes::from_static(b"ping"))), "reverse stream")?;

	// Stream messages both ways.
	write.send_stream(20, B::from(Bytes::from_static(b"tick"))).await?;
	check(streams.recv().await == Some((20, Bytes::from_static(b"tick"))), "stream echo")?;

	if carries_fds {
		// A descriptor to the server and back: one end of a socket pair goes out and comes back.
		let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
		let mut request =
			write.send_request(1, B::with_fds(Bytes::from_static(b"fd"), vec![OwnedFd::from(writer)])).await?;
		let mut response = request.recv_response().await?;
		let fds = response.body.take_fds();
		check(fds.len() == 1, "one descriptor back")?;
		let mut back = std::fs::File::from(fds.into_iter().next().ok_or("no fd")?);
		back.write_all(b"through")?;
		drop(back);
		let mut text = [0u8; 7];
		let mut reader = reader;
		reader.read_exact(&mut text)?;
		check(&text == b"through", "descriptor works")?;
	}
	write.close();
	drop(write);
	incoming.abort();
	Ok(())
}
