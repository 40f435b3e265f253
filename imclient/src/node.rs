//! Which node is a client's home: SHA-256 rendezvous (highest-random-weight) hashing.
//!
//! `score(node, client) = SHA-256(utf8(node) ‖ utf8(client))`, read as a 256-bit big-endian
//! number; the node with the highest score is the client's home. Adding or removing a node moves
//! only the clients whose highest-scoring node changed, about 1/N of them. The test vectors in
//! docs/PROTOCOL.md let another language check its implementation.

use sha2::{Digest, Sha256};

use crate::ids::NodeId;

/// The rendezvous score of `client` on `node`: 32 bytes, compared lexicographically.
///
/// ```
/// let s = imclient::node::score("ws://127.0.0.1:6001", "alice");
/// assert_eq!(s.len(), 32);
/// ```
pub fn score(node: &str, client: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(node.as_bytes());
    hasher.update(client.as_bytes());
    hasher.finalize().into()
}

/// The home node of `client` among `nodes`, or `None` when the list is empty. Ties (which need
/// a SHA-256 collision) go to the node that sorts first, so every implementation agrees.
///
/// ```
/// use imclient::{node::home_node, NodeId};
/// let nodes = vec![NodeId::new("ws://a:1").unwrap(), NodeId::new("ws://b:2").unwrap()];
/// let home = home_node(&nodes, "alice").unwrap();
/// assert!(nodes.contains(home));
/// ```
pub fn home_node<'a>(nodes: &'a [NodeId], client: &str) -> Option<&'a NodeId> {
    nodes
        .iter()
        .map(|node| (score(node.as_str(), client), node))
        .max_by(|(sa, na), (sb, nb)| sa.cmp(sb).then_with(|| nb.cmp(na)))
        .map(|(_, node)| node)
}

/// Which of `nodes` are live: hold their lease in Redis (`keys.lease(node)`), read with one
/// pipelined EXISTS per node; in the order of `nodes`. Backends and nodes follow the live set
/// with it.
pub async fn read_live<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &crate::keys::Keys,
    nodes: &[NodeId],
) -> redis::RedisResult<Vec<NodeId>> {
    let mut pipe = redis::pipe();
    for node in nodes {
        pipe.exists(keys.lease(node));
    }
    let alive: Vec<bool> = pipe.query_async(conn).await?;
    Ok(nodes
        .iter()
        .zip(alive)
        .filter(|(_, alive)| *alive)
        .map(|(node, _)| node.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(list: &[&str]) -> Vec<NodeId> {
        list.iter()
            .map(|n| NodeId::new(*n).expect("valid node"))
            .collect()
    }

    /// The published vectors of docs/PROTOCOL.md; changing them breaks every other SDK.
    #[test]
    fn rendezvous_test_vectors() {
        assert_eq!(
            hex::encode(score("ws://127.0.0.1:6001", "alice")),
            "71013661c016e9b1ccc203c99a058ea547bc48ecc38b03f6cfe14df9a859a8d8"
        );
        let three = nodes(&[
            "ws://127.0.0.1:6001",
            "ws://127.0.0.1:6002",
            "ws://127.0.0.1:6003",
        ]);
        let expect = [
            ("alice", 0),
            ("bob", 2),
            ("carol", 1),
            ("dave", 1),
            ("u1", 0),
        ];
        for (client, idx) in expect {
            assert_eq!(
                home_node(&three, client),
                Some(&three[idx]),
                "client {client}"
            );
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_clients() {
        let four = nodes(&["ws://n1", "ws://n2", "ws://n3", "ws://n4"]);
        let three = &four[..3];
        let mut moved = 0;
        for i in 0..10_000 {
            let client = format!("user-{i}");
            let before = home_node(&four, &client).expect("home");
            let after = home_node(three, &client).expect("home");
            if before != after {
                assert_eq!(before.as_str(), "ws://n4", "only n4's clients may move");
                moved += 1;
            }
        }
        // n4 owned about a quarter of the clients.
        assert!((2_000..3_000).contains(&moved), "moved {moved}");
    }

    #[test]
    fn empty_list_has_no_home() {
        assert_eq!(home_node(&[], "alice"), None);
    }
}
