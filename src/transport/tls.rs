//! TLS over TCP: the stream transport over a rustls session, with server authentication always
//! on and client authentication (mutual TLS) on request.
//!
//! rustls runs with the `ring` crypto provider, chosen explicitly rather than installed as the
//! process default, so that this feature neither needs nor disturbs another provider an
//! application may use. There is no option to skip verification: a client always checks the
//! server's certificate chain against its roots and the server name it asked for, and a server
//! under mutual TLS always checks the client's chain against its client roots.
//!
//! The handshake of an accepted connection runs in a task of its own, so a client that connects
//! and then stalls holds up no one: [`TlsAcceptor`] keeps accepting TCP connections while up to
//! [`TlsServerConfig::max_handshakes`] handshakes run, each bounded by
//! [`TlsServerConfig::handshake_timeout`]. A failed handshake (wrong CA, no client certificate,
//! an expired certificate, a port scanner) is logged at `info` with the remote address and the
//! reason, and concerns that connection only.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{BufReader, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::task::JoinSet;
use tokio_rustls::TlsStream;

use super::{ConnectionInfo, PeerCertificate, RemoteAddress, StreamTransport};
use crate::config::Config;
use crate::error::Error;
use crate::handle::PeerHandle;
use crate::listener::{AcceptError, Acceptor, Listener};
use crate::peer::Peer;

/// How long the handshake of an accepted connection may take by default.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many handshakes of accepted connections may run at once by default.
const DEFAULT_MAX_HANDSHAKES: usize = 128;

/// The read buffer under rustls. rustls reads the socket a few KiB at a time (4 KiB more than it
/// holds, up to one 16 KiB record), which costs a system call per few KiB of a large body: a
/// 64 KiB buffer under it reads as much as the plain stream transport does per call and doubled
/// the 4 MiB echo over TLS on the reference machine (284 to 641 MiB/s; 16 KiB gave 384). It costs
/// 64 KiB per connection, as much as the stream transport's own read buffer.
const SOCKET_READ_BUFFER: usize = 64 << 10;

/// The byte stream of a TLS connection, client or server side (with a read buffer under rustls).
pub type TlsTcpStream = TlsStream<BufReader<TcpStream>>;
/// The transport of a TLS connection.
pub type TlsTransport = StreamTransport<ReadHalf<TlsTcpStream>, WriteHalf<TlsTcpStream>>;
/// A peer on a TLS connection.
pub type TlsPeer = Peer<TlsTransport>;
/// A listener for TLS connections.
pub type TlsListener = Listener<TlsAcceptor>;

/// The crypto provider of every configuration made here.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
	Arc::new(rustls::crypto::ring::default_provider())
}

/// An error in a TLS configuration (unreadable file, no certificate in it, a key that does not
/// fit), as an I/O error of kind `InvalidInput` that names what was being read.
fn invalid(what: impl fmt::Display, error: impl fmt::Display) -> Error {
	io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {error}")).into()
}

/// Trusted root certificates: the CAs a client checks servers against, or a server checks client
/// certificates against.
#[derive(Clone)]
pub struct TlsRoots {
	store: Arc<RootCertStore>,
}

impl fmt::Debug for TlsRoots {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		f.debug_struct("TlsRoots").field("certificates", &self.store.len()).finish()
	}
}

impl TlsRoots {
	/// The CA certificates in a PEM file (one or more `CERTIFICATE` sections).
	pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, Error> {
		let path = path.as_ref();
		let what = || format!("CA certificates in {}", path.display());
		let certificates = CertificateDer::pem_file_iter(path)
			.and_then(Iterator::collect::<Result<Vec<_>, _>>)
			.map_err(|error| invalid(what(), error))?;
		Self::from_certificates(certificates).map_err(|error| invalid(what(), error))
	}

