"""hasync_lab: the failover lab, its own distribution (hasync-lab, bench/lab/pyproject.toml).

Rules: lab material only, never in the hasync wheel: it holds a recorder of charon's HA stream
with its secrets in clear (harecord), a throwaway CA (pki) and a mover of kernel ESP sequence
numbers (xfrmjump). It imports hasync; hasync never imports it (`hasync lab` finds it by name).
"""
