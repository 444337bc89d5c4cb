"""The Docker Swarm backend: each session a one-shot service on a node agentrt picks."""
