"""s2fin: land-cover maps from co-registered HSI and LiDAR/SAR rasters with S²Fin."""

__version__ = "0.1.0"
