//! Argument values: bodies (text, `@file`, stdin), updates, canned responses, sizes, durations.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;

use crate::failure::{Failure, describe_io};

/// Where a body comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodySource {
	/// The argument itself.
	Text(String),
	/// `@FILE`: the contents of a file.
	File(PathBuf),
	/// `-`: standard input.
	Stdin,
}

impl FromStr for BodySource {
	type Err = String;

	fn from_str(text: &str) -> Result<Self, String> {
		Ok(if text == "-" {
			Self::Stdin
		} else if let Some(literal) = text.strip_prefix("@@") {
			Self::Text(format!("@{literal}"))
		} else if let Some(path) = text.strip_prefix('@') {
			if path.is_empty() {
				return Err("@ needs a file name: @FILE".into());
			}
			Self::File(PathBuf::from(path))
		} else {
			Self::Text(text.to_string())
		})
	}
}

impl BodySource {
	/// Read the body.
	pub fn load(&self) -> Result<Bytes, Failure> {
		match self {
			Self::Text(text) => Ok(Bytes::copy_from_slice(text.as_bytes())),
			Self::File(path) => match std::fs::read(path) {
				Ok(bytes) => Ok(bytes.into()),
				Err(error) => Err(Failure::usage(format!("cannot read {}: {}", path.display(), describe_io(&error)))),
			},
			Self::Stdin => {
				let mut bytes = Vec::new();
				match std::io::stdin().lock().read_to_end(&mut bytes) {
					Ok(_) => Ok(bytes.into()),
					Err(error) => Err(Failure::usage(format!("cannot read standard input: {}", describe_io(&error)))),
				}
			},
		}
	}
}

/// The body of a request or stream message: the argument, or standard input when it is left out
/// and standard input is not a terminal (a pipe or a file), else empty.
pub fn load_main_body(source: Option<&BodySource>) -> Result<Bytes, Failure> {
	match source {
		Some(source) => source.load(),
		None if std::io::stdin().is_terminal() => Ok(Bytes::new()),
		None => BodySource::Stdin.load(),
	}
}

/// `--update ID:BODY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
	pub service_id: i32,
	pub body: BodySource,
}

impl FromStr for Update {
	type Err = String;

	fn from_str(text: &str) -> Result<Self, String> {
		let Some((id, body)) = text.split_once(':') else {
			return Err("expected SERVICE_ID:BODY, for example 1:more".into());
		};
		let service_id =
			id.trim().parse().map_err(|_| format!("{id:?} is not a service id (a 32-bit signed integer)"))?;
		let body: BodySource = body.parse()?;
		if body == BodySource::Stdin {
			return Err("an update body cannot be standard input; use @FILE".into());
		}
		Ok(Self { service_id, body })
	}
}

/// `--respond SERVICE_ID=FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Respond {
	pub service_id: i32,
	pub file: PathBuf,
}

impl FromStr for Respond {
	type Err = String;

	fn from_str(text: &str) -> Result<Self, String> {
		let Some((id, file)) = text.split_once('=') else {
			return Err("expected SERVICE_ID=FILE, for example 7=answer.json".into());
		};
		let service_id =
			id.trim().parse().map_err(|_| format!("{id:?} is not a service id (a 32-bit signed integer)"))?;
		if file.is_empty() {
			return Err("expected SERVICE_ID=FILE: the file name is missing".into());
		}
		Ok(Self { service_id, file: PathBuf::from(file) })
	}
}

/// A byte count with an optional binary suffix: `512`, `64K`, `16M`, `1G` (also `KiB`, `MiB`, `GiB`).
pub fn parse_size(text: &str) -> Result<usize, String> {
	let text = text.trim();
	let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
	let (number, suffix) = text.split_at(split);
	let number: usize =
		number.parse().map_err(|_| format!("{text:?} is not a size: expected BYTES, optionally with K, M or G"))?;
	let shift = match suffix.to_ascii_lowercase().as_str() {
		"" | "b" => 0,
		"k" | "kb" | "kib" => 10,
		"m" | "mb" | "mib" => 20,
		"g" | "gb" | "gib" => 30,
		_ => return Err(format!("{text:?} has an unknown unit: use K, M or G (powers of 1024)")),
	};
	number.checked_mul(1 << shift).ok_or_else(|| format!("{text} is too large"))
}

/// A duration: `500ms`, `2s`, `1.5s`, `1m`, `1h`; a plain number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
	let text = text.trim();
	let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
	let (number, unit) = text.split_at(split);
	let number: f64 =
		number.parse().map_err(|_| format!("{text:?} is not a duration: expected for example 500ms, 2s or 1m"))?;
	let seconds = match unit {
		"ms" => number / 1000.0,
		"" | "s" => number,
		"m" | "min" => number * 60.0,
		"h" => number * 3600.0,
		_ => return Err(format!("{text:?} has an unknown unit: use ms, s, m or h")),
	};
	Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn body_sources() {
		assert_eq!("-".parse(), Ok(BodySource::Stdin));
		assert_eq!("@x.bin".parse(), Ok(BodySource::File("x.bin".into())));
		assert_eq!("@@home".parse(), Ok(BodySource::Text("@home".into())));
		assert_eq!("hi".parse(), Ok(BodySource::Text("hi".into())));
		assert!("@".parse::<BodySource>().is_err());
	}

	#[test]
	fn updates_and_responds() {
		assert_eq!("-2:a:b".parse(), Ok(Update { service_id: -2, body: BodySource::Text("a:b".into()) }));
		assert!("x:a".parse::<Update>().is_err());
		assert!("1:-".parse::<Update>().is_err());
		assert_eq!("7=a=b".parse(), Ok(Respond { service_id: 7, file: "a=b".into() }));
		assert!("7".parse::<Respond>().is_err());
	}

	#[test]
	fn sizes_and_durations() {
		assert_eq!(parse_size("512"), Ok(512));
		assert_eq!(parse_size("64K"), Ok(64 << 10));
		assert_eq!(parse_size("16MiB"), Ok(16 << 20));
		assert!(parse_size("1T").is_err());
		assert!(parse_size("M").is_err());
		assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
		assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
		assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
		assert!(parse_duration("-1s").is_err());
		assert!(parse_duration("soon").is_err());
	}
}
