//! [`ReadySet`]: the READY subchannels a picker chooses from, in chunks that successive
//! snapshots share.

use super::ReadySubchannel;
use std::fmt;
use std::ops::Index;
use std::sync::Arc;

/// The READY subchannels a [`Picker`](super::Picker) chooses from, in resolver order.
///
/// It reads like a slice (`len`, `ready[i]`, `iter`), but is stored in chunks that
/// snapshots share: when one subchannel of 10 000 changes, the channel publishes a set
/// that copies one chunk and shares every other with the set before, where a slice
/// would be copied whole. Each chunk holds the READY ones among [`CHUNK`] of the
/// channel's subchannels. Entry `i` is found without a search in a set of one chunk,
/// and in any chunk while every chunk is full (all READY); otherwise a short search
/// from chunk `i / CHUNK` finds it.
///
/// ```
/// # use std::sync::Arc;
/// use tonic_balancer::balance::{ReadySet, ReadySubchannel};
/// use tonic_balancer::load::Load;
///
/// let ready: ReadySet = (1..=3)
///     .map(|port| {
///         let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
///         ReadySubchannel::new(addr.into(), Arc::new(Load::new()))
///     })
///     .collect();
/// assert_eq!(ready.len(), 3);
/// assert_eq!(ready[2].address().to_string(), "127.0.0.1:3");
/// ```
pub type ReadySet = Chunked<ReadySubchannel>;

/// How many of a channel's subchannels one chunk covers.
pub const CHUNK: usize = 1024;

/// A sequence stored as runs that other sequences may share; see [`ReadySet`].
pub struct Chunked<T> {
    /// The first run's items (or none): a set of one run (up to [`CHUNK`] subchannels)
    /// is read as a slice is, with no pointer more.
    first: Arc<[T]>,
    /// The non-empty runs, in order, each with the index of its first item.
    runs: Arc<[Run<T>]>,
    len: usize,
    /// Every run but the last holds [`CHUNK`] items: entry `i` is in run `i / CHUNK`.
    full: bool,
}

struct Run<T> {
    start: usize,
    items: Arc<[T]>,
}

impl<T> Chunked<T> {
    /// The sequence of these runs in order (empty ones are left out).
    pub(crate) fn from_runs(runs: impl IntoIterator<Item = Arc<[T]>>) -> Self {
        let mut len = 0;
        let runs: Arc<[Run<T>]> = runs
            .into_iter()
            .filter(|items| !items.is_empty())
            .map(|items| {
                let run = Run { start: len, items };
                len += run.items.len();
                run
            })
            .collect();
        debug_assert!(
            runs.iter().all(|run| run.items.len() <= CHUNK),
            "a run over CHUNK"
        );
        let full = runs
            .iter()
            .rev()
            .skip(1)
            .all(|run| run.items.len() == CHUNK);
        Self {
            first: runs
                .first()
                .map_or_else(|| Arc::new([]) as Arc<[T]>, |run| run.items.clone()),
            runs,
            len,
            full,
        }
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entry `i`, if `i < len()`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        // Branches on the set, not on `i`, so that they are predicted: a pick's `i` is
        // random.
        let runs = &*self.runs;
        if runs.len() <= 1 {
            return self.first.get(i);
        }
        if i >= self.len {
            return None;
        }
        // Each run holds at most CHUNK items, so the run holding `i` is this one or one
        // after it: exactly this one when the runs are full.
        let at = if self.full { i / CHUNK } else { self.search(i) };
        let run = runs.get(at)?;
        run.items.get(i - run.start)
    }

    /// The run holding entry `i < len()` of a set whose runs are not all full: gallops
    /// forward from run `i / CHUNK` to one starting past `i`, then searches the last
    /// stride.
    #[inline(never)]
    fn search(&self, i: usize) -> usize {
        let runs = &*self.runs;
        let mut at = i / CHUNK;
        let mut stride = 1;
        while at + stride < runs.len() && runs[at + stride].start <= i {
            at += stride;
            stride *= 2;
        }
        let end = (at + stride).min(runs.len());
        at + runs[at..end].partition_point(|run| run.start <= i) - 1
    }

