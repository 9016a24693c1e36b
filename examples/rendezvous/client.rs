//! A client of the rendezvous server: put, get, delete and status as plain async calls.

#![allow(dead_code)]

use std::time::Duration;

use peerwire::Bytes;
use peerwire::{Message, PeerWriteHandle, SentRequestHandle};

use crate::wire::{self, Channel};

/// Why a rendezvous call failed.
#[derive(Debug, Clone)]
pub enum Failure {
	/// The request waited its whole timeout.
	TimedOut,
	/// The channel was deleted while the request waited.
	Deleted,
	/// The server refused the request.
	Refused(String),
	/// The connection to the server failed.
	Connection(peerwire::Error),
}

impl From<peerwire::Error> for Failure {
	fn from(error: peerwire::Error) -> Self {
		Self::Connection(error)
	}
}

impl std::fmt::Display for Failure {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		match self {
			Self::TimedOut => write!(f, "timed out"),
			Self::Deleted => write!(f, "channel deleted"),
			Self::Refused(reason) => write!(f, "refused: {reason}"),
			Self::Connection(error) => write!(f, "{error}"),
		}
	}
}

/// A rendezvous client over one connection; clone it freely.
#[derive(Debug, Clone)]
pub struct Client {
	peer: PeerWriteHandle,
}

impl Client {
	pub fn new(peer: PeerWriteHandle) -> Self {
		Self { peer }
	}

	/// Put `payload` on `channel`; returns once a consumer has taken it.
	pub async fn put(
		&self,
		channel: &Channel,
		payload: impl AsRef<[u8]>,
		timeout: Option<Duration>,
	) -> Result<(), Failure> {
		let mut request = self.send_put(channel, payload, timeout).await?;
		outcome(request.recv_response().await?).map(drop)
	}

	/// Get a payload from `channel`; returns once a producer has put one.
	pub async fn get(&self, channel: &Channel, timeout: Option<Duration>) -> Result<Bytes, Failure> {
		let mut request = self.send_get(channel, timeout).await?;
		outcome(request.recv_response().await?)
	}

	/// Send a put and return its request at once, to await its [`outcome`] later.
	pub async fn send_put(
		&self,
		channel: &Channel,
		payload: impl AsRef<[u8]>,
		timeout: Option<Duration>,
	) -> Result<SentRequestHandle, peerwire::Error> {
		self.peer.send_request(wire::PUT, wire::encode(channel, timeout, payload.as_ref())).await
	}

	/// Send a get and return its request at once, to await its [`outcome`] later.
	pub async fn send_get(
		&self,
		channel: &Channel,
		timeout: Option<Duration>,
	) -> Result<SentRequestHandle, peerwire::Error> {
		self.peer.send_request(wire::GET, wire::encode(channel, timeout, b"")).await
	}

	/// Delete `channel`; whether it existed.
	pub async fn delete_channel(&self, channel: &Channel) -> Result<bool, Failure> {
		Ok(self.call_u32(wire::DELETE_CHANNEL, channel).await? > 0)
	}

	/// Delete every channel of `namespace`; how many there were.
	pub async fn delete_namespace(&self, namespace: &str) -> Result<u32, Failure> {
		self.call_u32(wire::DELETE_NAMESPACE, &Channel::new(namespace, "")).await
	}

	/// How many puts and gets wait on `channel`.
	pub async fn status(&self, channel: &Channel) -> Result<(u32, u32), Failure> {
		let mut request = self.peer.send_request(wire::STATUS, wire::encode(channel, None, b"")).await?;
		let body = outcome(request.recv_response().await?)?;
		let pair = wire::decode_u32(&body, 0).zip(wire::decode_u32(&body, 4));
		pair.ok_or_else(|| Failure::Refused("malformed status".into()))
	}

	async fn call_u32(&self, service_id: i32, channel: &Channel) -> Result<u32, Failure> {
		let mut request = self.peer.send_request(service_id, wire::encode(channel, None, b"")).await?;
		let body = outcome(request.recv_response().await?)?;
		wire::decode_u32(&body, 0).ok_or_else(|| Failure::Refused("malformed count".into()))
	}
}

/// The payload of a successful response, or why it failed.
pub fn outcome(response: Message) -> Result<Bytes, Failure> {
	match response.header.service_id {
		code if code >= 0 => Ok(response.body),
		wire::TIMED_OUT => Err(Failure::TimedOut),
		wire::DELETED => Err(Failure::Deleted),
		_ => Err(Failure::Refused(String::from_utf8_lossy(&response.body).into_owned())),
	}
}
