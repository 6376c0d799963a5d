//! Token status lists (IETF OAuth Token Status List draft) as the relying-party listener
//! publishes them: one bit per entry (`bits` 1; set = INVALID), [`STATUS_LIST_SIZE`]
//! entries per list, LSB first (entry `i` is bit `i % 8` of byte `i / 8`, draft §4.1),
//! compressed with DEFLATE in the zlib format (RFC 1950) and base64url-encoded as `lst`.
//!
//! Every task created from schema version 13 on holds a random entry of a shared list
//! (allocated by the datastore, see [`crate::datastore::Datastore::create_task`]): many
//! tasks share a list, so fetching it does not tell the server which task a relying
//! party checks. [`StatusLists`] is rebuilt from the revocation refresh
//! (`tasks/revocation.rs`), the same data that feeds CRLs and agents, recompressing only
//! the lists whose INVALID entries changed.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use base64::Engine as _;

use crate::datastore::{STATUS_LIST_SIZE, StatusEntry};

/// zlib compression level: the lists are sparse and small, any level is fast.
const LEVEL: u8 = 6;

/// The `lst` of a list whose every entry is VALID.
static ALL_VALID: LazyLock<Arc<str>> = LazyLock::new(|| encode(&[]));
/// The `lst` of a list whose entry 0 alone is INVALID.
static FIRST_INVALID: LazyLock<Arc<str>> = LazyLock::new(|| encode(&[0]));

/// The `lst` of the list of a task recorded before schema version 13, whose tokens name
/// its entry 0: INVALID once it `ended` early.
pub fn of_one_task(ended: bool) -> Arc<str> {
    Arc::clone(if ended { &FIRST_INVALID } else { &ALL_VALID })
}

/// The `lst` of a list whose INVALID entries are `invalid` (each below
/// [`STATUS_LIST_SIZE`]; others are ignored).
pub fn encode(invalid: &[u32]) -> Arc<str> {
    let mut bits = vec![0u8; (STATUS_LIST_SIZE / 8) as usize];
    for &i in invalid {
        if let Some(byte) = bits.get_mut((i / 8) as usize) {
            *byte |= 1 << (i % 8);
        }
    }
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&bits, LEVEL);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(z)
        .into()
}

/// One list with INVALID entries, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
struct List {
    /// Its INVALID entries, sorted, without repeats.
    invalid: Vec<u32>,
    /// `lst`, from `invalid`.
    lst: Arc<str>,
}

/// What the status lists say now (an immutable snapshot, shared like the rest of the
/// revocations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusLists {
    /// The lists with at least one INVALID entry, by number.
    lists: BTreeMap<i64, Arc<List>>,
    /// The newest list number in the datastore at the refresh (0: none yet).
    newest: i64,
}

impl StatusLists {
    /// The lists with the entries of the `ended` tasks INVALID, and `newest` the newest
    /// list the datastore holds (`None`: none yet). Lists whose INVALID entries are the
    /// same as in `previous` keep its compressed form; returns how many were compressed.
    pub fn build(
        ended: impl IntoIterator<Item = StatusEntry>,
        newest: Option<i64>,
        previous: &Self,
    ) -> (Self, usize) {
        let mut by_list: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for e in ended {
            by_list.entry(e.list).or_default().push(e.idx);
        }
        let mut compressed = 0;
        let lists = by_list
            .into_iter()
            .map(|(number, mut invalid)| {
                invalid.sort_unstable();
                invalid.dedup();
                let list = match previous.lists.get(&number) {
                    Some(old) if old.invalid == invalid => Arc::clone(old),
                    _ => {
                        compressed += 1;
                        let lst = encode(&invalid);
                        Arc::new(List { invalid, lst })
                    }
                };
                (number, list)
            })
            .collect();
        let newest = newest.unwrap_or(0).max(0);
        (Self { lists, newest }, compressed)
    }

    /// The newest list number known (0: none).
    pub fn newest(&self) -> i64 {
        self.newest
    }

    /// The `lst` of list `number`: its INVALID entries set. A list the datastore held at
    /// the last refresh, or the next one (another server may have just started it; none
    /// of its entries can have ended before this server's next refresh sees it), else
    /// `None`.
    pub fn lst(&self, number: i64) -> Option<Arc<str>> {
        if number < 1 || number > self.newest.saturating_add(1) {
            return None;
        }
        Some(
            self.lists
                .get(&number)
                .map_or_else(|| Arc::clone(&ALL_VALID), |l| Arc::clone(&l.lst)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inflates `lst` and returns its set entries.
    pub(crate) fn set_entries(lst: &str) -> Vec<u32> {
        let z = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(lst)
            .unwrap();
        assert_eq!(z[0], 0x78, "zlib header: deflate, 32 KiB window");
        assert_eq!(
            u16::from_be_bytes([z[0], z[1]]) % 31,
            0,
            "zlib header check"
        );
        let bits = miniz_oxide::inflate::decompress_to_vec_zlib(&z).unwrap();
        assert_eq!(bits.len(), (STATUS_LIST_SIZE / 8) as usize);
        (0..STATUS_LIST_SIZE)
            .filter(|i| bits[(i / 8) as usize] >> (i % 8) & 1 == 1)
            .collect()
    }

    fn entry(list: i64, idx: u32) -> StatusEntry {
        StatusEntry { list, idx }
    }

    #[test]
    fn entries_are_bits_lsb_first_and_the_list_is_compressed() {
        let lst = encode(&[0, 9, 65_535, 70_000]);
        assert_eq!(set_entries(&lst), [0, 9, 65_535]);
        assert!(
            lst.len() < 200,
            "a sparse list compresses: {} bytes",
            lst.len()
        );
        assert!(set_entries(&ALL_VALID).is_empty());
    }

    #[test]
    fn lists_hold_their_ended_entries_and_only_changed_lists_are_recompressed() {
        let (a, n) = StatusLists::build(
            [entry(1, 7), entry(2, 3), entry(1, 400), entry(1, 7)],
            Some(3),
            &StatusLists::default(),
        );
        assert_eq!(n, 2);
        assert_eq!(set_entries(&a.lst(1).unwrap()), [7, 400]);
        assert_eq!(set_entries(&a.lst(2).unwrap()), [3]);
        // Known without ended entries, or just started by another server: all VALID.
        for n in [3, 4] {
            assert!(set_entries(&a.lst(n).unwrap()).is_empty(), "{n}");
        }
        // Beyond that, or not a list number: unknown.
        for n in [0, -1, 5, i64::MAX] {
            assert_eq!(a.lst(n), None, "{n}");
        }
        // List 2 gains an entry, list 1 is unchanged: only list 2 is compressed again.
        let (b, n) = StatusLists::build(
            [entry(1, 400), entry(2, 3), entry(1, 7), entry(2, 60_000)],
            Some(3),
            &a,
        );
        assert_eq!(n, 1);
        assert!(Arc::ptr_eq(&a.lists[&1], &b.lists[&1]));
        assert_eq!(set_entries(&b.lst(2).unwrap()), [3, 60_000]);
        // Tasks past their deadline leave the set: list 1 is all VALID again.
        let (c, n) = StatusLists::build([entry(2, 3)], Some(3), &b);
        assert_eq!(n, 1);
        assert!(set_entries(&c.lst(1).unwrap()).is_empty());
        assert_eq!(set_entries(&c.lst(2).unwrap()), [3]);
    }
}
