"""File-level jobs: one image file, a batch of files, and a whole scene (GeoTIFF) in windows."""
