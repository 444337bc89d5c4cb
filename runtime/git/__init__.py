"""Git, safely: the host's git settings, session trees, bundles across the boundary, merges."""
