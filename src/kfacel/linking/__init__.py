"""A trained linker in use: its model directory, linking mentions, ranking metrics."""
