//! Half-close: a remote that sends its requests and at once shuts down its write side
//! (`shutdown(SHUT_WR)`) still gets every answer. After the remote's end of file the peer keeps
//! its write side open until every received request is answered (or dropped, and answered with
//! the automatic error response) and its queue is flushed, then closes; all of it bounded by
//! `Config::close_timeout`.
//!
//! The clients are raw sockets, so that nothing of the library is on the requesting side; the
//! server is a peerwire listener whose application answers each request from a task of its own,
//! after a delay, so that the answer is genuinely later than the end of file.

mod common;

use std::time::{Duration, Instant};

use common::raw::{Address, Application, Kind, request_datagram, u32_at};
use common::within;
use peerwire::{Body, Config, DROPPED_REQUEST_TEXT, PeerHandle, ReceivedMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answer with the request body after `service_id - ANSWER_AFTER_MS` milliseconds.
const ANSWER_AFTER_MS: i32 = 1000;
/// Drop the request handle unanswered after [`DELAY`].
const DROP: i32 = 2;
/// Hold the request handle and never answer (for far longer than any test waits).
const HOLD: i32 = 3;

/// The usual delay before the application answers: later than the remote's end of file.
const DELAY: Duration = Duration::from_millis(20);

/// How long the server may hold a connection with an unanswered request after the remote's end
/// of file.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after its end of file a client waits for the server to close the connection. Every
/// case answers within a few hundred milliseconds, or is bounded by [`CLOSE_TIMEOUT`]; the rest
/// is slack for a loaded machine.
const EOF_WITHIN: Duration = Duration::from_secs(5);

const RESPONSE: u32 = 1;

fn config() -> Config {
	Config::default().with_close_timeout(CLOSE_TIMEOUT)
}

/// A server with the test application on every connection.
async fn server(kind: Kind) -> Address {
	common::raw::listen(kind, "half-close", &config(), Delayed).await
}

#[derive(Clone)]
struct Delayed;

impl Application for Delayed {
	/// Each request is handled by a task of its own, which acts on it after a delay.
	async fn serve<B: Body>(self, mut peer: PeerHandle<B>) {
		while let Ok(message) = peer.recv_message().await {
			let ReceivedMessage::Request(request, body) = message else { continue };
			tokio::spawn(async move {
				match request.service_id() {
					DROP => {
						tokio::time::sleep(DELAY).await;
						drop(request);
					},
					HOLD => {
						tokio::time::sleep(Duration::from_secs(60)).await;
						drop(request);
					},
					service_id => {
						let delay = u64::try_from(service_id - ANSWER_AFTER_MS).unwrap();
						tokio::time::sleep(Duration::from_millis(delay)).await;
						let _ = request.send_response(0, body).await;
					},
				}
			});
		}
	}
}

/// One message as the raw client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw {
	message_type: u32,
	request_id: u32,
	service_id: i32,
	body: Vec<u8>,
}

fn parse_datagram(datagram: &[u8]) -> Raw {
	assert!(datagram.len() >= 12, "a message shorter than its header: {datagram:?}");
	Raw {
		message_type: u32_at(datagram, 0),
		request_id: u32_at(datagram, 4),
		service_id: u32_at(datagram, 8) as i32,
		body: datagram[12..].to_vec(),
	}
}

/// The messages of a byte stream that ended: whole frames only, and nothing left over.
fn parse_stream(mut bytes: &[u8]) -> Vec<Raw> {
	let mut messages = Vec::new();
	while !bytes.is_empty() {
		assert!(bytes.len() >= 4, "a partial frame length at the end of the stream");
		let len = u32_at(bytes, 0) as usize;
		assert!(bytes.len() >= 4 + len, "a partial frame at the end of the stream");
		messages.push(parse_datagram(&bytes[4..4 + len]));
		bytes = &bytes[4 + len..];
	}
	messages
}

/// What a raw client saw: the messages before the end of file, and how long after its own
/// shutdown the end of file came.
struct Seen {
	messages: Vec<Raw>,
	eof_after: Duration,
}

/// Connect, write the requests, shut down the write side at once, and read until the server
/// closes the connection. Fails if the server keeps it open longer than [`EOF_WITHIN`].
async fn exchange(address: &Address, requests: &[(u32, i32, Vec<u8>)]) -> Seen {
	let wait = async {
		match address {
			Address::Tcp(address) => {
				let stream = tokio::net::TcpStream::connect(address).await.unwrap();
				stream_exchange(stream, requests).await
			},
			Address::Unix(path) => {
				let stream = tokio::net::UnixStream::connect(path).await.unwrap();
				stream_exchange(stream, requests).await
			},
			#[cfg(feature = "unix-seqpacket")]
			Address::Seqpacket(path) => {
				let socket = tokio_seqpacket::UnixSeqpacket::connect(path).await.unwrap();
				for (request_id, service_id, body) in requests {
					socket.send(&request_datagram(*request_id, *service_id, body)).await.unwrap();
				}
				socket.shutdown(std::net::Shutdown::Write).unwrap();
				let shut = Instant::now();
				let mut messages = Vec::new();
				let mut buffer = vec![0; 1 << 16];
				loop {
					let len = tokio::time::timeout(EOF_WITHIN, socket.recv(&mut buffer))
						.await
						.expect("the server did not close the connection after the client's end of file")
						.unwrap();
					if len == 0 {
						break;
					}
					messages.push(parse_datagram(&buffer[..len]));
				}
				Seen { messages, eof_after: shut.elapsed() }
			},
		}
	};
	within(wait).await
}

