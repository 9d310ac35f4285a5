"""Configs of the launchers."""
