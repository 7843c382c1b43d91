//! RFC 9162 inclusion (§2.1.3) and consistency (§2.1.4) proofs, and tree heads at any past size,
//! computed from the stored tiles: at most one 256-hash tile per layer and per right-edge
//! subtree is read, so a proof costs the same at ten entries as at ten million.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use mandate_store::{Store, StoreError};

use crate::merkle::{Hash, root_from_frontier};
use crate::tiles::{TILE_HEIGHT, TILE_WIDTH, fold_perfect};

/// Proof that the leaf at `index` is in the tree of `tree_size` leaves; `hashes` are the
/// siblings from the leaf up (RFC 9162 §2.1.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    pub index: u64,
    pub tree_size: u64,
    pub leaf_hash: [u8; 32],
    pub hashes: Vec<[u8; 32]>,
}

/// Proof that the tree of `from` leaves is a prefix of the tree of `to` leaves (RFC 9162
/// §2.1.4.1). Empty when `from` is 0 or equals `to`: those are consistent by definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub hashes: Vec<[u8; 32]>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// The request names positions the log cannot prove (the message says which).
    #[error("{0}")]
    OutOfRange(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The inclusion proof of entry `index` in the tree of the first `tree_size` entries.
pub async fn inclusion_proof(store: &dyn Store, index: u64, tree_size: u64) -> Result<InclusionProof, ProofError> {
    check_size(store, tree_size).await?;
    if index >= tree_size {
        return Err(ProofError::OutOfRange(format!("index {index} is not below tree size {tree_size}")));
    }
    let mut reader = TileReader::new(store, tree_size);
    let leaf_hash = reader.range(index, index + 1).await?;
    let hashes = reader.ranges(&inclusion_ranges(index, tree_size)).await?;
    Ok(InclusionProof { index, tree_size, leaf_hash, hashes })
}

/// The consistency proof from the tree of `from` entries to the tree of `to` entries.
pub async fn consistency_proof(store: &dyn Store, from: u64, to: u64) -> Result<ConsistencyProof, ProofError> {
    check_size(store, to).await?;
    if from > to {
        return Err(ProofError::OutOfRange(format!("from {from} is greater than to {to}")));
    }
    let mut reader = TileReader::new(store, to);
    let hashes = reader.ranges(&consistency_ranges(from, to)).await?;
    Ok(ConsistencyProof { from, to, hashes })
}

/// The root hash of the tree of the first `tree_size` entries (`SHA-256("")` when 0).
pub async fn root_at(store: &dyn Store, tree_size: u64) -> Result<[u8; 32], ProofError> {
    check_size(store, tree_size).await?;
    TileReader::new(store, tree_size).range(0, tree_size).await
}

async fn check_size(store: &dyn Store, tree_size: u64) -> Result<(), ProofError> {
    let len = store.audit_len().await?;
    if tree_size > len {
        return Err(ProofError::OutOfRange(format!("tree size {tree_size} exceeds the log's {len} entries")));
    }
    Ok(())
}

/// Largest power of two strictly below `n` (n ≥ 2): where RFC 9162 splits a tree of n leaves.
fn split(n: u64) -> u64 {
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// PATH(index, D[0:size]) as the leaf ranges whose subtree hashes make the path, leaf first.
fn inclusion_ranges(index: u64, size: u64) -> Vec<(u64, u64)> {
    let (mut lo, mut hi) = (0, size);
    let mut ranges = Vec::new();
    while hi - lo > 1 {
        let k = split(hi - lo);
        if index < lo + k {
            ranges.push((lo + k, hi));
            hi = lo + k;
        } else {
            ranges.push((lo, lo + k));
            lo += k;
        }
    }
    ranges.reverse();
    ranges
}

/// PROOF(from, D[0:to]) = SUBPROOF(from, D[0:to], true) as leaf ranges, in proof order.
fn consistency_ranges(from: u64, to: u64) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    if from == 0 || from >= to {
        return ranges;
    }
    let (mut lo, mut hi, mut whole) = (0, to, true);
    loop {
        if from == hi {
            if !whole {
                ranges.push((lo, hi));
            }
            break;
        }
        let k = split(hi - lo);
        if from <= lo + k {
            ranges.push((lo + k, hi));
            hi = lo + k;
        } else {
            ranges.push((lo, lo + k));
            lo += k;
            whole = false;
        }
    }
    ranges.reverse();
    ranges
}

type TileFuture<'f> = Pin<Box<dyn Future<Output = Result<(), ProofError>> + Send + 'f>>;

/// Reads the nodes of the tree of `size` leaves a tile at a time, caching what one proof
/// touches. Layer `L` (a multiple of 8) holds the level-L nodes: leaves, then stored tiles.
struct TileReader<'a> {
    store: &'a dyn Store,
    size: u64,
    tiles: HashMap<(u32, u64), Vec<Hash>>,
}

impl<'a> TileReader<'a> {
    fn new(store: &'a dyn Store, size: u64) -> Self {
        Self { store, size, tiles: HashMap::new() }
    }

