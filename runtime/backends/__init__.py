"""Where a session runs: one folder per backend (:mod:`.docker`, :mod:`.swarm`), what they
share (:mod:`.base`), and gc across them (:mod:`.recovery`)."""
