"""Reading and writing files: plain images, rasters and their geodata, heat-map renderings."""
