"""Protected-asset catalogue and the matchers that find its assets in images."""