    /// The entries as one slice, if they are in one chunk (up to [`CHUNK`] of the
    /// channel's subchannels).
    #[inline]
    pub fn as_slice(&self) -> Option<&[T]> {
        (self.runs.len() <= 1).then_some(&*self.first)
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.runs.iter().flat_map(|run| run.items.iter())
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;

    /// Entry `i`; panics if `i >= len()`, as a slice does.
    #[inline]
    fn index(&self, i: usize) -> &T {
        match self.get(i) {
            Some(item) => item,
            None => panic!("index {i} out of range for a set of {}", self.len),
        }
    }
}

impl<T> Clone for Chunked<T> {
    fn clone(&self) -> Self {
        Self {
            first: self.first.clone(),
            runs: self.runs.clone(),
            len: self.len,
            full: self.full,
        }
    }
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self::from_runs([])
    }
}

impl<T> From<Vec<T>> for Chunked<T> {
    /// The entries in one chunk per [`CHUNK`], as a channel would chunk them.
    fn from(items: Vec<T>) -> Self {
        let mut items = items.into_iter();
        let mut runs = Vec::new();
        loop {
            let run: Arc<[T]> = items.by_ref().take(CHUNK).collect();
            if run.is_empty() {
                break;
            }
            runs.push(run);
        }
        Self::from_runs(runs)
    }
}

impl<T> FromIterator<T> for Chunked<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        Self::from(items.into_iter().collect::<Vec<T>>())
    }
}

