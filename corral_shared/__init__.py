"""Vocabulary every corral package may import: it imports nothing of corral."""
