//! RFC 9162 Merkle tree hashing with a compact frontier: the roots of the perfect subtrees that
//! cover the leaves so far, largest first. Appending is amortised O(1) and the root is O(log n),
//! so checkpoints never re-read the whole log.

use mandate_crypto::sha256;

pub type Hash = [u8; 32];

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut buf = Vec::with_capacity(data.len() + 1);
    buf.push(0x00);
    buf.extend_from_slice(data);
    sha256(&buf)
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 65];
    buf[0] = 0x01;
    buf[1..33].copy_from_slice(left);
    buf[33..].copy_from_slice(right);
    sha256(&buf)
}

/// The frontier of a tree of `size` leaves, extended by `leaves`.
pub fn extend_frontier(mut frontier: Vec<Hash>, size: u64, leaves: &[Hash]) -> Vec<Hash> {
    for (size_before, leaf) in (size..).zip(leaves) {
        frontier.push(*leaf);
        // Each trailing 1-bit of the old size is a subtree the new leaf completes a pair with.
        for _ in 0..size_before.trailing_ones() {
            let (Some(right), Some(left)) = (frontier.pop(), frontier.pop()) else {
                break;
            };
            frontier.push(node_hash(&left, &right));
        }
    }
    frontier
}

/// The tree head for a frontier: the subtrees folded right to left.
pub fn root_from_frontier(frontier: &[Hash]) -> Hash {
    let mut iter = frontier.iter().rev();
    let Some(last) = iter.next() else {
        return sha256(b"");
    };
    iter.fold(*last, |acc, left| node_hash(left, &acc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => sha256(b""),
            1 => leaves[0],
            n => {
                let k = largest_power_of_two_below(n);
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn largest_power_of_two_below(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    #[test]
    fn digest_vectors() {
        let leaves: Vec<Hash> = [b"a", b"b", b"c"].iter().map(|d| leaf_hash(*d)).collect();
        let root = |n: usize| hex::encode(root_from_frontier(&extend_frontier(Vec::new(), 0, &leaves[..n])));
        assert_eq!(root(1), "022a6979e6dab7aa5ae4c3e5e45f7e977112a7e63593820dbec1ec738a24f93c");
        assert_eq!(root(2), "b137985ff484fb600db93107c77b0365c80d78f5b429ded0fd97361d077999eb");
        assert_eq!(root(3), "36642e73c2540ab121e3a6bf9545b0a24982cd830eb13d3cd19de3ce6c021ec1");
        assert_eq!(
            hex::encode(root_from_frontier(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn frontier_matches_recursive_definition_and_resumes_anywhere() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 0..leaves.len() {
            let whole = extend_frontier(Vec::new(), 0, &leaves[..n]);
            assert_eq!(whole.len() as u32, (n as u64).count_ones(), "size {n}");
            assert_eq!(root_from_frontier(&whole), reference_root(&leaves[..n]), "size {n}");
            for split in 0..=n {
                let first = extend_frontier(Vec::new(), 0, &leaves[..split]);
                let resumed = extend_frontier(first, split as u64, &leaves[split..n]);
                assert_eq!(resumed, whole, "size {n} split {split}");
            }
        }
    }
}
