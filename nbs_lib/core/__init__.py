"""Core layer: profiles, device and seeding, the run cache, distributed primitives. Imports nothing of nbs_lib above it."""
