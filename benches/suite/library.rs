//! The two libraries: peerwire and fizyr-rpc 0.8, each used as its documentation shows.
//!
//! Both run the same application code: the client keeps its open request handles in a queue and
//! awaits the oldest; the server task answers each request in the order received (or, for a
//! spawning server, spawns a task per request that answers it) and counts stream messages. Both
//! get the sockets from [`crate::transport`].

use std::collections::VecDeque;

use bytes::Bytes;

use crate::contender::{BoxError, Client, Contender, Either, MAX_BODY, Result, Server};
use crate::transport::{TokioPair, Transport};

/// The bytes of a body, whatever else it carries.
pub trait IntoBytes {
	fn into_bytes(self) -> Bytes;
}

impl IntoBytes for Bytes {
	fn into_bytes(self) -> Bytes {
		self
	}
}

impl IntoBytes for fizyr_rpc::StreamBody {
	fn into_bytes(self) -> Bytes {
		self.data.into()
	}
}

impl IntoBytes for fizyr_rpc::UnixBody {
	fn into_bytes(self) -> Bytes {
		self.data.into()
	}
}

#[cfg(feature = "unix-seqpacket")]
impl IntoBytes for peerwire::UnixBody {
	fn into_bytes(self) -> Bytes {
		self.data
	}
}

/// peerwire's body on seqpacket (without that feature, a stand-in that is never used).
#[cfg(feature = "unix-seqpacket")]
type PeerwireDatagram = peerwire::UnixBody;
#[cfg(not(feature = "unix-seqpacket"))]
type PeerwireDatagram = Bytes;

pub struct Peerwire;

pub struct PeerwireClient<B: peerwire::Body> {
	peer: peerwire::PeerHandle<B>,
	open: VecDeque<peerwire::SentRequestHandle<B>>,
}

impl Contender for Peerwire {
	const NAME: &'static str = "peerwire";
	type Client = Either<PeerwireClient<Bytes>, PeerwireClient<PeerwireDatagram>>;

	fn speaks(_transport: Transport) -> bool {
		true
	}

	async fn connect(transport: Transport, server: Server) -> Result<Self::Client> {
		use peerwire::transport::{tcp::TcpTransport, unix_stream::UnixStreamTransport};
		let config = peerwire::Config::default().with_max_body_len_read(MAX_BODY).with_max_body_len_write(MAX_BODY);
		#[cfg(feature = "tls")]
		if transport == Transport::Tls {
			return Ok(Either::Left(connect_tls(&config, server).await?));
		}
		Ok(match transport.tokio_pair()? {
			TokioPair::Tcp(a, b) => Either::Left(start_peerwire(
				TcpTransport::from_socket(a, &config)?,
				TcpTransport::from_socket(b, &config)?,
				&config,
				server,
			)),
			TokioPair::Unix(a, b) => Either::Left(start_peerwire(
				UnixStreamTransport::from_socket(a, &config)?,
				UnixStreamTransport::from_socket(b, &config)?,
				&config,
				server,
			)),
			#[cfg(feature = "unix-seqpacket")]
			TokioPair::Seqpacket(a, b) => {
				use peerwire::transport::seqpacket::UnixSeqpacketTransport;
				// The default limits: no scenario sends more than one datagram carries.
				let config = peerwire::Config::default();
				Either::Right(start_peerwire(
					UnixSeqpacketTransport::from_socket(a, &config)?,
					UnixSeqpacketTransport::from_socket(b, &config)?,
					&config,
					server,
				))
			},
		})
	}
}

/// A peerwire client over TLS on loopback TCP, with its server side served: a `TlsListener` and a
/// `TlsPeer`, with certificates made once per process (rcgen, ECDSA P-256 as it defaults to).
#[cfg(feature = "tls")]
async fn connect_tls(config: &peerwire::Config, server: Server) -> Result<PeerwireClient<Bytes>> {
	use std::sync::OnceLock;

	use peerwire::{TlsClientConfig, TlsIdentity, TlsListener, TlsPeer, TlsRoots, TlsServerConfig};
	use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

	static CONFIGS: OnceLock<(TlsServerConfig, TlsClientConfig)> = OnceLock::new();
	let make = || -> Result<(TlsServerConfig, TlsClientConfig)> {
		let mut params = CertificateParams::new(Vec::<String>::new())?;
		params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
		let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
		let key = KeyPair::generate()?;
		let certificate = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &ca)?;
		let identity = TlsIdentity::from_pem(certificate.pem().as_bytes(), key.serialize_pem().as_bytes())?;
		let roots = TlsRoots::from_pem(ca.pem().as_bytes())?;
		Ok((TlsServerConfig::new(identity)?, TlsClientConfig::new(roots)?))
	};
	let (server_tls, client_tls) = match CONFIGS.get() {
		Some(configs) => configs,
		None => CONFIGS.get_or_init(|| make().expect("TLS test certificates")),
	};
	let mut listener = TlsListener::bind("127.0.0.1:0", server_tls.clone(), config).await?;
	let address = listener.local_addr()?;
	let (client, accepted) =
		tokio::join!(TlsPeer::connect(address, "localhost", client_tls, config), listener.accept());
	tokio::spawn(serve_peerwire(accepted?.0, server));
	Ok(PeerwireClient { peer: client?.0, open: VecDeque::new() })
}

