//! RFC 6962 / RFC 9162 Merkle tree hashing, proofs and proof verification.
//!
//! leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right); a tree of `n` leaves
//! splits at the largest power of two below `n` (RFC 9162 section 2.1.1). Proof generation works
//! over any [`PerfectNodes`] source (the in-memory [`Leaves`] for tests and verification, the
//! store for the gateway's log); verification needs only hashes.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a log entry: SHA-256(0x00 || entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(entry);
    hasher.finalize().into()
}

/// The hash of an inner node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Where proofs read hashes from: the roots of perfect, aligned subtrees.
pub trait PerfectNodes {
    /// The root of the perfect subtree of `2^level` leaves starting at leaf `index << level`.
    fn perfect(&self, level: u32, index: u64) -> Option<Hash>;

    /// MTH(D[start..end]) per RFC 9162 (`start` aligned as the recursion aligns it).
    fn subtree(&self, start: u64, end: u64) -> Option<Hash> {
        let n = end - start;
        if n == 0 {
            return Some(empty_root());
        }
        if n.is_power_of_two() && start.is_multiple_of(n) {
            return self.perfect(n.trailing_zeros(), start >> n.trailing_zeros());
        }
        let k = split(n);
        Some(node_hash(&self.subtree(start, start + k)?, &self.subtree(start + k, end)?))
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 2.1.3.1).
    fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size {
            return None;
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof)?;
        Some(proof)
    }

    /// PATH(m, D[start..end]), appended to `out` (innermost first).
    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) -> Option<()> {
        let n = end - start;
        if n <= 1 {
            return Some(());
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, out)?;
            out.push(self.subtree(start + k, end)?);
        } else {
            self.path(m - k, start + k, end, out)?;
            out.push(self.subtree(start, start + k)?);
        }
        Some(())
    }

    /// The consistency proof between the trees of `first` and `second` leaves (RFC 9162 2.1.4.1).
    fn consistency_proof(&self, first: u64, second: u64) -> Option<Vec<Hash>> {
        if first > second {
            return None;
        }
        let mut proof = Vec::new();
        if first > 0 && first < second {
            self.subproof(first, 0, second, true, &mut proof)?;
        }
        Some(proof)
    }

    /// SUBPROOF(m, D[start..end], b), appended to `out`.
    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) -> Option<()> {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.subtree(start, end)?);
            }
            return Some(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, out)?;
            out.push(self.subtree(start + k, end)?);
        } else {
            self.subproof(m - k, start + k, end, false, out)?;
            out.push(self.subtree(start, start + k)?);
        }
        Some(())
    }
}

/// A tree held as its leaf hashes in memory.
pub struct Leaves(pub Vec<Hash>);

impl Leaves {
    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Option<Hash> {
        (size <= self.0.len() as u64).then(|| self.subtree(0, size)).flatten()
    }
}

impl PerfectNodes for Leaves {
    fn perfect(&self, level: u32, index: u64) -> Option<Hash> {
        if level == 0 {
            return self.0.get(usize::try_from(index).ok()?).copied();
        }
        let left = self.perfect(level - 1, index * 2)?;
        Some(node_hash(&left, &self.perfect(level - 1, index * 2 + 1)?))
    }
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first. Appending
/// a leaf returns the perfect nodes it completes, so a store can keep them for proofs.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    edge: Vec<Hash>,
}

