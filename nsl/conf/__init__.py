"""Hydra configs of nsl, one group per component; packaged so they are found from an installed wheel."""
