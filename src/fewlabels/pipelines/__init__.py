"""Multi-step pipelines built on finished runs: teacher pseudo-labels for a pool of any size, and their selection."""
