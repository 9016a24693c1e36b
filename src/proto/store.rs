//! One slab holds the queued messages of every open request, as singly linked lists, so that
//! opening a request allocates nothing (in the spirit of h2's `proto::streams::buffer`).

use slab::Slab;

/// The nodes of every queue of one connection.
#[derive(Debug)]
pub(crate) struct Store<T> {
	slab: Slab<Node<T>>,
}

#[derive(Debug)]
struct Node<T> {
	value: T,
	next: Option<usize>,
}

/// One queue in a [`Store`]: its first and last node. Empty by default; it owns no memory, so
/// it must be [`clear`](Queue::clear)ed through its store before it is forgotten.
#[derive(Debug, Default)]
pub(crate) struct Queue {
	ends: Option<(usize, usize)>,
	len: usize,
}

impl<T> Store<T> {
	pub(crate) fn new() -> Self {
		Self { slab: Slab::new() }
	}

	/// Let go of the memory of nodes no longer used once the store is empty and large.
	pub(crate) fn shrink_if_idle(&mut self) {
		if self.slab.is_empty() && self.slab.capacity() > 1024 {
			self.slab = Slab::new();
		}
	}
}

impl Queue {
	pub(crate) fn len(&self) -> usize {
		self.len
	}

	pub(crate) fn push_back<T>(&mut self, store: &mut Store<T>, value: T) {
		let key = store.slab.insert(Node { value, next: None });
		match &mut self.ends {
			Some((_, tail)) => {
				store.slab[*tail].next = Some(key);
				*tail = key;
			},
			None => self.ends = Some((key, key)),
		}
		self.len += 1;
	}

	pub(crate) fn pop_front<T>(&mut self, store: &mut Store<T>) -> Option<T> {
		let (head, tail) = self.ends?;
		let node = store.slab.remove(head);
		self.ends = if head == tail { None } else { node.next.map(|next| (next, tail)) };
		self.len -= 1;
		Some(node.value)
	}

	/// The values in order, without taking them.
	pub(crate) fn iter<'a, T>(&self, store: &'a Store<T>) -> impl Iterator<Item = &'a T> + 'a {
		let mut next = self.ends.map(|(head, _)| head);
		std::iter::from_fn(move || {
			let node = &store.slab[next?];
			next = node.next;
			Some(&node.value)
		})
	}

	/// Empty the queue, handing each value to `each` in order.
	pub(crate) fn clear<T>(&mut self, store: &mut Store<T>, mut each: impl FnMut(T)) {
		while let Some(value) = self.pop_front(store) {
			each(value);
		}
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn queues_interleave_in_one_store_and_keep_their_order() {
		let mut store = Store::new();
		let mut a = Queue::default();
		let mut b = Queue::default();
		for i in 0..5 {
			a.push_back(&mut store, ('a', i));
			b.push_back(&mut store, ('b', i));
		}
		assert_eq!(a.pop_front(&mut store), Some(('a', 0)));
		a.push_back(&mut store, ('a', 5));
		let mut seen = Vec::new();
		b.clear(&mut store, |value| seen.push(value));
		assert_eq!(seen, (0..5).map(|i| ('b', i)).collect::<Vec<_>>());
		assert_eq!(b.len(), 0);
		let rest: Vec<_> = std::iter::from_fn(|| a.pop_front(&mut store)).collect();
		assert_eq!(rest, (1..6).map(|i| ('a', i)).collect::<Vec<_>>());
		assert_eq!(a.len(), 0);
		assert!(store.slab.is_empty());
	}
}
