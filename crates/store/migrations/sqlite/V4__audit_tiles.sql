-- Hashes of complete Merkle subtrees at levels 8, 16, 24, … (256^k leaves each), so inclusion
-- and consistency proofs read at most a few hundred rows whatever the log size.
CREATE TABLE audit_tiles (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
);
