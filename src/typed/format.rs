//! Body formats for the typed layer.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BoxError;

/// How typed values become bodies and back.
///
/// Implement it to use another serde format; both sides of an interface must use the same.
pub trait Format: Send + Sync + 'static {
	/// A short name, for introspection.
	const NAME: &'static str;

	/// Encode a value as a body.
	fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, BoxError>;

	/// Decode a body.
	fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, BoxError>;
}

/// JSON bodies (`serde_json`): readable on the wire and by every language.
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl Format for Json {
	const NAME: &'static str = "json";

	fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, BoxError> {
		Ok(serde_json::to_vec(value)?.into())
	}

	fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, BoxError> {
		Ok(serde_json::from_slice(body)?)
	}
}

/// MessagePack bodies (`rmp-serde`, structs as maps): compact binary, with implementations in
/// most languages, and tolerant of added fields like JSON.
#[cfg(feature = "msgpack")]
#[derive(Debug, Clone, Copy, Default)]
pub struct MsgPack;

#[cfg(feature = "msgpack")]
impl Format for MsgPack {
	const NAME: &'static str = "msgpack";

	fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, BoxError> {
		Ok(rmp_serde::to_vec_named(value)?.into())
	}

	fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, BoxError> {
		Ok(rmp_serde::from_slice(body)?)
	}
}
