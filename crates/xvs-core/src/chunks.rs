//! A vector kept in fixed-size chunks: the connection table's entry store.
//!
//! A `Vec` that doubles copies all its elements into a new block each time and leaves the old
//! block behind. In the C library's heap that block is a hole the size of the whole shard,
//! which the next, larger block cannot reuse: a large table on the heap would hold nearly twice
//! its size. Chunks of a fixed size never
//! move: growth allocates one more chunk and copies nothing, a shrink frees whole chunks, and
//! every block is small enough for the heap, where glibc gives memory huge pages
//! (crates/xvsd/src/malloc.rs). The first chunk grows by doubling up to the chunk size, so a
//! shard of a few entries stays a few entries big.

use std::ops::{Index, IndexMut};

/// Elements per chunk: 256 entries of the connection table are 24 KiB, under glibc's smallest
/// mmap threshold (128 KiB), so chunks come from the heap.
pub const CHUNK: usize = 256;

/// Capacity of a first chunk that is allocated small.
pub const FIRST: usize = 16;

/// A vector in chunks of [`CHUNK`] elements; all chunks but the last are full. At most one
/// empty chunk is kept at the end, so that a table going back and forth across a chunk
/// boundary does not allocate and free a chunk every time.
#[derive(Debug, Clone)]
pub struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked::new()
    }
}

impl<T> Chunked<T> {
    /// An empty vector; it allocates nothing until its first push.
    pub const fn new() -> Chunked<T> {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements it holds room for without allocating.
    pub fn capacity(&self) -> usize {
        match self.chunks.as_slice() {
            [] => 0,
            [first] => first.capacity(),
            [.., last] => (self.chunks.len() - 1) * CHUNK + last.capacity(),
        }
    }

    /// The element at `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// The element at `i`, to change.
    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    /// The address of the element at `i` (for a prefetch); None past the end.
    pub fn address(&self, i: usize) -> Option<usize> {
        self.get(i).map(|e| e as *const T as usize)
    }

    /// Append `v` at position `len()`.
    pub fn push(&mut self, v: T) {
        let k = self.len / CHUNK;
        if k == self.chunks.len() {
            self.chunks
                .push(Vec::with_capacity(if k == 0 { FIRST } else { CHUNK }));
        }
        let chunk = &mut self.chunks[k];
        if chunk.len() == chunk.capacity() {
            // Only a first chunk allocated small is ever full below CHUNK.
            let want = (chunk.capacity() * 2).clamp(FIRST, CHUNK);
            chunk.reserve_exact(want - chunk.len());
        }
        chunk.push(v);
        self.len += 1;
    }

    /// Remove and return the last element.
    pub fn pop(&mut self) -> Option<T> {
        let k = self.len.checked_sub(1)? / CHUNK;
        let v = self.chunks[k].pop()?;
        self.len -= 1;
        // Keep at most one empty chunk behind the last element.
        if self.chunks.len() > k + 2 || (self.chunks.len() == k + 2 && self.chunks[k].is_empty()) {
            self.chunks
                .truncate(k + 1 + usize::from(!self.chunks[k].is_empty()));
        }
        Some(v)
    }

    /// Remove the element at `i` and put the last one in its place (`Vec::swap_remove`).
    ///
    /// # Panics
    /// When `i` is out of bounds.
    pub fn swap_remove(&mut self, i: usize) -> T {
        assert!(
            i < self.len,
            "swap_remove index {i} out of bounds ({})",
            self.len
        );
        let last = self.pop().expect("not empty");
        if i == self.len {
            last
        } else {
            std::mem::replace(&mut self[i], last)
        }
    }

    /// Free the chunks that hold nothing, and the room of a lone first chunk above
    /// `max(len, keep)`.
    pub fn shrink_to(&mut self, keep: usize) {
        let used = self.len.div_ceil(CHUNK);
        self.chunks.truncate(used);
        self.chunks.shrink_to_fit();
        if let [first] = self.chunks.as_mut_slice() {
            first.shrink_to(keep.min(CHUNK));
        }
    }

    /// Every element, in position order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// Every element, to change, in position order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flatten()
    }

    /// Take every element out, leaving it empty with no memory.
    pub fn take_all(&mut self) -> impl Iterator<Item = T> {
        self.len = 0;
        std::mem::take(&mut self.chunks).into_iter().flatten()
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;

    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> IndexMut<usize> for Chunked<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_small_vector_stays_small_and_chunks_are_fixed() {
        let mut v = Chunked::new();
        assert_eq!(v.capacity(), 0);
        v.push(1u32);
        assert_eq!(v.capacity(), FIRST);
        for i in 1..CHUNK as u32 {
            v.push(i);
        }
        assert_eq!(v.capacity(), CHUNK);
        let first = v.address(0);
        v.push(9);
        assert_eq!(v.capacity(), 2 * CHUNK);
        // Growth moved nothing.
        assert_eq!(v.address(0), first);
        assert_eq!(v[CHUNK], 9);
    }

    #[test]
    fn one_empty_chunk_is_kept_at_the_end_and_no_more() {
        let mut v = Chunked::new();
        for i in 0..3 * CHUNK {
            v.push(i);
        }
        while v.len() > CHUNK {
            v.pop();
        }
        assert_eq!(v.chunks.len(), 2, "one spare chunk");
        v.pop();
        assert_eq!(v.chunks.len(), 2);
        v.shrink_to(0);
        assert_eq!(v.chunks.len(), 1);
        // A lone first chunk gives back its room above its elements.
        assert_eq!(v.capacity(), CHUNK - 1);
        while v.pop().is_some() {}
        v.shrink_to(0);
        assert_eq!(v.capacity(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32),
        Pop,
        SwapRemove(usize),
        Set(usize, u32),
        Shrink(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u32>().prop_map(Op::Push),
            1 => Just(Op::Pop),
            2 => any::<usize>().prop_map(Op::SwapRemove),
            1 => (any::<usize>(), any::<u32>()).prop_map(|(i, v)| Op::Set(i, v)),
            1 => (0..600usize).prop_map(Op::Shrink),
        ]
    }

    proptest! {
        /// Against `Vec`, over runs that cross chunk boundaries both ways.
        #[test]
        fn behaves_as_a_vec(ops in proptest::collection::vec(op(), 1..3000)) {
            let mut v = Chunked::new();
            let mut m: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(x) => { v.push(x); m.push(x); }
                    Op::Pop => prop_assert_eq!(v.pop(), m.pop()),
                    Op::SwapRemove(i) if !m.is_empty() => {
                        let i = i % m.len();
                        prop_assert_eq!(v.swap_remove(i), m.swap_remove(i));
                    }
                    Op::SwapRemove(_) => {}
                    Op::Set(i, x) if !m.is_empty() => {
                        let i = i % m.len();
                        v[i] = x;
                        m[i] = x;
                    }
                    Op::Set(..) => {}
                    Op::Shrink(keep) => v.shrink_to(keep),
                }
                prop_assert_eq!(v.len(), m.len());
                prop_assert!(v.capacity() >= v.len());
                prop_assert!(v.chunks.len() <= v.len().div_ceil(CHUNK) + 1);
            }
            prop_assert!(v.iter().eq(m.iter()));
            prop_assert_eq!(v.get(m.len()), None);
            prop_assert!(v.take_all().eq(m.into_iter()));
        }
    }
}