	/// The CA certificates in PEM text.
	pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
		let certificates = CertificateDer::pem_slice_iter(pem)
			.collect::<Result<Vec<_>, _>>()
			.map_err(|error| invalid("CA certificates", error))?;
		Self::from_certificates(certificates).map_err(|error| invalid("CA certificates", error))
	}

	/// CA certificates in DER.
	pub fn from_certificates(certificates: impl IntoIterator<Item = CertificateDer<'static>>) -> Result<Self, Error> {
		let mut store = RootCertStore::empty();
		for certificate in certificates {
			store.add(certificate).map_err(|error| invalid("a CA certificate", error))?;
		}
		if store.is_empty() {
			return Err(invalid("CA certificates", "none found"));
		}
		Ok(Self { store: Arc::new(store) })
	}

	/// The operating system's trusted roots (on Linux, the PEM bundle of the distribution, as
	/// `SSL_CERT_FILE`/`SSL_CERT_DIR` or the usual paths say). Certificates that cannot be
	/// parsed are skipped; finding none at all is an error.
	pub fn system() -> Result<Self, Error> {
		let found = rustls_native_certs::load_native_certs();
		for error in &found.errors {
			tracing::debug!("skipped part of the system's trusted roots: {error}");
		}
		let mut store = RootCertStore::empty();
		let (added, ignored) = store.add_parsable_certificates(found.certs);
		if ignored > 0 {
			tracing::debug!(added, ignored, "skipped system root certificates that could not be parsed");
		}
		if store.is_empty() {
			return Err(invalid("the system's trusted roots", "none found"));
		}
		Ok(Self { store: Arc::new(store) })
	}

	/// How many certificates these roots hold.
	pub fn len(&self) -> usize {
		self.store.len()
	}

	/// Whether these roots hold no certificate (never, for roots made by this type).
	pub fn is_empty(&self) -> bool {
		self.store.is_empty()
	}
}

/// A certificate chain and its private key: what a server presents, or a client under mutual
/// TLS. The key is not shown by `Debug`.
pub struct TlsIdentity {
	chain: Vec<CertificateDer<'static>>,
	key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
	fn clone(&self) -> Self {
		Self { chain: self.chain.clone(), key: self.key.clone_key() }
	}
}

impl fmt::Debug for TlsIdentity {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		f.debug_struct("TlsIdentity").field("certificates", &self.chain.len()).finish_non_exhaustive()
	}
}

impl TlsIdentity {
	/// A certificate chain from a PEM file (the end-entity certificate first, then the
	/// intermediates) and a private key from another (PKCS#8, PKCS#1 or SEC1).
	pub fn from_pem_files(chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
		let (chain, key) = (chain.as_ref(), key.as_ref());
		let what = || format!("certificate chain in {}", chain.display());
		let chain = CertificateDer::pem_file_iter(chain)
			.and_then(Iterator::collect::<Result<Vec<_>, _>>)
			.map_err(|error| invalid(what(), error))?;
		let key = PrivateKeyDer::from_pem_file(key)
			.map_err(|error| invalid(format_args!("private key in {}", key.display()), error))?;
		Self::from_der(chain, key)
	}

	/// A certificate chain and a private key from PEM text.
	pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Self, Error> {
		let chain = CertificateDer::pem_slice_iter(chain)
			.collect::<Result<Vec<_>, _>>()
			.map_err(|error| invalid("certificate chain", error))?;
		let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| invalid("private key", error))?;
		Self::from_der(chain, key)
	}

	/// A certificate chain and a private key in DER.
	pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, Error> {
		if chain.is_empty() {
			return Err(invalid("certificate chain", "no certificate found"));
		}
		Ok(Self { chain, key })
	}
}

/// The TLS side of a listener: its certificate, whether it asks clients for theirs, and the
/// bounds on handshakes.
#[derive(Clone)]
pub struct TlsServerConfig {
	rustls: Arc<rustls::ServerConfig>,
	handshake_timeout: Duration,
	max_handshakes: usize,
}

impl fmt::Debug for TlsServerConfig {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		f.debug_struct("TlsServerConfig")
			.field("handshake_timeout", &self.handshake_timeout)
			.field("max_handshakes", &self.max_handshakes)
			.finish_non_exhaustive()
	}
}

impl TlsServerConfig {
	/// A server that presents `identity` and does not ask clients for a certificate: anyone who
	/// can reach it may connect, but the traffic is private and the clients know whom they
	/// talk to. Restrict clients with [`mutual`](Self::mutual) or an
	/// [admission check](crate::Listener::set_admission) by address.
	pub fn new(identity: TlsIdentity) -> Result<Self, Error> {
		let config = rustls::ServerConfig::builder_with_provider(provider())
			.with_safe_default_protocol_versions()
			.map_err(|error| invalid("TLS server configuration", error))?
			.with_no_client_auth()
			.with_single_cert(identity.chain, identity.key)
			.map_err(|error| invalid("server certificate", error))?;
		Ok(Self::from_rustls(Arc::new(config)))
	}

