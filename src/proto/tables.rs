//! The id tables of open requests, both directions: which request each id of the wire names.
//!
//! Sent and received requests are separate id spaces. Ids of sent requests are allocated here in
//! constant time; ids of received requests are chosen by the remote and only recorded.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};

/// A token that tells two openings of the same id apart, so that a late close by an old handle
/// never removes a newer request that happens to reuse its id.
pub type Serial = u64;

/// Requests sent by this side, keyed by the id allocated for them.
///
/// Ids are slots of a table of at most `limit` entries. Freed slots are reused oldest first, and
/// the table grows only when none is free, so its size follows the most requests ever open at
/// once, not the number ever sent. Each reuse moves the slot's id on by `limit` (wrapping within
/// `u32`), so a response that arrives late for a forgotten request finds no request under its id
/// until the slot has been reused `2^32 / limit` times. Allocation, lookup and removal are O(1).
#[derive(Debug)]
pub struct SentTable<T> {
	slots: Vec<Slot<T>>,
	free: VecDeque<u32>,
	limit: u32,
	next_serial: Serial,
	open: usize,
}

#[derive(Debug)]
struct Slot<T> {
	id: u32,
	entry: Option<(Serial, T)>,
}

impl<T> SentTable<T> {
	/// A table with room for `limit` open requests (clamped to `1..=2^31`).
	pub fn new(limit: usize) -> Self {
		let limit = limit.clamp(1, 1 << 31) as u32;
		Self { slots: Vec::new(), free: VecDeque::new(), limit, next_serial: 0, open: 0 }
	}

	/// How many requests are open.
	pub fn len(&self) -> usize {
		self.open
	}

	/// Whether no request is open.
	pub fn is_empty(&self) -> bool {
		self.open == 0
	}

	/// Open a request: returns its id and serial, or `None` if `limit` requests are open.
	pub fn insert(&mut self, value: T) -> Option<(u32, Serial)> {
		let serial = self.next_serial;
		self.next_serial += 1;
		let index = if let Some(index) = self.free.pop_front() {
			let slot = &mut self.slots[index as usize];
			// Next id of this slot: same residue modulo `limit`, wrapping before u32 overflows.
			slot.id = slot.id.checked_add(self.limit).unwrap_or(index);
			index
		} else if (self.slots.len() as u32) < self.limit {
			let index = self.slots.len() as u32;
			self.slots.push(Slot { id: index, entry: None });
			index
		} else {
			return None;
		};
		let slot = &mut self.slots[index as usize];
		slot.entry = Some((serial, value));
		self.open += 1;
		Some((slot.id, serial))
	}

	fn slot(&self, id: u32) -> Option<&Slot<T>> {
		self.slots.get((id % self.limit) as usize).filter(|slot| slot.id == id)
	}

	/// The value of open request `id`.
	pub fn get(&self, id: u32) -> Option<&T> {
		self.slot(id)?.entry.as_ref().map(|(_, value)| value)
	}

	/// Close request `id` (when its response arrives).
	pub fn remove(&mut self, id: u32) -> Option<T> {
		let serial = self.slot(id)?.entry.as_ref()?.0;
		self.remove_if(id, serial)
	}

	/// Close request `id` only if it is still the opening identified by `serial`.
	pub fn remove_if(&mut self, id: u32, serial: Serial) -> Option<T> {
		let index = id % self.limit;
		let slot = self.slots.get_mut(index as usize).filter(|slot| slot.id == id)?;
		if slot.entry.as_ref()?.0 != serial {
			return None;
		}
		let (_, value) = slot.entry.take()?;
		self.free.push_back(index);
		self.open -= 1;
		Some(value)
	}

	/// Close every request, returning their values.
	pub fn drain(&mut self) -> Vec<T> {
		let mut values = Vec::with_capacity(self.open);
		for (index, slot) in self.slots.iter_mut().enumerate() {
			if let Some((_, value)) = slot.entry.take() {
				values.push(value);
				self.free.push_back(index as u32);
			}
		}
		self.open = 0;
		values
	}
}

/// Why a received request could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
	/// A request with this id is still open.
	Duplicate,
	/// `limit` requests are open.
	Full,
}

/// A hash of request ids, keyed per table: a multiply-xorshift of the id and a random key, a few
/// instructions where SipHash takes about a hundred. The remote chooses the ids, so the key is
/// random (from std's `RandomState`) and unknown to it: it cannot pick ids that collide.
#[derive(Clone, Copy)]
pub struct IdHash {
	key: u64,
}

impl IdHash {
	fn new() -> Self {
		// An odd multiplier keeps the map from ids to hashes one-to-one.
		Self { key: std::collections::hash_map::RandomState::new().hash_one(0x7065_6572_7769_7265_u64) | 1 }
	}
}

impl BuildHasher for IdHash {
	type Hasher = IdHasher;

	fn build_hasher(&self) -> IdHasher {
		IdHasher { key: self.key, hash: 0 }
	}
}

/// The hasher of [`IdHash`]; for `u32` keys only (anything else is folded in byte by byte).
pub struct IdHasher {
	key: u64,
	hash: u64,
}

impl Hasher for IdHasher {
	fn write(&mut self, bytes: &[u8]) {
		for &byte in bytes {
			self.write_u32(u32::from(byte));
		}
	}

	fn write_u32(&mut self, id: u32) {
		let mixed = (self.hash ^ u64::from(id) ^ self.key.rotate_left(32)).wrapping_mul(self.key);
		self.hash = mixed ^ (mixed >> 29);
	}

	fn finish(&self) -> u64 {
		self.hash
	}
}

