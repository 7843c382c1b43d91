//! RFC 9162 Merkle tree hashing and proof verification (SHA-256).

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Domain-separation prefix of leaf hashes (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of interior node hashes (RFC 9162 §2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// The leaf hash of an entry: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(data);
    hasher.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The RFC 9162 Merkle tree hash of `leaves` (already leaf-hashed), in O(n) time and
/// O(log n) extra memory. The empty tree's root is `SHA-256("")`.
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    let mut frontier = Frontier::default();
    for leaf in leaves {
        frontier.push(*leaf);
    }
    frontier.root()
}

/// The roots of the perfect subtrees that make up a tree of the current size, largest (leftmost)
/// first: one per set bit of the size. Appending a leaf merges equal-sized subtrees like a
/// binary counter carry, so the root of the whole tree is always O(log n) hashes away.
#[derive(Debug, Default, Clone)]
pub(crate) struct Frontier {
    subtrees: Vec<Hash>,
    size: u64,
}

impl Frontier {
    /// Number of leaves appended so far.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub(crate) fn push(&mut self, leaf: Hash) {
        let mut merged = leaf;
        // Each trailing one bit of the old size is a subtree the same size as `merged`.
        let mut carries = self.size;
        while carries & 1 == 1 {
            let Some(left) = self.subtrees.pop() else {
                break; // unreachable: one subtree exists per set bit of `size`
            };
            merged = node_hash(&left, &merged);
            carries >>= 1;
        }
        self.subtrees.push(merged);
        self.size += 1;
    }

    /// The RFC 9162 root: the perfect subtrees folded right to left, since the tree splits at the
    /// largest power of two and recurses into the right-hand remainder.
    pub(crate) fn root(&self) -> Hash {
        let mut subtrees = self.subtrees.iter().rev();
        let Some(smallest) = subtrees.next() else {
            return empty_root();
        };
        subtrees.fold(*smallest, |right, left| node_hash(left, &right))
    }
}

/// The largest power of two strictly smaller than `n` (for `n >= 2`): where RFC 9162 splits a tree.
fn split_point(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The RFC 9162 §2.1.3.1 inclusion proof (audit path) of leaf `index` in the tree over `leaves`,
/// siblings from the leaf up. Empty when `index` is out of range. O(n) hashing: it is for
/// verifiers that hold every leaf anyway, not for serving proofs.
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let mut path = Vec::new();
    let (mut start, mut end) = (0, leaves.len());
    if index >= end {
        return path;
    }
    // Walk down from the root, remembering the sibling subtree at each split.
    while end - start > 1 {
        let k = split_point(end - start);
        if index < start + k {
            path.push(merkle_root(&leaves[start + k..end]));
            end = start + k;
        } else {
            path.push(merkle_root(&leaves[start..start + k]));
            start += k;
        }
    }
    path.reverse();
    path
}

/// The RFC 9162 §2.1.4.1 consistency proof from the tree of the first `first` leaves to the tree
/// over all `leaves`. Empty when `first` is 0, equals `leaves.len()` or exceeds it. O(n) hashing.
pub fn consistency_proof(first: usize, leaves: &[Hash]) -> Vec<Hash> {
    if first == 0 || first >= leaves.len() {
        return Vec::new();
    }
    subproof(first, leaves, true)
}

/// SUBPROOF(m, D[n], b) of RFC 9162 §2.1.4.1; `whole` is b, true while the old tree is still a
/// complete subtree the verifier already holds.
fn subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if whole { Vec::new() } else { vec![merkle_root(leaves)] };
    }
    let k = split_point(n);
    let mut proof;
    if m <= k {
        proof = subproof(m, &leaves[..k], whole);
        proof.push(merkle_root(&leaves[k..]));
    } else {
        proof = subproof(m - k, &leaves[k..], false);
        proof.push(merkle_root(&leaves[..k]));
    }
    proof
}

