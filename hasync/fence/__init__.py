"""The send fence: a kernel-enforced permission, per outbound ESP SA, to put sequence numbers on
the wire only up to a mark this node has committed through Raft (docs/takeover.md, The fence)."""
