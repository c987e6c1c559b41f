"""Tests of the provider families in bridge/sources/."""