/// Spawn both peers and the server task; the client's handle.
fn start_peerwire<T: peerwire::Transport>(
	client: T,
	remote: T,
	config: &peerwire::Config,
	server: Server,
) -> PeerwireClient<T::Body> {
	tokio::spawn(serve_peerwire(peerwire::Peer::spawn(remote, config), server));
	PeerwireClient { peer: peerwire::Peer::spawn(client, config), open: VecDeque::new() }
}

impl<B: peerwire::Body + From<Bytes> + IntoBytes> Client for PeerwireClient<B> {
	async fn start(&mut self, body: Bytes) -> Result<()> {
		self.open.push_back(self.peer.send_request(1, B::from(body)).await?);
		Ok(())
	}

	async fn finish(&mut self) -> Result<Bytes> {
		let mut request = self.open.pop_front().ok_or("no request open")?;
		Ok(request.recv_response().await?.body.into_bytes())
	}

	async fn send_stream(&mut self, body: Bytes) -> Result<()> {
		Ok(self.peer.send_stream(2, B::from(body)).await?)
	}
}

async fn serve_peerwire<B: peerwire::Body>(mut peer: peerwire::PeerHandle<B>, server: Server) {
	while let Ok(message) = peer.recv_message().await {
		match message {
			peerwire::ReceivedMessage::Request(request, body) if server.spawn => {
				tokio::spawn(async move {
					let _ = request.send_response(0, body).await;
				});
			},
			peerwire::ReceivedMessage::Request(request, body) => {
				if request.send_response(0, body).await.is_err() {
					break;
				}
			},
			peerwire::ReceivedMessage::Stream(_) => server.on_stream().await,
		}
	}
}

pub struct Fizyr;

pub struct FizyrClient<B> {
	peer: fizyr_rpc::PeerHandle<B>,
	open: VecDeque<fizyr_rpc::SentRequestHandle<B>>,
}

impl Contender for Fizyr {
	const NAME: &'static str = "fizyr-rpc";
	type Client = Either<FizyrClient<fizyr_rpc::StreamBody>, FizyrClient<fizyr_rpc::UnixBody>>;

	async fn connect(transport: Transport, server: Server) -> Result<Self::Client> {
		use fizyr_rpc::transport::StreamTransport;
		let mut config = fizyr_rpc::StreamConfig::default();
		config.max_body_len_read = MAX_BODY as u32;
		config.max_body_len_write = MAX_BODY as u32;
		Ok(match transport.tokio_pair()? {
			TokioPair::Tcp(a, b) => Either::Left(start_fizyr(
				StreamTransport::new(a, config.clone()),
				StreamTransport::new(b, config),
				server,
			)),
			TokioPair::Unix(a, b) => Either::Left(start_fizyr(
				StreamTransport::new(a, config.clone()),
				StreamTransport::new(b, config),
				server,
			)),
			#[cfg(feature = "unix-seqpacket")]
			TokioPair::Seqpacket(a, b) => {
				use fizyr_rpc::transport::UnixTransport;
				// The default limits (4 KiB bodies): fizyr-rpc zeroes a buffer of the read limit
				// for every datagram, so a larger limit would only slow it down.
				let config = fizyr_rpc::UnixConfig::default();
				Either::Right(start_fizyr(UnixTransport::new(a, config.clone()), UnixTransport::new(b, config), server))
			},
		})
	}
}

/// Spawn both peers and the server task; the client's handle.
fn start_fizyr<T>(client: T, remote: T, server: Server) -> FizyrClient<T::Body>
where
	T: fizyr_rpc::transport::Transport,
	T::Body: Send,
{
	tokio::spawn(serve_fizyr(fizyr_rpc::Peer::spawn(remote), server));
	FizyrClient { peer: fizyr_rpc::Peer::spawn(client), open: VecDeque::new() }
}

impl<B: fizyr_rpc::Body + From<Vec<u8>> + IntoBytes + Send + 'static> Client for FizyrClient<B> {
	async fn start(&mut self, body: Bytes) -> Result<()> {
		// fizyr-rpc takes its bodies as `Vec<u8>`: the conversion is part of its API's cost.
		self.open.push_back(self.peer.send_request(1, Vec::from(body)).await.map_err(fizyr_error)?);
		Ok(())
	}

	async fn finish(&mut self) -> Result<Bytes> {
		let mut request = self.open.pop_front().ok_or("no request open")?;
		Ok(request.recv_response().await.map_err(fizyr_error)?.body.into_bytes())
	}

	async fn send_stream(&mut self, body: Bytes) -> Result<()> {
		self.peer.send_stream(2, Vec::from(body)).await.map_err(fizyr_error)
	}
}

/// fizyr-rpc's error is not `Sync`: keep its text.
fn fizyr_error(error: fizyr_rpc::Error) -> BoxError {
	error.to_string().into()
}

async fn serve_fizyr<B: fizyr_rpc::Body + Send + 'static>(mut peer: fizyr_rpc::PeerHandle<B>, server: Server) {
	while let Ok(message) = peer.recv_message().await {
		match message {
			fizyr_rpc::ReceivedMessage::Request(request, body) if server.spawn => {
				tokio::spawn(async move {
					let _ = request.send_response(0, body).await;
				});
			},
			fizyr_rpc::ReceivedMessage::Request(request, body) => {
				if request.send_response(0, body).await.is_err() {
					break;
				}
			},
			fizyr_rpc::ReceivedMessage::Stream(_) => server.on_stream().await,
		}
	}
}
