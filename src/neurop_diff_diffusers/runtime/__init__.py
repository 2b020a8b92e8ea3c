"""Running a pipeline: loading it (folders, hub ids, presets, the embedded model), its precision and speed settings
for the hardware at hand, and its model card."""
