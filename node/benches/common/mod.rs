//! What the benchmarks share: a node of the fleet on disk.

use outpost_node::config::NodeDir;
use outpost_node::node::{InitParams, Node, now_ms};
use outpost_node::tls::CaDir;
use sync_protocol::vocab::Role;

/// A node of ICB QHM in `root/name`, initialised, with a certificate of `ca` (30 days).
pub fn make_node(root: &std::path::Path, ca: &CaDir, name: &str, role: Role) -> NodeDir {
    let dir = NodeDir::new(root.join(name));
    let params = InitParams { name: name.into(), role, org: None, icb: Some("QHM".into()), lines: vec![] };
    Node::init(&dir, &params, now_ms()).expect("init");
    let mut node = Node::open(&dir).expect("open");
    let issued =
        ca.issue(&node.config().peer_info(), &node.raw_store().identity().author_public(), 30, false).expect("issue");
    node.raw_store()
        .identity_mut()
        .set_tls_identity(&issued.cert_pem, &issued.key_pem, &issued.ca_pem)
        .expect("identity");
    dir
}
