"""`covseg` command line: one module per subcommand, parsing only."""
