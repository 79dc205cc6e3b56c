"""Tests of nsmgr."""