impl Frontier {
    /// Rebuilds the frontier of a tree of `size` leaves from its stored perfect nodes.
    pub fn restore(size: u64, nodes: &dyn PerfectNodes) -> Option<Frontier> {
        let mut edge = Vec::new();
        let mut start = 0u64;
        for level in (0..64).rev() {
            if size & (1 << level) != 0 {
                edge.push(nodes.perfect(level, start >> level)?);
                start += 1 << level;
            }
        }
        Some(Frontier { size, edge })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns every perfect node it completes as `(level, index, hash)`,
    /// the leaf itself first.
    pub fn push(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let index = self.size;
        let mut completed = vec![(0, index, leaf)];
        let mut hash = leaf;
        let mut level = 0;
        while (index >> level) & 1 == 1 {
            let left = self.edge.pop().expect("an odd position has a left sibling on the edge");
            hash = node_hash(&left, &hash);
            level += 1;
            completed.push((level, index >> level, hash));
        }
        self.edge.push(hash);
        self.size += 1;
        completed
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut nodes = self.edge.iter().rev();
        let Some(last) = nodes.next() else { return empty_root() };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// Checks an inclusion proof (RFC 9162 2.1.3.2): `leaf` is entry `index` of the tree `root` of `size` leaves.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut hash = *leaf;
    for sibling in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node_hash(sibling, &hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && hash == *root
}

/// Checks a consistency proof (RFC 9162 2.1.4.2): the tree `first_root` of `first` leaves is a
/// prefix of the tree `second_root` of `second` leaves.
pub fn verify_consistency(first: u64, second: u64, first_root: &Hash, second_root: &Hash, proof: &[Hash]) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *first_root && sr == *second_root && snode == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(n: usize) -> Leaves {
        Leaves((0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect())
    }

    #[test]
    fn the_frontier_agrees_with_the_recursive_definition_and_restores() {
        let leaves = tree(70);
        let mut frontier = Frontier::default();
        let mut stored = std::collections::HashMap::new();
        for (i, leaf) in leaves.0.iter().enumerate() {
            for (level, index, hash) in frontier.push(*leaf) {
                stored.insert((level, index), hash);
            }
            assert_eq!(frontier.root(), leaves.root(i as u64 + 1).unwrap(), "size {}", i + 1);
        }
        struct Map(std::collections::HashMap<(u32, u64), Hash>);
        impl PerfectNodes for Map {
            fn perfect(&self, level: u32, index: u64) -> Option<Hash> {
                self.0.get(&(level, index)).copied()
            }
        }
        let map = Map(stored);
        for size in [1u64, 2, 7, 8, 33, 70] {
            assert_eq!(Frontier::restore(size, &map).unwrap().root(), leaves.root(size).unwrap());
        }
        // Proofs from stored nodes equal proofs from leaves.
        assert_eq!(map.inclusion_proof(37, 70), leaves.inclusion_proof(37, 70));
        assert_eq!(map.consistency_proof(13, 70), leaves.consistency_proof(13, 70));
    }

    #[test]
    fn every_proof_of_small_trees_verifies_and_a_wrong_one_does_not() {
        let leaves = tree(40);
        for size in 1..=40u64 {
            let root = leaves.root(size).unwrap();
            for index in 0..size {
                let proof = leaves.inclusion_proof(index, size).unwrap();
                assert!(verify_inclusion(&leaves.0[index as usize], index, size, &proof, &root));
                let other = (index + 1) % size;
                if other != index {
                    assert!(!verify_inclusion(&leaves.0[other as usize], index, size, &proof, &root));
                }
            }
            for first in 0..=size {
                let proof = leaves.consistency_proof(first, size).unwrap();
                let first_root = leaves.root(first).unwrap();
                assert!(verify_consistency(first, size, &first_root, &root, &proof), "{first} {size}");
                if first > 0 && first < size {
                    let wrong = leaf_hash(b"not the old root");
                    assert!(!verify_consistency(first, size, &wrong, &root, &proof));
                }
            }
        }
    }

    /// The published RFC 6962 vectors (Certificate Transparency's merkle_tree_test.cc and
    /// transparency-dev/merkle; sources in the file): roots, audit paths, consistency proofs.
    #[test]
    fn published_rfc6962_vectors() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/rfc6962-vectors.json")).unwrap();
        let hash = |v: &serde_json::Value| -> Hash { hex::decode(v.as_str().unwrap()).unwrap().try_into().unwrap() };
        let hashes = |v: &serde_json::Value| v.as_array().unwrap().iter().map(hash).collect::<Vec<_>>();
        let leaves = Leaves(
            vectors["leaves"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| leaf_hash(&hex::decode(l.as_str().unwrap()).unwrap()))
                .collect(),
        );
        let roots = &vectors["roots"];
        let root = |size: u64| hash(&roots[size.to_string()]);
        assert_eq!(empty_root(), root(0));
        let mut frontier = Frontier::default();
        for size in 1..=8u64 {
            assert_eq!(leaves.root(size).unwrap(), root(size), "root of {size}");
            frontier.push(leaves.0[size as usize - 1]);
            assert_eq!(frontier.root(), root(size));
        }
        let inclusion = vectors["inclusion"].as_array().unwrap();
        let consistency = vectors["consistency"].as_array().unwrap();
        assert!(inclusion.len() >= 7 && consistency.len() >= 5);
        for case in inclusion {
            let (index, size) = (case["index"].as_u64().unwrap(), case["size"].as_u64().unwrap());
            let path = hashes(&case["path"]);
            assert_eq!(leaves.inclusion_proof(index, size).unwrap(), path, "path {index}/{size}");
            assert!(verify_inclusion(&leaves.0[index as usize], index, size, &path, &root(size)));
        }
        for case in consistency {
            let (first, second) = (case["first"].as_u64().unwrap(), case["second"].as_u64().unwrap());
            let proof = hashes(&case["proof"]);
            assert_eq!(leaves.consistency_proof(first, second).unwrap(), proof, "proof {first}->{second}");
            assert!(verify_consistency(first, second, &root(first), &root(second), &proof));
            if let Some((last, rest)) = proof.split_last() {
                let mut flipped = *last;
                flipped[0] ^= 1;
                let tampered = [rest, &[flipped]].concat();
                assert!(!verify_consistency(first, second, &root(first), &root(second), &tampered));
            }
        }
    }
}