async fn stream_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
	mut stream: S,
	requests: &[(u32, i32, Vec<u8>)],
) -> Seen {
	let mut frames = Vec::new();
	for (request_id, service_id, body) in requests {
		let datagram = request_datagram(*request_id, *service_id, body);
		frames.extend_from_slice(&(datagram.len() as u32).to_le_bytes());
		frames.extend_from_slice(&datagram);
	}
	stream.write_all(&frames).await.unwrap();
	// SHUT_WR: the server reads end of file right after the requests.
	stream.shutdown().await.unwrap();
	let shut = Instant::now();
	let mut received = Vec::new();
	tokio::time::timeout(EOF_WITHIN, stream.read_to_end(&mut received))
		.await
		.expect("the server did not close the connection after the client's end of file")
		.expect("reading until the server closes the connection");
	Seen { messages: parse_stream(&received), eof_after: shut.elapsed() }
}

fn response_to(seen: &Seen, request_id: u32) -> Option<&Raw> {
	seen.messages.iter().find(|message| message.message_type == RESPONSE && message.request_id == request_id)
}

/// 20 connections in turn, each with one request answered 20 ms after the client's end of file:
/// every answer must arrive, and the server must close the connection afterwards.
async fn answered_after_eof(kind: Kind) {
	let address = server(kind).await;
	for attempt in 0..20u32 {
		let body = format!("attempt {attempt}").into_bytes();
		let request_id = 100 + attempt;
		let seen = exchange(&address, &[(request_id, ANSWER_AFTER_MS + 20, body.clone())]).await;
		let response = response_to(&seen, request_id).unwrap_or_else(|| {
			panic!(
				"{kind:?}, attempt {attempt} of 20: no response before the server closed the connection \
				 (received {:?}, end of file {:?} after the client's shutdown)",
				seen.messages, seen.eof_after
			)
		});
		assert_eq!(response.service_id, 0, "{kind:?}, attempt {attempt}: {response:?}");
		assert_eq!(response.body, body, "{kind:?}, attempt {attempt}");
		assert_eq!(seen.messages.len(), 1, "{kind:?}, attempt {attempt}: {:?}", seen.messages);
	}
}

/// Several requests in one go, answered in the reverse order, the last 80 ms after the end of
/// file: all of them arrive.
async fn several_answered_out_of_order_after_eof(kind: Kind) {
	let address = server(kind).await;
	let requests: Vec<(u32, i32, Vec<u8>)> =
		(0..8u32).map(|i| (i, ANSWER_AFTER_MS + 10 * (8 - i as i32), format!("request {i}").into_bytes())).collect();
	let seen = exchange(&address, &requests).await;
	for (request_id, _, body) in &requests {
		let response = response_to(&seen, *request_id).unwrap_or_else(|| {
			panic!(
				"{kind:?}: no response to request {request_id} of 8 before the server closed the connection \
				 (received {} messages: {:?})",
				seen.messages.len(),
				seen.messages
			)
		});
		assert_eq!(response.service_id, 0, "{kind:?}: {response:?}");
		assert_eq!(&response.body, body, "{kind:?}: request {request_id}");
	}
	assert_eq!(seen.messages.len(), requests.len(), "{kind:?}: {:?}", seen.messages);
}

/// A request that the application drops unanswered after the end of file is answered with the
/// automatic error response, as it would be on an open connection.
async fn dropped_after_eof_gets_the_error_response(kind: Kind) {
	let address = server(kind).await;
	for attempt in 0..5u32 {
		let seen = exchange(&address, &[(attempt, DROP, b"dropped".to_vec())]).await;
		let response = response_to(&seen, attempt).unwrap_or_else(|| {
			panic!(
				"{kind:?}, attempt {attempt} of 5: no error response for the dropped request before the server \
				 closed the connection (received {:?})",
				seen.messages
			)
		});
		assert_eq!(response.service_id, -1, "{kind:?}: {response:?}");
		assert_eq!(response.body, DROPPED_REQUEST_TEXT.as_bytes(), "{kind:?}");
	}
}

/// A request the application never answers does not keep the connection past the close timeout:
/// the server closes it after at most `close_timeout` (and the client sees end of file).
async fn unanswered_after_eof_closes_within_close_timeout(kind: Kind) {
	let address = server(kind).await;
	// `exchange` fails if the end of file takes longer than EOF_WITHIN.
	let seen = exchange(&address, &[(7, HOLD, b"never answered".to_vec())]).await;
	assert!(seen.eof_after < EOF_WITHIN, "{kind:?}: closed after {:?}", seen.eof_after);
	assert!(response_to(&seen, 7).is_none(), "{kind:?}: {:?}", seen.messages);
}

on_every_kind!(
	answered_after_eof,
	several_answered_out_of_order_after_eof,
	dropped_after_eof_gets_the_error_response,
	unanswered_after_eof_closes_within_close_timeout,
);
