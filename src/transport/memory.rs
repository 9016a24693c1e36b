//! The in-memory transport: a connected pair inside one process, no socket, no encoding.
//!
//! Messages move through bounded channels as they are, so modules of one process get the same
//! peers, handles and request lifecycle as over a socket, at the cost of a channel hop. The body
//! type is generic: a body that carries descriptors or any other [`Body`] passes unchanged.

use std::collections::VecDeque;
use std::task::{Context, Poll, ready};

use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::{ConnectionInfo, Transport, TransportRead, TransportWrite};
use crate::config::Config;
use crate::error::Error;
use crate::handle::PeerHandle;
use crate::message::{Body, Message};
use crate::peer::Peer;

/// Messages taken for one batch before the writer hands them to the channel.
const BATCH: usize = 64;

/// One end of an in-memory connection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), peerwire::Error> {
/// use peerwire::Config;
/// use peerwire::transport::memory;
///
/// let (client, mut server) = memory::pair::<bytes::Bytes>(&Config::default());
/// tokio::spawn(async move {
///     let (request, body) = server.recv_message().await?.into_request().unwrap();
///     request.send_response(0, body).await
/// });
/// let mut request = client.send_request(1, "in process").await?;
/// assert_eq!(request.recv_response().await?.body, "in process");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryTransport<B: Body> {
	reader: MemoryReader<B>,
	writer: MemoryWriter<B>,
}

impl<B: Body> MemoryTransport<B> {
	/// A connected pair of transports. Each direction buffers up to `config.write_queue`
	/// messages; the body limits of `config` apply as on a socket.
	pub fn pair(config: &Config) -> (Self, Self) {
		let capacity = config.write_queue.max(1);
		let (a_tx, a_rx) = mpsc::channel(capacity);
		let (b_tx, b_rx) = mpsc::channel(capacity);
		(Self::new(b_rx, a_tx, config), Self::new(a_rx, b_tx, config))
	}

	fn new(incoming: mpsc::Receiver<Message<B>>, outgoing: mpsc::Sender<Message<B>>, config: &Config) -> Self {
		Self {
			reader: MemoryReader { incoming, max_body_len: config.max_body_len_read, max_fds: config.max_fds_read },
			writer: MemoryWriter {
				outgoing: PollSender::new(outgoing),
				queue: VecDeque::new(),
				max_body_len: config.max_body_len_write,
				max_fds: config.max_fds_write,
			},
		}
	}
}

/// Spawn a peer on each end of an in-memory pair and return their handles.
pub fn pair<B: Body>(config: &Config) -> (PeerHandle<B>, PeerHandle<B>) {
	let (a, b) = MemoryTransport::pair(config);
	(Peer::spawn(a, config), Peer::spawn(b, config))
}

impl<B: Body> Transport for MemoryTransport<B> {
	type Body = B;
	type Reader = MemoryReader<B>;
	type Writer = MemoryWriter<B>;

	fn info(&self) -> ConnectionInfo {
		ConnectionInfo::default()
	}

	fn split(self) -> (Self::Reader, Self::Writer) {
		(self.reader, self.writer)
	}
}

/// Check `body` against limits, as the socket transports do.
fn check<B: Body>(body: &B, max_body_len: usize, max_fds: usize) -> Result<(), Error> {
	if body.len() > max_body_len {
		return Err(Error::body_too_large(body.len(), max_body_len));
	}
	if body.fd_count() > max_fds {
		return Err(Error::too_many_fds(body.fd_count(), max_fds));
	}
	Ok(())
}

/// The read half of a [`MemoryTransport`].
#[derive(Debug)]
pub struct MemoryReader<B: Body> {
	incoming: mpsc::Receiver<Message<B>>,
	max_body_len: usize,
	max_fds: usize,
}

impl<B: Body> TransportRead for MemoryReader<B> {
	type Body = B;

	fn shares_reads(&self) -> bool {
		true
	}

	fn poll_read_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Message<B>>, Error>> {
		let Some(message) = ready!(self.incoming.poll_recv(cx)) else {
			return Poll::Ready(Ok(None));
		};
		check(&message.body, self.max_body_len, self.max_fds)?;
		Poll::Ready(Ok(Some(message)))
	}
}

/// The write half of a [`MemoryTransport`].
#[derive(Debug)]
pub struct MemoryWriter<B: Body> {
	outgoing: PollSender<Message<B>>,
	queue: VecDeque<Message<B>>,
	max_body_len: usize,
	max_fds: usize,
}

impl<B: Body> TransportWrite for MemoryWriter<B> {
	type Body = B;

	fn start_send(&mut self, message: Message<B>) -> Result<(), Error> {
		check(&message.body, self.max_body_len, self.max_fds)?;
		self.queue.push_back(message);
		Ok(())
	}

	fn wants_more(&self) -> bool {
		self.queue.len() < BATCH
	}

	fn has_queued(&self) -> bool {
		!self.queue.is_empty()
	}

	fn max_body_len(&self) -> usize {
		self.max_body_len
	}

	fn max_fds(&self) -> usize {
		self.max_fds
	}

	fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
		while !self.queue.is_empty() {
			if ready!(self.outgoing.poll_reserve(cx)).is_err() {
				return Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into()));
			}
			if let Some(message) = self.queue.pop_front() {
				// Cannot fail: a slot was reserved just above.
				let _ = self.outgoing.send_item(message);
			}
		}
		Poll::Ready(Ok(()))
	}

	fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
		ready!(self.poll_flush(cx))?;
		self.outgoing.close();
		Poll::Ready(Ok(()))
	}
}