/// Verifies an RFC 9162 §2.1.3.2 inclusion proof: that `leaf` is the leaf hash at `index` in the
/// tree of `size` leaves whose root is `root`. `proof` lists sibling hashes from the leaf up.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let mut position = index;
    let mut last = size - 1;
    let mut computed = *leaf;
    for sibling in proof {
        if last == 0 {
            return false; // more proof hashes than tree levels
        }
        if is_right_child_or_last(position, last) {
            computed = node_hash(sibling, &computed);
            skip_levels_without_right_sibling(&mut position, &mut last);
        } else {
            computed = node_hash(&computed, sibling);
        }
        position >>= 1;
        last >>= 1;
    }
    last == 0 && computed == *root
}

/// Verifies an RFC 9162 §2.1.4.2 consistency proof: that the tree of `first` leaves with root
/// `first_root` is a prefix of the tree of `second` leaves with root `second_root`.
///
/// Equal sizes are consistent only with an empty proof and equal roots. Every tree extends the
/// empty one, so `first == 0` needs an empty proof and `first_root == SHA-256("")`.
pub fn verify_consistency(first: u64, second: u64, first_root: &Hash, second_root: &Hash, proof: &[Hash]) -> bool {
    if first > second {
        return false;
    }
    if first == 0 {
        return proof.is_empty() && *first_root == empty_root();
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if proof.is_empty() {
        return false;
    }
    // When `first` is a power of two its whole tree is one node of the second tree, which
    // the proof leaves out because the verifier already holds it.
    let implied_first = first.is_power_of_two().then_some(first_root);
    let mut path = implied_first.into_iter().chain(proof);
    let mut position = first - 1;
    let mut last = second - 1;
    while position & 1 == 1 {
        position >>= 1;
        last >>= 1;
    }
    let Some(start) = path.next() else {
        return false;
    };
    let mut first_computed = *start;
    let mut second_computed = *start;
    for node in path {
        if last == 0 {
            return false;
        }
        if is_right_child_or_last(position, last) {
            first_computed = node_hash(node, &first_computed);
            second_computed = node_hash(node, &second_computed);
            skip_levels_without_right_sibling(&mut position, &mut last);
        } else {
            second_computed = node_hash(&second_computed, node);
        }
        position >>= 1;
        last >>= 1;
    }
    first_computed == *first_root && second_computed == *second_root && last == 0
}

/// Whether the node at `position` takes its proof sibling on the left: it is a right child,
/// or it is the last node of its level (whose missing right sibling means it was promoted).
fn is_right_child_or_last(position: u64, last: u64) -> bool {
    position & 1 == 1 || position == last
}

/// A left-hand node that is last on its level is promoted unchanged through the levels where
/// it has no right sibling; climb those levels without consuming proof hashes.
fn skip_levels_without_right_sibling(position: &mut u64, last: &mut u64) {
    if *position & 1 == 0 {
        while *position & 1 == 0 && *position != 0 {
            *position >>= 1;
            *last >>= 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 6962 §2.1 MTH, written as the spec states it.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n);
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    /// The largest power of two strictly smaller than `n` (for `n >= 2`).
    fn split_point(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// RFC 6962 §2.1.1 PATH(m, D[n]).
    fn reference_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        if leaves.len() <= 1 {
            return Vec::new();
        }
        let k = split_point(leaves.len());
        if m < k {
            let mut path = reference_path(m, &leaves[..k]);
            path.push(reference_root(&leaves[k..]));
            path
        } else {
            let mut path = reference_path(m - k, &leaves[k..]);
            path.push(reference_root(&leaves[..k]));
            path
        }
    }

    /// RFC 6962 §2.1.2 SUBPROOF(m, D[n], b).
    fn reference_subproof(m: usize, leaves: &[Hash], whole_subtree: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if whole_subtree { Vec::new() } else { vec![reference_root(leaves)] };
        }
        let k = split_point(n);
        if m <= k {
            let mut proof = reference_subproof(m, &leaves[..k], whole_subtree);
            proof.push(reference_root(&leaves[k..]));
            proof
        } else {
            let mut proof = reference_subproof(m - k, &leaves[k..], false);
            proof.push(reference_root(&leaves[..k]));
            proof
        }
    }

    fn test_leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("leaf {i}").as_bytes())).collect()
    }

    fn hex_hash(text: &str) -> Hash {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    fn abc() -> Vec<Hash> {
        [b"a", b"b", b"c"].iter().map(|d| leaf_hash(*d)).collect()
    }

    const ROOT_A: &str = "022a6979e6dab7aa5ae4c3e5e45f7e977112a7e63593820dbec1ec738a24f93c";
    const ROOT_AB: &str = "b137985ff484fb600db93107c77b0365c80d78f5b429ded0fd97361d077999eb";
    const ROOT_ABC: &str = "36642e73c2540ab121e3a6bf9545b0a24982cd830eb13d3cd19de3ce6c021ec1";

    #[test]
    fn split_point_is_largest_power_of_two_below_n() {
        let expected = [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (16, 8), (17, 16)];
        for (n, k) in expected {
            assert_eq!(split_point(n), k, "n={n}");
        }
    }

    #[test]
    fn digest_vectors() {
        let leaves = abc();
        assert_eq!(hex::encode(merkle_root(&[])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert!(hex::encode(leaf_hash(b"")).starts_with("6e340b9c"));
        assert!(hex::encode(leaf_hash(b"")).ends_with("a01d"));
        assert_eq!(hex::encode(merkle_root(&leaves[..1])), ROOT_A);
        assert_eq!(hex::encode(merkle_root(&leaves[..2])), ROOT_AB);
        assert_eq!(hex::encode(merkle_root(&leaves)), ROOT_ABC);
        assert!(hex::encode(leaves[2]).starts_with("597fcb31"));
        assert!(hex::encode(leaves[1]).starts_with("57eb3561"));
    }

    #[test]
    fn digest_proof_vectors() {
        let leaves = abc();
        let (root_a, root_ab, root_abc) = (hex_hash(ROOT_A), hex_hash(ROOT_AB), hex_hash(ROOT_ABC));
        assert!(verify_inclusion(2, 3, &leaves[2], &[root_ab], &root_abc));
        assert!(verify_consistency(2, 3, &root_ab, &root_abc, &[leaves[2]]));
        assert!(verify_consistency(1, 3, &root_a, &root_abc, &[leaves[1], leaves[2]]));
        assert!(!verify_consistency(1, 3, &root_a, &root_abc, &[leaves[2], leaves[1]]));
    }

    #[test]
    fn merkle_root_matches_reference() {
        let leaves = test_leaves(300);
        for n in 0..=leaves.len() {
            assert_eq!(merkle_root(&leaves[..n]), reference_root(&leaves[..n]), "n={n}");
        }
    }

    #[test]
    fn frontier_root_tracks_every_size() {
        let leaves = test_leaves(70);
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), empty_root());
        for (i, leaf) in leaves.iter().enumerate() {
            frontier.push(*leaf);
            assert_eq!(frontier.size(), i as u64 + 1);
            assert_eq!(frontier.root(), reference_root(&leaves[..=i]));
        }
    }

    #[test]
    fn inclusion_proofs_verify_for_all_sizes_and_indices() {
        let leaves = test_leaves(40);
        for size in 1..=leaves.len() {
            let tree = &leaves[..size];
            let root = reference_root(tree);
            for index in 0..size {
                let proof = reference_path(index, tree);
                let (i, n) = (index as u64, size as u64);
                assert!(verify_inclusion(i, n, &tree[index], &proof, &root), "{index} in {size}");
                assert_inclusion_rejects_tampering(i, n, tree, &proof, &root);
            }
        }
    }

    fn assert_inclusion_rejects_tampering(i: u64, n: u64, tree: &[Hash], proof: &[Hash], root: &Hash) {
        let leaf = &tree[i as usize];
        let other_leaf = leaf_hash(b"not in the tree");
        assert!(!verify_inclusion(i, n, &other_leaf, proof, root));
        assert!(!verify_inclusion(i, n, leaf, proof, &other_leaf));
        assert!(!verify_inclusion(n, n, leaf, proof, root));
        let mut longer = proof.to_vec();
        longer.push(other_leaf);
        assert!(!verify_inclusion(i, n, leaf, &longer, root));
        if let Some((_, shorter)) = proof.split_last() {
            assert!(!verify_inclusion(i, n, leaf, shorter, root));
        }
        if n > 1 {
            let other_index = (i + 1) % n;
            if tree[other_index as usize] != *leaf {
                assert!(!verify_inclusion(other_index, n, leaf, proof, root));
            }
        }
        for k in 0..proof.len() {
            let mut flipped = proof.to_vec();
            flipped[k][0] ^= 1;
            assert!(!verify_inclusion(i, n, leaf, &flipped, root));
        }
    }

    #[test]
    fn consistency_proofs_verify_for_all_size_pairs() {
        let leaves = test_leaves(40);
        for second in 1..=leaves.len() {
            let second_root = reference_root(&leaves[..second]);
            for first in 1..second {
                let first_root = reference_root(&leaves[..first]);
                let proof = reference_subproof(first, &leaves[..second], true);
                let (m, n) = (first as u64, second as u64);
                assert!(verify_consistency(m, n, &first_root, &second_root, &proof), "{first}->{second}");
                assert_consistency_rejects_tampering(m, n, &first_root, &second_root, &proof);
            }
        }
    }

    fn assert_consistency_rejects_tampering(m: u64, n: u64, first_root: &Hash, second_root: &Hash, proof: &[Hash]) {
        let bogus = leaf_hash(b"bogus");
        assert!(!verify_consistency(m, n, &bogus, second_root, proof));
        assert!(!verify_consistency(m, n, first_root, &bogus, proof));
        assert!(!verify_consistency(n, m, second_root, first_root, proof));
        assert!(!verify_consistency(m, n, first_root, second_root, &[]));
        let mut longer = proof.to_vec();
        longer.push(bogus);
        assert!(!verify_consistency(m, n, first_root, second_root, &longer));
        if let Some((_, shorter)) = proof.split_last() {
            assert!(!verify_consistency(m, n, first_root, second_root, shorter));
        }
        for k in 0..proof.len() {
            let mut flipped = proof.to_vec();
            flipped[k][31] ^= 0x80;
            assert!(!verify_consistency(m, n, first_root, second_root, &flipped));
        }
    }

    #[test]
    fn generated_proofs_match_the_rfc_definitions() {
        let leaves = test_leaves(33);
        for size in 0..=leaves.len() {
            let tree = &leaves[..size];
            for index in 0..size {
                assert_eq!(inclusion_proof(index, tree), reference_path(index, tree), "{index} in {size}");
            }
            assert!(inclusion_proof(size, tree).is_empty());
            for first in 1..size {
                let expected = reference_subproof(first, tree, true);
                assert_eq!(consistency_proof(first, tree), expected, "{first}->{size}");
            }
            assert!(consistency_proof(0, tree).is_empty());
            assert!(consistency_proof(size, tree).is_empty());
        }
    }

    #[test]
    fn consistency_edge_cases() {
        let leaves = test_leaves(5);
        let root = reference_root(&leaves);
        let empty = empty_root();
        assert!(verify_consistency(5, 5, &root, &root, &[]));
        assert!(!verify_consistency(5, 5, &root, &empty, &[]));
        assert!(!verify_consistency(5, 5, &root, &root, &[root]));
        assert!(verify_consistency(0, 5, &empty, &root, &[]));
        assert!(verify_consistency(0, 0, &empty, &empty, &[]));
        assert!(!verify_consistency(0, 5, &root, &root, &[]));
        assert!(!verify_consistency(0, 5, &empty, &root, &[root]));
    }

    #[test]
    fn inclusion_edge_cases() {
        let leaf = leaf_hash(b"only");
        assert!(verify_inclusion(0, 1, &leaf, &[], &leaf));
        assert!(!verify_inclusion(0, 1, &leaf, &[leaf], &leaf));
        assert!(!verify_inclusion(0, 0, &leaf, &[], &leaf));
    }
}