/// Requests received from the remote, keyed by the id the remote chose.
#[derive(Debug)]
pub struct ReceivedTable<T> {
	open: HashMap<u32, (Serial, T), IdHash>,
	limit: usize,
	next_serial: Serial,
}

impl<T> ReceivedTable<T> {
	/// A table with room for `limit` open requests.
	pub fn new(limit: usize) -> Self {
		Self { open: HashMap::with_hasher(IdHash::new()), limit: limit.max(1), next_serial: 0 }
	}

	/// How many requests are open.
	pub fn len(&self) -> usize {
		self.open.len()
	}

	/// Whether no request is open.
	pub fn is_empty(&self) -> bool {
		self.open.is_empty()
	}

	/// Whether a request with id `id` could be opened now.
	pub fn check(&self, id: u32) -> Result<(), OpenError> {
		if self.open.contains_key(&id) {
			Err(OpenError::Duplicate)
		} else if self.open.len() >= self.limit {
			Err(OpenError::Full)
		} else {
			Ok(())
		}
	}

	/// Record a request the remote opened.
	pub fn insert(&mut self, id: u32, value: T) -> Result<Serial, OpenError> {
		if self.open.contains_key(&id) {
			return Err(OpenError::Duplicate);
		}
		if self.open.len() >= self.limit {
			return Err(OpenError::Full);
		}
		let serial = self.next_serial;
		self.next_serial += 1;
		self.open.insert(id, (serial, value));
		Ok(serial)
	}

	/// The value of open request `id`.
	pub fn get(&self, id: u32) -> Option<&T> {
		self.open.get(&id).map(|(_, value)| value)
	}

	/// Close request `id` only if it is still the opening identified by `serial`.
	pub fn remove_if(&mut self, id: u32, serial: Serial) -> Option<T> {
		match self.open.get(&id) {
			Some((open_serial, _)) if *open_serial == serial => self.open.remove(&id).map(|(_, value)| value),
			_ => None,
		}
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn sent_ids_are_unique_while_open_and_the_limit_is_exact() {
		let mut table = SentTable::new(1000);
		let mut ids = std::collections::HashSet::new();
		for i in 0..1000 {
			let (id, _) = table.insert(i).unwrap();
			assert!(ids.insert(id));
		}
		assert_eq!(table.insert(1000), None);
		assert_eq!(table.len(), 1000);
	}

	#[test]
	fn a_freed_slot_comes_back_with_a_new_id_oldest_first() {
		let mut table = SentTable::new(3);
		let (a, _) = table.insert('a').unwrap();
		let (b, _) = table.insert('b').unwrap();
		let (c, _) = table.insert('c').unwrap();
		assert_eq!((a, b, c), (0, 1, 2));
		assert_eq!(table.remove(b), Some('b'));
		assert_eq!(table.remove(a), Some('a'));
		let (d, _) = table.insert('d').unwrap();
		let (e, _) = table.insert('e').unwrap();
		// b was freed first, so its slot is reused first, under a new id.
		assert_eq!((d, e), (4, 3));
		assert_eq!(table.slots.len(), 3);
		assert_eq!(table.get(b), None);
		assert_eq!(table.get(a), None);
		assert_eq!(table.get(d), Some(&'d'));
		// A late close for the old id does nothing.
		assert_eq!(table.remove(b), None);
		assert_eq!(table.get(d), Some(&'d'));
	}

	#[test]
	fn the_table_grows_with_requests_open_at_once_not_with_requests_sent() {
		let mut table = SentTable::new(1 << 16);
		let mut seen = std::collections::HashSet::new();
		// One slot has 2^32 / 2^16 generations before its id comes round again.
		for i in 0..(1 << 16) {
			let (id, _) = table.insert(i).unwrap();
			assert!(seen.insert(id));
			table.remove(id);
		}
		assert_eq!(table.slots.len(), 1);
	}

	#[test]
	fn slot_ids_wrap_without_overflow() {
		let mut table = SentTable::new(1);
		let (id, _) = table.insert(()).unwrap();
		table.slots[0].id = u32::MAX;
		assert_eq!(table.remove(id), None);
		assert_eq!(table.remove(u32::MAX), Some(()));
		let (id, _) = table.insert(()).unwrap();
		assert_eq!(id, 0);
	}

	#[test]
	fn remove_if_ignores_an_older_opening_of_the_same_id() {
		let mut table = SentTable::new(1);
		let (id, old) = table.insert(1).unwrap();
		table.remove(id);
		// With a limit of 1 the slot's id advances by 1 on each reuse.
		let (new_id, new) = table.insert(2).unwrap();
		assert_ne!(old, new);
		assert_eq!(table.remove_if(new_id, old), None);
		assert_eq!(table.remove_if(new_id, new), Some(2));
	}

	#[test]
	fn received_ids_refuse_duplicates_and_respect_the_limit() {
		let mut table = ReceivedTable::new(2);
		let first = table.insert(7, 'a').unwrap();
		assert_eq!(table.insert(7, 'b'), Err(OpenError::Duplicate));
		table.insert(8, 'c').unwrap();
		assert_eq!(table.insert(9, 'd'), Err(OpenError::Full));
		assert_eq!(table.remove_if(7, first), Some('a'));
		let second = table.insert(7, 'e').unwrap();
		assert_eq!(table.remove_if(7, first), None);
		assert_eq!(table.get(7), Some(&'e'));
		assert_eq!(table.remove_if(7, second), Some('e'));
	}

	#[test]
	fn drain_empties_the_table() {
		let mut sent = SentTable::new(4);
		sent.insert(1).unwrap();
		sent.insert(2).unwrap();
		assert_eq!(sent.drain().len(), 2);
		assert!(sent.is_empty());
		// The table stays usable after a drain.
		assert!(sent.insert(3).is_some());
	}
}