    async fn ranges(&mut self, ranges: &[(u64, u64)]) -> Result<Vec<Hash>, ProofError> {
        let mut hashes = Vec::with_capacity(ranges.len());
        for &(lo, hi) in ranges {
            hashes.push(self.range(lo, hi).await?);
        }
        Ok(hashes)
    }

    /// MTH(D[lo:hi]) for a range RFC 9162 recursion produces (`lo` aligned to a power of two at
    /// least `hi - lo`): the perfect subtrees given by the bits of its length, folded.
    async fn range(&mut self, lo: u64, hi: u64) -> Result<Hash, ProofError> {
        let mut subtrees = Vec::new();
        let mut start = lo;
        for bit in (0..u64::BITS).rev() {
            let width = 1u64 << bit;
            if (hi - lo) & width != 0 {
                subtrees.push(self.perfect(bit, start >> bit).await?);
                start += width;
            }
        }
        Ok(root_from_frontier(&subtrees))
    }

    /// The node at `level`, `idx` of a perfect subtree: folded from the ≤128 nodes of the
    /// stored layer below it, which share one tile.
    async fn perfect(&mut self, level: u32, idx: u64) -> Result<Hash, ProofError> {
        let layer = level - level % TILE_HEIGHT;
        let span = level - layer;
        let first = idx << span;
        let tile = first / TILE_WIDTH;
        self.load(layer, tile).await?;
        let offset = (first % TILE_WIDTH) as usize;
        let nodes = self
            .tiles
            .get(&(layer, tile))
            .and_then(|t| t.get(offset..offset + (1usize << span)))
            .ok_or_else(|| StoreError::AuditChain(format!("level-{layer} tile {tile} is short")))?;
        Ok(fold_perfect(nodes))
    }

