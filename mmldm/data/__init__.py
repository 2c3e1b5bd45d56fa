"""Data half of the pipeline: readers -> canonical volumes/slices -> preprocessing -> HDF5 -> Dataset."""
