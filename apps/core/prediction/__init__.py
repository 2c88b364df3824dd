"""Whole-scene prediction with a trained checkpoint, shared by every app's predict command."""
