"""The FUSE mount: pyfuse3 operations over the ciphertext tree (no crypto here)."""