    /// Loads the complete nodes of one tile of `layer`. Stored tiles missing (e.g. not yet
    /// caught up after an upgrade) are recomputed from the layer below, so proofs stay right.
    fn load(&mut self, layer: u32, tile: u64) -> TileFuture<'_> {
        Box::pin(async move {
            if self.tiles.contains_key(&(layer, tile)) {
                return Ok(());
            }
            let from = tile * TILE_WIDTH;
            let to = (from + TILE_WIDTH).min(self.size >> layer);
            let nodes = if layer == 0 {
                self.store.audit_leaf_hashes(from, to).await?
            } else {
                let mut nodes = Vec::with_capacity((to - from) as usize);
                let mut stored = self.store.audit_tiles(layer, from, to).await?.into_iter().peekable();
                for idx in from..to {
                    match stored.next_if(|(i, _)| *i == idx) {
                        Some((_, hash)) => nodes.push(hash),
                        None => nodes.push(self.recompute(layer, idx).await?),
                    }
                }
                nodes
            };
            if nodes.len() as u64 != to - from {
                return Err(StoreError::AuditChain(format!("level-{layer} nodes {from}..{to} are missing")).into());
            }
            self.tiles.insert((layer, tile), nodes);
            Ok(())
        })
    }

    async fn recompute(&mut self, layer: u32, idx: u64) -> Result<Hash, ProofError> {
        let below = layer - TILE_HEIGHT;
        self.load(below, idx).await?;
        let nodes = self.tiles.get(&(below, idx)).filter(|n| n.len() as u64 == TILE_WIDTH);
        let nodes = nodes.ok_or_else(|| StoreError::AuditChain(format!("level-{below} tile {idx} is short")))?;
        Ok(fold_perfect(nodes))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use mandate_audit_verify as verify;
    use mandate_store::SqliteStore;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;
    use crate::tiles::update_tiles;
    use crate::{AuditEncoder, merkle::leaf_hash};

    /// A store holding `n` leaves (with tiles up to `tiled`) and the leaf hashes, for the naive
    /// reference implementation in audit-verify.
    async fn log_of(n: u64, tiled: u64) -> (tempfile::TempDir, SqliteStore, Vec<Hash>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("m.db")).unwrap();
        let encoder: Arc<dyn mandate_store::EntryEncoder> = Arc::new(AuditEncoder);
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(1000);
            let jobs = (0..batch).map(|_| test_job()).collect();
            store.commit(jobs, Arc::clone(&encoder)).await.unwrap();
            done += batch;
        }
        update_tiles(&store, tiled).await.unwrap();
        let leaves = store.audit_leaf_hashes(0, n).await.unwrap();
        (dir, store, leaves)
    }

    fn test_job() -> mandate_store::WriteJob {
        mandate_store::WriteJob { mutation: None, event: mandate_core::AuditEvent::allow("test.event", "c"), ts_ms: 0 }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn ranges_match_the_naive_proofs_for_small_trees() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let resolve = |ranges: Vec<(u64, u64)>| -> Vec<Hash> {
            ranges.iter().map(|&(lo, hi)| verify::merkle_root(&leaves[lo as usize..hi as usize])).collect()
        };
        for n in 1..=leaves.len() {
            for m in 0..=n {
                let expected = verify::consistency_proof(m, &leaves[..n]);
                assert_eq!(resolve(consistency_ranges(m as u64, n as u64)), expected, "{m}->{n}");
                if m < n {
                    let expected = verify::inclusion_proof(m, &leaves[..n]);
                    assert_eq!(resolve(inclusion_ranges(m as u64, n as u64)), expected, "{m} in {n}");
                }
            }
        }
    }

    /// Tile-backed proofs equal the naive ones and verify, for random (index, size) pairs on and
    /// off tile boundaries, with tiles caught up only part of the way.
    #[test]
    fn tile_proofs_match_naive_proofs() {
        let rt = runtime();
        let (_dir, store, leaves) = rt.block_on(log_of(LOG_SIZE, TILED));
        let mut runner = TestRunner::new(Config { cases: 200, ..Config::default() });
        let result = runner.run(&(0..LOG_SIZE, 1..=LOG_SIZE), |(a, size)| {
            let index = a % size;
            let naive_leaves = &leaves[..size as usize];
            let proof = rt.block_on(inclusion_proof(&store, index, size)).unwrap();
            prop_assert_eq!(&proof.hashes, &verify::inclusion_proof(index as usize, naive_leaves));
            prop_assert_eq!(proof.leaf_hash, leaves[index as usize]);
            let root = rt.block_on(root_at(&store, size)).unwrap();
            prop_assert_eq!(root, verify::merkle_root(naive_leaves));
            prop_assert!(verify::verify_inclusion(index, size, &proof.leaf_hash, &proof.hashes, &root));
            let first_root = rt.block_on(root_at(&store, index)).unwrap();
            let cons = rt.block_on(consistency_proof(&store, index, size)).unwrap();
            prop_assert_eq!(&cons.hashes, &verify::consistency_proof(index as usize, naive_leaves));
            prop_assert!(verify::verify_consistency(index, size, &first_root, &root, &cons.hashes));
            Ok(())
        });
        result.unwrap();
    }

    /// Crosses the first level-16 boundary (65,536) so stored layers 8 and 16 both take part;
    /// tiles are caught up only to `TILED`, so the rest is recomputed from the layer below.
    const LOG_SIZE: u64 = 70_000;
    const TILED: u64 = 66_000;

    #[test]
    fn boundary_sizes_match_naive_proofs() {
        let rt = runtime();
        let (_dir, store, leaves) = rt.block_on(log_of(600, 600));
        for size in [1u64, 2, 255, 256, 257, 511, 512, 513, 600] {
            let root = rt.block_on(root_at(&store, size)).unwrap();
            assert_eq!(root, verify::merkle_root(&leaves[..size as usize]), "{size}");
            for index in [0, size / 2, size - 1] {
                let proof = rt.block_on(inclusion_proof(&store, index, size)).unwrap();
                assert!(
                    verify::verify_inclusion(index, size, &proof.leaf_hash, &proof.hashes, &root),
                    "{index}/{size}"
                );
            }
        }
    }

    #[test]
    fn out_of_range_requests_are_refused() {
        let rt = runtime();
        let (_dir, store, _) = rt.block_on(log_of(10, 10));
        assert!(matches!(rt.block_on(inclusion_proof(&store, 10, 10)), Err(ProofError::OutOfRange(_))));
        assert!(matches!(rt.block_on(inclusion_proof(&store, 0, 11)), Err(ProofError::OutOfRange(_))));
        assert!(matches!(rt.block_on(inclusion_proof(&store, 0, 0)), Err(ProofError::OutOfRange(_))));
        assert!(matches!(rt.block_on(consistency_proof(&store, 5, 4)), Err(ProofError::OutOfRange(_))));
        assert!(matches!(rt.block_on(consistency_proof(&store, 1, 11)), Err(ProofError::OutOfRange(_))));
        assert!(matches!(rt.block_on(root_at(&store, 11)), Err(ProofError::OutOfRange(_))));
        assert_eq!(rt.block_on(root_at(&store, 0)).unwrap(), mandate_crypto::sha256(b""));
        assert!(rt.block_on(consistency_proof(&store, 0, 10)).unwrap().hashes.is_empty());
        assert!(rt.block_on(consistency_proof(&store, 10, 10)).unwrap().hashes.is_empty());
    }

    #[test]
    fn tiles_are_idempotent_and_match_the_leaves() {
        let rt = runtime();
        let (_dir, store, leaves) = rt.block_on(log_of(700, 300));
        rt.block_on(update_tiles(&store, 700)).unwrap();
        rt.block_on(update_tiles(&store, 700)).unwrap();
        let tiles = rt.block_on(store.audit_tiles(8, 0, 10)).unwrap();
        assert_eq!(tiles.len(), 2);
        assert_eq!(tiles[1], (1, verify::merkle_root(&leaves[256..512])));
        assert_eq!(rt.block_on(store.audit_tiles_len(16)).unwrap(), 0);
    }
}
