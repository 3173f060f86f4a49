"""What is read and written: images and PNG grids, checkpoints, data sets, and the sample sets
that generate writes and eval reads. Imports nothing of the engine above it."""
