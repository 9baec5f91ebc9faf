"""One module per `ov2` subcommand. Each defines NAME, HELP, add_arguments(parser) and run(args) -> int;
the CLI discovers them, so adding a command means adding a file here."""