	/// Mutual TLS: a server that presents `identity` and accepts only clients whose certificate
	/// chains up to `client_roots`. A client without a certificate, with one from another CA
	/// or an expired one fails the handshake. The verified client certificate is in
	/// [`ConnectionInfo::peer_certificate`], for an admission check or the application.
	pub fn mutual(identity: TlsIdentity, client_roots: TlsRoots) -> Result<Self, Error> {
		let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(client_roots.store, provider())
			.build()
			.map_err(|error| invalid("client CA certificates", error))?;
		let config = rustls::ServerConfig::builder_with_provider(provider())
			.with_safe_default_protocol_versions()
			.map_err(|error| invalid("TLS server configuration", error))?
			.with_client_cert_verifier(verifier)
			.with_single_cert(identity.chain, identity.key)
			.map_err(|error| invalid("server certificate", error))?;
		Ok(Self::from_rustls(Arc::new(config)))
	}

	/// A rustls configuration made elsewhere, for what the constructors above do not cover
	/// (other versions or cipher suites, certificate resolvers, revocation lists).
	pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> Self {
		Self { rustls: config, handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT, max_handshakes: DEFAULT_MAX_HANDSHAKES }
	}

	/// Close an accepted connection whose handshake has not finished after `timeout` (default
	/// 10 s).
	pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
		self.handshake_timeout = timeout;
		self
	}

	/// Run at most `max` handshakes of accepted connections at once (default 128, at least 1);
	/// past that, further connections wait in the listen backlog.
	pub fn with_max_handshakes(mut self, max: usize) -> Self {
		self.max_handshakes = max.max(1);
		self
	}

	/// How long the handshake of an accepted connection may take.
	pub fn handshake_timeout(&self) -> Duration {
		self.handshake_timeout
	}

	/// How many handshakes of accepted connections may run at once.
	pub fn max_handshakes(&self) -> usize {
		self.max_handshakes
	}

	/// The rustls configuration.
	pub fn rustls(&self) -> &Arc<rustls::ServerConfig> {
		&self.rustls
	}
}

/// The TLS side of a client: the roots it checks servers against and, for mutual TLS, its own
/// certificate.
#[derive(Clone)]
pub struct TlsClientConfig {
	rustls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for TlsClientConfig {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		f.debug_struct("TlsClientConfig").finish_non_exhaustive()
	}
}

impl TlsClientConfig {
	/// A client that trusts servers whose certificate chains up to `roots`, and has no
	/// certificate of its own.
	pub fn new(roots: TlsRoots) -> Result<Self, Error> {
		let config = rustls::ClientConfig::builder_with_provider(provider())
			.with_safe_default_protocol_versions()
			.map_err(|error| invalid("TLS client configuration", error))?
			.with_root_certificates(roots.store)
			.with_no_client_auth();
		Ok(Self::from_rustls(Arc::new(config)))
	}

	/// A client that trusts servers whose certificate chains up to `roots` and presents
	/// `identity` when a server asks (mutual TLS).
	pub fn with_identity(roots: TlsRoots, identity: TlsIdentity) -> Result<Self, Error> {
		let config = rustls::ClientConfig::builder_with_provider(provider())
			.with_safe_default_protocol_versions()
			.map_err(|error| invalid("TLS client configuration", error))?
			.with_root_certificates(roots.store)
			.with_client_auth_cert(identity.chain, identity.key)
			.map_err(|error| invalid("client certificate", error))?;
		Ok(Self::from_rustls(Arc::new(config)))
	}

	/// A rustls configuration made elsewhere.
	pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
		Self { rustls: config }
	}

	/// The rustls configuration.
	pub fn rustls(&self) -> &Arc<rustls::ClientConfig> {
		&self.rustls
	}
}

