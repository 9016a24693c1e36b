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

/// Encode `value` as a body in format `F`, as the typed layer does for every body: a
/// zero-sized value that `F` encodes exactly like `()` (`()` itself, unit structs) is sent as an
/// **empty body**, so that a body-less command is empty on the wire, as an untyped peer would
/// send it. Values that merely encode like `()` (`None`, JSON's `Value::Null`) keep their
/// encoding: an untyped JSON peer reads `null`, which it could not read from an empty body.
pub fn encode_body<F: Format, T: Serialize + ?Sized>(value: &T) -> Result<Bytes, BoxError> {
	let body = F::encode(value)?;
	if std::mem::size_of_val(value) == 0 && body == F::encode(&())? {
		return Ok(Bytes::new());
	}
	Ok(body)
}

/// Decode a body in format `F`, as the typed layer does for every body: an **empty body** reads
/// as `F`'s encoding of `()`, so a `()` (or `Option`) body accepts what an untyped peer sends
/// for "nothing", and what [`encode_body`] makes of it.
pub fn decode_body<F: Format, T: DeserializeOwned>(body: &[u8]) -> Result<T, BoxError> {
	if body.is_empty() {
		return F::decode(&F::encode(&())?);
	}
	F::decode(body)
}

#[cfg(all(test, feature = "json"))]
mod tests {
	use super::*;

	#[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
	struct Stop;

	#[test]
	fn only_zero_sized_unit_values_go_out_empty() {
		assert!(encode_body::<Json, _>(&()).unwrap().is_empty());
		assert!(encode_body::<Json, _>(&Stop).unwrap().is_empty());
		// `None` encodes like `()`, but an untyped JSON peer must be able to read it.
		assert_eq!(&encode_body::<Json, Option<u32>>(&None).unwrap()[..], b"null");
		assert_eq!(&encode_body::<Json, _>(&Some(7u32)).unwrap()[..], b"7");
	}

	#[test]
	fn an_empty_body_reads_as_unit_and_as_none() {
		decode_body::<Json, ()>(b"").unwrap();
		assert_eq!(decode_body::<Json, Stop>(b"").unwrap(), Stop);
		assert_eq!(decode_body::<Json, Option<u32>>(b"").unwrap(), None);
		assert_eq!(decode_body::<Json, Option<u32>>(b"null").unwrap(), None);
	}
}