impl<T: fmt::Debug> fmt::Debug for Chunked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The runs of a new snapshot: one per [`CHUNK`] of `entries`, each holding the
/// entries' members in order. A run of `old` (the last snapshot's, chunk for chunk) is
/// kept as it is if its chunk needs no look (`stale` says it does not), or if it
/// `holds` exactly the same members; the others are built anew. So when one member
/// changes, one run is looked at and built, and the rest are shared.
pub(crate) fn share_runs<'a, E, M: 'a, R>(
    entries: &'a [E],
    old: Vec<R>,
    stale: impl Fn(usize) -> bool,
    member: impl Fn(&'a E) -> Option<&'a M>,
    holds: impl Fn(&R, &[&'a M]) -> bool,
    mut build: impl FnMut(&[&'a M]) -> R,
) -> SharedRuns<R> {
    let mut old = old.into_iter();
    let mut shared = SharedRuns {
        runs: Vec::with_capacity(entries.len().div_ceil(CHUNK)),
        built: Vec::new(),
        replaced: Vec::new(),
    };
    let mut members = Vec::with_capacity(CHUNK.min(entries.len()));
    for (c, chunk) in entries.chunks(CHUNK).enumerate() {
        let run = match old.next() {
            Some(run) if !stale(c) => {
                shared.runs.push(run);
                continue;
            }
            run => run,
        };
        members.clear();
        members.extend(chunk.iter().filter_map(&member));
        match run {
            Some(run) if holds(&run, &members) => shared.runs.push(run),
            run => {
                shared.replaced.extend(run);
                shared.built.push(shared.runs.len());
                shared.runs.push(build(&members));
            }
        }
    }
    // The chunks past the end of a set that shrank.
    shared.replaced.extend(old);
    shared
}

/// What [`share_runs`] made.
pub(crate) struct SharedRuns<R> {
    /// The new runs, chunk for chunk.
    pub(crate) runs: Vec<R>,
    /// Which of them were built anew (indexes into `runs`).
    pub(crate) built: Vec<usize>,
    /// The old runs they replaced, and those of chunks that no longer exist.
    pub(crate) replaced: Vec<R>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the runs, the set reads as their concatenation.
        #[test]
        fn reads_as_the_runs_end_to_end(
            lens in proptest::collection::vec(
                prop_oneof![0usize..5, Just(CHUNK), CHUNK - 3..=CHUNK],
                0..12,
            ),
        ) {
            let mut next = 0u32;
            let runs: Vec<Arc<[u32]>> = lens
                .iter()
                .map(|&n| (0..n).map(|_| { next += 1; next }).collect())
                .collect();
            let all: Vec<u32> = runs.iter().flat_map(|r| r.iter().copied()).collect();
            let set = Chunked::from_runs(runs);
            prop_assert_eq!(set.len(), all.len());
            prop_assert_eq!(set.is_empty(), all.is_empty());
            for (i, want) in all.iter().enumerate() {
                prop_assert_eq!(set[i], *want);
            }
            prop_assert_eq!(set.get(all.len()), None);
            prop_assert_eq!(set.iter().copied().collect::<Vec<_>>(), all);
        }
    }

    #[test]
    fn a_vec_is_chunked_as_a_channel_chunks() {
        let set: Chunked<usize> = (0..CHUNK * 2 + 3).collect();
        assert_eq!(set.runs.len(), 3);
        assert_eq!(set[CHUNK], CHUNK);
        assert_eq!(set[CHUNK * 2 + 2], CHUNK * 2 + 2);
        assert!(Chunked::<u8>::from(Vec::new()).is_empty());
    }

    #[test]
    #[should_panic(expected = "index 3 out of range for a set of 3")]
    fn indexing_past_the_end_panics_as_a_slice_does() {
        let set: Chunked<u8> = vec![1, 2, 3].into();
        let _ = set[3];
    }

    /// Members are the even numbers; a run is the members of its chunk.
    fn runs_of(entries: &[u32], old: Vec<Vec<u32>>) -> SharedRuns<Vec<u32>> {
        share_runs(
            entries,
            old,
            |_| true,
            |e| (e % 2 == 0).then_some(e),
            |run, members| run.iter().eq(members.iter().copied()),
            |members| members.iter().map(|m| **m).collect(),
        )
    }

    #[test]
    fn one_changed_member_rebuilds_one_run() {
        let mut entries: Vec<u32> = (0..(CHUNK * 3) as u32).collect();
        let first = runs_of(&entries, Vec::new());
        assert_eq!(first.built, [0, 1, 2]);
        assert_eq!(first.runs[1].len(), CHUNK / 2);
        // Entry CHUNK + 2 stops being a member (it turns odd).
        entries[CHUNK + 2] += 1;
        let second = runs_of(&entries, first.runs.clone());
        assert_eq!(second.built, [1]);
        assert_eq!(second.replaced, [first.runs[1].clone()]);
        assert_eq!(second.runs[0], first.runs[0]);
        assert_eq!(second.runs[2], first.runs[2]);
        assert_eq!(second.runs[1].len(), CHUNK / 2 - 1);
        // Nothing changed: nothing built.
        let third = runs_of(&entries, second.runs.clone());
        assert!(third.built.is_empty() && third.replaced.is_empty());
        // The set shrinks to one chunk: the other two runs are replaced by nothing.
        entries.truncate(CHUNK);
        let fourth = runs_of(&entries, third.runs.clone());
        assert_eq!(fourth.runs.len(), 1);
        assert!(fourth.built.is_empty());
        assert_eq!(fourth.replaced.len(), 2);
    }

    #[test]
    fn a_chunk_that_is_not_stale_keeps_its_run_unlooked() {
        let entries: Vec<u32> = (0..(CHUNK * 2) as u32).collect();
        let first = runs_of(&entries, Vec::new());
        // Even though chunk 0 changed, only chunk 1 is said to be stale.
        let mut changed = entries.clone();
        changed[0] = 1;
        changed[CHUNK] = 1;
        let second = share_runs(
            &changed,
            first.runs.clone(),
            |c| c == 1,
            |e| (e % 2 == 0).then_some(e),
            |run: &Vec<u32>, members| run.iter().eq(members.iter().copied()),
            |members| members.iter().map(|m| **m).collect(),
        );
        assert_eq!(second.built, [1]);
        assert_eq!(second.runs[0], first.runs[0]);
        assert_eq!(second.runs[1].len(), CHUNK / 2 - 1);
    }

    proptest! {
        /// Whatever changed, the runs read as a fresh build of the same entries.
        #[test]
        fn shared_runs_equal_a_fresh_build(
            before in proptest::collection::vec(0u32..4, 0..700),
            after in proptest::collection::vec(0u32..4, 0..700),
        ) {
            let old = runs_of(&before, Vec::new()).runs;
            let shared = runs_of(&after, old);
            let fresh = runs_of(&after, Vec::new());
            prop_assert_eq!(shared.runs, fresh.runs);
        }
    }
}
