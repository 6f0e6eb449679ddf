"""Replicas of HA instances' root volumes on other members' pools (see README.md)."""
