//! RFC 6962 (Certificate Transparency) §2.1 Merkle tree hashes, for the roots of compacted
//! audit segments.
//!
//! - The hash of an empty list is `SHA-256("")` ([`EMPTY_ROOT`]).
//! - A leaf is `SHA-256(0x00 ‖ data)` ([`leaf_hash`]).
//! - A list of `n > 1` entries is split at `k`, the largest power of two smaller than `n`;
//!   its hash is `SHA-256(0x01 ‖ MTH(first k) ‖ MTH(the rest))` ([`node_hash`]).
//!
//! The domain bytes keep a leaf from ever being read as an inner node (second-preimage
//! resistance). A segment's leaves are its events' chain hashes, in sequence order.

use sha2::{Digest, Sha256};

use crate::audit::Hash;

/// The Merkle tree hash of an empty list: `SHA-256("")`.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// `SHA-256(0x00 ‖ data)`: the hash of one leaf.
#[must_use]
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`: the hash of an inner node.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The RFC 6962 Merkle tree hash of `leaves` (each one leaf's data, in order).
///
/// Computed bottom-up with a stack of perfect subtrees, in O(n) time and O(log n) memory;
/// the result equals the recursive definition for every `n` (the tests check it against one).
#[must_use]
pub fn merkle_root<T: AsRef<[u8]>>(leaves: &[T]) -> Hash {
    let mut builder = MerkleBuilder::default();
    for leaf in leaves {
        builder.push(leaf.as_ref());
    }
    builder.root()
}

/// Builds an RFC 6962 root one leaf at a time (so a caller paging through events never holds
/// them all).
#[derive(Debug, Clone, Default)]
pub struct MerkleBuilder {
    /// Roots of perfect subtrees, largest (leftmost) first, with their heights; heights strictly
    /// decrease, like the binary digits of `count`.
    stack: Vec<(u32, Hash)>,
    count: u64,
}

impl MerkleBuilder {
    /// Appends one leaf (its data, hashed with [`leaf_hash`]).
    pub fn push(&mut self, data: &[u8]) {
        let mut node = (0u32, leaf_hash(data));
        while let Some(&(height, left)) = self.stack.last() {
            if height != node.0 {
                break;
            }
            self.stack.pop();
            node = (height + 1, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.count += 1;
    }

    /// Leaves pushed so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True before the first [`MerkleBuilder::push`].
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The root of the leaves pushed so far ([`EMPTY_ROOT`] for none).
    ///
    /// RFC 6962 splits at the largest power of two below `n`, so the left part is always a
    /// perfect subtree and the tree is the stack's subtrees folded from the right.
    #[must_use]
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return EMPTY_ROOT;
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_root_is_sha256_of_nothing() {
        let h: Hash = Sha256::digest(b"").into();
        assert_eq!(h, EMPTY_ROOT);
        assert_eq!(merkle_root::<&[u8]>(&[]), EMPTY_ROOT);
    }

    #[test]
    fn one_leaf_is_its_leaf_hash_and_two_are_a_node() {
        assert_eq!(merkle_root(&[b"a"]), leaf_hash(b"a"));
        assert_eq!(
            merkle_root(&[b"a", b"b"]),
            node_hash(&leaf_hash(b"a"), &leaf_hash(b"b"))
        );
        // Three: split at two, so ((a, b), c), not (a, (b, c)).
        assert_eq!(
            merkle_root(&[b"a", b"b", b"c"]),
            node_hash(
                &node_hash(&leaf_hash(b"a"), &leaf_hash(b"b")),
                &leaf_hash(b"c")
            )
        );
    }
}
