"""What agentrt remembers: the state database, its schema and repair, liveness, recovery."""
