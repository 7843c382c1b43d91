//! Hashes of complete Merkle subtrees at levels 8, 16, 24, … (the C2SP tlog-tiles layout with
//! tiles of height 8), stored beside the log so a proof at any tree size reads a few hundred
//! hashes instead of the whole log. Maintained by the checkpoint task; idempotent and resumable.

use mandate_store::{Store, StoreError};

use crate::merkle::{Hash, node_hash};

/// Levels between stored layers: a stored node covers 256 nodes of the layer below.
pub const TILE_HEIGHT: u32 = 8;
/// Nodes of one layer that make up one node of the next.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
/// Stored nodes computed per store round trip while catching up.
const CATCH_UP_NODES: u64 = 64;

/// Stores every level-8·k subtree hash that the first `size` leaves complete and that is not
/// stored yet, lowest layer first (each layer is computed from the one below).
pub async fn update_tiles(store: &dyn Store, size: u64) -> Result<(), StoreError> {
    let mut level = TILE_HEIGHT;
    while level < u64::BITS && size >> level > 0 {
        let want = size >> level;
        let mut have = store.audit_tiles_len(level).await?;
        while have < want {
            let end = (have + CATCH_UP_NODES).min(want);
            let children = layer_nodes(store, level - TILE_HEIGHT, have * TILE_WIDTH, end * TILE_WIDTH).await?;
            let hashes: Vec<Hash> = children.chunks(TILE_WIDTH as usize).map(fold_perfect).collect();
            store.insert_audit_tiles(level, have, &hashes).await?;
            have = end;
        }
        level += TILE_HEIGHT;
    }
    Ok(())
}

/// The nodes `from..to` of a stored layer (level 0 = the leaves), all of which must exist.
async fn layer_nodes(store: &dyn Store, level: u32, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
    let nodes = if level == 0 {
        store.audit_leaf_hashes(from, to).await?
    } else {
        let rows = store.audit_tiles(level, from, to).await?;
        if rows.iter().zip(from..).any(|((idx, _), want)| *idx != want) {
            return Err(StoreError::AuditChain(format!("level-{level} tiles {from}..{to} have gaps")));
        }
        rows.into_iter().map(|(_, hash)| hash).collect()
    };
    if nodes.len() as u64 != to - from {
        return Err(StoreError::AuditChain(format!("level-{level} nodes {from}..{to} are not all present")));
    }
    Ok(nodes)
}

/// The root of a perfect subtree from its bottom row (a power-of-two number of hashes).
pub fn fold_perfect(row: &[Hash]) -> Hash {
    let mut row = row.to_vec();
    while row.len() > 1 {
        row = row.chunks(2).map(|pair| if let [l, r] = pair { node_hash(l, r) } else { pair[0] }).collect();
    }
    row.first().copied().unwrap_or_else(|| mandate_crypto::sha256(b""))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    #[test]
    fn fold_matches_recursive_root() {
        let leaves: Vec<Hash> = (0u32..256).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in [1usize, 2, 4, 8, 64, 256] {
            assert_eq!(fold_perfect(&leaves[..n]), mandate_audit_verify::merkle_root(&leaves[..n]), "{n}");
        }
    }
}
