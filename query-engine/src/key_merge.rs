//! Merging a sorted stream of stored keys with a sorted overlay of newer changes (keys added
//! or removed), lazily and in either direction. Snapshots use it to lay committed batches not
//! yet applied to redb over redb's view; transactions use it to lay their own writes over that.

use std::collections::BTreeMap;
use std::iter::Peekable;

use crate::storage::{KeyIter, StorageError};

/// Keys of `base` with `overlay` applied: an overlay key marked `true` is present (whether or
/// not `base` has it), one marked `false` is absent.
pub struct MergedKeys<'a> {
    base: Peekable<KeyIter<'a>>,
    over: Peekable<OverlayIter<'a>>,
    desc: bool,
}

/// Overlay entries in scan order.
pub type OverlayIter<'a> = Box<dyn Iterator<Item = (Vec<u8>, bool)> + 'a>;

impl<'a> MergedKeys<'a> {
    /// `overlay` must yield its keys in scan order (descending when `desc`).
    pub fn new(base: KeyIter<'a>, overlay: OverlayIter<'a>, desc: bool) -> Self {
        MergedKeys {
            base: base.peekable(),
            over: overlay.peekable(),
            desc,
        }
    }

    /// Merges with a materialised overlay.
    pub fn with_map(base: KeyIter<'a>, overlay: BTreeMap<Vec<u8>, bool>, desc: bool) -> Self {
        let over: OverlayIter<'a> = if desc {
            Box::new(overlay.into_iter().rev())
        } else {
            Box::new(overlay.into_iter())
        };
        Self::new(base, over, desc)
    }
}

impl Iterator for MergedKeys<'_> {
    type Item = Result<Vec<u8>, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let base_first = match (self.base.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.base.next(),
                (Some(Ok(_)), None) => return self.base.next(),
                (None, Some(_)) => false,
                (Some(Ok(b)), Some((o, _))) => {
                    if b == o {
                        // The overlay decides; drop the stored copy.
                        self.base.next();
                        false
                    } else {
                        (b < o) != self.desc
                    }
                }
            };
            if base_first {
                return self.base.next();
            }
            match self.over.next() {
                Some((k, true)) => return Some(Ok(k)),
                Some((_, false)) => continue,
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn merged(base: &BTreeSet<Vec<u8>>, over: &BTreeMap<Vec<u8>, bool>, desc: bool) -> Vec<u8> {
        let keys: Vec<Vec<u8>> = if desc {
            base.iter().rev().cloned().collect()
        } else {
            base.iter().cloned().collect()
        };
        let it: KeyIter<'_> = Box::new(keys.into_iter().map(Ok));
        MergedKeys::with_map(it, over.clone(), desc)
            .map(|k| k.unwrap()[0])
            .collect()
    }

    proptest! {
        #[test]
        fn equals_applying_the_overlay_to_a_set(
            base in proptest::collection::btree_set(proptest::collection::vec(0u8..32, 1..2), 0..20),
            over in proptest::collection::btree_map(proptest::collection::vec(0u8..32, 1..2), any::<bool>(), 0..20),
            desc in any::<bool>(),
        ) {
            let mut expect = base.clone();
            for (k, present) in &over {
                if *present { expect.insert(k.clone()); } else { expect.remove(k); }
            }
            let mut expect: Vec<u8> = expect.into_iter().map(|k| k[0]).collect();
            if desc { expect.reverse(); }
            prop_assert_eq!(merged(&base, &over, desc), expect);
        }
    }
}