impl TlsTransport {
	/// Wrap a TLS stream whose handshake is done, recording the remote address and the
	/// certificate the remote presented (verified by the handshake).
	pub fn from_socket(stream: TlsTcpStream, config: &Config) -> io::Result<Self> {
		let address = stream.get_ref().0.get_ref().peer_addr()?;
		Self::from_tls_with_address(stream, address, config)
	}

	fn from_tls_with_address(stream: TlsTcpStream, address: SocketAddr, config: &Config) -> io::Result<Self> {
		let peer_certificate = peer_certificate(&stream)?;
		let info =
			ConnectionInfo { remote_address: Some(RemoteAddress::Tls(address)), credentials: None, peer_certificate };
		let (read, write) = tokio::io::split(stream);
		Ok(Self::with_info(read, write, config, info))
	}

	/// Connect to `address` over TCP and run the client handshake, checking the server's
	/// certificate against `tls`'s roots and `server_name`.
	pub async fn connect(
		address: impl ToSocketAddrs,
		server_name: &str,
		tls: &TlsClientConfig,
		config: &Config,
	) -> Result<Self, Error> {
		let stream = connect_stream(address, server_name, tls).await?;
		Ok(Self::from_socket(stream, config)?)
	}
}

/// Connect to `address` over TCP and run the client handshake, checking the server's
/// certificate against `tls`'s roots and `server_name`: the TLS stream, for a transport of your
/// own making (the command-line tool watches the bytes that pass).
pub async fn connect_stream(
	address: impl ToSocketAddrs,
	server_name: &str,
	tls: &TlsClientConfig,
) -> Result<TlsTcpStream, Error> {
	let name = ServerName::try_from(server_name.to_string()).map_err(|error| invalid("server name", error))?;
	let stream = TcpStream::connect(address).await?;
	// The transport batches its writes; small requests must not wait for an acknowledgement.
	stream.set_nodelay(true)?;
	let stream = tokio_rustls::TlsConnector::from(tls.rustls.clone())
		.connect(name, BufReader::with_capacity(SOCKET_READ_BUFFER, stream))
		.await?;
	Ok(TlsStream::Client(stream))
}

/// The certificate the remote of `stream` presented, which the handshake verified: the server's
/// on a client stream, the client's (under mutual TLS) on a server stream.
pub fn peer_certificate(stream: &TlsTcpStream) -> io::Result<Option<PeerCertificate>> {
	let certificates = match stream {
		TlsStream::Client(client) => client.get_ref().1.peer_certificates(),
		TlsStream::Server(server) => server.get_ref().1.peer_certificates(),
	};
	certificates.and_then(<[_]>::first).map(describe).transpose()
}

/// The subject and names of a certificate that the handshake verified.
fn describe(der: &CertificateDer<'_>) -> io::Result<PeerCertificate> {
	use x509_parser::extensions::GeneralName;
	let (_, certificate) = x509_parser::parse_x509_certificate(der)
		.map_err(|error| io::Error::new(io::ErrorKind::InvalidData, format!("peer certificate: {error}")))?;
	let subject = certificate.subject();
	let mut identity = PeerCertificate {
		subject: subject.to_string(),
		common_names: subject.iter_common_name().filter_map(|name| name.as_str().ok()).map(str::to_string).collect(),
		..PeerCertificate::default()
	};
	if let Ok(Some(names)) = certificate.subject_alternative_name() {
		for name in &names.value.general_names {
			match name {
				GeneralName::DNSName(name) => identity.dns_names.push(name.to_string()),
				GeneralName::URI(uri) => identity.uris.push(uri.to_string()),
				GeneralName::IPAddress(bytes) => {
					if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
						identity.ip_addresses.push(octets.into());
					} else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
						identity.ip_addresses.push(octets.into());
					}
				},
				_ => {},
			}
		}
	}
	Ok(identity)
}

impl Peer<TlsTransport> {
	/// Connect to `address` over TLS and spawn the peer task.
	///
	/// The server's certificate must chain up to the roots of `tls` and be valid for
	/// `server_name` (a DNS name or an IP address); otherwise the handshake fails with an
	/// [`Io`](crate::ErrorKind::Io) error that says why. There is no way to skip that check.
	pub async fn connect(
		address: impl ToSocketAddrs,
		server_name: &str,
		tls: &TlsClientConfig,
		config: &Config,
	) -> Result<(PeerHandle, ConnectionInfo), Error> {
		let transport = TlsTransport::connect(address, server_name, tls, config).await?;
		Ok(super::spawn_connected(transport, config))
	}
}

