"""Raster and vector I/O: every file s2fin reads or writes goes through this package."""
