"""The `seqstream` command line: one module per command on the small base in `common`."""