/// A handshake that finished, or why it did not.
type Handshake = io::Result<(TlsTcpStream, SocketAddr)>;

/// The listening socket of a [`TlsListener`]: accepts TCP connections and runs their server
/// handshakes, several at once, each in a task of its own.
pub struct TlsAcceptor {
	tcp: tokio::net::TcpListener,
	tls: TlsServerConfig,
	acceptor: tokio_rustls::TlsAcceptor,
	/// Handshakes under way; aborted when the acceptor is dropped.
	handshakes: JoinSet<Handshake>,
}

impl fmt::Debug for TlsAcceptor {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		f.debug_struct("TlsAcceptor")
			.field("tcp", &self.tcp)
			.field("tls", &self.tls)
			.field("handshakes", &self.handshakes.len())
			.finish()
	}
}

impl TlsAcceptor {
	/// Accept TLS connections on a bound TCP listener.
	pub fn new(tcp: tokio::net::TcpListener, tls: TlsServerConfig) -> Self {
		let acceptor = tokio_rustls::TlsAcceptor::from(tls.rustls.clone());
		Self { tcp, tls, acceptor, handshakes: JoinSet::new() }
	}

	/// The TCP listener.
	pub fn tcp(&self) -> &tokio::net::TcpListener {
		&self.tcp
	}

	/// How many handshakes of accepted connections are under way.
	pub fn handshakes(&self) -> usize {
		self.handshakes.len()
	}

	fn start_handshake(&mut self, stream: TcpStream, address: SocketAddr) {
		let accept = self.acceptor.accept(BufReader::with_capacity(SOCKET_READ_BUFFER, stream));
		let timeout = self.tls.handshake_timeout;
		self.handshakes.spawn(async move {
			let result = match tokio::time::timeout(timeout, accept).await {
				Ok(Ok(stream)) => return Ok((TlsStream::Server(stream), address)),
				Ok(Err(error)) => error,
				Err(_) => io::Error::new(io::ErrorKind::TimedOut, format!("no handshake within {timeout:?}")),
			};
			tracing::info!(remote = %address, "TLS handshake failed: {result}");
			Err(result)
		});
	}
}

impl Acceptor for TlsAcceptor {
	type Transport = TlsTransport;

	fn poll_accept(&mut self, cx: &mut Context<'_>, config: &Config) -> Poll<Result<TlsTransport, AcceptError>> {
		loop {
			if let Poll::Ready(Some(finished)) = self.handshakes.poll_join_next(cx) {
				let result = finished
					.map_err(io::Error::other)
					.and_then(|handshake| handshake)
					.and_then(|(stream, address)| TlsTransport::from_tls_with_address(stream, address, config));
				return Poll::Ready(result.map_err(AcceptError::Connection));
			}
			if self.handshakes.len() >= self.tls.max_handshakes {
				// Woken by the next handshake to finish.
				return Poll::Pending;
			}
			match self.tcp.poll_accept(cx) {
				Poll::Ready(Ok((stream, address))) => {
					if let Err(error) = stream.set_nodelay(true) {
						return Poll::Ready(Err(AcceptError::Connection(error)));
					}
					self.start_handshake(stream, address);
				},
				Poll::Ready(Err(error)) => return Poll::Ready(Err(AcceptError::from_accept(error))),
				Poll::Pending => return Poll::Pending,
			}
		}
	}
}

impl Listener<TlsAcceptor> {
	/// Bind a TLS listener: TCP at `address`, TLS as `tls` says.
	pub async fn bind(address: impl ToSocketAddrs, tls: TlsServerConfig, config: &Config) -> Result<Self, Error> {
		let tcp = tokio::net::TcpListener::bind(address).await?;
		Ok(Self::new(TlsAcceptor::new(tcp, tls), config))
	}

	/// The local address, for example to learn the port after binding port 0.
	pub fn local_addr(&self) -> Result<SocketAddr, Error> {
		Ok(self.get_ref().tcp.local_addr()?)
	}
}
